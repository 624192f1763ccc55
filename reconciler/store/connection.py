"""One open state store: the SQLite connection, its transactions, first contact, master key.

Transactions are explicit (the connection is in autocommit mode): every write
runs in ``BEGIN IMMEDIATE`` so writers serialise up front instead of failing
on lock upgrade, and multi-table reads run in one read transaction so they see
one snapshot. ``synchronous=FULL`` makes a commit durable before it returns,
which the outbox relies on.

Timestamps are timezone-aware UTC datetimes in Python and fixed-width ISO-8601
text (microseconds, ``+00:00``) in SQLite, so text order is time order.

Every repository of the store (versions, deployments, plans, outbox, audit)
is given the same `Database`; none opens a connection of its own.

The master key is checked against the store before anything is keyed with it:
migration 0004 writes the audit head file under a key derived from it, and a
head file made with a wrong key would read as forged ever after.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from certgit.reconciler.errors import StateIncomplete, StateMissing, StoreError, StoreLocked
from certgit.reconciler.sealing import ENV_KEY, ENV_KEY_FILE, Sealer, load_master_key
from certgit.reconciler.statedir import StateDir, check_private_dir, make_private_dir
from certgit.reconciler.store.anchors import AuditKey
from certgit.reconciler.store.migrate import MigrationStep, connect, migrate

__all__ = [
    "DB_FILE_NAME",
    "Database",
    "StoreLocked",
    "db_timestamp",
    "dict_rows",
    "open_database",
    "parse_time",
]

DB_FILE_NAME = StateDir.DB_FILE_NAME
_META_KEY_ID = "master_key_id"

_TIME_COLUMNS = frozenset(
    {"at", "created_at", "updated_at", "lease_until", "next_attempt_at", "issued_at"}
)


def db_timestamp(at: datetime) -> str:
    """Datetime → fixed-width ISO-8601 UTC text. Naive datetimes are a caller bug."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"timestamp {at!r} has no timezone: pass an aware UTC datetime")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: str) -> datetime:
    """The inverse of `db_timestamp`."""
    return datetime.fromisoformat(text)


def dict_rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """Rows as dicts; ``*_json`` columns parsed (key without the suffix), times as datetimes."""
    names = [d[0] for d in cursor.description]
    out = []
    for row in cursor:
        item: dict[str, Any] = {}
        for name, value in zip(names, row, strict=True):
            if name.endswith("_json"):
                item[name.removesuffix("_json")] = json.loads(value)
            elif name in _TIME_COLUMNS:
                item[name] = None if value is None else parse_time(value)
            else:
                item[name] = value
        out.append(item)
    return out


class Database:
    """The one connection of a store and its transactions. Use from the thread that opened it."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        self.conn.close()

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: ``BEGIN IMMEDIATE`` for writes, a snapshot read otherwise.

        Commits on success, rolls back on any exception. Not re-entrant. SQLite
        errors become `StoreError` (`StoreLocked`, temporary, for a lock held too long).
        """
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise self.store_error(exc) from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise self.store_error(exc) from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self.store_error(exc) from exc

    def store_error(self, exc: sqlite3.Error) -> StoreError:
        """Translate one SQLite error, once, at the store's boundary."""
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return StoreLocked(
                f"state store {self.path} is locked by another certgit process: "
                "retry when it is done"
            )
        return StoreError(f"state store {self.path} refused the change: {exc}")

    def check_master_key(self, sealer: Sealer) -> None:
        """Remember the key id on first use; refuse a different key afterwards."""
        with self.transaction() as conn:
            if not self.refuse_other_key(conn, sealer):
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)", (_META_KEY_ID, sealer.key_id)
                )

    def refuse_other_key(self, conn: sqlite3.Connection, sealer: Sealer) -> bool:
        """Raise `StoreError` if the store remembers another master key; True if it
        remembers this one, False if none yet. Runs in the caller's transaction."""
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_META_KEY_ID,)).fetchone()
        if row is None:
            return False
        if row[0] != sealer.key_id:
            raise StoreError(
                f"state store {self.path} was created with master key {row[0]}, but the "
                f"key given now is {sealer.key_id}: set {ENV_KEY_FILE} (or {ENV_KEY}) "
                "to the original key, or restore the original master.key file; the sealed "
                "private keys cannot be decrypted with another key"
            )
        return True


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


