"""The pure planner: `diff(desired, recorded, live, now) -> Plan`.

No I/O, no clock, no randomness: the same inputs always give the same plan
and the same plan hash, which is what an approval is bound to.

For each desired certificate the planner decides whether a new version must
be issued (none yet, spec changed) or renewed (inside renewBefore), then for
each of its bindings whether a deploy is needed (never deployed, an older
version deployed, the last attempt failed, or the live target differs from
what was recorded). Held bindings are left alone. Recorded deployments that
are no longer desired are orphans, removed only when a Policy says
`pruneOrphans: true`. Every action says whether a Policy rule or the
Target's own approval hook gates it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from certgit.reconciler.model import (
    ActionKind,
    Certificate,
    CertificateVersion,
    DesiredState,
    Drift,
    LiveObservation,
    RecordedState,
    Target,
    canonical_json,
    sha256_hex,
)
from certgit.reconciler.renewal import renew_before_for

# Within one certificate: issue/renew before deploys before removes.
_KIND_ORDER = {
    ActionKind.ISSUE: 0,
    ActionKind.RENEW: 0,
    ActionKind.ROLLBACK: 1,
    ActionKind.DEPLOY: 1,
    ActionKind.REMOVE: 2,
}


@dataclass(frozen=True)
class Action:
    """One step of a plan.

    `fingerprint` is the leaf SHA-256 the binding converges to; it is None for
    an issue/renew and for the deploys that follow it, because the new
    certificate does not exist until the plan runs (`spec_hash` pins what it
    will contain). `version` names the recorded version a deploy converges to.
    """

    kind: ActionKind
    certificate: str
    target: str | None
    drift: Drift
    reason: str
    spec_hash: str | None = None
    fingerprint: str | None = None
    version: int | None = None
    gated_by: tuple[str, ...] = ()

    @property
    def gated(self) -> bool:
        return bool(self.gated_by)

    @cached_property
    def id(self) -> str:
        """Stable identity: what the action does, not why (reasons may reword)."""
        return sha256_hex(
            canonical_json(
                [
                    str(self.kind),
                    self.certificate,
                    self.target,
                    self.spec_hash,
                    self.fingerprint,
                    self.version,
                ]
            )
        )[:12]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "certificate": self.certificate,
            "target": self.target,
            "drift": str(self.drift),
            "reason": self.reason,
            "spec_hash": self.spec_hash,
            "fingerprint": self.fingerprint,
            "version": self.version,
            "gated": self.gated,
            "gated_by": list(self.gated_by),
        }

    def sort_key(self) -> tuple[str, int, str]:
        return (self.certificate, _KIND_ORDER[self.kind], self.target or "")


@dataclass(frozen=True)
class BindingStatus:
    """One (certificate, target) binding as `certgit status` shows it."""

    certificate: str
    target: str
    drift: Drift
    reason: str
    deployed_fingerprint: str | None = None
    deployed_version: int | None = None
    not_after: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "certificate": self.certificate,
            "target": self.target,
            "drift": str(self.drift),
            "reason": self.reason,
            "deployed_fingerprint": self.deployed_fingerprint,
            "deployed_version": self.deployed_version,
            "not_after": self.not_after.isoformat() if self.not_after else None,
        }


@dataclass(frozen=True)
class Plan:
    commit: str | None
    actions: tuple[Action, ...]
    bindings: tuple[BindingStatus, ...] = field(default=())
    # Until this instant the same desired, recorded and live state give this
    # same plan: the next renewal threshold (or `now` when a reason is time-relative).
    stable_until: datetime | None = field(default=None, compare=False)

    @cached_property
    def hash(self) -> str:
        """Stable over the actions (kind, subject, convergence point, gating, reason).

        The commit id is left out on purpose: a commit that changes nothing
        certgit acts on must not void an approval.
        """
        return sha256_hex(canonical_json([a.to_dict() for a in self.actions]))

    @property
    def empty(self) -> bool:
        return not self.actions

    @property
    def gated(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.gated)

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for a in self.actions:
            counts[str(a.kind)] = counts.get(str(a.kind), 0) + 1
        return {
            "commit": self.commit,
            "hash": self.hash,
            "summary": {"actions": len(self.actions), "gated": len(self.gated), **counts},
            "actions": [a.to_dict() for a in self.actions],
            "bindings": [b.to_dict() for b in self.bindings],
        }


def format_span(delta: timedelta) -> str:
    """Human duration for reasons: `12d`, `5h`, `40m` (rounded down, never negative)."""
    seconds = max(int(delta.total_seconds()), 0)
    if seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m"


def _renewal_due(cert: Certificate, version: CertificateVersion, now: datetime) -> str | None:
    """The reason a renewal is due, or None."""
    renew_before = renew_before_for(cert, version)
    remaining = version.not_after - now
    if remaining <= timedelta(0):
        return f"expired {format_span(-remaining)} ago"
    if remaining <= renew_before:
        return f"expiring in {format_span(remaining)} < renewBefore {format_span(renew_before)}"
    return None


class _Gate:
    """Which approval rules gate an action. Built once per plan."""

    def __init__(self, desired: DesiredState) -> None:
        self._rules = [
            (f"{policy.name}/{rule.name}", rule)
            for name in sorted(desired.policies)
            for policy in (desired.policies[name],)
            for rule in policy.approvals
        ]
        self._targets = desired.targets
        self._certificates = desired.certificates
        self._hooks = any(
            t.approval is not None and t.approval.required for t in desired.targets.values()
        )

    def __call__(self, kind: ActionKind, certificate: str, target: str | None) -> tuple[str, ...]:
        if not self._rules and not self._hooks:
            return ()
        cert = self._certificates.get(certificate)
        tgt: Target | None = self._targets.get(target) if target else None
        reasons: list[str] = []
        for label, rule in self._rules:
            if rule.actions and str(kind) not in rule.actions:
                continue
            if rule.certificates and certificate not in rule.certificates:
                continue
            if rule.targets and target not in rule.targets:
                continue
            if rule.certificate_labels and not _labels_match(
                rule.certificate_labels, cert.labels if cert else None
            ):
                continue
            if rule.target_labels and not _labels_match(
                rule.target_labels, tgt.labels if tgt else None
            ):
                continue
            reasons.append(f"policy {label}")
        if tgt is not None and tgt.approval is not None and tgt.approval.required:
            if not tgt.approval.actions or str(kind) in tgt.approval.actions:
                reasons.append(f"target {tgt.name} approval")
        return tuple(reasons)


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    if labels is None:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def diff(
    desired: DesiredState,
    recorded: RecordedState,
    live: Mapping[tuple[str, str], LiveObservation],
    now: datetime,
) -> Plan:
    """Compute the plan that converges recorded and live state to desired state.

    `live` is keyed by (certificate, target). `now` must be timezone-aware.
    """
    if now.tzinfo is None:
        raise ValueError("diff() needs a timezone-aware `now`")
    gate = _Gate(desired)
    actions: list[Action] = []
    statuses: list[BindingStatus] = []
    # The earliest instant at which `now` alone would change this plan.
    stable_until = datetime.max.replace(tzinfo=UTC)

    for name in sorted(desired.certificates):
        cert = desired.certificates[name]
        spec = cert.spec_hash()
        latest = recorded.latest(name)
        new_version: ActionKind | None = None
        reason = ""
        drift = Drift.NONE
        if latest is None:
            new_version, drift = ActionKind.ISSUE, Drift.MISSING
            reason = "no certificate issued yet"
        elif latest.spec_hash != spec:
            new_version, drift = ActionKind.ISSUE, Drift.OUTDATED
            reason = f"spec changed since v{latest.version} (names, key or issuer)"
        else:
            due = _renewal_due(cert, latest, now)
            if due is not None:
                new_version, drift, reason = ActionKind.RENEW, Drift.EXPIRING, due
                stable_until = now  # the reason's "in 12d" moves with the clock
            else:
                stable_until = min(stable_until, latest.not_after - renew_before_for(cert, latest))
        if new_version is not None:
            actions.append(
                Action(
                    kind=new_version,
                    certificate=name,
                    target=None,
                    drift=drift,
                    reason=reason,
                    spec_hash=spec,
                    gated_by=gate(new_version, name, None),
                )
            )

        bindings = cert.deploy_to
        if len(bindings) > 1:
            bindings = tuple(sorted(bindings, key=lambda b: b.target))
        for binding in bindings:
            status, action = _plan_binding(
                cert, binding.target, spec, latest, new_version, drift, reason, recorded, live, gate
            )
            statuses.append(status)
            if action is not None:
                actions.append(action)

    prune = any(p.prune_orphans for p in desired.policies.values())
    orphans_seen = False
    for (cert_name, target_name), dep in recorded.deployments.items():
        desired_cert = desired.certificates.get(cert_name)
        if desired_cert is not None and any(
            b.target == target_name for b in desired_cert.deploy_to
        ):
            continue
        orphans_seen = True
        hold = recorded.hold_for(cert_name, target_name)
        if hold is not None:
            statuses.append(_held(cert_name, target_name, dep, hold.reason, recorded))
            continue
        if target_name not in desired.targets:
            why = "target no longer defined: restore the Target or clean it up by hand"
        elif prune:
            why = "no longer desired; pruneOrphans removes it"
        else:
            why = "no longer desired; set pruneOrphans: true in a Policy to remove it"
        statuses.append(
            BindingStatus(
                cert_name,
                target_name,
                Drift.ORPHANED,
                why,
                dep.fingerprint,
                dep.version,
                _not_after(recorded, cert_name, dep.version),
            )
        )
        if prune and target_name in desired.targets and dep.fingerprint is not None:
            actions.append(
                Action(
                    kind=ActionKind.REMOVE,
                    certificate=cert_name,
                    target=target_name,
                    drift=Drift.ORPHANED,
                    reason=why,
                    fingerprint=dep.fingerprint,
                    version=dep.version,
                    gated_by=gate(ActionKind.REMOVE, cert_name, target_name),
                )
            )

    if orphans_seen:
        # Certificates and their bindings were visited in order; only orphans need merging.
        actions.sort(key=Action.sort_key)
        statuses.sort(key=lambda s: (s.certificate, s.target))
    return Plan(
        commit=desired.commit,
        actions=tuple(actions),
        bindings=tuple(statuses),
        stable_until=stable_until,
    )


def _not_after(recorded: RecordedState, certificate: str, version: int | None) -> datetime | None:
    if version is None:
        return None
    for v in recorded.versions.get(certificate, ()):
        if v.version == version:
            return v.not_after
    return None


def _held(
    certificate: str, target: str, dep: Any, why: str, recorded: RecordedState
) -> BindingStatus:
    fp = dep.fingerprint if dep is not None else None
    version = dep.version if dep is not None else None
    return BindingStatus(
        certificate,
        target,
        Drift.HELD,
        f"held by operator: {why}" if why else "held by operator",
        fp,
        version,
        _not_after(recorded, certificate, version),
    )


def _plan_binding(
    cert: Certificate,
    target: str,
    spec: str,
    latest: CertificateVersion | None,
    new_version: ActionKind | None,
    cert_drift: Drift,
    cert_reason: str,
    recorded: RecordedState,
    live: Mapping[tuple[str, str], LiveObservation],
    gate: _Gate,
) -> tuple[BindingStatus, Action | None]:
    """Status and action (if any) for one binding."""
    name = cert.name
    dep = recorded.deployments.get((name, target))
    deployed_fp = dep.fingerprint if dep else None
    deployed_version = dep.version if dep else None
    not_after = _not_after(recorded, name, deployed_version)

    hold = recorded.hold_for(name, target)
    if hold is not None:
        return _held(name, target, dep, hold.reason, recorded), None

    def status(drift: Drift, reason: str) -> BindingStatus:
        return BindingStatus(name, target, drift, reason, deployed_fp, deployed_version, not_after)

    def result(
        drift: Drift, reason: str, fingerprint: str | None, version: int | None
    ) -> tuple[BindingStatus, Action]:
        action = Action(
            kind=ActionKind.DEPLOY,
            certificate=name,
            target=target,
            drift=drift,
            reason=reason,
            spec_hash=spec,
            fingerprint=fingerprint,
            version=version,
            gated_by=gate(ActionKind.DEPLOY, name, target),
        )
        return status(drift, reason), action

    if new_version is not None:
        if deployed_fp is None:
            return result(Drift.MISSING, f"never deployed; {cert_reason}", None, None)
        return result(cert_drift, f"replace v{deployed_version}: {cert_reason}", None, None)

    assert latest is not None  # no new version means one is recorded
    failing = dep is not None and dep.last_error is not None
    if deployed_fp is None:
        if failing:
            assert dep is not None
            return result(
                Drift.FAILING,
                f"never deployed; last attempt failed ({dep.attempts}x): {dep.last_error}",
                latest.fingerprint,
                latest.version,
            )
        return result(Drift.MISSING, "never deployed", latest.fingerprint, latest.version)
    if deployed_fp != latest.fingerprint:
        if failing:
            assert dep is not None
            return result(
                Drift.FAILING,
                f"v{deployed_version} deployed, v{latest.version} failed "
                f"({dep.attempts}x): {dep.last_error}",
                latest.fingerprint,
                latest.version,
            )
        return result(
            Drift.OUTDATED,
            f"v{deployed_version} deployed, v{latest.version} is current",
            latest.fingerprint,
            latest.version,
        )

    observed = live.get((name, target))
    if observed is not None and observed.error is None and observed.fingerprint != deployed_fp:
        why = (
            "missing on target: removed out of band"
            if observed.fingerprint is None
            else "live sha differs from recorded: modified out of band"
        )
        return result(Drift.MODIFIED, why, latest.fingerprint, latest.version)

    return status(Drift.NONE, "in sync"), None
