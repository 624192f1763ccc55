"""The engine: the one place that wires source, loader, store and planner together.

The CLI, the daemon and the TUI all call these functions, so a command means
the same thing whichever door it comes through.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from certgit.reconciler.config import Settings, SettingsError
from certgit.reconciler.desired import DesiredLoader
from certgit.reconciler.errors import ConfigErrors, SourceError, UnsignedCommit
from certgit.reconciler.model import DesiredState, LiveObservation, RecordedState
from certgit.reconciler.planner import Plan, diff
from certgit.reconciler.statedir import StateDir
from certgit.reconciler.store.doccache import DocumentCache

if TYPE_CHECKING:
    from certgit.reconciler.signatures import CommitVerifier
    from certgit.reconciler.sitecheck import SiteCheck
    from certgit.reconciler.sitepolicy import SitePolicy
    from certgit.reconciler.sops import SopsDecryptor
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
    # The refused signature when the head (or a commit below it) is not signed by an
    # allowed key: {"commit", "verdict" (git's %G?), "signer", "key"}.
    signature: Mapping[str, str] | None = None

    @property
    def reason(self) -> str:
        if self.signature is not None:
            return "unsigned-head"
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
            "signature": dict(self.signature) if self.signature is not None else None,
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
        # (commit/gates key, recorded state, held rules) of gatepaths.inherited_gates
        self._path_gates: tuple[Any, RecordedState, tuple[Any, ...]] | None = None

    @cached_property
    def store(self) -> Store:
        from certgit.reconciler.store import Store

        return Store.open(
            self.settings.state_dir,
            env=self.env,
            create=self.create_state,
            audit_syslog=self.site.audit_syslog,  # [audit] syslog in the site policy
        )

    @cached_property
    def site(self) -> SitePolicy:
        """The operator's site policy (DESIGN §10), read once; SitePolicyError when invalid."""
        from certgit.reconciler.siteload import load_site_policy, locate_site_policy

        path, inline = locate_site_policy(
            str(self.settings.site_policy) if self.settings.site_policy else None,
            self.env,
            self.settings.site_inline,
            self.settings.config_file,
        )
        protected = [p for p in (self.settings.config_file,) if p is not None]
        return load_site_policy(path, inline=inline, protected=protected)

    @cached_property
    def doc_cache(self) -> DocumentCache:
        self.store  # noqa: B018 - the store creates the state dir with mode 0700 first
        return DocumentCache(StateDir(self.settings.state_dir).documents_db)

    @cached_property
    def loader(self) -> DesiredLoader:
        return DesiredLoader(cache=self.doc_cache, checks=[self.site_check], sops=self.sops)

    @cached_property
    def sops(self) -> SopsDecryptor:
        """Decrypts the commit's SOPS files with the site policy's age key (sops.py)."""
        from certgit.reconciler.sops import SopsDecryptor

        return SopsDecryptor(self.site.secrets.sops_age_key_file)

    @cached_property
    def site_check(self) -> SiteCheck:
        """The loader check that holds a commit to the site policy (sitecheck.py)."""
        from certgit.reconciler.sitecheck import SiteCheck

        return SiteCheck(self.site, self.settings.state_dir)

    def sandboxes(self, desired: DesiredState) -> Callable[[Any, Any], Any]:
        """Sandbox maker whose grants are the connector's within the site's bounds."""
        from certgit.reconciler.sitebounds import sandbox_factory

        labels = {name: dict(t.labels) for name, t in desired.targets.items()}
        return sandbox_factory(self.site, self.settings.state_dir, labels)

    @cached_property
    def signatures(self) -> CommitVerifier | None:
        """The site policy's signed-commit check (signatures.py); None when not required."""
        if not self.site.signatures.required:
            return None
        from certgit.reconciler.signatures import CommitVerifier

        return CommitVerifier(self.site.signatures, env=self.env)

    def _verify_signatures(self, commit: str) -> None:
        """UnsignedCommit unless `commit` and those since the last applied one are signed."""
        if self.signatures is not None:
            last_applied = self.store.last_applied_commit
            self.signatures.verify(self.source.mirror_path, commit, last_applied)

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
            self._verify_signatures(head)  # before loading: an unsigned commit is never read
            desired = self._load(snapshot)
        except (ConfigErrors, SourceError) as exc:
            if not fallback:
                raise
            good = self.last_good_commit()
            if good is None or good == head:
                raise
            kept: DesiredState | None = None
            try:
                self._verify_signatures(good)  # the fallback too, under today's policy
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
                signature=_refused_signature(exc),
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
                desired = self.loader.load(snapshot.files, snapshot.commit, snapshot.others)
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

        return observe(
            desired,
            recorded,
            self.settings.state_dir,
            self.clock(),
            sandbox_factory=self.sandboxes(desired),
        )

    def probe(self) -> dict[tuple[str, str], LiveObservation]:
        """Live observations of every recorded binding of the desired state in force."""
        return self.observe(self.desired(fallback=True), self.store.recorded_state())

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
        desired = self.gated(desired, recorded)
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

    def gated(self, desired: DesiredState, recorded: RecordedState | None = None) -> DesiredState:
        """`desired` with the gates Git cannot remove by itself: the site's approval
        rules, Git gates in force that this commit removes, changes or narrows
        (gates.py), and the gates of targets whose files another target would
        write over (gatepaths.py)."""
        import json

        from certgit.reconciler.gatepaths import inherited_gates
        from certgit.reconciler.gates import (
            GATES_IN_FORCE,
            GATES_PENDING,
            change,
            git_gates,
            held_over,
            site_gates,
        )

        recorded = recorded if recorded is not None else self.store.recorded_state()
        new = {**git_gates(desired), **site_gates(self.site.approvals, desired)}
        raw = self.store.get_source_state(GATES_IN_FORCE)
        in_force = json.loads(raw) if raw else None
        held: tuple[Any, ...] = ()
        if in_force is None or not (held := held_over(in_force, new)):
            # nothing weakened: added gates take effect at once, and are what is in force
            if in_force != new:
                raw = json.dumps(new, sort_keys=True)
                self.store.set_source_state(GATES_IN_FORCE, raw)
            in_force = new
        weaker = change(in_force, new)
        if weaker is not None:
            # what the `gates` action puts in force once approved (the executor reads it)
            pending = json.dumps({"hash": weaker.hash, "atoms": new}, sort_keys=True)
            if self.store.get_source_state(GATES_PENDING) != pending:
                self.store.set_source_state(GATES_PENDING, pending)
        gated = replace(
            desired,
            site_approvals=tuple(self.site.approvals),
            held_gates=held,
            gate_change=weaker,
        )
        # Following files costs a pass over every recorded deployment: once per
        # commit, gates in force and recorded state (a no-op re-poll reuses it).
        key = (desired.commit, raw, tuple(sorted(desired.targets)))
        memo = self._path_gates
        if memo is None or memo[0] != key or memo[1] != recorded:
            memo = (key, recorded, inherited_gates(gated, recorded, self.settings.state_dir))
            self._path_gates = memo
        if memo[2]:
            gated = replace(gated, held_gates=(*held, *memo[2]))
        return gated

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
        self.store.audit(actor, "plan.recorded", plan.hash, details, now, plan_hash=plan.hash)
        return True

    def close(self) -> None:
        if "doc_cache" in self.__dict__:
            self.doc_cache.close()
        if "store" in self.__dict__:
            self.store.close()


def _refused_signature(exc: Exception) -> dict[str, str] | None:
    if not isinstance(exc, UnsignedCommit):
        return None
    return {"commit": exc.commit, "verdict": exc.verdict, "signer": exc.signer, "key": exc.key}


_MOVED_TO_COMMANDS = frozenset(
    {
        "ApplyOutcome",
        "RollbackOutcome",
        "StalePlan",
        "apply",
        "approved_by",
        "decide",
        "decision_for",
        "release",
        "retry",
        "rollback",
    }
)


def __getattr__(name: str) -> object:
    # The operations moved to commands.py (the service API); old imports keep working.
    if name in _MOVED_TO_COMMANDS:
        from certgit.reconciler import commands

        return getattr(commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
