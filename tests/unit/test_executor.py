"""The outbox worker: claim/lease, backoff, state transitions, one ChangeSet per target.

Uses a tiny in-test connector that writes PEM files under tmp_path and counts
its deploy calls; the real `files` connector is exercised by the e2e tests.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from certgit.connectors.errors import ReloadFailed, ValidateFailed
from certgit.connectors.model import (
    Capability,
    ChangeSet,
    DeployReport,
    Observation,
    TargetSpec,
)
from certgit.reconciler.desired import load_directory
from certgit.reconciler.executor import Executor, ExecutorConfig
from certgit.reconciler.model import DesiredState
from certgit.reconciler.planner import diff
from certgit.reconciler.store import AuditEvent, Store, outbox
from certgit.reconciler.store.outbox import Backoff

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = bytes(range(32))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class FakeConnector:
    """Protocol-shaped connector over local files; records every ChangeSet it gets."""

    name: ClassVar[str] = "files"
    root: Path
    calls: list[ChangeSet] = field(default_factory=list)
    fail: Mapping[str, Exception] = field(default_factory=dict)
    db: Path | None = None  # checked for an open write transaction during deploy
    lock = threading.Lock()

    def capabilities(self, target: TargetSpec) -> frozenset[Capability]:
        return frozenset({Capability.FILES, Capability.OBSERVE})

    def grants(self, target: TargetSpec) -> Any:
        return None

    def _path(self, target: str, certificate: str) -> Path:
        return self.root / target / f"{certificate}.crt"

    def deploy(self, sandbox: Any, change: ChangeSet) -> DeployReport:
        with self.lock:
            self.calls.append(change)
        if self.db is not None:
            # Would block (and fail after 1 s) if the executor held a write transaction
            # across the call; another target's short recording transaction just waits.
            # One probe at a time: two targets' probes must not collide with each other.
            with self.lock:
                probe = sqlite3.connect(self.db, timeout=1.0)
                try:
                    probe.execute("BEGIN IMMEDIATE")
                    probe.execute("ROLLBACK")
                finally:
                    probe.close()
        error = self.fail.get(change.target.name)
        if error is not None:
            raise error
        changed = False
        for d in change.deployments:
            path = self._path(change.target.name, d.certificate)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_bytes() != d.cert_pem:
                path.write_bytes(d.cert_pem)
                changed = True
        return DeployReport(
            target=change.target.name,
            changed=changed,
            reloaded=changed,
            fingerprints={d.certificate: d.fingerprint for d in change.deployments},
        )

    def observe(
        self, sandbox: Any, target: TargetSpec, certificate: str, overrides: Mapping[str, Any]
    ) -> Observation:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        path = self._path(target.name, certificate)
        if not path.exists():
            return Observation(certificate, target.name, None)
        leaf = x509.load_pem_x509_certificate(path.read_bytes())
        return Observation(certificate, target.name, leaf.fingerprint(hashes.SHA256()).hex())


@dataclass
class FakeSandbox:
    transport: Any = None


def _repo(root: Path, certs: int, targets: tuple[str, ...], gate: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "issuer.yaml").write_text(
        "apiVersion: certgit.dev/v1\nkind: Issuer\nmetadata: {name: ca}\n"
        "spec: {type: local-ca, localCA: {commonName: unit CA}}\n"
    )
    docs = []
    for t in targets:
        labels = "{env: production}" if t == gate else "{env: test}"
        docs.append(
            f"apiVersion: certgit.dev/v1\nkind: Target\nmetadata: {{name: {t}, labels: {labels}}}\n"
            f"spec: {{type: files, settings: {{directory: targets/{t}}}}}\n"
        )
    for i in range(certs):
        binds = ", ".join(f"{{target: {t}}}" for t in targets)
        docs.append(
            f"apiVersion: certgit.dev/v1\nkind: Certificate\nmetadata: {{name: c{i}}}\n"
            f"spec: {{dnsNames: [c{i}.example.com], issuerRef: {{name: ca}}, "
            f"deployTo: [{binds}]}}\n"
        )
    if gate:
        docs.append(
            "apiVersion: certgit.dev/v1\nkind: Policy\nmetadata: {name: gate}\n"
            "spec: {approvals: [{name: prod, match: {targetLabels: {env: production}}}]}\n"
        )
    (root / "all.yaml").write_text("---\n".join(docs))
    return root


@pytest.fixture
def env(tmp_path: Path):
    store = Store.open(tmp_path / "state", master_key=KEY)
    clock = Clock()
    yield store, clock, tmp_path
    store.close()


def _executor(
    store: Store,
    desired: DesiredState,
    clock: Clock,
    tmp_path: Path,
    connector: FakeConnector,
    **config: Any,
) -> Executor:
    return Executor(
        store,
        tmp_path / "state",
        desired,
        actor="unit",
        clock=clock,
        config=ExecutorConfig(**config),
        env={},
        connector_loader=lambda name: connector,
        sandbox_factory=lambda c, spec: FakeSandbox(),
        recover=lambda transport, work_dir: [],
    )


def _enqueue(store: Store, desired: DesiredState, clock: Clock) -> str:
    plan = diff(desired, store.recorded_state(), {}, clock())
    store.save_plan(plan.hash, plan.commit, [a.to_dict() for a in plan.actions], clock(),
                    enqueue=True)
    outbox.supersede(store, plan.hash, clock())
    return plan.hash


# --------------------------------------------------------------------------- leases


def test_claim_leases_messages_and_a_second_worker_gets_nothing(env) -> None:
    store, clock, tmp = env
    desired = load_directory(_repo(tmp / "repo", 2, ("a",)))
    plan_hash = _enqueue(store, desired, clock)
    first = outbox.claim(store, "host:1:x", clock(), lease=timedelta(minutes=5))
    assert {m.kind for m in first} == {"issue", "deploy"} and len(first) == 4
    assert all(m.attempts == 1 for m in first)
    rows = store.outbox_rows(plan_hash)
    assert {r["state"] for r in rows} == {"RUNNING"}
    assert {r["lease_owner"] for r in rows} == {"host:1:x"}
    assert outbox.claim(store, "host:2:y", clock()) == []  # live lease on another host


def test_expired_lease_is_reclaimable_and_the_old_owner_is_fenced(env) -> None:
    store, clock, tmp = env
    desired = load_directory(_repo(tmp / "repo", 1, ("a",)))
    _enqueue(store, desired, clock)
    old = outbox.claim(store, "other-host:1:x", clock(), lease=timedelta(minutes=5))
    clock.now += timedelta(minutes=6)
    new = outbox.claim(store, "other-host:2:y", clock())
    assert {m.id for m in new} == {m.id for m in old}
    assert all(m.attempts == 2 for m in new)
    # The first worker comes back late: its completion must not overwrite the new owner's.
    assert outbox.complete(store, old, "other-host:1:x", clock()) == 0
    assert {r["state"] for r in store.outbox_rows()} == {"RUNNING"}
    assert outbox.complete(store, new, "other-host:2:y", clock()) == len(new)
    assert {r["state"] for r in store.outbox_rows()} == {"COMPLETED"}


def test_lease_of_a_dead_local_process_is_reclaimable_at_once(env) -> None:
    store, clock, tmp = env
    desired = load_directory(_repo(tmp / "repo", 1, ("a",)))
    _enqueue(store, desired, clock)
    import socket

    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)  # `child` is now a pid with no process
    dead = f"{socket.gethostname()}:{child}:dead"
    outbox.claim(store, dead, clock(), lease=timedelta(hours=1))
    again = outbox.claim(store, outbox.new_owner(), clock())
    assert len(again) == 2


# --------------------------------------------------------------------------- backoff


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    backoff = Backoff(base=2.0, maximum=30.0, max_attempts=5)
    rng = random.Random(7)
    for attempts, raw in ((1, 2.0), (2, 4.0), (3, 8.0), (5, 30.0), (9, 30.0)):
        delays = {backoff.delay(attempts, rng) for _ in range(20)}
        assert all(raw * 0.5 <= d <= raw for d in delays)
        assert len(delays) > 1  # jitter


def test_temporary_failures_retry_with_backoff_then_abandon(env) -> None:
    store, clock, tmp = env
    desired = load_directory(_repo(tmp / "repo", 1, ("a",)))
    _enqueue(store, desired, clock)
    backoff = Backoff(base=10.0, maximum=100.0, max_attempts=3)
    owner = "h:1:a"
    states = []
    for _ in range(3):
        msgs = [m for m in outbox.claim(store, owner, clock()) if m.kind == "deploy"]
        assert len(msgs) == 1
        result = outbox.fail(store, msgs, owner, clock(), "boom", temporary=True, backoff=backoff)
        states.append(result[msgs[0].id])
        row = next(r for r in store.outbox_rows() if r["id"] == msgs[0].id)
        if result[msgs[0].id] == "RETRY_WAIT":
            wait = (row["next_attempt_at"] - clock()).total_seconds()
            raw = 10.0 * 2 ** (msgs[0].attempts - 1)
            assert raw * 0.5 <= wait <= raw
            # Not due yet: nothing to claim for this message.
            assert all(m.id != msgs[0].id for m in outbox.claim(store, owner, clock()))
            clock.now = row["next_attempt_at"]
    assert states == ["RETRY_WAIT", "RETRY_WAIT", "ABANDONED"]


def test_permanent_failure_is_retried_after_backoff_then_abandoned(env) -> None:
    """A broken server config is fixed by the operator: the next apply must retry it,
    without a new plan, and the attempt budget still bounds it."""
    store, clock, tmp = env
    desired = load_directory(_repo(tmp / "repo", 1, ("a",)))
    _enqueue(store, desired, clock)
    msgs = outbox.claim(store, "h:1:a", clock())
    result = outbox.fail(store, msgs[:1], "h:1:a", clock(), "bad", temporary=False,
                         backoff=Backoff(max_attempts=1))
    assert list(result.values()) == ["ABANDONED"]
    result = outbox.fail(store, msgs[1:2], "h:1:a", clock(), "bad", temporary=False)
    assert list(result.values()) == ["RETRY_WAIT"]


def test_a_newer_plan_cancels_queued_messages_and_keeps_the_retry_schedule(env) -> None:
    store, clock, tmp = env
    desired = load_directory(_repo(tmp / "repo", 1, ("a",)))
    old_hash = _enqueue(store, desired, clock)
    msgs = outbox.claim(store, "h:1:a", clock())
    outbox.fail(store, msgs, "h:1:a", clock(), "down", temporary=True,
                backoff=Backoff(base=60.0))
    # Same action ids in a plan with another hash (e.g. reasons reworded).
    actions = [dict(a, reason="again") for a in store.get_plan(old_hash)["actions"]]
    store.save_plan("f" * 64, None, actions, clock(), enqueue=True)
    assert outbox.supersede(store, "f" * 64, clock()) == 2
    old_rows = store.outbox_rows(old_hash)
    new_rows = store.outbox_rows("f" * 64)
    assert {r["state"] for r in old_rows} == {"CANCELLED"}
    assert {r["state"] for r in new_rows} == {"RETRY_WAIT"}
    assert {r["attempts"] for r in new_rows} == {1}
    assert outbox.claim(store, "h:1:a", clock()) == []  # backoff still applies


# --------------------------------------------------------------------------- executor


def test_one_changeset_per_target_however_many_certificates(env) -> None:
    store, clock, tmp = env
    desired = load_directory(_repo(tmp / "repo", 5, ("a", "b", "c")))
    _enqueue(store, desired, clock)
    connector = FakeConnector(tmp / "live", db=store.path)
    report = _executor(store, desired, clock, tmp, connector, parallelism=2).run()
    assert len(report.issued) == 5
    assert sorted(c.target.name for c in connector.calls) == ["a", "b", "c"]
    assert all(len(c.deployments) == 5 for c in connector.calls)
    recorded = store.recorded_state()
    for t in ("a", "b", "c"):
        for i in range(5):
            dep = recorded.deployments[(f"c{i}", t)]
            assert dep.fingerprint == recorded.latest(f"c{i}").fingerprint
            assert dep.last_error is None
    assert {r["state"] for r in store.outbox_rows()} == {"COMPLETED"}
    assert diff(desired, recorded, {}, clock()).empty
    # Keys travel as bytes and every version's key stays in the store.
    assert connector.calls[0].deployments[0].key_pem.startswith(b"-----BEGIN PRIVATE KEY")
    assert "key_pem" not in repr(connector.calls[0].deployments[0])


def test_redeploying_a_recorded_and_observed_fingerprint_is_a_noop(env) -> None:
    store, clock, tmp = env
    desired = load_directory(_repo(tmp / "repo", 2, ("a",)))
    _enqueue(store, desired, clock)
    connector = FakeConnector(tmp / "live")
    _executor(store, desired, clock, tmp, connector).run()
    assert len(connector.calls) == 1
    # Re-run the same deploys (a new plan that names the recorded versions).
    actions = [
        {"id": f"x{i}", "kind": "deploy", "certificate": f"c{i}", "target": "a",
         "version": 1, "fingerprint": store.versions(f"c{i}")[0].fingerprint, "gated": False}
        for i in range(2)
    ]
    store.save_plan("e" * 64, None, actions, clock(), enqueue=True)
    report = _executor(store, desired, clock, tmp, connector).run()
    # The connector is asked again (a repair must reach a key file whose certificate
    # file is intact); its own short-circuit makes the re-run a no-op.
    assert [t.status for t in report.targets] == ["unchanged"]
    assert not report.targets[0].reloaded
    # Out-of-band change: the deploy really rewrites it.
    (tmp / "live" / "a" / "c0.crt").write_bytes(b"tampered")
    actions = [dict(a, id=f"y{a['id']}") for a in actions]
    store.save_plan("d" * 64, None, actions, clock(), enqueue=True)
    report = _executor(store, desired, clock, tmp, connector).run()
    assert [t.status for t in report.targets] == ["deployed"]
    assert (tmp / "live" / "a" / "c0.crt").read_bytes() != b"tampered"


def test_a_failing_target_does_not_block_the_others(env) -> None:
    store, clock, tmp = env
    desired = load_directory(_repo(tmp / "repo", 2, ("a", "b", "c")))
    _enqueue(store, desired, clock)
    connector = FakeConnector(
        tmp / "live",
        fail={"a": ReloadFailed("reload failed", target="a"),
              "b": ValidateFailed("nginx -t failed", target="b")},
    )
    report = _executor(store, desired, clock, tmp, connector).run()
    status = {t.target: t.status for t in report.targets}
    assert status == {"a": "retrying", "b": "retrying", "c": "deployed"}
    recorded = store.recorded_state()
    assert recorded.deployments[("c0", "c")].fingerprint is not None
    a = recorded.deployments[("c0", "a")]
    assert a.fingerprint is None and "reload failed" in (a.last_error or "")
    by_target = {r["target"]: r["state"] for r in store.outbox_rows() if r["target"]}
    assert by_target == {"a": "RETRY_WAIT", "b": "RETRY_WAIT", "c": "COMPLETED"}
    events = [r["action"] for r in store.audit_rows()]
    assert events.count("deploy.failed") == 2 and events.count("deploy.completed") == 1


def test_targets_run_in_parallel_but_bounded(env) -> None:
    store, clock, tmp = env
    targets = tuple(f"t{i}" for i in range(6))
    desired = load_directory(_repo(tmp / "repo", 1, targets))
    _enqueue(store, desired, clock)
    active = 0
    peak = 0
    guard = threading.Lock()
    barrier = threading.Barrier(2, timeout=10)

    class Slow(FakeConnector):
        def deploy(self, sandbox: Any, change: ChangeSet) -> DeployReport:
            nonlocal active, peak
            with guard:
                active += 1
                peak = max(peak, active)
            try:
                barrier.wait()  # two workers meet: parallel, never more than two
            except threading.BrokenBarrierError:
                pass
            try:
                return super().deploy(sandbox, change)
            finally:
                with guard:
                    active -= 1

    connector = Slow(tmp / "live")
    _executor(store, desired, clock, tmp, connector, parallelism=2).run()
    assert peak == 2
    assert len(connector.calls) == 6


def test_deploy_of_an_unissued_version_waits_for_issuance(env) -> None:
    store, clock, tmp = env
    desired = load_directory(_repo(tmp / "repo", 1, ("a",)))
    plan = diff(desired, store.recorded_state(), {}, clock())
    deploys = [a.to_dict() for a in plan.actions if str(a.kind) == "deploy"]
    store.save_plan(plan.hash, None, deploys, clock(), enqueue=True)  # no issue action
    connector = FakeConnector(tmp / "live")
    report = _executor(store, desired, clock, tmp, connector).run()
    assert connector.calls == []
    assert report.targets[0].status == "retrying"
    assert "no issued version" in (report.targets[0].error or "")
    assert {r["state"] for r in store.outbox_rows()} == {"RETRY_WAIT"}



def test_two_targets_whose_directories_meet_through_a_symlink_do_not_both_write(env) -> None:
    """The loader cannot see that two directories are one (a symlink on the host): the
    executor re-checks ownership before writing and leaves the later binding out."""
    from certgit.reconciler.executor import Executor

    store, clock, tmp = env
    real = tmp / "shared"
    real.mkdir()
    (tmp / "alias").symlink_to(real)
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "all.yaml").write_text(
        "apiVersion: certgit.dev/v1\nkind: Issuer\nmetadata: {name: ca}\nspec: {type: local-ca}\n"
        "---\napiVersion: certgit.dev/v1\nkind: Target\nmetadata: {name: one}\n"
        f"spec: {{type: files, settings: {{directory: {real}}}}}\n"
        "---\napiVersion: certgit.dev/v1\nkind: Target\nmetadata: {name: two}\n"
        f"spec: {{type: files, settings: {{directory: {tmp / 'alias'}}}}}\n"
        "---\napiVersion: certgit.dev/v1\nkind: Certificate\nmetadata: {name: www}\n"
        "spec:\n  dnsNames: [www.example.test]\n  issuerRef: {name: ca}\n"
        "  deployTo: [{target: one}, {target: two}]\n"
    )
    desired = load_directory(repo)
    _enqueue(store, desired, clock)
    report = Executor(store, tmp / "state", desired, actor="t", clock=clock).run()
    failed = {t.target: t.failed for t in report.targets if t.failed}
    assert list(failed) == ["two"] and "also written by www on target one" in failed["two"]["www"]
    two = store.recorded_state().deployments[("www", "two")]
    assert two.fingerprint is None and "also written by www" in str(two.last_error)
    assert {r["state"] for r in store.outbox_rows() if r["target"] == "two"} == {"RETRY_WAIT"}


def test_audit_rows_name_their_binding_plan_and_action(env) -> None:
    """One certificate per target: the deploy row's columns join plan -> action -> deploy;
    several: the row lists them in details and the action_id filter still finds it."""
    store, clock, tmp = env
    desired = load_directory(_repo(tmp / "repo", 1, ("a", "b")))
    plan_hash = _enqueue(store, desired, clock)
    connector = FakeConnector(
        tmp / "live", fail={"b": ReloadFailed("reload failed", target="b")}
    )
    _executor(store, desired, clock, tmp, connector).run()
    saved = {(a["kind"], a.get("target")): a["id"] for a in store.get_plan(plan_hash)["actions"]}
    rows = store.audit_rows()
    issued = next(r for r in rows if r["action"] == AuditEvent.CERTIFICATE_ISSUED)
    assert (issued["certificate"], issued["version"], issued["plan_hash"]) == ("c0", 1, plan_hash)
    assert issued["action_id"] == saved[("issue", None)]
    done = next(r for r in rows if r["action"] == AuditEvent.DEPLOY_COMPLETED)
    failed = next(r for r in rows if r["action"] == AuditEvent.DEPLOY_FAILED)
    for row, target in ((done, "a"), (failed, "b")):
        assert (row["target"], row["certificate"], row["version"]) == (target, "c0", 1)
        assert (row["plan_hash"], row["action_id"]) == (plan_hash, saved[("deploy", target)])
        assert [r["seq"] for r in store.audit_rows(action_id=row["action_id"])] == [row["seq"]]
    assert store.verify_audit() == len(rows)
    # Two certificates on one target: no single binding, the lists stay in details.
    desired = load_directory(_repo(tmp / "repo2", 2, ("c",)))
    plan_hash = _enqueue(store, desired, clock)
    _executor(store, desired, clock, tmp, FakeConnector(tmp / "live")).run()
    row = store.audit_rows(target="c")[-1]
    assert row["action"] == "deploy.completed" and row["certificate"] is None
    assert all(
        row["seq"] in [r["seq"] for r in store.audit_rows(action_id=a)]
        for a in row["details"]["actions"]
    )
