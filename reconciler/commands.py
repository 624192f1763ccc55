"""The command side of the service API: every change goes through here, audited.

The CLI, the TUI and the daemon call these functions (and `queries` for reads)
with an Engine, an actor and a reason; none of them touches the store.

- `reconcile_once` (`apply`): poll, observe, plan, persist the plan and its
  outbox in one transaction, run the executor, re-plan; progress is reported
  through `on_event(Event)` as it happens (polled, planned, issued, target
  started, target finished with its outcome).
- `approve` / `reject` (`decide`): bound to the current plan's hash.
- `rollback`, `release`, `retry`: operator actions on one target.

Thread model: an Engine owns one SQLite connection, which works only on the
thread that opened it. Build one Engine per worker thread (the TUI's workers,
the daemon's jobs) and close it there; `on_event` may be called from the
executor's target threads, so a listener must be thread-safe (post a message,
put on a queue).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from certgit.reconciler.engine import LAST_APPLIED_COMMIT, Engine
from certgit.reconciler.errors import CertgitError
from certgit.reconciler.planner import Action, Plan
from certgit.reconciler.store.audit import AuditEvent
from certgit.reconciler.store.plans import Decision

if TYPE_CHECKING:
    from certgit.reconciler.executor import ExecutorConfig, RunReport
    from certgit.reconciler.store import Store


class EventKind(StrEnum):
    POLLED = "polled"
    PLANNED = "planned"
    ISSUED = "issued"
    TARGET_STARTED = "target.started"
    TARGET_FINISHED = "target.finished"
    GATES_CHANGED = "gates.changed"  # an approved weakening of the approval gates took effect
    DONE = "done"


@dataclass(frozen=True)
class Event:
    """One step of a reconcile, for progress displays."""

    kind: EventKind
    subject: str = ""  # commit, plan hash, certificate or target
    detail: Mapping[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]


def _emit(on_event: Listener | None, kind: EventKind, subject: str = "", **detail: Any) -> None:
    if on_event is not None:
        on_event(Event(kind, subject, detail))


@dataclass(frozen=True)
class ApplyOutcome:
    """What `certgit apply` did and what is left."""

    plan: Plan  # the plan that was executed
    final: Plan  # the plan after execution: what is still pending
    run: RunReport
    waiting: tuple[Action, ...] = ()  # gated actions of `final` without an approval
    rejected: tuple[Action, ...] = ()
    retrying: tuple[dict[str, Any], ...] = ()  # RETRY_WAIT outbox rows
    dry_run: tuple[str, ...] = ()  # lines of a dry run
    abandoned: tuple[Action, ...] = ()  # out of retries: `certgit retry` re-arms

    @property
    def exit_code(self) -> int:
        """0 converged, 1 something failed (a dry run: would fail), 2 waiting or changes."""
        if self.run.failed or self.abandoned:
            return 1
        if any(": would fail: " in line for line in self.dry_run):
            return 1
        if self.waiting or self.retrying or not self.final.empty:
            return 2
        return 0

    @property
    def pending(self) -> tuple[Action, ...]:
        """Actions of the final plan that are neither waiting, rejected nor abandoned."""
        listed = {a.id for a in (*self.waiting, *self.rejected, *self.abandoned)}
        retrying = {str(r.get("action_id")) for r in self.retrying}
        return tuple(
            a for a in self.final.actions if a.id not in listed and a.id not in retrying
        )


def decision_for(approvals: Sequence[Mapping[str, Any]], action_id: str) -> str | None:
    """The decision on one action: its own newest decision, else the plan's newest, else None."""
    own = [a["decision"] for a in approvals if a["action_id"] == action_id]
    if own:
        return str(own[-1])
    whole = [a["decision"] for a in approvals if a["action_id"] is None]
    return str(whole[-1]) if whole else None


