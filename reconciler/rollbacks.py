"""The operator rollback plan: pure, like the planner (no I/O, no clock).

`rollback_plan` decides, from the recorded state and each binding's per-target
deploy history, which version every certificate on a target goes back to:

- without `to_version`: the version the target served *before* the current one
  (never "current number - 1", which may never have been served there); on a
  whole-target rollback a certificate with no earlier version is left alone and
  named, and only when none can move is it an error;
- with `to_version`: that version; one never served on the target passes the
  same approval gate as a deploy (the Action carries `gated_by`).

The plan's hash is deterministic (Action identity: kind, certificate, target,
spec, replaced and pinned version), so an approval of a gated rollback is
found when the same command runs again. The same Action type and id formula
as every Git plan: one identity for the whole system.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from certgit.reconciler.deployhistory import HistoryEntry, previous_served, served_versions
from certgit.reconciler.errors import CertgitError
from certgit.reconciler.model import (
    ActionKind,
    CertificateVersion,
    DesiredState,
    Drift,
    RecordedState,
)
from certgit.reconciler.planner import Action, Plan, _Gate


@dataclass(frozen=True)
class RollbackPlan:
    plan: Plan
    skipped: tuple[str, ...]  # certificates left alone, with why


def bound_on(
    recorded: RecordedState, target: str, certificate: str | None
) -> list[str]:
    """Certificates recorded as deployed on `target` (optionally just one), sorted."""
    bound = sorted(
        cert
        for (cert, tgt), dep in recorded.deployments.items()
        if tgt == target and dep.version is not None and cert in (certificate or cert,)
    )
    if certificate is not None and certificate not in bound:
        raise CertgitError(
            f"certificate {certificate!r} has no recorded deployment on {target}: "
            f"run `certgit history {target}`"
        )
    if not bound:
        raise CertgitError(f"nothing is recorded as deployed on {target}: nothing to roll back")
    return bound


def rollback_plan(
    desired: DesiredState,
    recorded: RecordedState,
    histories: Mapping[str, Sequence[HistoryEntry]],
    versions: Mapping[str, Sequence[CertificateVersion]],
    target: str,
    *,
    certificate: str | None,
    to_version: int | None,
    reason: str,
) -> RollbackPlan:
    """The rollback of `target` (or one certificate on it). `histories` and `versions`
    (retired ones included) are keyed by certificate; CertgitError says what to do."""
    if target not in desired.targets:
        raise CertgitError(f"target {target!r} is not in the desired state; check the name")
    bound = bound_on(recorded, target, certificate)
    if to_version is not None and certificate is None and len(bound) > 1:
        raise CertgitError("--to needs --certificate when the target has several certificates")
    gate = _Gate(desired)
    actions: list[Action] = []
    skipped: list[str] = []
    for cert in bound:
        dep = recorded.deployments[(cert, target)]
        history = list(histories.get(cert, ()))
        if to_version is None:
            want = previous_served(history, dep.version)
            if want is None:
                why = (
                    f"{cert} on {target}: no earlier version was served there (v{dep.version} "
                    f"is the first on record)"
                )
                if certificate is None and len(bound) > 1:
                    skipped.append(why)  # a whole-target rollback moves what can move
                    continue
                raise CertgitError(
                    f"{why}; see `certgit history {target}`, or pass --certificate and "
                    "--to VERSION (approval needed for a version never served there)"
                )
        else:
            want = to_version
        version = next((v for v in versions.get(cert, ()) if v.version == want), None)
        if version is None:
            raise CertgitError(
                f"certificate {cert} has no version {want} to roll back to on {target}: "
                f"run `certgit history {target}` and pass --to VERSION"
            )
        served = served_versions(history) | ({dep.version} if dep.version else set())
        gated_by = gate(ActionKind.DEPLOY, cert, target) if want not in served else ()
        actions.append(
            Action(
                kind=ActionKind.ROLLBACK,
                certificate=cert,
                target=target,
                drift=Drift.HELD,
                reason=f"rollback to v{want}: {reason}",
                spec_hash=version.spec_hash,
                fingerprint=version.fingerprint,
                version=version.version,
                gated_by=gated_by,
                replaces=dep.version,
                pinned=True,
            )
        )
    if not actions:
        raise CertgitError(
            f"nothing on {target} was served in an earlier version: "
            + "; ".join(skipped) + f"; see `certgit history {target}`"
        )
    return RollbackPlan(Plan(commit=desired.commit, actions=tuple(actions)), tuple(skipped))
