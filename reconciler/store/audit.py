"""The audit log: hash-chained, append-only (the table and its triggers live in the migrations).

    hash(n) = sha256_hex(prev_hash(n) + canonical_json(fields(n)))
    fields(n) = [seq, at, actor, action, subject, details]                 no subject column set
              | [seq, at, actor, action, subject, details, columns]       otherwise
    columns   = {certificate, target, plan_hash, action_id, version}      the non-NULL ones
    prev_hash(1) = GENESIS_HASH, prev_hash(n) = hash(n - 1)

The subject columns (migration 0003) name what a row is about so a query can
join approval → plan → action → deploy by id: `plan_hash` and `action_id`
of the plan and action concerned, `certificate`, `target` and `version` of
the binding. They are inside the chained hash: a row with none of them set
hashes exactly as rows written before 0003 did (so old rows still verify
and need no rewrite), and setting, changing or clearing any of them on any
row afterwards breaks the chain at that row.

The head (last seq and hash) is kept in ``audit_head`` and advanced in the same
transaction as the insert, so deleting the newest row is detected too. Triggers
abort UPDATE and DELETE; `verify_chain` catches what bypasses them (a dropped
trigger, a hand-edited file).

Callers pass no secrets in ``details``: fingerprints and names, never key
material. As a defence, `append` stores `redact(details)`: every PEM block in
every string becomes "[redacted PEM block]". Nothing is refused for mentioning
a private key: server output such as HAProxy's "No Private Key found in '…'"
is recorded verbatim, and an audit write never aborts a run.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from certgit.reconciler.errors import AuditChainBroken
from certgit.reconciler.model import canonical_json, sha256_hex
from certgit.reconciler.store.connection import Database, db_timestamp, parse_time

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditEvent",
    "AuditLog",
    "Subject",
    "append",
    "chain_hash",
    "details_json",
    "read_entries",
    "redact",
    "verify",
    "verify_chain",
]

GENESIS_HASH = "0" * 64
REDACTED_PEM = "[redacted PEM block]"
REDACTED_TEXT = "[redacted: text held private key material]"

# A PEM block: BEGIN line, anything, END line; an unterminated BEGIN runs to the end.
_PEM_BLOCK = re.compile(
    r"-----BEGIN [^\r\n]*?-----.*?(?:-----END [^\r\n]*?-----|\Z)", re.DOTALL
)
# What must never survive redaction, however mangled the block around it.
_KEY_HEADER = re.compile(r"-----BEGIN.*?PRIVATE KEY-----", re.DOTALL | re.IGNORECASE)


class AuditEvent(StrEnum):
    """The `action` of an audit row: what happened, as `<object>.<past tense>`."""

    STATE_INIT = "state.init"
    PLAN_RECORDED = "plan.recorded"
    PLAN_APPROVED = "plan.approved"
    PLAN_REJECTED = "plan.rejected"
    CERTIFICATE_ISSUED = "certificate.issued"
    CERTIFICATE_RENEWED = "certificate.renewed"
    CERTIFICATE_ISSUE_FAILED = "certificate.issue_failed"
    DEPLOY_COMPLETED = "deploy.completed"
    DEPLOY_FAILED = "deploy.failed"
    DEPLOY_RECORD_FAILED = "deploy.record_failed"
    ROLLBACK_REQUESTED = "rollback.requested"
    ROLLBACK_WAITING = "rollback.waiting"
    ROLLBACK_DEPLOYED = "rollback.deployed"
    HOLD_RELEASED = "hold.released"
    ACTION_RETRIED = "action.retried"


@dataclass(frozen=True)
class Subject:
    """The subject columns of one audit row; None where the row is not about one."""

    certificate: str | None = None
    target: str | None = None
    plan_hash: str | None = None
    action_id: str | None = None
    version: int | None = None

    def chained(self) -> dict[str, Any]:
        """The columns that go into the chained hash: the non-NULL ones."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}


SUBJECT_COLUMNS = tuple(f.name for f in fields(Subject))