def gated_split(
    store: Store, plan: Plan
) -> tuple[list[Action], list[Action], list[Action]]:
    """The plan's gated actions as (approved, waiting, rejected).

    An approval authorises one execution: once the action it allowed has
    completed, only a decision made after that counts (a change that comes back
    after a rollback and a release needs a new approval).
    """
    if not plan.gated:
        return [], [], []
    approvals = store.approvals(plan.hash)
    done = {
        str(row["action_id"]): row["updated_at"]
        for row in store.outbox_rows(plan.hash)
        if row["state"] == "COMPLETED"
    }
    approved: list[Action] = []
    waiting: list[Action] = []
    rejected: list[Action] = []
    for action in plan.gated:
        since = done.get(action.id)
        relevant = [a for a in approvals if since is None or a["created_at"] > since]
        decision = decision_for(relevant, action.id)
        {"approve": approved, "reject": rejected}.get(decision or "", waiting).append(action)
    return approved, waiting, rejected


def approved_by(store: Store, plan: Plan) -> dict[str, str]:
    """Gated actions of `plan` that hold a valid approval -> who approved them."""
    approved, _, _ = gated_split(store, plan)
    if not approved:
        return {}
    decisions = [a for a in store.approvals(plan.hash) if a["decision"] == "approve"]
    out: dict[str, str] = {}
    for action in approved:
        own = [a for a in decisions if a["action_id"] == action.id]
        chosen = own or [a for a in decisions if a["action_id"] is None]
        out[action.id] = str(chosen[-1]["actor"]) if chosen else "?"
    return out


def reconcile_once(
    engine: Engine,
    actor: str,
    *,
    dry_run: bool = False,
    config: ExecutorConfig | None = None,
    refresh: bool = True,
    on_event: Listener | None = None,
) -> ApplyOutcome:
    """Poll, observe, plan, persist plan + outbox in one transaction, run the worker, re-plan.

    Gated actions run only with an approval bound to this plan's hash.
    """
    from certgit.reconciler.executor import Executor, ExecutorConfig, RunReport
    from certgit.reconciler.model import Drift
    from certgit.reconciler.store import outbox

    desired = engine.desired(fallback=True)  # the last good commit while the head is bad
    _emit(on_event, EventKind.POLLED, desired.commit or "", degraded=engine.degraded is not None)
    plan = engine.plan(desired, refresh=refresh)
    _emit(on_event, EventKind.PLANNED, plan.hash, actions=len(plan.actions),
          gated=len(plan.gated))
    if dry_run:
        from certgit.reconciler.dryrun import dry_run_lines

        lines = dry_run_lines(engine, desired, plan)
        _, waiting, rejected = gated_split(engine.store, plan)
        return ApplyOutcome(
            plan, plan, RunReport(), tuple(waiting), tuple(rejected), (), tuple(lines)
        )
    engine.record_plan(plan, actor, enqueue=True)
    if not plan.empty:
        approved, _, _ = gated_split(engine.store, plan)
        if approved:
            engine.store.enqueue_actions(plan.hash, [a.id for a in approved], engine.clock())
    outbox.supersede(engine.store, plan.hash, engine.clock())
    executor = Executor(
        engine.store,
        engine.settings.state_dir,
        desired,
        actor=actor,
        clock=engine.clock,
        config=config or ExecutorConfig(),
        env=engine.env,
        on_event=on_event,
        sandbox_factory=engine.sandboxes(desired),
        site=engine.site,
    )
    run = executor.run()
    final = engine.plan(desired, refresh=refresh)
    engine.record_plan(final, actor)
    _, waiting, rejected = gated_split(engine.store, final)
    retrying = tuple(outbox.pending_retries(engine.store))
    abandoned = tuple(a for a in final.actions if a.drift == Drift.ABANDONED)
    waiting = [a for a in waiting if a.drift != Drift.ABANDONED]
    if final.empty and not run.failed and desired.commit:
        engine.store.set_source_state(LAST_APPLIED_COMMIT, desired.commit)
    outcome = ApplyOutcome(
        plan, final, run, tuple(waiting), tuple(rejected), retrying, abandoned=abandoned
    )
    _emit(on_event, EventKind.DONE, final.hash, exit_code=outcome.exit_code)
    return outcome


apply = reconcile_once  # the CLI's name for one reconcile


class StalePlan(CertgitError):
    """An approval named a plan that is no longer the current one."""


