"""The service API from a worker thread, as the TUI and the daemon use it.

An Engine owns one SQLite connection that works only on the thread that opened
it, so each worker builds its own Engine (commands.py's thread model). This
drives approve → apply → rollback → release through `commands` and `queries`
only, on a real Git repository and real `files` targets, and checks that the
audit log joins an approval to the plan, the action and the deploy it allowed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from certgit.reconciler import commands, queries
from certgit.reconciler.config import Settings
from certgit.reconciler.engine import Engine
from tests.gitutil import commit_files, init_repo

DOCS = """apiVersion: certgit.dev/v1
kind: Issuer
metadata: {{name: ca}}
spec: {{type: local-ca}}
---
apiVersion: certgit.dev/v1
kind: Target
metadata: {{name: prod, labels: {{env: production}}}}
spec: {{type: files, settings: {{directory: {prod}}}}}
---
apiVersion: certgit.dev/v1
kind: Policy
metadata: {{name: gates}}
spec:
  approvals:
    - name: prod
      match: {{targetLabels: {{env: production}}}}
---
apiVersion: certgit.dev/v1
kind: Certificate
metadata: {{name: www}}
spec:
  dnsNames: [{names}]
  issuerRef: {{name: ca}}
  deployTo: [{{target: prod}}]
"""


def _in_worker(fn: Any) -> Any:
    """Run `fn` on a fresh thread and return its result (re-raising its error)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the test thread
            box["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "worker did not finish"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_commands_and_queries_from_a_worker_thread(tmp_path: Path) -> None:
    repo_path, prod = tmp_path / "repo", tmp_path / "prod"
    repo = init_repo(repo_path)
    commit_files(repo, {"all.yaml": DOCS.format(prod=prod, names="www.example.test").encode()},
                 "v1")
    settings = Settings(repo=str(repo_path), ref=None, path="", state_dir=tmp_path / "state")

    def engine() -> Engine:
        return Engine(settings)  # built on the worker thread that uses it

    def first_round() -> tuple[Any, Any, Any]:
        e = engine()
        try:
            events: list[commands.Event] = []
            waiting = commands.apply(e, "ops", on_event=events.append)
            pending = queries.pending_approvals(e)
            plan_hash, _ = commands.approve(e, pending[0].plan_hash, actor="alice",
                                            reason="change 42")
            done = commands.apply(e, "ops", on_event=events.append)
            return waiting, done, (plan_hash, events, queries.status(e, refresh=True))
        finally:
            e.close()

    waiting, done, (plan_hash, events, status) = _in_worker(first_round)
    assert waiting.exit_code == 2 and [a.target for a in waiting.waiting] == ["prod"]
    assert done.exit_code == 0
    kinds = [e.kind for e in events]
    assert kinds[:2] == [commands.EventKind.POLLED, commands.EventKind.PLANNED]
    assert commands.EventKind.ISSUED in kinds and commands.EventKind.TARGET_FINISHED in kinds
    assert [b.drift for b in status.bindings] == ["in-sync"]
    assert (prod / "www.key").exists()

    # The audit log joins: approval -> plan -> action -> the deploy it allowed.
    def audit() -> tuple[queries.AuditEntry, ...]:
        e = engine()
        try:
            return queries.audit_page(e.store, limit=1000)
        finally:
            e.close()

    rows = _in_worker(audit)
    approval = next(r for r in rows if r.action == "plan.approved")
    assert approval.details["plan"] == plan_hash and approval.actor == "alice"
    deploy = next(r for r in rows if r.action == "deploy.completed" and r.subject == "prod")
    assert plan_hash in deploy.details["plans"]
    saved = {a.id for a in queries_plan_actions(settings, plan_hash)}
    assert set(deploy.details["actions"]) <= saved

    # A second version, then rollback and release, still from worker threads.
    commit_files(repo, {"all.yaml": DOCS.format(prod=prod, names="www.example.test, w.test")
                        .encode()}, "v2")

    def second_round() -> tuple[Any, Any, Any]:
        e = engine()
        try:
            commands.apply(e, "ops")
            for item in queries.pending_approvals(e):
                commands.approve(e, item.action.id, actor="alice", reason="v2")
            commands.apply(e, "ops")
            back = commands.rollback(e, "prod", certificate=None, to_version=None,
                                     actor="bob", reason="v2 broke clients")
            held = queries.holds(e.store)
            released = commands.release(e, "prod", certificate=None, actor="bob", reason="fixed")
            return back, held, released
        finally:
            e.close()

    back, held, released = _in_worker(second_round)
    assert back.versions == {"www": 1} and not back.waiting
    assert [h.target for h in held] == ["prod"] and released == 1


def queries_plan_actions(settings: Settings, plan_hash: str) -> list[Any]:
    """The saved plan's actions, typed (Action.from_dict gives back the same ids)."""
    from certgit.reconciler.planner import Action

    e = Engine(settings)
    try:
        saved = e.store.get_plan(plan_hash)
        assert saved is not None
        actions = [Action.from_dict(a) for a in saved["actions"]]
        assert [a.id for a in actions] == [str(a["id"]) for a in saved["actions"]]
        return actions
    finally:
        e.close()
