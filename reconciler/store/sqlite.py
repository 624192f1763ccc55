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

import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from certgit.reconciler.model import CertificateVersion, RecordedState
from certgit.reconciler.sealing import Sealer
from certgit.reconciler.store.audit import AuditLog, Subject
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
from certgit.reconciler.store.history import HistoryEntry
from certgit.reconciler.store.outbox import Outbox
from certgit.reconciler.store.plans import Plans
from certgit.reconciler.store.versions import Versions

__all__ = ["DB_FILE_NAME", "LAST_APPLIED_COMMIT", "LAST_SEEN_COMMIT", "Store", "db_timestamp"]


class Store:
    """The state store of one state directory. Use from the thread that opened it."""

    def __init__(self, conn: sqlite3.Connection | Database, sealer: Sealer, path: Path) -> None:
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
        self.audit_log = AuditLog(self._db)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        create: bool = True,
        master_key: bytes | None = None,
        env: Mapping[str, str] = os.environ,
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
        says whether this call made the store.
        """
        db, sealer, created = open_database(
            Path(state_dir), create=create, master_key=master_key, env=env
        )
        store = cls(db, sealer, db.path)
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

    # ------------------------------------------------------------------ versions

    def add_version(
        self,
        certificate: str,
        *,
        cert_pem: bytes,
        chain_pem: bytes,
        key_pem: bytes,
        spec_hash: str,
        issued_at: datetime,
        spec: Mapping[str, Any] | None = None,
    ) -> CertificateVersion:
        """Record a newly issued certificate as the next version; the key is sealed.

        `spec` is what it was issued from (Certificate.issued_spec()), kept for field diffs.
        """
        return self.versions_repo.add(
            certificate, cert_pem=cert_pem, chain_pem=chain_pem, key_pem=key_pem,
            spec_hash=spec_hash, issued_at=issued_at, spec=spec,
        )

    def version_material(self, certificate: str, version: int) -> tuple[bytes, bytes, bytes]:
        """(cert_pem, chain_pem, key_pem) of one version, the key decrypted."""
        return self.versions_repo.material(certificate, version)

    def version_certificate(self, certificate: str, version: int) -> bytes | None:
        """The leaf PEM of one version (public; the key stays sealed), or None."""
        return self.versions_repo.certificate(certificate, version)

    def versions(
        self, certificate: str, *, include_retired: bool = False
    ) -> list[CertificateVersion]:
        """Every recorded version of one certificate, oldest first."""
        return self.versions_repo.of(certificate, include_retired=include_retired)

    def retire_version(self, certificate: str, version: int, at: datetime) -> bool:
        """Mark a version retired (kept, but no longer offered); False if unknown."""
        return self.versions_repo.retire(certificate, version, at)

    # ------------------------------------------------------------------ deployments

    def record_deployment(
        self,
        certificate: str,
        target: str,
        *,
        fingerprint: str | None,
        version: int | None,
        at: datetime,
        error: str | None = None,
        files: Sequence[tuple[str, str, str]] | None = None,
        config: tuple[str, str] | None = None,
        history: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a deploy attempt (`Deployments.record`)."""
        self.deployments.record(
            certificate, target, fingerprint=fingerprint, version=version, at=at, error=error,
            files=files, config=config, history=history,
        )

    def remove_deployment(
        self,
        certificate: str,
        target: str,
        *,
        at: datetime | None = None,
        history: Mapping[str, Any] | None = None,
    ) -> None:
        """Forget a binding's deployment (after a successful remove action)."""
        self.deployments.remove(certificate, target, at=at, history=history)

    def deploy_history(
        self, target: str | None = None, certificate: str | None = None
    ) -> list[HistoryEntry]:
        """Versions that went live per (certificate, target), oldest first."""
        return self.deployments.history(target, certificate)

    def add_hold(
        self,
        target: str,
        certificate: str | None,
        fingerprint: str | None,
        reason: str,
        created_by: str,
        at: datetime,
    ) -> None:
        """Pin a binding (or a whole target when certificate is None); replaces an older pin."""
        self.deployments.add_hold(target, certificate, fingerprint, reason, created_by, at)

    def release_hold(self, target: str, certificate: str | None = None) -> int:
        """Release one binding's hold, or every hold of the target; return how many."""
        return self.deployments.release_hold(target, certificate)

    def recorded_state(self) -> RecordedState:
        """Everything the planner needs, from one snapshot; one query per table, no blobs."""
        return self.deployments.recorded_state()

    # ------------------------------------------------------------------ plans

    def save_plan(
        self,
        plan_hash: str,
        commit: str | None,
        actions: Sequence[Mapping[str, Any]],
        at: datetime,
        *,
        enqueue: bool = False,
        origin: str = "git",
    ) -> int:
        """Persist a plan (idempotent on its hash) and return its id.

        With ``enqueue`` the plan's non-gated actions become PENDING outbox rows in
        the same transaction (the outbox pattern); re-enqueueing is a no-op. An
        action that is ABANDONED under another plan stays abandoned (until
        `certgit retry`): a re-plan must not reset its attempts. `origin` is 'git'
        for plans of the desired state, 'operator' for rollbacks.
        """
        return self.plans.save(plan_hash, commit, actions, at, enqueue=enqueue, origin=origin)

    def enqueue_actions(self, plan_hash: str, action_ids: Sequence[str], at: datetime) -> int:
        """Enqueue saved actions of a plan (e.g. gated ones once approved); return rows added."""
        return self.plans.enqueue_actions(plan_hash, action_ids, at)

    def get_plan(self, plan_hash: str) -> dict[str, Any] | None:
        """The saved plan: id, hash, commit, created_at, actions (as saved); None if unknown."""
        return self.plans.get(plan_hash)

    def latest_plan(self, origin: str | None = None) -> dict[str, Any] | None:
        """The most recently saved plan (of one origin: 'git' or 'operator'), or None."""
        return self.plans.latest(origin)

    def plan_hashes(self, prefix: str) -> list[str]:
        """Saved plan hashes starting with `prefix`, newest first."""
        return self.plans.hashes(prefix)

    def outbox_rows(self, plan_hash: str | None = None) -> list[dict[str, Any]]:
        """Outbox messages (all, or one plan's), oldest first; a read-model for status views."""
        return self.outbox.rows(plan_hash)

    def add_approval(
        self,
        plan_hash: str,
        action_id: str | None,
        *,
        decision: str,
        actor: str,
        reason: str,
        at: datetime,
    ) -> None:
        """Record a `Decision` on a whole plan (action_id None) or on one action."""
        self.plans.add_approval(
            plan_hash, action_id, decision=decision, actor=actor, reason=reason, at=at
        )

    def approvals(self, plan_hash: str) -> list[dict[str, Any]]:
        """Every decision on one plan, oldest first."""
        return self.plans.approvals(plan_hash)

    # ------------------------------------------------------------------ source state

    def get_source_state(self, key: str) -> str | None:
        """A value of the Git source's bookkeeping (e.g. last_applied_commit), or None."""
        return self.source_state.get(key)

    def set_source_state(self, key: str, value: str) -> None:
        """Set one source bookkeeping value."""
        self.source_state.set(key, value)

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
        """Append one hash-chained audit row and return its seq.

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

    def verify_audit(self) -> int:
        """Verify the whole chain and head; return rows verified or raise `AuditChainBroken`."""
        return self.audit_log.verify()
