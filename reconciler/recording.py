"""Recording what happened on a target: deployments, deploy history, outbox states and
the audit row, from the connector's report alone (never from what was intended).

A mixin of the Executor (it needs the executor's store, clock, actor, desired
state and `_fail`); one target's recording failing never aborts the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from certgit.connectors.errors import DeployError
from certgit.connectors.model import Deployment as Bundle
from certgit.reconciler.errors import CertgitError
from certgit.reconciler.jobs import TargetCall, TargetJob, TargetResult
from certgit.reconciler.model import binding_config_json, sha256_hex
from certgit.reconciler.store import outbox
from certgit.reconciler.store.audit import AuditEvent
from certgit.reconciler.store.outbox import JobState, Message
from certgit.reconciler.targets import binding_overrides

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from certgit.reconciler.model import DesiredState
    from certgit.reconciler.store import Store


def _subject(
    target: str, messages: Sequence[Message], versions: Mapping[str, int]
) -> dict[str, Any]:
    """The audit subject columns of one target's deploy row.

    Always the target. When the row is about one certificate (the common case,
    and every single-binding approval), also its version and the plan and action
    of its newest message (the one that ran), so approval -> plan -> action ->
    deploy joins on the columns; a row about several keeps them in details
    ("plans", "actions"), which `Store.audit_rows(action_id=...)` also matches.
    """
    columns: dict[str, Any] = {"target": target}
    certificates = {m.certificate for m in messages}
    if len(certificates) == 1:
        (certificate,) = certificates
        last = max(messages, key=lambda m: m.id)
        columns.update(
            certificate=certificate, version=versions.get(certificate),
            plan_hash=last.plan_hash, action_id=last.action_id,
        )
    return columns


class OutcomeRecorder:
    """The Executor's recording half."""

    store: Store
    desired: DesiredState
    actor: str
    owner: str
    clock: Callable[[], datetime]

    def _fail(
        self, messages: Sequence[Message], error: str, *, temporary: bool
    ) -> dict[int, JobState]:
        raise NotImplementedError

    def _record(
        self, job: TargetJob, call: TargetCall, group: Mapping[str, list[Message]]
    ) -> TargetResult:
        """Record what happened on one target; a failure here is this target's alone."""
        try:
            return self._record_target(job, call, group)
        except Exception as exc:  # never abort the other targets' recording
            error = f"{type(exc).__name__}: {exc}"
            try:
                self.store.audit(self.actor, AuditEvent.DEPLOY_RECORD_FAILED, job.spec.name,
                                 {"error": error}, self.clock(), target=job.spec.name)
            except Exception:  # the store itself is failing; the result says it
                pass
            return TargetResult(job.spec.name, "failed",
                                error=f"recording the outcome failed: {error}")

    def _history(
        self, job: TargetJob, bundle: Bundle, msgs: Sequence[Message], *, wrote: bool
    ) -> dict[str, Any] | None:
        """The deploy-history row for a success, or None when nothing went live."""
        last = msgs[-1] if msgs else None
        kind = "deploy"
        if last is not None and last.kind == "rollback":
            kind = "rollback"
        elif job.recorded.get(bundle.certificate) == bundle.fingerprint:
            if not wrote:
                return None  # the same version, files already right: nothing was repaired
            kind = "repair"
        return {
            "kind": kind,
            "actor": self.actor,
            "commit": self.desired.commit,
            "plan_hash": last.plan_hash if last else None,
            "action_id": last.action_id if last else None,
        }

    def _config(self, certificate: str, target: str) -> tuple[str, str] | None:
        tgt = self.desired.targets.get(target)
        if tgt is None:
            return None
        text = binding_config_json(
            tgt, binding_overrides(self.desired.certificates.get(certificate), target)
        )
        return sha256_hex(text), text

    def _record_target(
        self, job: TargetJob, call: TargetCall, group: Mapping[str, list[Message]]
    ) -> TargetResult:
        now = self.clock()
        name = job.spec.name
        messages = [m for msgs in group.values() for m in msgs]
        versions = {b.certificate: b.version for b in job.deployments}
        if call.error is None:
            report = call.report
            failed = dict(report.failed) if report is not None else {}
            done = [b for b in job.deployments if b.certificate not in failed]
            for bundle in done:
                written = report.written.get(bundle.certificate) if report is not None else None
                self.store.record_deployment(
                    bundle.certificate,
                    name,
                    fingerprint=bundle.fingerprint,
                    version=bundle.version,
                    at=now,
                    files=written,
                    config=self._config(bundle.certificate, name),
                    history=self._history(
                        job, bundle, group.get(bundle.certificate, ()),
                        wrote=bool(report is not None and report.changed),
                    ),
                )
            for removal in job.removals:
                self.store.remove_deployment(
                    removal.certificate, name, at=now,
                    history={"actor": self.actor, "commit": self.desired.commit},
                )
            ok = [m for m in messages if m.certificate not in failed]
            outbox.complete(self.store, ok, self.owner, now)
            for cert in {m.certificate for m in ok}:
                outbox.cancel_binding_work(
                    self.store, now, name, cert, states=(JobState.ABANDONED,),
                    reason="superseded by a successful deploy",
                )
            for cert, why in sorted(failed.items()):
                bundle = next(b for b in job.deployments if b.certificate == cert)
                self.store.record_deployment(
                    cert, name, fingerprint=bundle.fingerprint, version=bundle.version,
                    at=now, error=why,
                )
                self._fail(list(group.get(cert, ())), why, temporary=False)
            details: dict[str, Any] = {
                "fingerprints": {b.certificate: b.fingerprint for b in done},
                "removed": [r.certificate for r in job.removals],
                "relocated": [
                    p for r in call.relocated if r.certificate not in failed for p in r.paths
                ],
                "failed": failed,
                "adopted": list(report.adopted) if report is not None else [],
                "changed": bool(report and report.changed),
                "validated": bool(report and report.validated),
                "reloaded": bool(report and report.reloaded),
                "verified": bool(report and report.verified),
                "plans": sorted({m.plan_hash for m in messages}),
                "actions": sorted(m.action_id for m in messages),
            }
            if call.recovered:
                details["recovered"] = list(call.recovered)
            kinds = {m.kind for m in messages}
            event = (
                AuditEvent.ROLLBACK_DEPLOYED if "rollback" in kinds
                else AuditEvent.DEPLOY_COMPLETED
            )
            self.store.audit(
                self.actor, event, name, details, now, **_subject(name, messages, versions)
            )
            return TargetResult(
                name,
                "deployed" if report is not None and report.changed else "unchanged",
                certificates={c: v for c, v in versions.items() if c not in failed},
                removed=tuple(r.certificate for r in job.removals),
                reloaded=details["reloaded"],
                validated=details["validated"],
                verified=details["verified"],
                failed=failed,
            )
        exc = call.error
        error = f"{type(exc).__name__}: {exc}"
        temporary = bool(getattr(exc, "temporary", False)) if isinstance(exc, CertgitError) else (
            isinstance(exc, OSError)
        )
        for bundle in job.deployments:
            self.store.record_deployment(
                bundle.certificate, name, fingerprint=bundle.fingerprint, version=bundle.version,
                at=now, error=error,
            )
        states = self._fail(messages, error, temporary=temporary)
        rolled_back = not isinstance(exc, DeployError) or exc.rolled_back
        self.store.audit(
            self.actor,
            AuditEvent.DEPLOY_FAILED,
            name,
            {
                "error": error,
                "rolled_back": rolled_back,
                "fingerprints": {b.certificate: b.fingerprint for b in job.deployments},
                "recovered": list(call.recovered),
                "plans": sorted({m.plan_hash for m in messages}),
                "actions": sorted(m.action_id for m in messages),
            },
            now,
            **_subject(name, messages, versions),
        )
        state_names = set(states.values())
        status = (
            "retrying" if state_names == {JobState.RETRY_WAIT}
            else "abandoned" if JobState.ABANDONED in state_names
            else "failed"
        )
        return TargetResult(name, status, certificates=versions, error=error)