def _check_first_contact(state: StateDir, *, create: bool) -> bool:
    """Under the directory lock: True when a store must be created now.

    False when another process finished creating it meanwhile. Raises
    `StateIncomplete` when a master key or CA is left without its store, and
    `StateMissing` when there is no store and `create` is False.
    """
    db_path = state.db
    if _has_store(db_path):
        return False
    how = "is empty (zero bytes)" if db_path.exists() else "is missing"
    leftovers = [
        name
        for name, path in (
            (StateDir.KEY_FILE_NAME, state.master_key),
            (f"{StateDir.CA_DIR_NAME}/", state.ca_root),
        )
        if os.path.lexists(path)
    ]
    if leftovers:
        moved = shlex.quote(f"{state.root}.old")
        raise StateIncomplete(
            f"{state.root} holds {' and '.join(leftovers)} but its state store {db_path} "
            f"{how}: this is a lost or damaged store, not a fresh state directory, and "
            "certgit will not start a second store (and a second CA) beside it. Restore "
            f"{DB_FILE_NAME} from a backup, or move the directory aside to start fresh "
            f"(`mv {shlex.quote(str(state.root))} {moved}`)"
        )
    if not create:
        raise _state_missing(state.root, f"{DB_FILE_NAME} {how}")
    return True


def open_database(
    state_dir: Path,
    *,
    create: bool,
    master_key: bytes | None,
    env: Mapping[str, str],
) -> tuple[Database, Sealer, bool, AuditKey]:
    """Open (creating and migrating as needed) the store of `state_dir`.

    Returns the database, the sealer of its master key, whether this call
    created the store and the audit keys derived from the master key. See
    `Store.open` for the rules.
    """
    state = StateDir(Path(state_dir))
    if not _exists(state.root):
        if not create:
            raise _state_missing(state.root, "the directory does not exist")
        try:
            make_private_dir(state.root, parents=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create state directory {state.root} ({exc.strerror}): "
                "create it yourself (mode 0700) or choose another --state-dir"
            ) from None
    check_private_dir(state.root)
    with ExitStack() as first_contact:
        created = False
        if not _has_store(state.db):
            # Decide "fresh" under a lock on the directory, so a concurrent first
            # open is waited for instead of being mistaken for a lost store.
            first_contact.enter_context(_dir_lock(state.root))
            created = _check_first_contact(state, create=create)
        if master_key is None:
            from_env = env.get(ENV_KEY_FILE) or env.get(ENV_KEY)
            if not from_env and not created and not state.master_key.exists():
                # Generating a fresh key here would only fail later, and leave a wrong key.
                raise StoreError(
                    f"state store {state.db} exists but its master key {state.master_key} "
                    f"is missing: restore that file from a backup, or set {ENV_KEY_FILE} / "
                    f"{ENV_KEY} to the key the store was created with"
                )
            master_key = load_master_key(state.root, env)
        sealer = Sealer(master_key)
        audit_key = AuditKey.derive(master_key)
        db = Database(connect(state.db), state.db)
        try:
            migrate(db.conn, where=str(state.db), steps={4: _anchor_audit(db, sealer, audit_key)})
            db.check_master_key(sealer)
        except BaseException:
            db.close()
            raise
    return db, sealer, created, audit_key


def _anchor_audit(db: Database, sealer: Sealer, key: AuditKey) -> MigrationStep:
    """Migration 0004's step: the audit head file, once the key is known to be the store's."""
    from certgit.reconciler.store.audit import anchor_step  # audit.py imports this module

    anchor = anchor_step(key, StateDir(db.path.parent).audit_head)

    def step(conn: sqlite3.Connection) -> None:
        db.refuse_other_key(conn, sealer)
        anchor(conn)

    return step
