"""The engine: the one place that wires source, loader, store and planner together.

The CLI, the daemon and the TUI all call these functions, so a command means
the same thing whichever door it comes through.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from certgit.reconciler.config import Settings, SettingsError
from certgit.reconciler.desired import DesiredLoader
from certgit.reconciler.doccache import DocumentCache
from certgit.reconciler.errors import CertgitError, ConfigErrors, SourceError
from certgit.reconciler.model import DesiredState, LiveObservation, RecordedState
from certgit.reconciler.planner import Action, Plan, diff

if TYPE_CHECKING:
    from certgit.reconciler.executor import ExecutorConfig, RunReport
    from certgit.reconciler.source import GitSource, Snapshot
    from certgit.reconciler.store import Store

LAST_GOOD_COMMIT = "last_good_commit"
LAST_APPLIED_COMMIT = "last_applied_commit"  # same key as the store's


def utcnow() -> datetime:
    return datetime.now(UTC)


def operator_identity(explicit: str | None = None) -> str:
    """Who is acting: --as, else the OS user."""
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


_KEEP = "the last good commit stays in force"


@dataclass(frozen=True)
class Degraded:
    """Why the engine works from the last good commit instead of the head (DESIGN §8).

    Either the head was fetched but is invalid (`head` and `problems` set), or
    the source could not give a commit at all (`error` set: unreachable
    repository, vanished ref, rewritten history, ...).
    """

    commit: str  # the last good commit, in force
    ref: str = "HEAD"
    head: str | None = None  # the rejected head, when it was fetched
    problems: tuple[str, ...] = ()  # the head's problems (FILE:LINE:COL: message)
    error: str | None = None  # the SourceError text

    @property
    def reason(self) -> str:
        return "invalid-head" if self.problems else "source-error"

    def warning(self) -> str:
        """One line for stderr, saying what is rejected and what stays in force."""
        good = self.commit[:12]
        if self.problems:
            n = len(self.problems)
            head = f"{self.ref} {self.head[:12]}" if self.head else self.ref
            return (
                f"warning: {head} is invalid ({n} problem{'s' if n != 1 else ''}, run "
                f"`certgit validate`); the last good commit {good} stays in force"
            )
        error = (self.error or "the source could not be read").rstrip(". ")
        kept = f"the last good commit {good} stays in force"
        error = error.replace(_KEEP, kept) if _KEEP in error else f"{error}; {kept}"
        return f"warning: {error}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "commit": self.commit,
            "ref": self.ref,
            "head": self.head,
            "problems": list(self.problems),
            "error": self.error,
        }


class Engine:
    """Source → desired → plan, against one state directory.

    Keeps the last snapshot's parsed model in memory: a poll whose tree id is
    unchanged costs one fetch and one ref lookup, no parse and no validation.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        env: Mapping[str, str] | None = None,
        create_state: bool = True,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.env = os.environ if env is None else env
        # False for read-only commands: a missing store raises StateMissing and nothing
        # (directory, master key, Git mirror, document cache) is created under the state dir.
        self.create_state = create_state
        self._last_tree: str | None = None
        self._last_desired: DesiredState | None = None
        # (tree id, recorded state, plan): reused while nothing it depends on moved.
        self._last_plan: tuple[str, RecordedState, Plan] | None = None
        # Set by desired(fallback=True) when the last good commit stands in for the head.
        self.degraded: Degraded | None = None

    @cached_property
    def store(self) -> Store:
        from certgit.reconciler.store import Store

        return Store.open(self.settings.state_dir, env=self.env, create=self.create_state)

    @cached_property
    def doc_cache(self) -> DocumentCache:
        self.store  # noqa: B018 - the store creates the state dir with mode 0700 first
        return DocumentCache(self.settings.state_dir / "cache" / "documents.db")

    @cached_property
    def loader(self) -> DesiredLoader:
        return DesiredLoader(cache=self.doc_cache)

    @cached_property
    def source(self) -> GitSource:
        from certgit.reconciler.source import GitSource, SourceConfig

        if not self.settings.repo:
            raise SettingsError(
                "no repository configured: pass --repo PATH|URL, set CERTGIT_REPO, "
                "or set [repository] url in certgit.toml"
            )
        config = SourceConfig(
            url=self.settings.repo,
            ref=self.settings.ref,
            path=self.settings.path,
            allow_history_rewrite=self.settings.allow_history_rewrite,
        )
        # The mirror lives under the state dir: open (or refuse) the store first, so a
        # missing store is reported before anything is cloned, and the dir is made 0700.
        self.store  # noqa: B018
        return GitSource(config, self.settings.state_dir)

    def last_good_commit(self) -> str | None:
        return self.store.get_source_state(LAST_GOOD_COMMIT)

    def desired(self, *, fallback: bool = False) -> DesiredState:
        """Poll the repository and return the validated desired state.

        Raises SourceError or ConfigErrors; the last good commit is then left
        as it was, so nothing downstream ever sees a half-read or invalid commit.

        With `fallback`, an invalid head or a source that cannot be read gives
        the last good commit instead, read from the local mirror without
        fetching, and `self.degraded` says why (DESIGN §8: the last good commit
        stays in force). Without a last good commit, or when the mirror no
        longer holds it, the error is raised as without `fallback`.
        """
        self.degraded = None
        head: str | None = None
        try:
            snapshot = self.source.poll(last_applied=self.store.last_applied_commit)
            head = snapshot.commit
            desired = self._load(snapshot)
        except (ConfigErrors, SourceError) as exc:
            if not fallback:
                raise
            good = self.last_good_commit()
            if good is None or good == head:
                raise
            kept: DesiredState | None = None
            try:
                kept = self._load(self.source.snapshot_of(good))
            except (ConfigErrors, SourceError):
                pass  # the mirror lost it too: report the head's own error
            if kept is None:
                raise
            desired = kept
            problems = tuple(str(p) for p in exc.problems) if isinstance(exc, ConfigErrors) else ()
            self.degraded = Degraded(
                commit=good,
                ref=self.settings.ref or "HEAD",
                head=head,
                problems=problems,
                error=None if problems else str(exc),
            )
            return desired
        if self.store.get_source_state(LAST_GOOD_COMMIT) != snapshot.commit:
            self.store.set_source_state(LAST_GOOD_COMMIT, snapshot.commit)
        return desired

    def _load(self, snapshot: Snapshot) -> DesiredState:
        """The validated model of one snapshot (reused while its tree id is unchanged)."""
        if snapshot.tree == self._last_tree and self._last_desired is not None:
            desired = replace(self._last_desired, commit=snapshot.commit)
        else:
            try:
                desired = self.loader.load(snapshot.files, snapshot.commit)
            finally:
                self.doc_cache.flush()  # files with problems are worth keeping too
            self._last_tree = snapshot.tree
        self._last_desired = desired
        return desired

    def observe(
        self, desired: DesiredState, recorded: RecordedState
    ) -> dict[tuple[str, str], LiveObservation]:
        """What every recorded binding's target holds now (see `certgit.reconciler.observe`)."""
        from certgit.reconciler.observe import observe

        return observe(desired, recorded, self.settings.state_dir, self.clock())

    def plan(
        self,
        desired: DesiredState | None = None,
        live: Mapping[tuple[str, str], LiveObservation] | None = None,
        *,
        refresh: bool = True,
        fallback: bool = False,
    ) -> Plan:
        """Compute the plan for the current commit against the recorded and live state.

        `refresh` (the default) observes every recorded binding live first;
        `refresh=False` trusts the records (terraform's -refresh=false). A plan
        whose actions are all still part of the latest saved Git plan continues
        that plan: it keeps its hash, so an approval survives the issuance and
        the deploys that already ran (see Plan.lineage). `fallback`: see desired().
        """
        polled = desired is None
        desired = desired if desired is not None else self.desired(fallback=fallback)
        recorded = self.store.recorded_state()
        if live is None and refresh:
            live = self.observe(desired, recorded)
        now = self.clock()
        cached = self._last_plan
        if (
            polled
            and not live
            and cached is not None
            and cached[0] == self._last_tree
            and cached[1] == recorded
            and cached[2].stable_until is not None
            and now < cached[2].stable_until
        ):
            return replace(cached[2], commit=desired.commit)
        plan = self._continue_lineage(diff(desired, recorded, live or {}, now))
        if polled and not live and self._last_tree is not None:
            self._last_plan = (self._last_tree, recorded, plan)
        return plan

    def _continue_lineage(self, plan: Plan) -> Plan:
        if plan.empty:
            return plan
        latest = self.store.latest_plan(origin="git")
        if latest is None or latest["hash"] == plan.own_hash:
            return plan
        saved = {str(a["id"]): bool(a.get("gated")) for a in latest["actions"]}
        if all(saved.get(a.id) == a.gated for a in plan.actions if a.id in saved) and all(
            a.id in saved for a in plan.actions
        ):
            return replace(plan, lineage=str(latest["hash"]))
        return plan

    def record_plan(self, plan: Plan, actor: str, *, enqueue: bool = False) -> bool:
        """Persist the plan (idempotent on its hash); audit it the first time. True if new.

        With `enqueue` its non-gated actions become outbox messages in the same
        transaction (re-enqueueing an already saved plan adds nothing twice).
        """
        if plan.empty:
            return False
        now = self.clock()
        actions = [a.to_dict() for a in plan.actions]
        if self.store.get_plan(plan.hash) is not None:
            if enqueue:
                self.store.save_plan(plan.hash, plan.commit, actions, now, enqueue=True)
            return False
        self.store.save_plan(plan.hash, plan.commit, actions, now, enqueue=enqueue)
        details: dict[str, Any] = {"commit": plan.commit, "actions": len(plan.actions)}
        self.store.audit(actor, "plan.recorded", plan.hash, details, now)
        return True

    def close(self) -> None:
        if "doc_cache" in self.__dict__:
            self.doc_cache.close()
        if "store" in self.__dict__:
            self.store.close()


