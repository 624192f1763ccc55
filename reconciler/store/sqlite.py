"""The embedded state store: SQLite in WAL mode in the state directory.

Transactions are explicit (the connection is in autocommit mode): every write
runs in ``BEGIN IMMEDIATE`` so writers serialise up front instead of failing
on lock upgrade, and multi-table reads run in one read transaction so they see
one snapshot. ``synchronous=FULL`` makes a commit durable before it returns,
which the outbox relies on.

Timestamps are timezone-aware UTC datetimes in Python and fixed-width ISO-8601
text (microseconds, ``+00:00``) in SQLite, so text order is time order.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certgit.reconciler.errors import StateIncomplete, StateMissing, StoreError
from certgit.reconciler.model import (
    CertificateVersion,
    Deployment,
    Hold,
    RecordedState,
    canonical_json,
)
from certgit.reconciler.sealing import (
    ENV_KEY,
    ENV_KEY_FILE,
    KEY_FILE_NAME,
    Sealer,
    load_master_key,
)
from certgit.reconciler.statedir import CA_DIR_NAME, check_private_dir
from certgit.reconciler.store import audit as _audit
from certgit.reconciler.store import history as _history
from certgit.reconciler.store.migrate import connect, migrate

__all__ = ["DB_FILE_NAME", "LAST_APPLIED_COMMIT", "LAST_SEEN_COMMIT", "Store"]

DB_FILE_NAME = "state.db"
LAST_APPLIED_COMMIT = "last_applied_commit"
LAST_SEEN_COMMIT = "last_seen_commit"
_META_KEY_ID = "master_key_id"

_VERSION_COLUMNS = (
    "certificate, version, fingerprint, serial, not_before, not_after, spec_hash, issued_at"
)
_VERSION_COLUMNS_SPEC = _VERSION_COLUMNS + ", spec_json"


def db_timestamp(at: datetime) -> str:
    """Datetime → fixed-width ISO-8601 UTC text. Naive datetimes are a caller bug."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"timestamp {at!r} has no timezone: pass an aware UTC datetime")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _dt_or_none(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


_TIME_COLUMNS = frozenset(
    {"at", "created_at", "updated_at", "lease_until", "next_attempt_at", "issued_at"}
)


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """Rows as dicts; ``*_json`` columns parsed (key without the suffix), times as datetimes."""
    names = [d[0] for d in cursor.description]
    out = []
    for row in cursor:
        item: dict[str, Any] = {}
        for name, value in zip(names, row, strict=True):
            if name.endswith("_json"):
                item[name.removesuffix("_json")] = json.loads(value)
            elif name in _TIME_COLUMNS:
                item[name] = _dt_or_none(value)
            else:
                item[name] = value
        out.append(item)
    return out


def _version_from_row(row: Sequence[Any]) -> CertificateVersion:
    return CertificateVersion(
        certificate=row[0],
        version=row[1],
        fingerprint=row[2],
        serial=row[3],
        not_before=_dt(row[4]),
        not_after=_dt(row[5]),
        spec_hash=row[6],
        issued_at=_dt(row[7]),
        spec_json=row[8] if len(row) > 8 else None,
    )


def _files(text: str | None) -> tuple[tuple[str, str, str], ...]:
    if not text:
        return ()
    return tuple((str(p), str(r), str(h)) for p, r, h in json.loads(text))


def _key_aad(certificate: str, fingerprint: str) -> bytes:
    return f"{certificate}:{fingerprint}".encode()


# ---------------------------------------------------------------------- first contact


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise StoreError(
            f"cannot read state directory {path} ({exc.strerror}): check its owner and "
            "permissions, or choose another --state-dir"
        ) from None
    return True


def _has_store(db_path: Path) -> bool:
    """A state.db with content (a SQLite store has at least one 4 KiB page once created)."""
    try:
        return db_path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _state_missing(state_dir: Path, why: str) -> StateMissing:
    return StateMissing(
        f"no certgit state in {state_dir} ({why}): run `certgit init` to create it "
        "(`certgit apply` also creates it on first use), or check --state-dir / "
        "CERTGIT_STATE_DIR"
    )


