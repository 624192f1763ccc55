"""State store: SQLite (WAL) with numbered migrations, as small repositories over one connection.

    connection.py   Database: the connection, transactions, first contact, master key check
    migrate.py      numbered SQL migrations (migrations/NNNN_name.sql)
    versions.py     Versions: issued certificates, keys sealed
    deployments.py  Deployments (+ holds, history.py, the recorded_state read model), SourceState
    plans.py        Plans: saved plans and approvals (Decision)
    outbox.py       Outbox: enqueue, claim, complete, retry, fail (JobState)
    audit.py        AuditLog: the keyed, hash-chained audit log (AuditEvent)
    anchors.py      AuditKey and <state>/audit.head: the chain's anchor outside state.db
    doccache.py     DocumentCache: parsed documents by blob id, a separate deletable file
    sqlite.py       Store: the facade the rest of certgit calls

Each repository is a class given the shared `Database` (and nothing else but
what it needs: `Versions` the sealer, `Plans` the outbox), and speaks only
SQL its table owns. That is the seam for the PostgreSQL backend of DESIGN §7:
it implements the same repository interfaces over its own connection
(`FOR UPDATE SKIP LOCKED` in `Outbox.claim`, an advisory lock for the leader)
and `Store` composes them unchanged. No SQL runs outside this package.
"""

from certgit.reconciler.store.audit import GENESIS_HASH, AuditEvent, verify_chain
from certgit.reconciler.store.connection import StoreLocked
from certgit.reconciler.store.migrate import current_version, latest_version, migrate
from certgit.reconciler.store.outbox import JobState
from certgit.reconciler.store.plans import Decision, PlanOrigin
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
    "AuditEvent",
    "Decision",
    "JobState",
    "PlanOrigin",
    "Store",
    "StoreLocked",
    "current_version",
    "latest_version",
    "migrate",
    "verify_chain",
]