# --------------------------------------------------------------------------- operations
# apply / approve / reject / rollback / release / retry: the same behaviour from the
# CLI, the daemon and the TUI.


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


def _gated_split(
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
    approved, _, _ = _gated_split(store, plan)
    if not approved:
        return {}
    decisions = [a for a in store.approvals(plan.hash) if a["decision"] == "approve"]
    out: dict[str, str] = {}
    for action in approved:
        own = [a for a in decisions if a["action_id"] == action.id]
        chosen = own or [a for a in decisions if a["action_id"] is None]
        out[action.id] = str(chosen[-1]["actor"]) if chosen else "?"
    return out


def apply(
    engine: Engine,
    actor: str,
    *,
    dry_run: bool = False,
    config: ExecutorConfig | None = None,
    refresh: bool = True,
) -> ApplyOutcome:
    """Poll, observe, plan, persist plan + outbox in one transaction, run the worker, re-plan.

    Gated actions run only with an approval bound to this plan's hash.
    """
    from certgit.reconciler.executor import Executor, ExecutorConfig, RunReport
    from certgit.reconciler.model import Drift
    from certgit.reconciler.store import outbox

    desired = engine.desired(fallback=True)  # the last good commit while the head is bad
    plan = engine.plan(desired, refresh=refresh)
    if dry_run:
        lines = dry_run_lines(engine, desired, plan)
        _, waiting, rejected = _gated_split(engine.store, plan)
        return ApplyOutcome(
            plan, plan, RunReport(), tuple(waiting), tuple(rejected), (), tuple(lines)
        )
    engine.record_plan(plan, actor, enqueue=True)
    if not plan.empty:
        approved, _, _ = _gated_split(engine.store, plan)
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
    )
    run = executor.run()
    final = engine.plan(desired, refresh=refresh)
    engine.record_plan(final, actor)
    _, waiting, rejected = _gated_split(engine.store, final)
    retrying = tuple(outbox.pending_retries(engine.store))
    abandoned = tuple(a for a in final.actions if a.drift == Drift.ABANDONED)
    waiting = [a for a in waiting if a.drift != Drift.ABANDONED]
    if final.empty and not run.failed and desired.commit:
        engine.store.set_source_state(LAST_APPLIED_COMMIT, desired.commit)
    return ApplyOutcome(
        plan, final, run, tuple(waiting), tuple(rejected), retrying, abandoned=abandoned
    )


