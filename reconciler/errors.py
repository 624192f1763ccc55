"""certgit's exception tree. Every error a user can meet says what to do next.

    CertgitError
    ├── ConfigError            bad YAML / schema / references; carries file, line, column
    │   └── ConfigErrors       every ConfigError of one commit, reported at once
    ├── SourceError            Git remote unreachable, ref vanished, history rewritten
    │   └── UnsignedCommit     a commit to apply lacks a good signature from an allowed key
    ├── StoreError             state store unreadable, migration failed, master key wrong
    │   ├── AuditChainBroken   an audit row was edited or deleted
    │   ├── StateMissing       no store in the state directory, and this command may not make one
    │   ├── StateIncomplete    a master key or CA without its state.db: never started afresh
    │   ├── StoreLocked        another process holds the write lock (temporary)
    │   └── UnsafeStateDir     state directory (or work/) writable by others or not ours
    ├── IssuanceError          the issuer could not produce a certificate
    ├── DeployError            see certgit.connectors.errors: PreflightFailed,
    │                          ValidateFailed, ReloadFailed, VerifyMismatch, RollbackFailed
    └── DeniedError            a sandbox grant was missing (certgit.connectors.errors)

`temporary` tells the executor whether retrying later can help. The root and
the connector errors live in `certgit.connectors.errors` (the lowest layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from certgit.connectors.errors import (
    CertgitError,
    DeniedError,
    DeployError,
    PreflightFailed,
    ReloadFailed,
    RollbackFailed,
    TransportError,
    ValidateFailed,
    VerifyMismatch,
)

__all__ = [
    "AuditChainBroken",
    "CertgitError",
    "ConfigError",
    "ConfigErrors",
    "DeniedError",
    "DeployError",
    "IssuanceError",
    "PreflightFailed",
    "Problem",
    "ReloadFailed",
    "RollbackFailed",
    "SourceError",
    "StateIncomplete",
    "StateMissing",
    "StoreError",
    "StoreLocked",
    "TransportError",
    "UnsafeStateDir",
    "UnsignedCommit",
    "ValidateFailed",
    "VerifyMismatch",
]


@dataclass(frozen=True, order=True)
class Problem:
    """One positioned problem in the desired-state repo.

    `path` is relative to the repo root (POSIX separators); `line` and
    `column` are 1-based. Sorting problems gives file order, then position.
    """

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class ConfigError(CertgitError):
    """One problem in the desired-state repo, with its position."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem

    @property
    def path(self) -> str:
        return self.problem.path

    @property
    def line(self) -> int:
        return self.problem.line

    @property
    def column(self) -> int:
        return self.problem.column


class ConfigErrors(ConfigError):
    """All problems of one commit. The commit is rejected as a whole."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: Sequence[Problem] = sorted(set(problems))
        if not self.problems:
            raise ValueError("ConfigErrors needs at least one problem")
        super().__init__(self.problems[0])
        self.args = ("\n".join(str(p) for p in self.problems),)


class SourceError(CertgitError):
    """The Git source could not give a commit; the last good commit stays in force.

    Temporary (a retry may help: remote unreachable) unless the commit itself is
    refused (history rewritten, path missing, no YAML): then only a new commit
    or a configuration change helps.
    """

    def __init__(self, message: str, *, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


class UnsignedCommit(SourceError):
    """The site policy requires signed commits and a commit to apply lacks a good signature
    from an allowed key (`certgit.reconciler.signatures`). Never temporary: only a commit
    signed by an allowed key, or the key added to the allowed signers, helps.

    `commit` is the first refused commit (newest first), `verdict` git's `%G?` letter
    for it (N no signature, U key not allowed, B bad, E cannot be checked, X/Y/R expired
    or revoked), `signer` and `key` what git said about its signature, and `refused`
    every refused (commit, verdict) of the checked range.
    """

    def __init__(
        self,
        message: str,
        *,
        commit: str,
        verdict: str,
        signer: str = "",
        key: str = "",
        refused: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message, temporary=False)
        self.commit = commit
        self.verdict = verdict
        self.signer = signer
        self.key = key
        self.refused = tuple(refused) or ((commit, verdict),)


class StoreError(CertgitError):
    """The state store could not be opened, migrated or read."""


class AuditChainBroken(StoreError):
    """The audit log's hash chain does not verify: a row was edited or deleted."""


class StateMissing(StoreError):
    """The state directory holds no store and the command may not create one.

    Only the commands that change state (init, apply, approve, reject, rollback,
    release, retry) create a state directory; a read-only command on a missing or
    mistyped one says so instead of starting an empty store.
    """


class StateIncomplete(StoreError):
    """A master key or CA directory is there but state.db is missing or empty.

    That is a lost or truncated store, not a fresh start: certgit refuses to
    create a second store (and a second CA of the same name) beside the old key.
    """


class UnsafeStateDir(StoreError):
    """The state directory or its work/ is writable by group/other or owned by another user."""


class StoreLocked(StoreError):
    """SQLite said "database is locked": another certgit process is writing. Retry later."""

    temporary = True


class IssuanceError(CertgitError):
    """An issuer could not produce the requested certificate."""
