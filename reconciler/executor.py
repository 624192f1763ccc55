"""The outbox worker: claim messages, issue, deploy one ChangeSet per target, record.

One run:

1. claim every runnable outbox message with a lease (one short transaction,
   committed before any target is called);
2. issue/renew actions first, in this thread (the store is single-threaded);
3. group the deploy/remove/rollback messages by target, read each version's
   material from the store, and hand every target's whole change set to its
   connector as ONE ChangeSet (one validate, one reload), in a thread pool
   bounded by `parallelism`, holding one lock per target (in-process lock +
   flock on a file in the target's work dir). The threads never touch the
   store;
4. record what really happened (DeployReport or exception) and move each
   message to COMPLETED / RETRY_WAIT / ABANDONED / FAILED.

Idempotent on (target, fingerprint): a deployment whose fingerprint is
recorded as deployed and observed the same on the target is not sent again.
A failing target never blocks the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certgit.connectors.model import ChangeSet, Removal, TargetSpec
from certgit.connectors.model import Deployment as Bundle
from certgit.reconciler.errors import CertgitError
from certgit.reconciler.gates import GATES_IN_FORCE
from certgit.reconciler.issuance import Issuance, IssueOutcome
from certgit.reconciler.jobs import RunReport, TargetCall, TargetJob, TargetResult
from certgit.reconciler.model import DesiredState
from certgit.reconciler.recording import OutcomeRecorder
from certgit.reconciler.store import Store, outbox
from certgit.reconciler.store.audit import AuditEvent
from certgit.reconciler.store.outbox import Backoff, JobState, Message
from certgit.reconciler.targets import (
    binding_overrides,
    ensure_work_dir,
    target_spec,
)
from certgit.reconciler.targetwork import (
    build_bundle,
    default_loader,
    default_recover,
    default_sandbox,
    grant_cleanup,
    key_first,
    relocations,
    target_lock,
)

if TYPE_CHECKING:
    from certgit.reconciler.sitepolicy import SitePolicy

ISSUE_KINDS = ("issue", "renew")
DEPLOY_KINDS = ("deploy", "rollback")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ExecutorConfig:
    """Tuning of the worker. Defaults: 4 targets at once, 10 min lease, 5 attempts
    30 s → 30 min apart."""

    parallelism: int = 4
    lease: timedelta = timedelta(minutes=10)
    backoff: Backoff = field(default_factory=Backoff)
    # An operator's `certgit apply` tries waiting retries at once (the attempt budget
    # still bounds them); a scheduler waits for each backoff.
    retry_now: bool = False


class Executor(OutcomeRecorder):
    """Runs claimed outbox messages against the targets of one desired state."""

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        desired: DesiredState,
        *,
        actor: str,
        clock: Callable[[], datetime] = _utcnow,
        config: ExecutorConfig = ExecutorConfig(),
        env: Mapping[str, str] | None = None,
        connector_loader: Callable[[str], Any] | None = None,
        sandbox_factory: Callable[[Any, TargetSpec], Any] | None = None,
        recover: Callable[[Any, Path], list[str]] | None = None,
        on_event: Callable[[Any], None] | None = None,
        site: SitePolicy | None = None,
    ) -> None:
        self.store = store
        self.state_dir = Path(state_dir)
        self.desired = desired
        self.actor = actor
        self.clock = clock
        self.config = config
        self.owner = outbox.new_owner()
        self.env: Mapping[str, str] = os.environ if env is None else env
        # the site policy bounds what Issuers' secretRefs read (None: the default, none)
        self.issuance = Issuance(store, state_dir, env=self.env, site=site)
        self._load = connector_loader or default_loader
        self._sandbox = sandbox_factory or default_sandbox
        self._recover = recover or default_recover
        # commands.Event listener; called from target threads too (see commands.py)
        self._on_event = on_event

    # ------------------------------------------------------------------ run

    def run(self, plan_hash: str | None = None) -> RunReport:
        """Claim, execute and record every runnable message (of one plan, if given)."""
        with self.store.audit_batch():  # one audit head-file write per run, not per row
            return self._run(plan_hash)

    def _run(self, plan_hash: str | None) -> RunReport:
        messages = outbox.claim(
            self.store, self.owner, self.clock(), lease=self.config.lease, plan_hash=plan_hash,
            retry_now=self.config.retry_now,
        )
        if not messages:
            return RunReport()
        self._gates([m for m in messages if m.kind == "gates"])
        messages = [m for m in messages if m.kind != "gates"]
        issued, issue_errors = self._issue([m for m in messages if m.kind in ISSUE_KINDS])
        jobs, groups, results = self._prepare(
            [m for m in messages if m.kind not in ISSUE_KINDS], issue_errors
        )
        jobs = self._drop_collisions(jobs, groups, results)
        if jobs:
            workers = max(1, min(self.config.parallelism, len(jobs)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="certgit-target") as p:
                futures = {p.submit(self._call, job): job for job in jobs}
                # Recorded here, on the store's thread, as each target finishes: progress
                # is reported live and a slow target does not hold the others' records.
                for future in as_completed(futures):
                    job = futures[future]
                    result = self._record(job, future.result(), groups[job.spec.name])
                    results.append(result)
                    self._event("target.finished", result.target, status=result.status,
                                error=result.error, failed=dict(result.failed),
                                certificates=dict(result.certificates))
        return RunReport(
            claimed=len(messages),
            issued=tuple(issued),
            issue_errors=issue_errors,
            targets=tuple(sorted(results, key=lambda r: r.target)),
        )

    # ------------------------------------------------------------------ gates

    def _gates(self, messages: Sequence[Message]) -> None:
        """An approved weakening of the approval gates takes effect (gates.py)."""
        from certgit.reconciler.gates import GATES_PENDING

        for m in messages:
            now = self.clock()
            raw = self.store.get_source_state(GATES_PENDING)
            pending = json.loads(raw) if raw else {}
            new = pending.get("atoms")
            if new is None or pending.get("hash") != m.action.spec_hash:
                error = (
                    "the approval gates changed again since this change was approved; "
                    "approve the current plan's gate change instead"
                )
                self._fail([m], error, temporary=False)
                continue
            self.store.set_source_state(GATES_IN_FORCE, json.dumps(new, sort_keys=True))
            self.store.audit(
                self.actor, "gates.changed", "approval gates",
                {"changes": list(m.action.changes), "plan": m.plan_hash}, now,
                plan_hash=m.plan_hash, action_id=m.action_id,
            )
            self._event("gates.changed", "approval gates", changes=list(m.action.changes))
            outbox.complete(self.store, [m], self.owner, self.clock())

    # ------------------------------------------------------------------ issuance

    def _issue(self, messages: Sequence[Message]) -> tuple[list[IssueOutcome], dict[str, str]]:
        issued: list[IssueOutcome] = []
        errors: dict[str, str] = {}
        for m in messages:
            now = self.clock()
            try:
                outcome = self.issuance.issue(self.desired, m.certificate, now)
            except CertgitError as exc:
                errors[m.certificate] = str(exc)
                self._fail([m], str(exc), temporary=exc.temporary)
                self.store.audit(
                    self.actor, AuditEvent.CERTIFICATE_ISSUE_FAILED, m.certificate,
                    {"error": str(exc)}, now,
                    certificate=m.certificate, plan_hash=m.plan_hash, action_id=m.action_id,
                )
                continue
            outcome_version = outcome.version
            if outcome_version is not None:
                issued.append(outcome)
                self._event("issued", m.certificate, version=outcome_version.version,
                            fingerprint=outcome_version.fingerprint)
                self.store.audit(
                    self.actor,
                    AuditEvent.CERTIFICATE_ISSUED if m.kind == "issue"
                    else AuditEvent.CERTIFICATE_RENEWED,
                    m.certificate,
                    {
                        "version": outcome_version.version,
                        "fingerprint": outcome_version.fingerprint,
                        "key_reused": outcome.key_reused,
                        "plan": m.plan_hash,
                    },
                    now,
                    certificate=m.certificate, version=outcome_version.version,
                    plan_hash=m.plan_hash, action_id=m.action_id,
                )
            outbox.complete(self.store, [m], self.owner, self.clock())
        return issued, errors

    # ------------------------------------------------------------------ preparing

    def _prepare(
        self, messages: Sequence[Message], issue_errors: Mapping[str, str]
    ) -> tuple[list[TargetJob], dict[str, dict[str, list[Message]]], list[TargetResult]]:
        """Group by target, resolve versions, build bundles. Messages that cannot run fail now."""
        by_target: dict[str, list[Message]] = {}
        for m in messages:
            by_target.setdefault(m.target or "", []).append(m)
        recorded = self.store.recorded_state()
        jobs: list[TargetJob] = []
        groups: dict[str, dict[str, list[Message]]] = {}
        results: list[TargetResult] = []
        for name in sorted(by_target):
            target = self.desired.targets.get(name)
            msgs = by_target[name]
            if target is None:
                error = f"target {name!r} is not in the desired state; restore it or drop the plan"
                self._fail(msgs, error, temporary=False)
                results.append(TargetResult(name, "failed", error=error))
                continue
            try:
                spec = target_spec(target, self.state_dir, env=self.env)
            except CertgitError as exc:
                self._fail(msgs, str(exc), temporary=False)
                results.append(TargetResult(name, "failed", error=str(exc)))
                continue
            # One entry per certificate: the newest message wins, older ones ride along.
            per_cert: dict[str, list[Message]] = {}
            for m in sorted(msgs, key=lambda m: m.id):
                per_cert.setdefault(m.certificate, []).append(m)
            bundles: list[Bundle] = []
            removals: list[Removal] = []
            group: dict[str, list[Message]] = {}
            for cert_name, cert_msgs in sorted(per_cert.items()):
                last = cert_msgs[-1]
                hold = recorded.hold_for(cert_name, name)
                if hold is not None and last.kind != "rollback":
                    outbox.cancel(
                        self.store, cert_msgs, self.owner, self.clock(), "binding is held"
                    )
                    continue
                if last.kind == "remove":
                    dep = recorded.deployments.get((cert_name, name))
                    removals.append(
                        Removal(
                            cert_name,
                            binding_overrides(self.desired.certificates.get(cert_name), name),
                            paths=key_first(dep.files) if dep is not None else (),
                        )
                    )
                    group[cert_name] = cert_msgs
                    continue
                try:
                    bundles.append(self._bundle(last, name))
                except CertgitError as exc:
                    why = issue_errors.get(cert_name)
                    error = f"{exc}" if why is None else f"{exc} (issuance failed: {why})"
                    states = self._fail(cert_msgs, error, temporary=exc.temporary)
                    waiting = set(states.values()) == {JobState.RETRY_WAIT}
                    status = "retrying" if waiting else "failed"
                    results.append(TargetResult(name, status, error=error))
                    continue
                group[cert_name] = cert_msgs
            if not bundles and not removals:
                continue
            groups[name] = group
            jobs.append(
                TargetJob(
                    spec=spec,
                    connector_type=target.type,
                    deployments=tuple(bundles),
                    removals=tuple(removals),
                    recorded={
                        b.certificate: (
                            d.fingerprint
                            if (d := recorded.deployments.get((b.certificate, name)))
                            else None
                        )
                        for b in bundles
                    },
                    recorded_paths={
                        b.certificate: tuple(p for p, _r, _s in d.files)
                        for b in bundles
                        if (d := recorded.deployments.get((b.certificate, name))) and d.files
                    },
                    owned=frozenset(
                        path
                        for (_c, t), d in recorded.deployments.items()
                        if t == name
                        for path, _r, _s in d.files
                    ),
                )
            )
        return jobs, groups, results

    def _drop_collisions(
        self,
        jobs: list[TargetJob],
        groups: dict[str, dict[str, list[Message]]],
        results: list[TargetResult],
    ) -> list[TargetJob]:
        """Re-check path ownership across this run's targets before anything is written.

        The loader refuses two bindings that would write one file; this catches what
        only the host knows (directories that meet through a symlink) and a desired
        state that changed under a long run. The later binding is left out, failed.
        """
        owners: dict[str, tuple[str, str]] = {}
        kept: list[TargetJob] = []
        for job in jobs:
            if dict(job.spec.transport).get("type", "local") != "local":
                kept.append(job)
                continue
            file_specs: Callable[[TargetSpec, Bundle], Any] | None
            try:
                file_specs = getattr(self._load(job.connector_type), "file_specs", None)
            except Exception:  # the target's own call reports it
                file_specs = None
            if file_specs is None:
                kept.append(job)  # not a file connector: nothing to compare
                continue
            clashes: dict[str, str] = {}
            for bundle in job.deployments:
                try:
                    paths = [spec.path for spec in file_specs(job.spec, bundle)]
                except CertgitError:
                    continue  # the deploy reports the bad settings itself
                for path in paths:
                    real = os.path.realpath(path)
                    other = owners.setdefault(real, (job.spec.name, bundle.certificate))
                    if other != (job.spec.name, bundle.certificate):
                        clashes[bundle.certificate] = (
                            f"{path} is also written by {other[1]} on target {other[0]}: "
                            "give one of them another file name or directory"
                        )
            if not clashes:
                kept.append(job)
                continue
            group = groups[job.spec.name]
            now = self.clock()
            for cert, why in clashes.items():
                self._fail(group.pop(cert, []), why, temporary=False)
                self.store.record_deployment(cert, job.spec.name, fingerprint=None, version=None,
                                             at=now, error=why)
            left = tuple(b for b in job.deployments if b.certificate not in clashes)
            results.append(TargetResult(job.spec.name, "failed", failed=clashes))
            if left or job.removals:
                kept.append(replace(job, deployments=left))
        return kept

    def _bundle(self, m: Message, target: str) -> Bundle:
        return build_bundle(self.store, self.desired, m.payload, target)

    # ------------------------------------------------------------------ calling (threads)

    def _call(self, job: TargetJob) -> TargetCall:
        """Run one target's ChangeSet under its lock. Never raises; never touches the store."""
        name = job.spec.name
        self._event("target.started", name, certificates=[b.certificate for b in job.deployments])
        try:
            ensure_work_dir(job.spec.work_dir)
            with target_lock(name, job.spec.work_dir):
                connector = self._load(job.connector_type)
                # No skip on "recorded and observed the same": a repair must rewrite a
                # key file whose certificate file is intact. The SDK's SHA-256
                # short-circuit makes a finished deploy a no-op (no validate, no reload).
                relocated = relocations(connector, job)
                sandbox = grant_cleanup(
                    self._sandbox(connector, job.spec),
                    [p for r in (*job.removals, *relocated) for p in r.paths],
                )
                recovered = tuple(self._recover_target(sandbox, job.spec))
                if not job.deployments and not job.removals:
                    return TargetCall(name, None, (), recovered)
                change = ChangeSet(
                    job.spec, job.deployments, (*job.removals, *relocated), owned=job.owned
                )
                report = connector.deploy(sandbox, change)
                return TargetCall(name, report, (), recovered, relocated=relocated)
        except Exception as exc:  # any failure is this target's alone
            return TargetCall(name, error=exc)

    def _event(self, kind: str, subject: str, **detail: Any) -> None:
        if self._on_event is None:
            return
        from certgit.reconciler.commands import Event, EventKind

        self._on_event(Event(EventKind(kind), subject, detail))

    def _recover_target(self, sandbox: Any, spec: TargetSpec) -> list[str]:
        """Crash recovery with the sealed-backup key and the sandbox's grants (if it has them)."""
        if self._recover is not default_recover:
            return list(self._recover(sandbox.transport, spec.work_dir))
        return default_recover(
            sandbox.transport,
            spec.work_dir,
            spec.backup_key,
            allowed_exec=getattr(sandbox, "check_exec", None),
            allowed_write=getattr(sandbox, "check_write", None),
        )

    # ------------------------------------------------------------------ recording

    def _fail(
        self, messages: Sequence[Message], error: str, *, temporary: bool
    ) -> dict[int, JobState]:
        return outbox.fail(
            self.store, messages, self.owner, self.clock(), error,
            temporary=temporary, backoff=self.config.backoff,
        )
