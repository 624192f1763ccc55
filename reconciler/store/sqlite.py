"""`Store`: the embedded state store (SQLite, WAL) as one facade over its repositories.

Every method delegates to one repository sharing the store's `Database`
(connection.py): `Versions`, `Deployments` (with holds and the
`recorded_state` read model), `SourceState`, `Plans` (with approvals),
`Outbox` and `AuditLog`. Callers use only this facade (and `store.outbox` for
the worker's verbs); no SQL runs outside the store package.

Thread model: one `Store` (one SQLite connection) per thread; use it from the
thread that opened it.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from certgit.reconciler.sealing import Sealer
from certgit.reconciler.statedir import StateDir
from certgit.reconciler.store.anchors import AuditKey
from certgit.reconciler.store.audit import AuditLog, ChainReport, Subject
from certgit.reconciler.store.connection import (
    DB_FILE_NAME,
    Database,
    db_timestamp,
    open_database,
)
from certgit.reconciler.store.deployments import (
    LAST_APPLIED_COMMIT,
    LAST_SEEN_COMMIT,
    Deployments,
    SourceState,
)
from certgit.reconciler.store.outbox import Outbox
from certgit.reconciler.store.plans import Plans
from certgit.reconciler.store.versions import Versions

__all__ = ["DB_FILE_NAME", "LAST_APPLIED_COMMIT", "LAST_SEEN_COMMIT", "Store", "db_timestamp"]


P = ParamSpec("P")
R = TypeVar("R")


def _delegate(repository: str, method: Callable[Concatenate[Any, P], R]) -> Callable[
    Concatenate[Store, P], R
]:
    """A `Store` method that calls `method` on the store's `repository` attribute.

    The facade keeps every public name of the old single-class store while each
    body lives once, in its repository; `functools.wraps` carries the repository
    method's docstring and signature (for help() and inspect), ParamSpec its types.
    """

    @functools.wraps(method)
    def call(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(getattr(self, repository), *args, **kwargs)

    return call


class Store:
    """The state store of one state directory. Use from the thread that opened it."""

    def __init__(
        self,
        conn: sqlite3.Connection | Database,
        sealer: Sealer,
        path: Path,
        *,
        audit_key: AuditKey,
        audit_syslog: bool = False,
    ) -> None:
        """Prefer `Store.open`; this only wires an already migrated connection."""
        self._db = conn if isinstance(conn, Database) else Database(conn, path)
        self._sealer = sealer
        self.path = path
        self.created = False  # True when `open` created this store
        self.versions_repo = Versions(self._db, sealer)
        self.deployments = Deployments(self._db)
        self.source_state = SourceState(self._db)
        self.outbox = Outbox(self._db)
        self.plans = Plans(self._db, self.outbox)
        self.audit_log = AuditLog(
            self._db, audit_key, StateDir(path.parent).audit_head, to_syslog=audit_syslog
        )

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        create: bool = True,
        master_key: bytes | None = None,
        env: Mapping[str, str] = os.environ,
        audit_syslog: bool = False,
    ) -> Store:
        """Open (creating and migrating as needed) ``state_dir/state.db``.

        Creates the directory with mode 0700 and the database with mode 0600. The
        master key comes from ``master_key`` or `load_master_key`; a key that
        differs from the one the store was first opened with is refused.

        With ``create=False`` a missing directory or store raises `StateMissing`
        and nothing at all is created. Either way a master key or CA directory
        without a non-empty state.db raises `StateIncomplete` (a lost store is
        never silently replaced), and a directory writable by group/other or
        owned by another user raises `UnsafeStateDir`. `created` on the result
        says whether this call made the store. ``audit_syslog`` also sends every
        audit entry to the system log (`AuditLog`; the site policy's ``[audit]
        syslog``).
        """
        db, sealer, created, audit_key = open_database(
            Path(state_dir), create=create, master_key=master_key, env=env
        )
        store = cls(db, sealer, db.path, audit_key=audit_key, audit_syslog=audit_syslog)
        store.created = created
        return store

    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for the store's own modules and tests. Autocommit mode."""
        return self._db.conn

    @property
    def key_id(self) -> str:
        """Identifier of the master key in use (not secret)."""
        return self._sealer.key_id

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction (`Database.transaction`): for the store's modules and tests."""
        with self._db.transaction(write=write) as conn:
            yield conn

    # ------------------------------------------------------------------ repositories
    # Each of these is the repository method of the same purpose (its signature and
    # docstring), called on this store's repository: see `_delegate`.

    add_version = _delegate("versions_repo", Versions.add)
    add_issued = _delegate("versions_repo", Versions.add_issued)
    version_material = _delegate("versions_repo", Versions.material)
    version_certificate = _delegate("versions_repo", Versions.certificate)
    versions = _delegate("versions_repo", Versions.of)
    retire_version = _delegate("versions_repo", Versions.retire)

    record_deployment = _delegate("deployments", Deployments.record)
    remove_deployment = _delegate("deployments", Deployments.remove)
    deploy_history = _delegate("deployments", Deployments.history)
    add_hold = _delegate("deployments", Deployments.add_hold)
    release_hold = _delegate("deployments", Deployments.release_hold)
    recorded_state = _delegate("deployments", Deployments.recorded_state)

    save_plan = _delegate("plans", Plans.save)
    enqueue_actions = _delegate("plans", Plans.enqueue_actions)
    get_plan = _delegate("plans", Plans.get)
    latest_plan = _delegate("plans", Plans.latest)
    plan_hashes = _delegate("plans", Plans.hashes)
    add_approval = _delegate("plans", Plans.add_approval)
    approvals = _delegate("plans", Plans.approvals)
    outbox_rows = _delegate("outbox", Outbox.rows)

    get_source_state = _delegate("source_state", SourceState.get)
    set_source_state = _delegate("source_state", SourceState.set)

    @property
    def last_applied_commit(self) -> str | None:
        """The commit whose plan was last applied in full."""
        return self.source_state.get(LAST_APPLIED_COMMIT)

    # ------------------------------------------------------------------ audit

    def audit(
        self,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any],
        at: datetime,
        *,
        certificate: str | None = None,
        target: str | None = None,
        plan_hash: str | None = None,
        action_id: str | None = None,
        version: int | None = None,
    ) -> int:
        """Append one keyed audit row (and advance the head file); return its seq.

        `action` is an `AuditEvent` (or its text). The keyword arguments fill the
        row's subject columns, which `audit_rows` filters on (see audit.py).
        ``details`` should hold no secrets (fingerprints and names only); as a
        defence every PEM block in it is redacted (`audit.redact`) before it is
        stored. Text that merely mentions a private key (server output) is kept.
        """
        columns = Subject(certificate, target, plan_hash, action_id, version)
        return self.audit_log.append(actor, action, subject, details, at, columns)

    def audit_rows(
        self,
        *,
        since_seq: int = 0,
        limit: int | None = None,
        certificate: str | None = None,
        target: str | None = None,
        plan_hash: str | None = None,
        action_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Audit rows with seq > since_seq, oldest first (details parsed, at as datetime).

        The keyword filters match the subject columns; `plan_hash` and `action_id`
        also match a deploy row of several plans/actions that lists them in details.
        """
        where = {
            k: v
            for k, v in (
                ("certificate", certificate), ("target", target),
                ("plan_hash", plan_hash), ("action_id", action_id),
            )
            if v is not None
        }
        return self.audit_log.rows(since_seq=since_seq, limit=limit, where=where)

    def audit_batch(self) -> Any:
        """Context manager: the audit head file is written once when it ends (see
        `AuditLog.deferred_head`); the rows themselves are committed as usual."""
        return self.audit_log.deferred_head()

    def verify_audit(self) -> int:
        """Verify the whole chain, head and head file; return rows verified or raise
        `AuditChainBroken`."""
        return self.audit_log.verify()

    def check_audit(self) -> ChainReport:
        """`verify_audit` with the details: unkeyed rows, how far the head file lags."""
        return self.audit_log.check()

    def anchor_audit(self, actor: str, reason: str, at: datetime) -> ChainReport:
        """Re-anchor the head file to state.db as it is, recorded as an audit row
        (`AuditLog.anchor`); an edited row still raises `AuditChainBroken`."""
        return self.audit_log.anchor(actor, reason, at)

    @property
    def audit_head_file(self) -> Path:
        """`<state>/audit.head`: where the audit chain is anchored outside state.db."""
        return self.audit_log.head_file