def dry_run_lines(engine: Engine, desired: DesiredState, plan: Plan) -> list[str]:
    """What apply would do: preflight, grant and config checks per target; nothing is written."""
    from certgit.connectors.model import ChangeSet
    from certgit.reconciler.executor import build_bundle, default_loader, default_sandbox
    from certgit.reconciler.targets import target_spec

    lines: list[str] = []
    by_target: dict[str, list[Action]] = {}
    approved = {a.id for a in _gated_split(engine.store, plan)[0]}
    for action in plan.actions:
        if action.target is None:
            lines.append(f"would {action.kind} {action.certificate}: {action.reason}")
        elif action.gated and action.id not in approved:
            lines.append(
                f"would wait for approval: {action.kind} {action.certificate} -> "
                f"{action.target} (certgit approve {action.id})"
            )
        else:
            by_target.setdefault(action.target, []).append(action)
    recorded = engine.store.recorded_state() if by_target else None
    for name, actions in sorted(by_target.items()):
        target = desired.targets[name]
        bundles = []
        stand_in = False
        for action in actions:
            if action.kind == "remove":
                lines.append(f"{name}: would remove {action.certificate}")
                continue
            payload = action.to_dict()
            if action.version is None:
                lines.append(f"{name}: would deploy {action.certificate} as issued by this plan")
                dep = recorded.deployments.get((action.certificate, name)) if recorded else None
                if dep is None or dep.version is None:
                    continue
                # Not issued yet: the server's config is still tested, with the files in place.
                payload = {**payload, "version": dep.version, "fingerprint": dep.fingerprint}
                stand_in = True
            try:
                bundles.append(build_bundle(engine.store, desired, payload, name))
            except CertgitError as exc:
                lines.append(f"{name}: would fail: {exc}")
        if not bundles:
            continue
        try:
            spec = target_spec(target, engine.settings.state_dir, env=engine.env)
            connector = default_loader(target.type)
            sandbox = default_sandbox(connector, spec)
            check = getattr(connector, "validate_only", None)
            change = ChangeSet(spec, tuple(bundles))
            if check is None:
                lines.append(f"{name}: connector {target.type} has no dry run; would deploy")
                continue
            if stand_in:
                lines.append(
                    f"{name}: note    the new certificate is issued by the apply: the config "
                    "test runs with the files in place"
                )
                found = check(sandbox, change, always_test=True)
            else:
                found = check(sandbox, change)
            lines += [f"{name}: {line}" for line in found]
        except CertgitError as exc:
            lines += [f"{name}: {line}" for line in getattr(exc, "lines", ())]
            lines.append(f"{name}: would fail: {exc}")
            detail = str(getattr(exc, "detail", "") or "").strip()
            lines += [f"{name}:     {row}" for row in detail.splitlines()[:20]]
    return lines


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
        f"plan.{decision}d" if decision == "approve" else "plan.rejected",
        plan_hash if action_id is None else f"{plan_hash}/{action_id}",
        {"reason": reason, "action": action_id, "plan": plan_hash},
        now,
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
) -> RollbackOutcome:
    """Deploy a version the target served before, through the executor, and place a hold.

    Without --to: the version served on TARGET before the current one (its
    deploy history), never "current number - 1". With --to a version that was
    never served on the target, the rollback goes through the same approval
    gate as a deploy (the plan hash is deterministic, so `certgit approve HASH`
    followed by the same rollback command runs it). --to the version already
    deployed repairs the target's files.
    """
    from certgit.reconciler.executor import Executor, RunReport
    from certgit.reconciler.model import ActionKind, Drift
    from certgit.reconciler.planner import _Gate
    from certgit.reconciler.store import outbox
    from certgit.reconciler.store.history import previous_served, served_versions

    store = engine.store
    desired = engine.desired(fallback=True)
    if target not in desired.targets:
        raise CertgitError(f"target {target!r} is not in the desired state; check the name")
    recorded = store.recorded_state()
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
    if to_version is not None and certificate is None and len(bound) > 1:
        raise CertgitError("--to needs --certificate when the target has several certificates")
    gate = _Gate(desired)
    actions: list[Action] = []
    skipped: list[str] = []
    for cert in bound:
        dep = recorded.deployments[(cert, target)]
        history = store.deploy_history(target, cert)
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
        versions = {v.version: v for v in store.versions(cert, include_retired=True)}
        version = versions.get(want)
        if version is None:
            raise CertgitError(
                f"certificate {cert} has no version {want} to roll back to on {target}: "
                f"run `certgit history {target}` and pass --to VERSION"
            )
        served = served_versions(history) | ({dep.version} if dep.version else set())
        gated_by: tuple[str, ...] = ()
        if want not in served:
            gated_by = gate(ActionKind.DEPLOY, cert, target)
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
    plan = Plan(commit=desired.commit, actions=tuple(actions))
    now = engine.clock()
    store.save_plan(plan.hash, desired.commit, [a.to_dict() for a in plan.actions], now,
                    origin="operator")
    approved, waiting, rejected = _gated_split(store, plan)
    if rejected:
        raise CertgitError(
            f"rollback plan {plan.hash} was rejected: "
            + ", ".join(f"{a.certificate} v{a.version}" for a in rejected)
        )
    runnable = [a for a in plan.actions if not a.gated] + approved
    if waiting:
        store.audit(
            actor, "rollback.waiting", target,
            {"reason": reason, "plan": plan.hash,
             "versions": {a.certificate: a.version for a in waiting}},
            now,
        )
        return RollbackOutcome(target, {}, RunReport(), plan.hash, tuple(waiting), tuple(skipped))
    chosen = {a.certificate: int(a.version or 0) for a in runnable}
    for action in runnable:
        store.add_hold(target, action.certificate, action.fingerprint, reason, actor, now)
    store.enqueue_actions(plan.hash, [a.id for a in runnable], now)
    store.audit(
        actor,
        "rollback.requested",
        target,
        {"reason": reason, "versions": chosen, "plan": plan.hash},
        now,
    )
    del outbox  # rollback messages are operator work: no supersede here
    executor = Executor(
        store, engine.settings.state_dir, desired, actor=actor, clock=engine.clock, env=engine.env
    )
    run = executor.run(plan_hash=plan.hash)
    return RollbackOutcome(target, chosen, run, plan.hash, skipped=tuple(skipped))


