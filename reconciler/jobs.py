"""What the executor works with and reports: one target's job, what its call did,
its result as the CLI prints it, and a whole run's report. Plain data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from certgit.connectors.model import Deployment as Bundle
from certgit.connectors.model import DeployReport, Removal, TargetSpec
from certgit.reconciler.issuance import IssueOutcome


@dataclass(frozen=True)
class TargetJob:
    """Everything a worker thread needs for one target; no store access needed."""

    spec: TargetSpec
    connector_type: str
    deployments: tuple[Bundle, ...]
    removals: tuple[Removal, ...]
    recorded: Mapping[str, str | None]  # certificate -> fingerprint recorded as deployed
    # certificate -> paths its last deploy wrote (stale ones are removed after a move)
    recorded_paths: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    owned: frozenset[str] = frozenset()  # every path certgit wrote on this target


@dataclass(frozen=True)
class TargetCall:
    """What happened on one target (returned by the worker thread)."""

    target: str
    report: DeployReport | None = None  # None: nothing had to be sent
    skipped: tuple[str, ...] = ()  # certificates already deployed and observed the same
    recovered: tuple[str, ...] = ()  # lines from crash recovery
    error: BaseException | None = None
    relocated: tuple[Removal, ...] = ()  # stale files of moved bindings, removed too


@dataclass(frozen=True)
class TargetResult:
    """One target's outcome as the CLI prints it."""

    target: str
    status: str  # deployed | unchanged | failed | retrying | abandoned
    certificates: Mapping[str, int | None] = field(default_factory=dict)  # name -> version
    removed: tuple[str, ...] = ()
    reloaded: bool = False
    validated: bool = False
    verified: bool = False
    error: str | None = None
    failed: Mapping[str, str] = field(default_factory=dict)  # certificate -> why (left out)


@dataclass(frozen=True)
class RunReport:
    """What one executor run did."""

    claimed: int = 0
    issued: tuple[IssueOutcome, ...] = ()
    issue_errors: Mapping[str, str] = field(default_factory=dict)
    targets: tuple[TargetResult, ...] = ()

    @property
    def failed(self) -> bool:
        # Any attempt that failed in this run is a failure (exit 1), whether it will be
        # retried or not: a retry later does not make this run a success.
        return (
            bool(self.issue_errors)
            or any(t.error is not None or t.status in ("failed", "abandoned") for t in self.targets)
            or any(t.failed for t in self.targets)
        )
