"""State store: SQLite (WAL) with numbered migrations."""

from certgit.reconciler.store.audit import GENESIS_HASH, verify_chain
from certgit.reconciler.store.migrate import current_version, latest_version, migrate
from certgit.reconciler.store.sqlite import (
    DB_FILE_NAME,
    LAST_APPLIED_COMMIT,
    LAST_SEEN_COMMIT,
    Store,
)

__all__ = [
    "DB_FILE_NAME",
    "GENESIS_HASH",
    "LAST_APPLIED_COMMIT",
    "LAST_SEEN_COMMIT",
    "Store",
    "current_version",
    "latest_version",
    "migrate",
    "verify_chain",
]