@dataclass(frozen=True)
class AuditEntry:
    """One stored audit row, as text exactly as it sits in the table."""

    seq: int
    at: str
    actor: str
    action: str
    subject: str
    details_json: str
    prev_hash: str
    hash: str
    certificate: str | None = None
    target: str | None = None
    plan_hash: str | None = None
    action_id: str | None = None
    version: int | None = None

    @property
    def columns(self) -> Subject:
        return Subject(self.certificate, self.target, self.plan_hash, self.action_id, self.version)


def _redact_text(text: str) -> str:
    text = _PEM_BLOCK.sub(REDACTED_PEM, text)
    return REDACTED_TEXT if _KEY_HEADER.search(text) else text


def redact(value: Any) -> Any:
    """``value`` with every PEM block in every string (keys and values, recursively)
    replaced by "[redacted PEM block]".

    Why: audit details carry error text from servers and tools, and that text
    is not ours to vet. It may legitimately say "private key" (HAProxy 2.6 prints
    ``No Private Key found in '…'`` when validate fails), and refusing such a
    record used to abort a whole apply halfway through its bookkeeping (files on
    disk recorded as missing, outbox rows stuck RUNNING). So nothing is refused
    for its words; only PEM blocks (``-----BEGIN <label>-----`` to the matching
    ``-----END <label>-----``, or to the end of the string when unterminated)
    are cut out, since key material must never reach the log. Defence in depth:
    a string that still holds ``-----BEGIN`` … ``PRIVATE KEY-----`` after that
    is replaced wholly. Dicts, lists and tuples are walked (tuples become lists,
    as JSON would); other values are returned unchanged.
    """
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, Mapping):
        return {
            (_redact_text(k) if isinstance(k, str) else k): redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def details_json(details: Mapping[str, Any]) -> str:
    """Canonical JSON of `redact(details)`: PEM blocks cut out, never refused for words."""
    return canonical_json(redact(dict(details)))


def chain_hash(
    prev_hash: str,
    seq: int,
    at: str,
    actor: str,
    action: str,
    subject: str,
    details: Any,
    columns: Subject | None = None,
) -> str:
    """The hash of one row, given the previous row's hash, the parsed details and columns."""
    chained = {} if columns is None else columns.chained()
    fields_: list[Any] = [seq, at, actor, action, subject, details]
    if chained:
        fields_.append(chained)
    return sha256_hex(prev_hash + canonical_json(fields_))


def _entry_hash(entry: AuditEntry) -> str | None:
    try:
        details = json.loads(entry.details_json)
    except (TypeError, ValueError):
        return None
    return chain_hash(
        entry.prev_hash, entry.seq, entry.at, entry.actor, entry.action, entry.subject, details,
        entry.columns,
    )


def verify_chain(entries: Iterable[AuditEntry], head_seq: int, head_hash: str) -> int:
    """Walk ``entries`` (ascending seq) and the head; return how many rows verified.

    Raises `AuditChainBroken` naming the first bad seq and what is wrong with it.
    """
    expected_seq = 1
    prev_hash = GENESIS_HASH
    count = 0
    for entry in entries:
        if entry.seq != expected_seq:
            raise AuditChainBroken(
                f"audit log broken at seq {expected_seq}: row missing (next row is seq "
                f"{entry.seq}); rows were deleted. Restore the state store from a backup "
                "and investigate who had write access"
            )
        if entry.prev_hash != prev_hash:
            raise AuditChainBroken(
                f"audit log broken at seq {entry.seq}: prev_hash does not match the hash "
                "of the row before it; a row was deleted or rewritten. Restore the state "
                "store from a backup and investigate who had write access"
            )
        if _entry_hash(entry) != entry.hash:
            raise AuditChainBroken(
                f"audit log broken at seq {entry.seq}: hash mismatch, the row was edited "
                "after it was written. Restore the state store from a backup and "
                "investigate who had write access"
            )
        prev_hash = entry.hash
        expected_seq += 1
        count += 1
    last_seq = expected_seq - 1
    if head_seq != last_seq or head_hash != prev_hash:
        first_bad = min(head_seq, last_seq) + 1 if head_seq != last_seq else last_seq
        raise AuditChainBroken(
            f"audit log broken at seq {first_bad}: head mismatch, the head records seq "
            f"{head_seq} but the log ends at seq {last_seq}; the newest rows were deleted "
            "or the head was altered. Restore the state store from a backup and "
            "investigate who had write access"
        )
    return count


# ----------------------------------------------------------------- on a connection

_SELECT = (
    "SELECT seq, at, actor, action, subject, details_json, prev_hash, hash, "
    + ", ".join(SUBJECT_COLUMNS)
    + " FROM audit_log"
)


def _head(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    if row is None:
        raise AuditChainBroken(
            "audit log head is missing: the audit_head row was deleted. Restore the "
            "state store from a backup and investigate who had write access"
        )
    return int(row[0]), str(row[1])


def append(
    conn: sqlite3.Connection,
    at: str,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
    columns: Subject = Subject(),
) -> int:
    """Insert one row at the head and advance the head; the caller holds a write transaction."""
    action = str(action)  # an AuditEvent is stored and hashed as its plain text
    text = details_json(details)
    head_seq, head_hash = _head(conn)
    seq = head_seq + 1
    digest = chain_hash(head_hash, seq, at, actor, action, subject, json.loads(text), columns)
    conn.execute(
        "INSERT INTO audit_log (seq, at, actor, action, subject, details_json, prev_hash, hash, "
        + ", ".join(SUBJECT_COLUMNS)
        + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, at, actor, action, subject, text, head_hash, digest,
         *(getattr(columns, c) for c in SUBJECT_COLUMNS)),
    )
    conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
    return seq


def read_entries(
    conn: sqlite3.Connection,
    *,
    since_seq: int = 0,
    limit: int | None = None,
    where: Mapping[str, Any] | None = None,
) -> Iterator[AuditEntry]:
    """Rows with seq > since_seq in seq order, streamed; `where` filters on subject columns.

    A `plan_hash` or `action_id` filter also matches rows about several plans or
    actions (a target's deploy row), which list them in details "plans" / "actions".
    """
    sql = _SELECT + " WHERE seq > ?"
    params: list[Any] = [since_seq]
    for column, value in (where or {}).items():
        if column not in SUBJECT_COLUMNS:
            raise ValueError(f"audit rows cannot be filtered on {column!r}")
        listed = {"plan_hash": "$.plans", "action_id": "$.actions"}.get(column)
        if listed is None:
            sql += f" AND {column} = ?"
            params.append(value)
        else:
            sql += (
                f" AND ({column} = ? OR EXISTS (SELECT 1 FROM json_each(details_json, ?) "
                "WHERE json_each.value = ?))"
            )
            params.extend((value, listed, value))
    cursor = conn.execute(sql + " ORDER BY seq LIMIT ?", (*params, -1 if limit is None else limit))
    return (AuditEntry(*row) for row in cursor)


def verify(conn: sqlite3.Connection) -> int:
    """Verify the stored chain against its head; run inside one read transaction."""
    head_seq, head_hash = _head(conn)
    return verify_chain(read_entries(conn), head_seq, head_hash)


class AuditLog:
    """The audit_log and audit_head tables of one store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def append(
        self,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any],
        at: datetime,
        columns: Subject = Subject(),
    ) -> int:
        """Append one row in its own write transaction; return its seq."""
        with self._db.transaction() as conn:
            return append(conn, db_timestamp(at), actor, action, subject, details, columns)

    def rows(
        self,
        *,
        since_seq: int = 0,
        limit: int | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows with seq > since_seq, oldest first (details parsed, at as datetime)."""
        entries = read_entries(self._db.conn, since_seq=since_seq, limit=limit, where=where)
        return [
            {**vars(e), "at": parse_time(e.at), "details": json.loads(e.details_json)}
            for e in entries
        ]

    def verify(self) -> int:
        """Verify the whole chain and head; return rows verified or raise `AuditChainBroken`."""
        with self._db.transaction(write=False) as conn:
            return verify(conn)
