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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from certgit.reconciler.model import (
    ApprovalHook,
    ApprovalRule,
    DesiredState,
    canonical_json,
    sha256_hex,
)

# The store's source_state key holding the Git gates in force (JSON of Atoms).
GATES_IN_FORCE = "approval_gates_in_force"

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


def git_gates(desired: DesiredState) -> Atoms:
    """The Git gates of one commit: every Policy rule and every required Target hook."""
    atoms: Atoms = {}
    for policy in desired.policies.values():
        for rule in policy.approvals:
            atoms[f"policy {policy.name}/{rule.name}"] = {
                "kind": "rule",
                "name": rule.name,
                **_rule_content(rule),
            }
    for target in desired.targets.values():
        hook = target.approval
        if hook is not None and hook.required:
            atoms[f"target {target.name} approval"] = {
                "kind": "hook",
                "target": target.name,
                "actions": sorted(hook.actions),
            }
    return atoms


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
    """Gates in force that `new` does not carry unchanged, as rules that keep gating."""
    out: list[HeldRule] = []
    for key in sorted(in_force):
        if new.get(key) == in_force[key]:
            continue
        content = in_force[key]
        label = f"{key} (removed or changed by this commit; still in force)"
        if content.get("kind") == "hook":
            out.append(
                HeldRule(
                    label=label,
                    target=str(content["target"]),
                    hook=ApprovalHook(required=True, actions=tuple(content.get("actions") or ())),
                )
            )
        else:
            out.append(
                HeldRule(
                    label=label,
                    rule=ApprovalRule(
                        name=str(content.get("name", key)),
                        target_labels=dict(content.get("targetLabels") or {}),
                        certificate_labels=dict(content.get("certificateLabels") or {}),
                        targets=tuple(content.get("targets") or ()),
                        certificates=tuple(content.get("certificates") or ()),
                        actions=tuple(content.get("actions") or ()),
                    ),
                )
            )
    return tuple(out)


def change(in_force: Mapping[str, Any], new: Mapping[str, Any]) -> GateChange | None:
    """The weakening `new` makes to `in_force`, or None when it only keeps or adds gates."""
    lines: list[str] = []
    for key in sorted(in_force):
        if key not in new:
            lines.append(f"- {key}")
        elif new[key] != in_force[key]:
            lines.append(f"~ {key}: {_short(in_force[key])} → {_short(new[key])}")
    if not lines:
        return None
    lines += [f"+ {key}" for key in sorted(new) if key not in in_force]
    return GateChange(hash=gates_hash(new), lines=tuple(lines))


def _short(content: Mapping[str, Any]) -> str:
    parts = [
        f"{k}={v}"
        for k, v in content.items()
        if k not in ("kind", "name", "target") and v not in ({}, [], None)
    ]
    return ", ".join(parts) or "any action"