def decide(
    engine: Engine, ref: str, decision: str, actor: str, reason: str
) -> tuple[str, str | None]:
    """Approve or reject the current plan (hash or unique prefix of >= 8 hex digits), one of
    its actions (id or prefix), or a waiting operator rollback plan.

    Returns (plan hash, action id or None). The decision binds to that plan
    hash: a changed plan needs a new approval, and a superseded hash is refused
    (StalePlan) with the current one in the message.
    """
    if not reason.strip():
        raise CertgitError(f"{decision} needs --reason TEXT: say why, it goes in the audit log")
    ref = ref.strip().lower()
    if len(ref) < 6 or any(c not in "0123456789abcdef" for c in ref):
        raise CertgitError(
            f"{ref!r} is not a plan hash or action id: give at least 8 hex digits of the plan "
            "hash `certgit plan` prints, or an action id"
        )
    current = engine.plan(fallback=True)
    engine.record_plan(current, actor)
    plan_hash, action_id = _resolve_ref(engine.store, current, ref)
    now = engine.clock()
    store = engine.store
    store.add_approval(plan_hash, action_id, decision=decision, actor=actor, reason=reason, at=now)
    store.audit(
        actor,
        AuditEvent.PLAN_APPROVED if decision == Decision.APPROVE else AuditEvent.PLAN_REJECTED,
        plan_hash if action_id is None else f"{plan_hash}/{action_id}",
        {"reason": reason, "action": action_id, "plan": plan_hash},
        now,
        plan_hash=plan_hash,
        action_id=action_id,
    )
    return plan_hash, action_id


def _resolve_ref(store: Store, current: Plan, ref: str) -> tuple[str, str | None]:
    if len(ref) >= 8 and not current.empty and current.hash.startswith(ref):
        return current.hash, None
    ids = [a.id for a in current.actions if a.id.startswith(ref)]
    if len(ids) == 1:
        return current.hash, ids[0]
    if len(ids) > 1:
        raise CertgitError(f"{ref!r} matches several actions ({', '.join(ids)}): give more digits")
    matches = store.plan_hashes(ref) if len(ref) >= 8 else []
    for found in matches:
        saved = store.get_plan(found)
        if saved is not None and saved.get("origin") == "operator":
            return found, None  # a rollback waiting for approval (deterministic hash)
    if matches:
        now_text = (
            f"the current plan is {current.hash}: review it with `certgit plan` and approve "
            "that hash"
            if not current.empty
            else "nothing is waiting for approval now"
        )
        raise StalePlan(f"plan {matches[0]} is no longer current ({now_text})")
    if len(ref) < 8 and not ids:
        raise CertgitError(f"{ref!r} is too short for a plan hash: give at least 8 hex digits")
    raise CertgitError(
        f"{ref!r} is neither a saved plan hash nor an action id of the current plan: "
        "run `certgit plan` and use the plan hash or an action id it prints"
    )


def approve(engine: Engine, ref: str, *, actor: str, reason: str) -> tuple[str, str | None]:
    """Approve the current plan (hash or >= 8 hex digits), one action of it, or a rollback."""
    return decide(engine, ref, "approve", actor, reason)


def reject(engine: Engine, ref: str, *, actor: str, reason: str) -> tuple[str, str | None]:
    """Reject it: the action stays waiting, listed as rejected."""
    return decide(engine, ref, "reject", actor, reason)


@dataclass(frozen=True)
class RollbackOutcome:
    target: str
    versions: Mapping[str, int]  # certificate -> version deployed back
    run: RunReport
    plan_hash: str = ""
    waiting: tuple[Action, ...] = ()  # never served on the target and gated: need approval
    skipped: tuple[str, ...] = ()  # certificates with no earlier version there (left alone)


