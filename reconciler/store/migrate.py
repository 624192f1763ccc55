"""Opening the database file and bringing its schema up to date.

Migrations are numbered SQL scripts shipped as package data in
``migrations/NNNN_name.sql``.

Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the
row that records it in ``schema_migrations``, so a crash leaves the schema at a
whole version, and two processes opening a fresh store do not both apply it.
A database newer than this code is refused rather than half understood.

A caller may give a Python *step* for a version: it runs inside that version's
transaction after its SQL and before the commit, for work SQL cannot do (0004
writes the audit head file with a key derived from the master key, see
audit.py). A step that raises rolls the whole version back.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path

from certgit.reconciler.errors import StoreError

__all__ = [
    "Migration",
    "MigrationStep",
    "available_migrations",
    "connect",
    "current_version",
    "latest_version",
    "migrate",
    "split_statements",
]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


def connect(db_path: Path) -> sqlite3.Connection:
    """Open (creating, mode 0600) a database file: WAL, synchronous FULL, foreign keys on."""
    try:
        # Create the file ourselves so it is 0600 from the first byte; SQLite gives
        # its -wal and -shm files the database file's mode.
        fd = os.open(db_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            if os.fstat(fd).st_size == 0:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        conn = sqlite3.connect(db_path, timeout=5.0, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            f"cannot open state store {db_path} ({exc}): check the state directory's "
            "owner and permissions"
        ) from None
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StoreError(
                f"state store {db_path} could not switch to WAL mode (got {mode}): "
                "put the state directory on a local filesystem"
            )
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(
            f"{db_path} is not a usable SQLite database ({exc}): restore it from a "
            "backup or move it away to start with an empty store"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


MigrationStep = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Migration:
    """One numbered SQL script."""

    version: int
    name: str
    sql: str


@cache
def available_migrations() -> tuple[Migration, ...]:
    """The migrations shipped with this code, in version order (1, 2, 3 ... without gaps)."""
    folder = resources.files("certgit.reconciler.store").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    expected = list(range(1, len(found) + 1))
    if [m.version for m in found] != expected:
        # A packaging mistake, not a user error: fail loudly rather than skip a version.
        raise StoreError(
            "certgit's migrations are not numbered 0001, 0002, ... without gaps or "
            "duplicates: the installation is broken, reinstall certgit"
        )
    return tuple(found)


def latest_version() -> int:
    """The schema version this code creates and understands."""
    migrations = available_migrations()
    return migrations[-1].version if migrations else 0


def split_statements(sql: str) -> list[str]:
    """Split a script into statements; ``CREATE TRIGGER ... BEGIN ...; END;`` stays whole.

    `sqlite3.executescript` would commit any open transaction first, so each
    statement is executed on its own inside ours.
    """
    statements: list[str] = []
    buffer = ""
    for piece in sql.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            if _has_code(statement):
                statements.append(statement)
            buffer = ""
    if _has_code(buffer.rstrip(";")):
        raise StoreError("a migration ends with an incomplete SQL statement: reinstall certgit")
    return statements


def _has_code(text: str) -> bool:
    lines = (line.split("--", 1)[0].strip() for line in text.splitlines())
    return any(line and line != ";" for line in lines)


def current_version(conn: sqlite3.Connection) -> int:
    """Highest applied migration, 0 for an empty database."""
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if row is None:
        return 0
    (version,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(version)


def migrate(
    conn: sqlite3.Connection,
    *,
    where: str = "the state store",
    steps: Mapping[int, MigrationStep] | None = None,
) -> list[int]:
    """Apply every missing migration in order; return the versions applied now.

    ``conn`` must be in autocommit mode (``isolation_level=None``): transactions
    are explicit here. ``steps`` maps a version to a Python step run after its
    SQL in the same transaction. Raises `StoreError` for a schema newer than this
    code or a failing migration (which is rolled back as a whole, step included).
    """
    migrations = available_migrations()
    known = latest_version()
    conn.execute(_BOOKKEEPING)
    applied_now: list[int] = []
    for migration in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the write lock: another process may have just applied it.
            version = current_version(conn)
            if version > known:
                raise StoreError(
                    f"{where} has schema version {version}, newer than this certgit "
                    f"understands ({known}): upgrade certgit, or point it at another "
                    "state directory"
                )
            if migration.version <= version:
                conn.execute("COMMIT")
                continue
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            step = (steps or {}).get(migration.version)
            if step is not None:
                step(conn)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, datetime.now(UTC).isoformat()),
            )
            conn.execute("COMMIT")
        except StoreError:
            conn.execute("ROLLBACK")
            raise
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(
                f"migration {migration.version:04d}_{migration.name} failed on {where} "
                f"({exc}); nothing of it was applied: fix the cause (disk full, "
                "permissions, a locked database) and start certgit again"
            ) from exc
        except BaseException:
            # A step's own error (or an interrupt): never leave the version half applied.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied_now.append(migration.version)
    # With nothing left to apply the loop above never looked at a newer schema.
    version = current_version(conn)
    if version > known:
        raise StoreError(
            f"{where} has schema version {version}, newer than this certgit understands "
            f"({known}): upgrade certgit, or point it at another state directory"
        )
    return applied_now