def release(
    engine: Engine, target: str, *, certificate: str | None, actor: str, reason: str
) -> int:
    """Lift the hold(s) on a target (or one binding): Git wins again at the next apply.

    Queued rollback work for what is released is cancelled, so a retry of a
    failed rollback never outlives its hold.
    """
    from certgit.reconciler.store import outbox

    now = engine.clock()
    count = engine.store.release_hold(target, certificate)
    cancelled = outbox.cancel_binding_work(
        engine.store, now, target, certificate, kinds=("rollback",),
        reason=f"released by {actor}",
    )
    subject = target if certificate is None else f"{certificate} -> {target}"
    engine.store.audit(
        actor, "hold.released", subject,
        {"reason": reason, "released": count, "cancelled": cancelled}, now,
    )
    return count


def retry(
    engine: Engine, target: str | None, *, certificate: str | None, actor: str, reason: str
) -> int:
    """Re-arm abandoned, failed and waiting actions (of one target, or all): the next
    `apply` runs them at once with a fresh attempt budget. Audited."""
    from certgit.reconciler.store import outbox

    now = engine.clock()
    count = outbox.rearm(engine.store, now, target, certificate)
    subject = target or "*"
    if certificate is not None:
        subject = f"{certificate} -> {subject}"
    engine.store.audit(actor, "action.retried", subject, {"reason": reason, "rearmed": count}, now)
    return count