def rollback(
    engine: Engine,
    target: str,
    *,
    certificate: str | None,
    to_version: int | None,
    actor: str,
    reason: str,
    on_event: Listener | None = None,
) -> RollbackOutcome:
    """Deploy a version the target served before, through the executor, and place a hold.

    The plan comes from `rollbacks.rollback_plan` (pure): see it for which
    version is chosen and when an approval is needed. An approved gated
    rollback runs when the same command is given again.
    """
    from certgit.reconciler.executor import Executor, RunReport
    from certgit.reconciler.rollbacks import bound_on, rollback_plan

    store = engine.store
    desired = engine.desired(fallback=True)
    recorded = store.recorded_state()
    certs = bound_on(recorded, target, certificate) if target in desired.targets else []
    chosen_plan = rollback_plan(
        engine.gated(desired),  # the site's gates and those a commit removed still apply
        recorded,
        {cert: store.deploy_history(target, cert) for cert in certs},
        {cert: store.versions(cert, include_retired=True) for cert in certs},
        target,
        certificate=certificate,
        to_version=to_version,
        reason=reason,
    )
    plan, skipped = chosen_plan.plan, chosen_plan.skipped
    now = engine.clock()
    store.save_plan(plan.hash, desired.commit, [a.to_dict() for a in plan.actions], now,
                    origin="operator")
    approved, waiting, rejected = gated_split(store, plan)
    if rejected:
        raise CertgitError(
            f"rollback plan {plan.hash} was rejected: "
            + ", ".join(f"{a.certificate} v{a.version}" for a in rejected)
        )
    runnable = [a for a in plan.actions if not a.gated] + approved
    if waiting:
        store.audit(
            actor, AuditEvent.ROLLBACK_WAITING, target,
            {"reason": reason, "plan": plan.hash,
             "versions": {a.certificate: a.version for a in waiting}},
            now, target=target, plan_hash=plan.hash,
        )
        return RollbackOutcome(target, {}, RunReport(), plan.hash, tuple(waiting), skipped)
    chosen = {a.certificate: int(a.version or 0) for a in runnable}
    for action in runnable:
        store.add_hold(target, action.certificate, action.fingerprint, reason, actor, now)
    # Operator work: enqueued under its own plan, never superseded by Git plans.
    store.enqueue_actions(plan.hash, [a.id for a in runnable], now)
    store.audit(
        actor,
        AuditEvent.ROLLBACK_REQUESTED,
        target,
        {"reason": reason, "versions": chosen, "plan": plan.hash},
        now,
        target=target,
        plan_hash=plan.hash,
    )
    executor = Executor(
        store, engine.settings.state_dir, desired, actor=actor, clock=engine.clock,
        env=engine.env, on_event=on_event, sandbox_factory=engine.sandboxes(desired),
        site=engine.site,
    )
    run = executor.run(plan_hash=plan.hash)
    return RollbackOutcome(target, chosen, run, plan.hash, skipped=skipped)


def _known_target(engine: Engine, target: str) -> None:
    """A typo in TARGET is an error, not "nothing to do" (and nothing is audited)."""
    recorded = engine.store.recorded_state()
    if any(t == target for (_c, t) in recorded.deployments) or any(
        h.target == target for h in recorded.holds
    ):
        return
    try:
        desired = engine.desired(fallback=True)
    except CertgitError:
        desired = None
    if desired is not None and target in desired.targets:
        return
    raise CertgitError(
        f"no target named {target!r} in the desired state or the records: "
        "`certgit status` lists them"
    )


def release(
    engine: Engine, target: str, *, certificate: str | None, actor: str, reason: str
) -> int:
    """Lift the hold(s) on a target (or one binding): Git wins again at the next apply.

    Queued rollback work for what is released is cancelled, so a retry of a
    failed rollback never outlives its hold.
    """
    from certgit.reconciler.store import outbox

    _known_target(engine, target)
    now = engine.clock()
    count = engine.store.release_hold(target, certificate)
    cancelled = outbox.cancel_binding_work(
        engine.store, now, target, certificate, kinds=("rollback",),
        reason=f"released by {actor}",
    )
    subject = target if certificate is None else f"{certificate} -> {target}"
    engine.store.audit(
        actor, AuditEvent.HOLD_RELEASED, subject,
        {"reason": reason, "released": count, "cancelled": cancelled}, now,
        target=target, certificate=certificate,
    )
    return count


def retry(
    engine: Engine, target: str | None, *, certificate: str | None, actor: str, reason: str
) -> int:
    """Re-arm abandoned, failed and waiting actions (of one target, or all): the next
    `apply` runs them at once with a fresh attempt budget. Audited."""
    from certgit.reconciler.store import outbox

    if target is not None:
        _known_target(engine, target)
    now = engine.clock()
    count = outbox.rearm(engine.store, now, target, certificate)
    subject = target or "*"
    if certificate is not None:
        subject = f"{certificate} -> {subject}"
    engine.store.audit(
        actor, AuditEvent.ACTION_RETRIED, subject, {"reason": reason, "rearmed": count}, now,
        target=target, certificate=certificate,
    )
    return count
