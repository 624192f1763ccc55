"""Approval gates Git cannot remove by itself (DESIGN §10).

Three sources gate an action:
- the site policy's `[[approvals]]`: outside Git, never removable by a commit;
- a commit's `Policy` approval rules and Targets' `approval` hooks;
- gates *in force*: the Git gates last accepted. A commit that removes or
  changes one of them keeps it in force (its actions stay gated by it) and
  carries one more gated action, `gates`, which an approver must approve
  before the weaker set takes effect. Adding gates takes effect at once.

So "delete the production Policy and deploy to production in the same
commit" still waits for an approval, and so does "delete the Policy now,
deploy next week".

Pure: the engine reads and writes the set in force through the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from certgit.reconciler.model import (
    ApprovalHook,
    ApprovalRule,
    DesiredState,
    canonical_json,
    sha256_hex,
)

# The store's source_state keys holding the gates in force (JSON of Atoms), and the
# weaker set a plan's `gates` action would put in force ({"hash", "atoms"}).
GATES_IN_FORCE = "approval_gates_in_force"
GATES_PENDING = "approval_gates_pending"

# A gate atom: key ("policy NAME/RULE" or "target NAME approval") -> canonical content.
Atoms = dict[str, dict[str, Any]]


def _rule_content(rule: ApprovalRule) -> dict[str, Any]:
    return {
        "targetLabels": dict(sorted(rule.target_labels.items())),
        "certificateLabels": dict(sorted(rule.certificate_labels.items())),
        "targets": sorted(rule.targets),
        "certificates": sorted(rule.certificates),
        "actions": sorted(rule.actions),
    }


def site_gates(rules: Sequence[ApprovalRule], desired: DesiredState) -> Atoms:
    """The site's approval rules as atoms, with what they match in this commit.

    The operator changes the rules themselves (never a gate change for Git to
    approve); only a commit that moves a target or certificate out of a
    site rule's selector (relabelling it) weakens them, and is held like a
    Git rule (see `held_over`).
    """
    atoms: Atoms = {}
    for rule in rules:
        atom = _rule_atom(rule, desired)
        atom["kind"] = "site-rule"
        atoms[f"site {rule.name}"] = atom
    return atoms


def _rule_atom(rule: ApprovalRule, desired: DesiredState) -> dict[str, Any]:
    atom: dict[str, Any] = {"kind": "rule", "name": rule.name, **_rule_content(rule)}
    if rule.target_labels or rule.targets:
        atom[MATCHED_TARGETS] = sorted(
            name
            for name, target in desired.targets.items()
            if (not rule.targets or name in rule.targets)
            and _labels_match(rule.target_labels, target.labels)
        )
    if rule.certificate_labels or rule.certificates:
        atom[MATCHED_CERTIFICATES] = sorted(
            name
            for name, cert in desired.certificates.items()
            if (not rule.certificates or name in rule.certificates)
            and _labels_match(rule.certificate_labels, cert.labels)
        )
    return atom


def git_gates(desired: DesiredState) -> Atoms:
    """The Git gates of one commit: every Policy rule and every required Target hook.

    A rule with a target (or certificate) selector also records the names it
    matches in this commit (`matchedTargets`, `matchedCertificates`): a commit
    that keeps the rule but relabels a gated target out of its selector
    weakens the gate for that target just as deleting the rule would.
    """
    atoms: Atoms = {}
    for policy in desired.policies.values():
        for rule in policy.approvals:
            atoms[f"policy {policy.name}/{rule.name}"] = _rule_atom(rule, desired)
    for target in desired.targets.values():
        hook = target.approval
        if hook is not None and hook.required:
            atoms[f"target {target.name} approval"] = {
                "kind": "hook",
                "target": target.name,
                "actions": sorted(hook.actions),
            }
    return atoms


MATCHED_TARGETS = "matchedTargets"
MATCHED_CERTIFICATES = "matchedCertificates"
_MATCHED = (MATCHED_TARGETS, MATCHED_CERTIFICATES)


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _selectors(content: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in content.items() if k not in _MATCHED}


def _lost(old: Mapping[str, Any], new: Mapping[str, Any], key: str) -> list[str]:
    """Names the old atom matched that the new one no longer does (unknown: none)."""
    if key not in old or key not in new:
        return []
    return sorted(set(old[key]) - set(new[key]))


def gates_hash(atoms: Mapping[str, Any]) -> str:
    return sha256_hex(canonical_json(dict(sorted(atoms.items()))))


@dataclass(frozen=True)
class HeldRule:
    """A gate in force that the commit removes or changes: it keeps gating until approved."""

    label: str  # "policy production/changes" or "target web-1 approval"
    rule: ApprovalRule | None = None  # for a Policy rule
    target: str | None = None  # for a Target hook
    hook: ApprovalHook | None = None


@dataclass(frozen=True)
class GateChange:
    """The commit weakens the gates in force: `lines` say how; `hash` names the new set."""

    hash: str
    lines: tuple[str, ...]


def held_over(in_force: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[HeldRule, ...]:
    """Gates in force that `new` removes, changes or narrows, as rules that keep gating."""
    out: list[HeldRule] = []
    for key in sorted(in_force):
        old = in_force[key]
        now = new.get(key)
        if old.get("kind") == "site-rule" and (now is None or _selectors(now) != _selectors(old)):
            continue  # the operator changed the site policy: theirs to change, not Git's
        if now is not None and _selectors(now) == _selectors(old):
            # the same rule; did it stop matching a target or certificate it gated?
            lost_targets = _lost(old, now, MATCHED_TARGETS)
            lost_certs = _lost(old, now, MATCHED_CERTIFICATES)
            if lost_targets:
                out.append(
                    HeldRule(
                        label=f"{key} for target {', '.join(lost_targets)} (no longer matched "
                        "in Git; still in force)",
                        rule=replace(
                            _rule_of(key, old), target_labels={}, targets=tuple(lost_targets)
                        ),
                    )
                )
            if lost_certs:
                out.append(
                    HeldRule(
                        label=f"{key} for certificate {', '.join(lost_certs)} (no longer "
                        "matched in Git; still in force)",
                        rule=replace(
                            _rule_of(key, old),
                            certificate_labels={},
                            certificates=tuple(lost_certs),
                        ),
                    )
                )
            continue
        # "by this commit" or an earlier one since the gates in force were last approved
        label = f"{key} (removed or changed in Git; still in force)"
        if old.get("kind") == "hook":
            out.append(
                HeldRule(
                    label=label,
                    target=str(old["target"]),
                    hook=ApprovalHook(required=True, actions=tuple(old.get("actions") or ())),
                )
            )
        else:
            out.append(HeldRule(label=label, rule=_rule_of(key, old)))
    return tuple(out)


def _rule_of(key: str, content: Mapping[str, Any]) -> ApprovalRule:
    return ApprovalRule(
        name=str(content.get("name", key)),
        target_labels=dict(content.get("targetLabels") or {}),
        certificate_labels=dict(content.get("certificateLabels") or {}),
        targets=tuple(content.get("targets") or ()),
        certificates=tuple(content.get("certificates") or ()),
        actions=tuple(content.get("actions") or ()),
    )


def change(in_force: Mapping[str, Any], new: Mapping[str, Any]) -> GateChange | None:
    """The weakening `new` makes to `in_force`, or None when it only keeps or adds gates."""
    lines: list[str] = []
    for key in sorted(in_force):
        old = in_force[key]
        now = new.get(key)
        if old.get("kind") == "site-rule" and (now is None or _selectors(now) != _selectors(old)):
            continue  # the operator's own change to the site policy
        if now is None:
            lines.append(f"- {key}")
        elif _selectors(now) != _selectors(old):
            lines.append(f"~ {key}: {_short(old)} → {_short(now)}")
        else:
            for kind, field in (("target", MATCHED_TARGETS), ("certificate", MATCHED_CERTIFICATES)):
                for name in _lost(old, now, field):
                    lines.append(f"~ {key} no longer matches {kind} {name}")
    if not lines:
        return None
    lines += [f"+ {key}" for key in sorted(new) if key not in in_force]
    return GateChange(hash=gates_hash(new), lines=tuple(lines))


def _short(content: Mapping[str, Any]) -> str:
    parts = [
        f"{k}={v}"
        for k, v in content.items()
        if k not in ("kind", "name", "target", *_MATCHED) and v not in ({}, [], None)
    ]
    return ", ".join(parts) or "any action"