@contextmanager
def _dir_lock(state_dir: Path) -> Iterator[None]:
    """An exclusive flock(2) on the state directory itself: creates no file."""
    try:
        fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StoreError(
            f"cannot open state directory {state_dir} ({exc.strerror}): check its owner "
            "and permissions"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_first_contact(state_dir: Path, db_path: Path, *, create: bool) -> bool:
    """Under the directory lock: True when a store must be created now.

    False when another process finished creating it meanwhile. Raises
    `StateIncomplete` when a master key or CA is left without its store, and
    `StateMissing` when there is no store and `create` is False.
    """
    if _has_store(db_path):
        return False
    how = "is empty (zero bytes)" if db_path.exists() else "is missing"
    leftovers = [
        name
        for name in (KEY_FILE_NAME, f"{CA_DIR_NAME}/")
        if os.path.lexists(state_dir / name.rstrip("/"))
    ]
    if leftovers:
        moved = shlex.quote(f"{state_dir}.old")
        raise StateIncomplete(
            f"{state_dir} holds {' and '.join(leftovers)} but its state store {db_path} {how}: "
            "this is a lost or damaged store, not a fresh state directory, and certgit will "
            "not start a second store (and a second CA) beside it. Restore "
            f"{DB_FILE_NAME} from a backup, or move the directory aside to start fresh "
            f"(`mv {shlex.quote(str(state_dir))} {moved}`)"
        )
    if not create:
        raise _state_missing(state_dir, f"{DB_FILE_NAME} {how}")
    return True


class Store:
    """The state store of one state directory. Use from the thread that opened it."""

    def __init__(self, conn: sqlite3.Connection, sealer: Sealer, path: Path) -> None:
        """Prefer `Store.open`; this only wires an already migrated connection."""
        self._conn = conn
        self._sealer = sealer
        self.path = path
        self.created = False  # True when `open` created this store

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
        state_dir = Path(state_dir)
        db_path = state_dir / DB_FILE_NAME
        if not _exists(state_dir):
            if not create:
                raise _state_missing(state_dir, "the directory does not exist")
            try:
                state_dir.mkdir(mode=0o700, parents=True)
                os.chmod(state_dir, 0o700)  # mkdir's mode is filtered by the umask
            except FileExistsError:
                pass  # created concurrently; its mode is checked below
            except OSError as exc:
                raise StoreError(
                    f"cannot create state directory {state_dir} ({exc.strerror}): "
                    "create it yourself (mode 0700) or choose another --state-dir"
                ) from None
        check_private_dir(state_dir)
        with ExitStack() as first_contact:
            created = False
            if not _has_store(db_path):
                # Decide "fresh" under a lock on the directory, so a concurrent first
                # open is waited for instead of being mistaken for a lost store.
                first_contact.enter_context(_dir_lock(state_dir))
                created = _check_first_contact(state_dir, db_path, create=create)
            if master_key is None:
                key_file = state_dir / KEY_FILE_NAME
                from_env = env.get(ENV_KEY_FILE) or env.get(ENV_KEY)
                if not from_env and not created and not key_file.exists():
                    # Generating a fresh key here would only fail later, and leave a wrong key.
                    raise StoreError(
                        f"state store {db_path} exists but its master key {key_file} is "
                        f"missing: restore that file from a backup, or set {ENV_KEY_FILE} / "
                        f"{ENV_KEY} to the key the store was created with"
                    )
                master_key = load_master_key(state_dir, env)
            sealer = Sealer(master_key)
            conn = connect(db_path)
            store = cls(conn, sealer, db_path)
            store.created = created
            try:
                migrate(conn, where=str(db_path))
                store._check_master_key()
            except BaseException:
                conn.close()
                raise
        return store

    def _check_master_key(self) -> None:
        with self.transaction():
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key = ?", (_META_KEY_ID,)
            ).fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    (_META_KEY_ID, self._sealer.key_id),
                )
                return
        if row[0] != self._sealer.key_id:
            raise StoreError(
                f"state store {self.path} was created with master key {row[0]}, but the "
                f"key given now is {self._sealer.key_id}: set {ENV_KEY_FILE} (or {ENV_KEY}) "
                "to the original key, or restore the original master.key file; the sealed "
                "private keys cannot be decrypted with another key"
            )

    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        self._conn.close()

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
        """The raw connection, for store extensions (outbox worker). Autocommit mode."""
        return self._conn

    @property
    def key_id(self) -> str:
        """Identifier of the master key in use (not secret)."""
        return self._sealer.key_id

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: ``BEGIN IMMEDIATE`` for writes, a snapshot read otherwise.

        Commits on success, rolls back on any exception. Not re-entrant.
        """
        try:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise self._store_error(exc) from exc
        try:
            yield self._conn
        except sqlite3.Error as exc:
            self._conn.execute("ROLLBACK")
            raise self._store_error(exc) from exc
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise self._store_error(exc) from exc

    def _store_error(self, exc: sqlite3.Error) -> StoreError:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            error = StoreError(
                f"state store {self.path} is locked by another certgit process: "
                "retry when it is done"
            )
            error.temporary = True
            return error
        return StoreError(f"state store {self.path} refused the change: {exc}")

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
        try:
            leaf = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise StoreError(
                f"certificate {certificate!r}: cert_pem is not a PEM X.509 certificate; "
                "the issuer returned something unexpected"
            ) from None
        self._check_key_pair(certificate, leaf, key_pem)
        fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
        sealed = self._sealer.seal(key_pem, _key_aad(certificate, fingerprint))
        with self.transaction() as conn:
            existing = conn.execute(
                "SELECT certificate, version FROM certificate_versions WHERE fingerprint = ?",
                (fingerprint,),
            ).fetchone()
            if existing is not None:
                raise StoreError(
                    f"certificate {fingerprint} is already recorded as {existing[0]} "
                    f"version {existing[1]}: issue a new certificate instead of re-adding it"
                )
            (version,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM certificate_versions "
                "WHERE certificate = ?",
                (certificate,),
            ).fetchone()
            row = (
                certificate,
                version,
                fingerprint,
                format(leaf.serial_number, "x"),
                db_timestamp(leaf.not_valid_before_utc),
                db_timestamp(leaf.not_valid_after_utc),
                spec_hash,
                db_timestamp(issued_at),
            )
            spec_json = None if spec is None else canonical_json(dict(spec))
            conn.execute(
                f"INSERT INTO certificate_versions ({_VERSION_COLUMNS}, spec_json, cert_pem, "
                "chain_pem, key_sealed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, spec_json, cert_pem, chain_pem, sealed),
            )
        return _version_from_row((*row, spec_json))

    @staticmethod
    def _check_key_pair(certificate: str, leaf: x509.Certificate, key_pem: bytes) -> None:
        try:
            # Keys come from our own issuers: skip RSA's slow consistency check.
            key = serialization.load_pem_private_key(
                key_pem, password=None, unsafe_skip_rsa_key_validation=True
            )
        except (ValueError, TypeError):
            raise StoreError(
                f"certificate {certificate!r}: key_pem is not an unencrypted PEM private "
                "key; the issuer returned something unexpected"
            ) from None
        der = serialization.Encoding.DER
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
            raise StoreError(
                f"certificate {certificate!r}: the private key does not match the "
                "certificate's public key; it was not stored, re-issue the certificate"
            )

    def version_material(self, certificate: str, version: int) -> tuple[bytes, bytes, bytes]:
        """(cert_pem, chain_pem, key_pem) of one version, the key decrypted."""
        row = self._conn.execute(
            "SELECT fingerprint, cert_pem, chain_pem, key_sealed FROM certificate_versions "
            "WHERE certificate = ? AND version = ?",
            (certificate, version),
        ).fetchone()
        if row is None:
            raise StoreError(
                f"certificate {certificate!r} has no version {version}: run "
                f"`certgit history {certificate}` to list the recorded versions"
            )
        fingerprint, cert_pem, chain_pem, sealed = row
        key_pem = self._sealer.unseal(sealed, _key_aad(certificate, fingerprint))
        return bytes(cert_pem), bytes(chain_pem), key_pem

    def version_certificate(self, certificate: str, version: int) -> bytes | None:
        """The leaf PEM of one version (public; the key stays sealed), or None."""
        row = self._conn.execute(
            "SELECT cert_pem FROM certificate_versions WHERE certificate = ? AND version = ?",
            (certificate, version),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def versions(self, certificate: str, *, include_retired: bool = False) -> list[
        CertificateVersion
    ]:
        """Every recorded version of one certificate, oldest first."""
        sql = f"SELECT {_VERSION_COLUMNS_SPEC} FROM certificate_versions WHERE certificate = ?"
        if not include_retired:
            sql += " AND retired_at IS NULL"
        rows = self._conn.execute(sql + " ORDER BY version", (certificate,)).fetchall()
        return [_version_from_row(r) for r in rows]

    def retire_version(self, certificate: str, version: int, at: datetime) -> bool:
        """Mark a version retired (kept, but no longer offered); False if unknown."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE certificate_versions SET retired_at = ? "
                "WHERE certificate = ? AND version = ? AND retired_at IS NULL",
                (db_timestamp(at), certificate, version),
            )
        return cur.rowcount > 0

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
        """Record a deploy attempt. A failure keeps the last successful fingerprint/version.

        On success `files` ((path, role, sha256) written) and `config` ((hash, json) of
        the binding config) replace the recorded ones, and `history` (kind, actor,
        commit, plan_hash, action_id) appends a deploy_history row when the version
        served on the target changed (or the files were repaired).
        """
        stamp = db_timestamp(at)
        with self.transaction() as conn:
            if error is None:
                before = conn.execute(
                    "SELECT fingerprint, version FROM deployments "
                    "WHERE certificate = ? AND target = ?",
                    (certificate, target),
                ).fetchone()
                files_json = None if files is None else canonical_json([list(f) for f in files])
                config_hash, config_json = config if config is not None else (None, None)
                conn.execute(
                    "INSERT INTO deployments (certificate, target, fingerprint, version, "
                    "updated_at, last_error, attempts, last_attempt_fingerprint, files_json, "
                    "config_hash, config_json) "
                    "VALUES (?, ?, ?, ?, ?, NULL, 0, ?, ?, ?, ?) "
                    "ON CONFLICT (certificate, target) DO UPDATE SET "
                    "fingerprint = excluded.fingerprint, version = excluded.version, "
                    "updated_at = excluded.updated_at, last_error = NULL, attempts = 0, "
                    "last_attempt_fingerprint = excluded.last_attempt_fingerprint, "
                    "files_json = COALESCE(excluded.files_json, deployments.files_json), "
                    "config_hash = COALESCE(excluded.config_hash, deployments.config_hash), "
                    "config_json = COALESCE(excluded.config_json, deployments.config_json)",
                    (certificate, target, fingerprint, version, stamp, fingerprint,
                     files_json, config_hash, config_json),
                )
                if history is not None and fingerprint is not None and version is not None:
                    changed = before is None or before[0] != fingerprint
                    if changed or history.get("kind") in ("repair", "rollback"):
                        _history.append(
                            conn, certificate, target, version, fingerprint,
                            before[1] if before else None, before[0] if before else None,
                            history, stamp,
                        )
            else:
                conn.execute(
                    "INSERT INTO deployments (certificate, target, fingerprint, version, "
                    "updated_at, last_error, attempts, last_attempt_fingerprint) "
                    "VALUES (?, ?, NULL, NULL, ?, ?, 1, ?) "
                    "ON CONFLICT (certificate, target) DO UPDATE SET "
                    "updated_at = excluded.updated_at, last_error = excluded.last_error, "
                    "attempts = deployments.attempts + 1, "
                    "last_attempt_fingerprint = excluded.last_attempt_fingerprint",
                    (certificate, target, stamp, error, fingerprint),
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
        with self.transaction() as conn:
            before = conn.execute(
                "SELECT fingerprint, version FROM deployments WHERE certificate = ? AND target = ?",
                (certificate, target),
            ).fetchone()
            conn.execute(
                "DELETE FROM deployments WHERE certificate = ? AND target = ?",
                (certificate, target),
            )
            if history is not None and at is not None and before and before[0] is not None:
                _history.append(
                    conn, certificate, target, int(before[1] or 0), str(before[0]),
                    before[1], before[0], {**history, "kind": "remove"}, db_timestamp(at),
                )

    def deploy_history(
        self, target: str | None = None, certificate: str | None = None
    ) -> list[_history.HistoryEntry]:
        """Versions that went live per (certificate, target), oldest first."""
        return _history.read(self._conn, target=target, certificate=certificate)

    # ------------------------------------------------------------------ holds

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
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO holds (target, certificate, fingerprint, reason, created_by, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (target, COALESCE(certificate, '')) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, reason = excluded.reason, "
                "created_by = excluded.created_by, created_at = excluded.created_at",
                (target, certificate, fingerprint, reason, created_by, db_timestamp(at)),
            )

    def release_hold(self, target: str, certificate: str | None = None) -> int:
        """Release one binding's hold, or every hold of the target; return how many."""
        with self.transaction() as conn:
            if certificate is None:
                cur = conn.execute("DELETE FROM holds WHERE target = ?", (target,))
            else:
                cur = conn.execute(
                    "DELETE FROM holds WHERE target = ? AND certificate = ?",
                    (target, certificate),
                )
        return cur.rowcount

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
        stamp = db_timestamp(at)
        with self.transaction() as conn:
            row = conn.execute("SELECT id FROM plans WHERE hash = ?", (plan_hash,)).fetchone()
            if row is not None:
                plan_id = int(row[0])
            else:
                cur = conn.execute(
                    "INSERT INTO plans (hash, commit_id, created_at, actions_json, origin) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (plan_hash, commit, stamp, canonical_json([dict(a) for a in actions]),
                     origin),
                )
                plan_id = int(cur.lastrowid or 0)
                conn.executemany(
                    "INSERT INTO plan_actions (plan_id, action_id, position, kind, "
                    "certificate, target, fingerprint, drift, reason, gated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            plan_id,
                            str(a["id"]),
                            position,
                            str(a["kind"]),
                            a.get("certificate"),
                            a.get("target"),
                            a.get("fingerprint"),
                            None if a.get("drift") is None else str(a["drift"]),
                            a.get("reason") or "",
                            1 if a.get("gated") else 0,
                        )
                        for position, a in enumerate(actions)
                    ],
                )
            if enqueue:
                self._enqueue(conn, plan_hash, [a for a in actions if not a.get("gated")], stamp)
        return plan_id

    @staticmethod
    def _enqueue(
        conn: sqlite3.Connection, plan_hash: str, actions: Sequence[Mapping[str, Any]], stamp: str
    ) -> int:
        ids = [str(a["id"]) for a in actions]
        abandoned: dict[str, tuple[int, str | None]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for action_id, attempts, error in conn.execute(
                "SELECT action_id, attempts, last_error FROM outbox WHERE state = 'ABANDONED' "
                f"AND plan_hash != ? AND action_id IN ({marks})",
                (plan_hash, *chunk),
            ):
                abandoned[str(action_id)] = (int(attempts), error)
        if abandoned:
            conn.executemany(
                "INSERT OR IGNORE INTO outbox (plan_hash, action_id, target, payload_json, "
                "state, attempts, last_error, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'ABANDONED', ?, ?, ?, ?)",
                [
                    (plan_hash, str(a["id"]), a.get("target"), canonical_json(dict(a)),
                     abandoned[str(a["id"])][0], abandoned[str(a["id"])][1], stamp, stamp)
                    for a in actions
                    if str(a["id"]) in abandoned
                ],
            )
            actions = [a for a in actions if str(a["id"]) not in abandoned]
        # An action the current plan still needs runs again even if an earlier run of
        # the same plan finished it (files changed behind certgit's back since) or a
        # hold cancelled it; its payload follows the plan (the version may be known now).
        cur = conn.executemany(
            "INSERT INTO outbox (plan_hash, action_id, target, payload_json, "
            "state, created_at, updated_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, 'PENDING', ?, ?, ?) "
            "ON CONFLICT (plan_hash, action_id) DO UPDATE SET "
            "payload_json = excluded.payload_json, "
            "attempts = CASE WHEN outbox.state = 'COMPLETED' THEN 0 ELSE outbox.attempts END, "
            "state = CASE WHEN outbox.state IN ('COMPLETED', 'CANCELLED') THEN 'PENDING' "
            "ELSE outbox.state END, "
            "next_attempt_at = CASE WHEN outbox.state IN ('COMPLETED', 'CANCELLED') "
            "THEN excluded.next_attempt_at ELSE outbox.next_attempt_at END, "
            "updated_at = excluded.updated_at",
            [
                (plan_hash, str(a["id"]), a.get("target"), canonical_json(dict(a)), stamp, stamp,
                 stamp)
                for a in actions
            ],
        )
        return cur.rowcount

    def enqueue_actions(self, plan_hash: str, action_ids: Sequence[str], at: datetime) -> int:
        """Enqueue saved actions of a plan (e.g. gated ones once approved); return rows added."""
        with self.transaction() as conn:
            plan = self._get_plan(conn, plan_hash)
            if plan is None:
                raise StoreError(f"no saved plan {plan_hash}: run `certgit plan` first")
            wanted = set(action_ids)
            chosen = [a for a in plan["actions"] if str(a["id"]) in wanted]
            unknown = wanted - {str(a["id"]) for a in chosen}
            if unknown:
                raise StoreError(
                    f"plan {plan_hash} has no action {sorted(unknown)[0]!r}: the plan may "
                    "have changed, run `certgit plan` again"
                )
            return self._enqueue(conn, plan_hash, chosen, db_timestamp(at))

    def get_plan(self, plan_hash: str) -> dict[str, Any] | None:
        """The saved plan: id, hash, commit, created_at, actions (as saved); None if unknown."""
        return self._get_plan(self._conn, plan_hash)

    def latest_plan(self, origin: str | None = None) -> dict[str, Any] | None:
        """The most recently saved plan (of one origin: 'git' or 'operator'), or None."""
        if origin is None:
            row = self._conn.execute("SELECT hash FROM plans ORDER BY id DESC LIMIT 1").fetchone()
        else:
            row = self._conn.execute(
                "SELECT hash FROM plans WHERE origin = ? ORDER BY id DESC LIMIT 1", (origin,)
            ).fetchone()
        return None if row is None else self._get_plan(self._conn, row[0])

    def plan_hashes(self, prefix: str) -> list[str]:
        """Saved plan hashes starting with `prefix`, newest first."""
        rows = self._conn.execute(
            "SELECT hash FROM plans WHERE substr(hash, 1, ?) = ? ORDER BY id DESC",
            (len(prefix), prefix),
        ).fetchall()
        return [str(r[0]) for r in rows]

    @staticmethod
    def _get_plan(conn: sqlite3.Connection, plan_hash: str) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT id, hash, commit_id, created_at, actions_json, origin FROM plans "
            "WHERE hash = ?",
            (plan_hash,),
        ).fetchone()
        if row is None:
            return None
        return {
            "id": row[0],
            "hash": row[1],
            "commit": row[2],
            "created_at": _dt(row[3]),
            "actions": json.loads(row[4]),
            "origin": row[5],
        }

    def outbox_rows(self, plan_hash: str | None = None) -> list[dict[str, Any]]:
        """Outbox messages (all, or one plan's), oldest first; a read-model for status views."""
        sql = (
            "SELECT id, plan_hash, action_id, target, payload_json, state, attempts, "
            "lease_owner, lease_until, next_attempt_at, last_error, created_at, updated_at "
            "FROM outbox"
        )
        params: tuple[str, ...] = ()
        if plan_hash is not None:
            sql += " WHERE plan_hash = ?"
            params = (plan_hash,)
        return _dicts(self._conn.execute(sql + " ORDER BY id", params))

    # ------------------------------------------------------------------ approvals

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
        """Record an approve/reject of a whole plan (action_id None) or one action."""
        if decision not in ("approve", "reject"):
            raise ValueError(f"decision must be 'approve' or 'reject', not {decision!r}")
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM plans WHERE hash = ?", (plan_hash,)).fetchone() is None:
                raise StoreError(
                    f"no saved plan {plan_hash}: run `certgit plan` and approve the hash "
                    "it prints"
                )
            conn.execute(
                "INSERT INTO approvals (plan_hash, action_id, decision, actor, reason, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (plan_hash, action_id, decision, actor, reason, db_timestamp(at)),
            )

    def approvals(self, plan_hash: str) -> list[dict[str, Any]]:
        """Every decision on one plan, oldest first."""
        cursor = self._conn.execute(
            "SELECT plan_hash, action_id, decision, actor, reason, created_at FROM approvals "
            "WHERE plan_hash = ? ORDER BY id",
            (plan_hash,),
        )
        return _dicts(cursor)

    # ------------------------------------------------------------------ source state

    def get_source_state(self, key: str) -> str | None:
        """A value of the Git source's bookkeeping (e.g. last_applied_commit), or None."""
        row = self._conn.execute("SELECT value FROM source_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_source_state(self, key: str, value: str) -> None:
        """Set one source bookkeeping value."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO source_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    @property
    def last_applied_commit(self) -> str | None:
        """The commit whose plan was last applied in full."""
        return self.get_source_state(LAST_APPLIED_COMMIT)

    # ------------------------------------------------------------------ read model

    def recorded_state(self) -> RecordedState:
        """Everything the planner needs, from one snapshot; one query per table, no blobs."""
        with self.transaction(write=False) as conn:
            version_rows = conn.execute(
                f"SELECT {_VERSION_COLUMNS_SPEC} FROM certificate_versions "
                "WHERE retired_at IS NULL ORDER BY certificate, version"
            ).fetchall()
            deployment_rows = conn.execute(
                "SELECT certificate, target, fingerprint, version, updated_at, last_error, "
                "attempts, last_attempt_fingerprint, files_json, config_hash, config_json "
                "FROM deployments"
            ).fetchall()
            abandoned_rows = conn.execute(
                "SELECT action_id, attempts, COALESCE(last_error, '') FROM outbox "
                "WHERE state = 'ABANDONED' ORDER BY id"
            ).fetchall()
            hold_rows = conn.execute(
                "SELECT target, certificate, fingerprint, reason, created_by, created_at "
                "FROM holds ORDER BY id"
            ).fetchall()
            commit_row = conn.execute(
                "SELECT value FROM source_state WHERE key = ?", (LAST_APPLIED_COMMIT,)
            ).fetchone()
        grouped: dict[str, list[CertificateVersion]] = {}
        for row in version_rows:
            grouped.setdefault(row[0], []).append(_version_from_row(row))
        # Column order matches the dataclasses' field order.
        deployments = {
            (r[0], r[1]): Deployment(
                *r[:4],
                _dt(r[4]),
                *r[5:8],
                files=_files(r[8]),
                config_hash=r[9],
                config_json=r[10],
            )
            for r in deployment_rows
        }
        holds = tuple(Hold(*r[:5], _dt(r[5])) for r in hold_rows)
        return RecordedState(
            versions={name: tuple(vs) for name, vs in grouped.items()},
            deployments=deployments,
            holds=holds,
            last_applied_commit=None if commit_row is None else str(commit_row[0]),
            abandoned={str(a): (int(n), str(e)) for a, n, e in abandoned_rows},
        )

    # ------------------------------------------------------------------ audit

    def audit(
        self, actor: str, action: str, subject: str, details: Mapping[str, Any], at: datetime
    ) -> int:
        """Append one hash-chained audit row and return its seq.

        ``details`` should hold no secrets (fingerprints and names only); as a
        defence every PEM block in it is redacted (`audit.redact`) before it is
        stored. Text that merely mentions a private key (server output) is kept.
        """
        stamp = db_timestamp(at)
        with self.transaction() as conn:
            return _audit.append(conn, stamp, actor, action, subject, details)

    def audit_rows(self, *, since_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Audit rows with seq > since_seq, oldest first (details parsed, at as datetime)."""
        entries = _audit.read_entries(self._conn, since_seq=since_seq, limit=limit)
        return [
            {**vars(e), "at": _dt(e.at), "details": json.loads(e.details_json)}
            for e in entries
        ]

    def verify_audit(self) -> int:
        """Verify the whole chain and head; return rows verified or raise `AuditChainBroken`."""
        with self.transaction(write=False) as conn:
            return _audit.verify(conn)
