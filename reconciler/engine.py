"""The engine: the one place that wires source, loader, store and planner together.

The CLI, the daemon and the TUI all call these functions, so a command means
the same thing whichever door it comes through.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from certgit.reconciler.config import Settings, SettingsError
from certgit.reconciler.desired import DesiredLoader
from certgit.reconciler.doccache import DocumentCache
from certgit.reconciler.model import DesiredState, LiveObservation, RecordedState
from certgit.reconciler.planner import Plan, diff

if TYPE_CHECKING:
    from certgit.reconciler.source import GitSource
    from certgit.reconciler.store import Store

LAST_GOOD_COMMIT = "last_good_commit"


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
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.env = os.environ if env is None else env
        self._last_tree: str | None = None
        self._last_desired: DesiredState | None = None
        # (tree id, recorded state, plan): reused while nothing it depends on moved.
        self._last_plan: tuple[str, RecordedState, Plan] | None = None

    @cached_property
    def store(self) -> Store:
        from certgit.reconciler.store import Store

        return Store.open(self.settings.state_dir, env=self.env)

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
        return GitSource(config, self.settings.state_dir)

    def last_good_commit(self) -> str | None:
        return self.store.get_source_state(LAST_GOOD_COMMIT)

    def desired(self) -> DesiredState:
        """Poll the repository and return the validated desired state.

        Raises SourceError or ConfigErrors; the last good commit is then left
        as it was, so nothing downstream ever sees a half-read or invalid commit.
        """
        snapshot = self.source.poll(last_applied=self.store.last_applied_commit)
        if snapshot.tree == self._last_tree and self._last_desired is not None:
            desired = replace(self._last_desired, commit=snapshot.commit)
        else:
            try:
                desired = self.loader.load(snapshot.files, snapshot.commit)
            finally:
                self.doc_cache.flush()  # files with problems are worth keeping too
            self._last_tree = snapshot.tree
        self._last_desired = desired
        if self.store.get_source_state(LAST_GOOD_COMMIT) != snapshot.commit:
            self.store.set_source_state(LAST_GOOD_COMMIT, snapshot.commit)
        return desired

    def plan(
        self,
        desired: DesiredState | None = None,
        live: Mapping[tuple[str, str], LiveObservation] | None = None,
    ) -> Plan:
        """Compute the plan for the current commit against the recorded state.

        A re-poll that finds the same tree, an equal recorded state, no live
        observations and a clock before the plan's `stable_until` reuses the
        previous plan: the planner is pure, so it would return the same one.
        """
        polled = desired is None
        desired = desired if desired is not None else self.desired()
        recorded = self.store.recorded_state()
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
        plan = diff(desired, recorded, live or {}, now)
        if polled and not live and self._last_tree is not None:
            self._last_plan = (self._last_tree, recorded, plan)
        return plan

    def record_plan(self, plan: Plan, actor: str) -> bool:
        """Persist the plan (idempotent on its hash); audit it the first time. True if new."""
        if plan.empty or self.store.get_plan(plan.hash) is not None:
            return False
        now = self.clock()
        self.store.save_plan(plan.hash, plan.commit, [a.to_dict() for a in plan.actions], now)
        details: dict[str, Any] = {"commit": plan.commit, "actions": len(plan.actions)}
        self.store.audit(actor, "plan.recorded", plan.hash, details, now)
        return True

    def close(self) -> None:
        if "doc_cache" in self.__dict__:
            self.doc_cache.close()
        if "store" in self.__dict__:
            self.store.close()
