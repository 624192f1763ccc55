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
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from certgit.reconciler.fielddiff import config_lines, spec_lines
from certgit.reconciler.model import (
    ActionKind,
    Binding,
    Certificate,
    CertificateVersion,
    Deployment,
    DesiredState,
    Drift,
    LiveObservation,
    RecordedState,
    Target,
    binding_config_json,
    sha256_hex,
)
from certgit.reconciler.plan import Action, BindingStatus, Plan
from certgit.reconciler.renewal import renew_before_for

# The subject of the `gates` action (no certificate): how plans and approvals name it.
GATES_SUBJECT = "(approval gates)"


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
            (f"site {rule.name}", rule) for rule in desired.site_approvals
        ] + [
            (f"policy {policy.name}/{rule.name}", rule)
            for name in sorted(desired.policies)
            for policy in (desired.policies[name],)
            for rule in policy.approvals
        ] + [(held.label, held.rule) for held in desired.held_gates if held.rule is not None]
        # Target hooks a commit removed but that stay in force (gates.py): by target name.
        self._held_hooks = [
            (held.label, held.target, held.hook)
            for held in desired.held_gates
            if held.hook is not None
        ]
        self._targets = desired.targets
        self._certificates = desired.certificates
        self._hooks = bool(self._held_hooks) or any(
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
            reasons.append(label)
        if tgt is not None and tgt.approval is not None and tgt.approval.required:
            if not tgt.approval.actions or str(kind) in tgt.approval.actions:
                reasons.append(f"target {tgt.name} approval")
        for label, held_target, hook in self._held_hooks:
            if target == held_target and (not hook.actions or str(kind) in hook.actions):
                reasons.append(label)
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
    configs = _Configs(desired)
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
        changes: tuple[str, ...] = ()
        if latest is None:
            new_version, drift = ActionKind.ISSUE, Drift.MISSING
            reason = "no certificate issued yet"
            changes = tuple(spec_lines(None, cert.issued_spec()))
        elif latest.spec_hash != spec:
            new_version, drift = ActionKind.ISSUE, Drift.OUTDATED
            reason = f"spec changed since v{latest.version}"
            changes = tuple(spec_lines(latest.spec_json, cert.issued_spec()))
        else:
            due = _renewal_due(cert, latest, now)
            if due is not None:
                new_version, drift, reason = ActionKind.RENEW, Drift.EXPIRING, due
                stable_until = now  # the reason's "in 12d" moves with the clock
            else:
                stable_until = min(stable_until, latest.not_after - renew_before_for(cert, latest))
        if new_version is not None:
            issue = Action(
                kind=new_version,
                certificate=name,
                target=None,
                drift=drift,
                reason=reason,
                spec_hash=spec,
                gated_by=gate(new_version, name, None),
                replaces=latest.version if latest else None,
                changes=changes,
            )
            given_up = recorded.abandoned.get(issue.id)
            if given_up is not None:
                issue = replace(
                    issue,
                    drift=Drift.ABANDONED,
                    reason=f"{reason}; issuance abandoned after {given_up[0]} attempts: "
                    f"{given_up[1]}; `certgit retry` re-arms it",
                )
            actions.append(issue)

        bindings = cert.deploy_to
        if len(bindings) > 1:
            bindings = tuple(sorted(bindings, key=lambda b: b.target))
        for binding in bindings:
            status, action = _plan_binding(
                cert, binding, spec, latest, new_version, drift, reason, recorded, live, gate,
                configs, now,
            )
            if status.not_after is not None and status.drift != Drift.EXPIRED:
                stable_until = min(stable_until, max(status.not_after, now))
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
        if dep.fingerprint is None:
            continue  # never deployed: nothing on the target to clean up
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
        if prune and target_name in desired.targets:
            remove = Action(
                kind=ActionKind.REMOVE,
                certificate=cert_name,
                target=target_name,
                drift=Drift.ORPHANED,
                reason=why,
                fingerprint=dep.fingerprint,
                version=dep.version,
                gated_by=gate(ActionKind.REMOVE, cert_name, target_name),
                replaces=dep.version,
                pinned=True,
                changes=tuple(f"- {path}" for path, _role, _sha in dep.files),
            )
            actions.append(_abandoned(remove, recorded, target_name))

    if orphans_seen:
        # Certificates and their bindings were visited in order; only orphans need merging.
        actions.sort(key=Action.sort_key)
        statuses.sort(key=lambda s: (s.certificate, s.target))
    if desired.gate_change is not None:
        # First, and always gated: the weaker gates take effect only once approved (gates.py).
        actions.insert(
            0,
            Action(
                kind=ActionKind.GATES,
                certificate=GATES_SUBJECT,
                target=None,
                drift=Drift.OUTDATED,
                reason="this commit removes or changes approval gates in force; they keep "
                "gating until this change is approved",
                spec_hash=desired.gate_change.hash,
                gated_by=("gate change",),
                changes=tuple(desired.gate_change.lines),
            ),
        )
    return Plan(
        commit=desired.commit,
        actions=tuple(actions),
        bindings=tuple(statuses),
        stable_until=stable_until,
    )


class _Configs:
    """binding_config_hash per (target, overrides), computed once per target when possible."""

    def __init__(self, desired: DesiredState) -> None:
        self._targets = desired.targets
        self._plain: dict[str, tuple[str, str]] = {}

    def __call__(self, target: str, overrides: Mapping[str, Any]) -> tuple[str, str] | None:
        tgt = self._targets.get(target)
        if tgt is None:
            return None
        if not overrides.get("files") and not overrides.get("directory") and not overrides.get(
            "adopt"
        ):
            cached = self._plain.get(target)
            if cached is None:
                text = binding_config_json(tgt, {})
                cached = self._plain[target] = (sha256_hex(text), text)
            return cached
        text = binding_config_json(tgt, overrides)
        return sha256_hex(text), text


def _abandoned(action: Action, recorded: RecordedState, target: str) -> Action:
    given_up = recorded.abandoned.get(action.id)
    if given_up is None:
        return action
    return replace(
        action,
        drift=Drift.ABANDONED,
        reason=f"abandoned after {given_up[0]} attempts: {given_up[1]}; "
        f"`certgit retry {target}` re-arms it",
    )


def _not_after(recorded: RecordedState, certificate: str, version: int | None) -> datetime | None:
    found = recorded.version(certificate, version)
    return found.not_after if found is not None else None


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


def _live_drift(dep: Deployment, observed: LiveObservation) -> tuple[Drift, str] | None:
    """MISSING / MODIFIED from what is on the target, compared with what was written."""
    if dep.files:
        gone = [path for path, _role, _sha in dep.files if observed.files.get(path, "") is None]
        if gone:
            return Drift.MISSING, f"{', '.join(gone)} gone from the target: removed out of band"
        changed = [
            path
            for path, _role, sha in dep.files
            if path in observed.files and observed.files[path] != sha
        ]
        if changed:
            return (
                Drift.MODIFIED,
                f"{', '.join(changed)} differs from what certgit wrote: modified out of band",
            )
        if any(path in observed.files for path, _r, _s in dep.files):
            return None
    if observed.fingerprint is None:
        return Drift.MISSING, "missing on target: removed out of band"
    if observed.fingerprint != dep.fingerprint:
        return Drift.MODIFIED, "live sha differs from recorded: modified out of band"
    return None


def _plan_binding(
    cert: Certificate,
    binding: Binding,
    spec: str,
    latest: CertificateVersion | None,
    new_version: ActionKind | None,
    cert_drift: Drift,
    cert_reason: str,
    recorded: RecordedState,
    live: Mapping[tuple[str, str], LiveObservation],
    gate: _Gate,
    configs: _Configs,
    now: datetime,
) -> tuple[BindingStatus, Action | None]:
    """Status and action (if any) for one binding."""
    name = cert.name
    target = binding.target
    dep = recorded.deployments.get((name, target))
    deployed_fp = dep.fingerprint if dep else None
    deployed_version = dep.version if dep else None
    deployed = recorded.version(name, deployed_version)
    not_after = deployed.not_after if deployed is not None else None

    hold = recorded.hold_for(name, target)
    if hold is not None:
        return _held(name, target, dep, hold.reason, recorded), None

    config = configs(target, binding.overrides)
    config_hash = config[0] if config else None
    observed = live.get((name, target))

    def finish(
        drift: Drift,
        reason: str,
        *,
        fingerprint: str | None = None,
        version: int | None = None,
        pinned: bool = False,
        changes: tuple[str, ...] = (),
        act: bool = True,
    ) -> tuple[BindingStatus, Action | None]:
        action = None
        if act:
            action = _abandoned(
                Action(
                    kind=ActionKind.DEPLOY,
                    certificate=name,
                    target=target,
                    drift=drift,
                    reason=reason,
                    spec_hash=spec,
                    fingerprint=fingerprint,
                    version=version,
                    gated_by=gate(ActionKind.DEPLOY, name, target),
                    replaces=deployed_version,
                    pinned=pinned,
                    config_hash=config_hash,
                    changes=changes,
                ),
                recorded,
                target,
            )
            drift, reason = action.drift, action.reason
        if not_after is not None and not_after <= now:
            # Whatever else is true, a certificate past notAfter is served broken.
            reason = (
                f"v{deployed_version} expired {format_span(now - not_after)} ago "
                f"({not_after:%Y-%m-%d %H:%M} UTC); {reason}"
            )
            drift = Drift.EXPIRED
        elif observed is not None and observed.error is not None and drift == Drift.NONE:
            drift, reason = Drift.UNKNOWN, f"could not observe the target: {observed.error}"
        status = BindingStatus(
            name, target, drift, reason, deployed_fp, deployed_version, not_after
        )
        return status, action

    failing = dep is not None and dep.last_error is not None
    failure = (
        f"last attempt failed ({dep.attempts}x): {dep.last_error}"
        if dep is not None and dep.last_error
        else ""
    )
    if new_version is not None:
        if deployed_fp is None:
            why = f"never deployed; {cert_reason}"
            return finish(Drift.FAILING if failing else Drift.MISSING,
                          f"{why}; {failure}" if failing else why)
        why = f"replace v{deployed_version}: {cert_reason}"
        if cert_drift == Drift.EXPIRING and deployed is not None:
            why = (
                f"v{deployed_version} deployed expires in {format_span(deployed.not_after - now)}"
                f" ({deployed.not_after:%Y-%m-%d %H:%M} UTC); renewing"
            )
        return finish(Drift.FAILING if failing else cert_drift,
                      f"{why}; {failure}" if failing else why)

    assert latest is not None  # no new version means one is recorded
    if deployed_fp is None:
        if failing:
            return finish(Drift.FAILING, f"never deployed; {failure}",
                          fingerprint=latest.fingerprint, version=latest.version)
        return finish(Drift.MISSING, "never deployed",
                      fingerprint=latest.fingerprint, version=latest.version)
    if deployed_fp != latest.fingerprint:
        if failing:
            return finish(
                Drift.FAILING,
                f"v{deployed_version} deployed, v{latest.version} {failure}",
                fingerprint=latest.fingerprint, version=latest.version,
            )
        return finish(
            Drift.OUTDATED,
            f"v{deployed_version} deployed, v{latest.version} is current",
            fingerprint=latest.fingerprint, version=latest.version,
            changes=(f"~ version: v{deployed_version} → v{latest.version}",),
        )
    assert dep is not None
    if config is not None and dep.config_hash is not None and dep.config_hash != config_hash:
        lines = tuple(config_lines(dep.config_json, config[1]))
        return finish(
            Drift.OUTDATED,
            "target settings or file names changed: redeploy to the new location",
            fingerprint=latest.fingerprint, version=latest.version, changes=lines,
        )
    if observed is not None and observed.error is None:
        seen = _live_drift(dep, observed)
        if (
            seen is None
            and not failing
            and observed.served is not None
            and observed.served != deployed_fp
        ):
            # The files are as written, yet the endpoint serves another leaf: a redeploy
            # would change nothing, so this is shown, not acted on.
            return finish(
                Drift.MODIFIED,
                f"{observed.server_name or 'the endpoint'} serves {observed.served[:16]}, not "
                f"v{deployed_version} {deployed_fp[:16]}: the files are as certgit wrote them, "
                "so the server is not using them (check its config, or reload it)",
                act=False,
            )
        if seen is not None:
            drift, why = seen
            if failing:
                why = f"{why}; repair {failure}"
                drift = Drift.FAILING
            return finish(drift, why, fingerprint=deployed_fp, version=deployed_version,
                          pinned=True)
    if failing:
        # A repair or redeploy of the same version failed and nothing else differs now.
        return finish(Drift.FAILING, failure, fingerprint=deployed_fp, version=deployed_version,
                      pinned=True)
    if deployed is not None:
        left = deployed.not_after - now
        window = renew_before_for(cert, deployed)
        if timedelta(0) < left <= window:
            return finish(
                Drift.EXPIRING,
                f"v{deployed_version} expires in {format_span(left)}",
                act=False,
            )
    return finish(Drift.NONE, "in sync", act=False)


def __getattr__(name: str) -> object:
    # The operator rollback plan lives beside the planner (rollbacks.py imports it);
    # `planner.rollback_plan` is the name the service API documents.
    if name == "rollback_plan":
        from certgit.reconciler.rollbacks import rollback_plan

        return rollback_plan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
