"""The audit log: an append-only chain keyed with the master key, anchored outside the database.

    hash(n)   = hmac_sha256_hex(K_chain, message(n))   alg 'hmac-sha256': every row since 0004
              | sha256_hex(message(n))                 alg 'sha256': only rows written before 0004
    message(n) = prev_hash(n) + canonical_json(fields(n))
    fields(n) = [seq, at, actor, action, subject, details]                 no subject column set
              | [seq, at, actor, action, subject, details, columns]       otherwise
    columns   = {certificate, target, plan_hash, action_id, version}      the non-NULL ones
    prev_hash(1) = GENESIS_HASH, prev_hash(n) = hash(n - 1)
    K_chain, K_head = HKDF-SHA256 of the master key (anchors.py)

**Keyed.** A plain hash chain can be recomputed by anyone who edits a row, so
since migration 0004 each row's hash is an HMAC under a key derived from the
master key: whoever can write state.db but cannot read the master key cannot
make a row that verifies, with SHA-256 or with a key of their own.

**Rows written before 0004** keep their SHA-256 hash, say so in the ``alg``
column and are never rewritten. When 0004 runs, its Python step records (in
meta ``audit_keyed_from``, MAC'd with K_head) that every row after the
current head is keyed, and writes the head file for that head. So the old
rows stay verifiable as before and are covered from the upgrade on: changing
one changes the last unkeyed hash, which the head file and the first keyed
row's MAC both hold; relabelling keyed rows as unkeyed is refused because
they lie past the authenticated boundary (deleting the record makes the
boundary seq 1, which lets no unkeyed row in); a trigger refuses unkeyed
inserts. The limit: an edit made to those rows *before* the upgrade is not
detectable, and neither is a store made to look as if it never had 0004
(schema row, column, record and head file all removed), which 0004 then
anchors as found.

**Subject columns** (migration 0003) name what a row is about so a query can
join approval → plan → action → deploy by id: `plan_hash` and `action_id` of
the plan and action concerned, `certificate`, `target` and `version` of the
binding. They are inside the chained message: a row with none of them set
hashes exactly as rows written before 0003 did (so old rows still verify and
need no rewrite), and setting, changing or clearing any of them on any row
afterwards breaks the chain at that row.

**Anchored outside the database.** ``audit_head`` (last seq and hash) is
advanced in the same transaction as the insert, but it lives in the file an
attacker edits. So the head is also written to ``<state>/audit.head`` (mode
0600, temp file + fsync + rename + directory fsync; format in anchors.py):
seq, hash and a MAC of both under K_head. Crash order: the database commits
first, then the head file is written, once per appending transaction however
many rows it added (~1 ms on ext4, FACTS.md). A crash in between leaves the
head file *behind* the database, which is accepted when the row at its seq
has its hash and every row after it is keyed and chains from it. A head file
*ahead* of the database (the newest rows deleted, or state.db replaced by an
older copy), one that disagrees with the row at its seq, one that is not
authentic, or none at all on a log with entries is tampering. An append only
moves the head file forward along the chain it belongs to: it never
re-creates a deleted one, writes over one that is not authentic, or moves
one that disagrees with the database, so the evidence stays for ``certgit
audit verify``. After investigating, ``certgit audit anchor --reason``
accepts state.db as it is (every row still verified with the key) and
records that as an ``audit.anchored`` row saying what the head file held.

**Limits.** The head file is local: whoever can read the master key, or kept
an old state.db together with its audit.head and puts both back, is not
caught here; nor are rows removed from after a lagging head file (at most
the rows of one crash). An empty log with no head file verifies: there is
nothing to anchor. For an anchor that leaves the host, ``to_syslog`` on
`AuditLog` (``Store.open(audit_syslog=True)``) sends ``certgit audit seq=N
action=… subject=… mac=<first 16 hex>`` to the system log for every entry.

Triggers abort UPDATE and DELETE; `verify_chain` catches what bypasses them (a
dropped trigger, a hand-edited file).

Callers pass no secrets in ``details``: fingerprints and names, never key
material. As a defence, `append` stores `redact(details)`: every PEM block in
every string becomes "[redacted PEM block]". Nothing is refused for mentioning
a private key: server output such as HAProxy's "No Private Key found in '…'"
is recorded verbatim, and an audit write never aborts a run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import syslog
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from certgit.reconciler.errors import AuditChainBroken, StoreError
from certgit.reconciler.model import canonical_json, sha256_hex
from certgit.reconciler.store.anchors import (
    REANCHOR,
    RESTORE,
    AuditKey,
    ChainHead,
    keyed_from_record,
    parse_keyed_from,
    read_head_file,
    syslog_line,
    write_head_file,
)
from certgit.reconciler.store.connection import Database, db_timestamp, parse_time

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditEvent",
    "AuditKey",
    "AuditLog",
    "AuditRecord",
    "ChainAlg",
    "ChainHead",
    "ChainReport",
    "Subject",
    "anchor_step",
    "append",
    "chain_hash",
    "chain_mac",
    "details_json",
    "read_entries",
    "redact",
    "verify",
    "verify_chain",
]

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
KEYED_FROM = "audit_keyed_from"  # the meta key of the authenticated keying boundary
REDACTED_PEM = "[redacted PEM block]"
REDACTED_TEXT = "[redacted: text held private key material]"
# A PEM block: BEGIN line, anything, END line; an unterminated BEGIN runs to the end.
_PEM_BLOCK = re.compile(r"-----BEGIN [^\r\n]*?-----.*?(?:-----END [^\r\n]*?-----|\Z)", re.DOTALL)
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
    AUDIT_ANCHORED = "audit.anchored"


class ChainAlg(StrEnum):
    """How a row's hash column was made (the ``alg`` column, migration 0004)."""

    SHA256 = "sha256"  # rows written before 0004: a plain hash, kept as written
    HMAC_SHA256 = "hmac-sha256"  # every row since: keyed with K_chain


@dataclass(frozen=True)
class Subject:
    """The subject columns of one audit row; None where the row is not about one."""

    certificate: str | None = None
    target: str | None = None
    plan_hash: str | None = None
    action_id: str | None = None
    version: int | None = None

    def chained(self) -> dict[str, Any]:
        """The columns that go into the chained message: the non-NULL ones."""
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
    alg: str = ChainAlg.SHA256

    @property
    def columns(self) -> Subject:
        return Subject(self.certificate, self.target, self.plan_hash, self.action_id, self.version)


@dataclass(frozen=True)
class AuditRecord:
    """One row to append (`AuditLog.append_many` writes several in one transaction)."""

    actor: str
    action: str
    subject: str
    details: Mapping[str, Any]
    at: datetime
    columns: Subject = Subject()


@dataclass(frozen=True)
class ChainReport:
    """What `verify_chain` checked: entries, the unkeyed ones, and where the head file stood."""

    entries: int  # seqs run 1..entries without gaps, so this is also the last seq
    legacy: int  # rows written before 0004, verified with plain SHA-256
    anchor_seq: int | None  # the head file's seq; None when there is none (an empty log)

    @property
    def behind(self) -> int:
        """Entries the head file lags the database by (a crash between commit and write)."""
        return 0 if self.anchor_seq is None else self.entries - self.anchor_seq


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
        return {(_redact_text(k) if isinstance(k, str) else k): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def details_json(details: Mapping[str, Any]) -> str:
    """Canonical JSON of `redact(details)`: PEM blocks cut out, never refused for words."""
    return canonical_json(redact(dict(details)))


def _message(
    prev_hash: str,
    seq: int,
    at: str,
    actor: str,
    action: str,
    subject: str,
    details: Any,
    columns: Subject | None,
) -> str:
    chained = {} if columns is None else columns.chained()
    fields_: list[Any] = [seq, at, actor, action, subject, details]
    if chained:
        fields_.append(chained)
    return prev_hash + canonical_json(fields_)


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
    """The unkeyed hash of one row (alg ``sha256``, rows written before 0004)."""
    return sha256_hex(_message(prev_hash, seq, at, actor, action, subject, details, columns))


def chain_mac(
    key: AuditKey,
    prev_hash: str,
    seq: int,
    at: str,
    actor: str,
    action: str,
    subject: str,
    details: Any,
    columns: Subject | None = None,
) -> str:
    """The keyed hash of one row (alg ``hmac-sha256``): the same message, under K_chain."""
    return key.row_mac(_message(prev_hash, seq, at, actor, action, subject, details, columns))


def _entry_digest(entry: AuditEntry, key: AuditKey | None) -> str | None:
    try:
        details = json.loads(entry.details_json)
    except (TypeError, ValueError):
        return None
    message = _message(
        entry.prev_hash, entry.seq, entry.at, entry.actor, entry.action, entry.subject,
        details, entry.columns,
    )  # fmt: skip
    if entry.alg == ChainAlg.SHA256:
        return sha256_hex(message)
    if key is None:
        raise ValueError("keyed audit rows are verified with an AuditKey: pass key=")
    return key.row_mac(message)


def _broken(seq: int, what: str) -> AuditChainBroken:
    return AuditChainBroken(f"audit log broken at seq {seq}: {what}. {RESTORE}")


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def verify_chain(
    entries: Iterable[AuditEntry],
    head_seq: int,
    head_hash: str,
    key: AuditKey | None = None,
    anchor: ChainHead | None = None,
    *,
    keyed_from: int = 1,
    head_file: str = "the audit head file",
) -> ChainReport:
    """Walk ``entries`` (ascending seq), the database head and the head file's ``anchor``.

    ``anchor`` is the authenticated content of the head file (`read_head_file`),
    None when there is none: whether a missing file is an error is the caller's
    call (`verify`: yes, once the log has entries). Rows from ``keyed_from`` on
    must be keyed (the authenticated boundary migration 0004 recorded; 1 when
    the store was keyed from the start). Raises `AuditChainBroken` naming the
    first bad seq or the head file, what is wrong and what to do.
    """
    expected_seq = 1
    prev_hash = GENESIS_HASH
    legacy = 0
    if anchor is not None and anchor.seq == 0 and anchor.hash != GENESIS_HASH:
        raise _disagrees(head_file, anchor.seq)
    for entry in entries:
        seq = entry.seq
        if seq != expected_seq:
            raise _broken(
                expected_seq,
                f"row missing (next row is seq {seq}); rows were deleted",
            )
        if entry.prev_hash != prev_hash:
            raise _broken(
                seq,
                "prev_hash does not match the hash of the row before it; a row was "
                "deleted or rewritten",
            )
        if entry.alg == ChainAlg.SHA256:
            if seq >= keyed_from:
                raise _broken(
                    seq,
                    "the row claims an unkeyed SHA-256 hash, but this store has keyed every "
                    f"row from seq {keyed_from} on; it was rewritten so that no key is needed",
                )
            legacy += 1
        elif entry.alg != ChainAlg.HMAC_SHA256:
            raise _broken(seq, f"unknown hash algorithm {entry.alg!r}; the row was edited")
        if _entry_digest(entry, key) != entry.hash:
            if entry.alg == ChainAlg.SHA256:
                raise _broken(seq, "hash mismatch, the row was edited after it was written")
            raise _broken(
                seq,
                "MAC mismatch, the row was edited after it was written (its hash was not "
                "made with this store's master key)",
            )
        if anchor is not None and seq == anchor.seq and entry.hash != anchor.hash:
            raise _disagrees(head_file, seq)
        prev_hash = entry.hash
        expected_seq += 1
    last_seq = expected_seq - 1
    if head_seq != last_seq or head_hash != prev_hash:
        first_bad = min(head_seq, last_seq) + 1 if head_seq != last_seq else last_seq
        raise _broken(
            first_bad,
            f"head mismatch, the head records seq {head_seq} but the log ends at seq "
            f"{last_seq}; the newest rows were deleted or the head was altered",
        )
    if anchor is not None and anchor.seq > last_seq:
        raise AuditChainBroken(
            f"{head_file} records seq {anchor.seq}, but state.db ends at seq {last_seq}: "
            "entries were deleted from the end of the log, or state.db was replaced by an "
            "older copy. If you restored state.db from a backup on purpose, put back the "
            "audit.head saved with it; " + REANCHOR + ". Otherwise investigate who had "
            f"write access and restore a state.db that reaches seq {anchor.seq}"
        )
    return ChainReport(last_seq, legacy, None if anchor is None else anchor.seq)


def _disagrees(head_file: str, seq: int) -> AuditChainBroken:
    return AuditChainBroken(
        f"{head_file} does not match state.db at seq {seq}: entries up to seq {seq} were "
        "rewritten, or state.db was replaced by another copy. " + RESTORE
        + "; if you replaced state.db yourself, " + REANCHOR
    )  # fmt: skip


# ----------------------------------------------------------------- on a connection

_SELECT = (
    "SELECT seq, at, actor, action, subject, details_json, prev_hash, hash, "
    + ", ".join(SUBJECT_COLUMNS)
    + ", alg FROM audit_log"
)


def _head(conn: sqlite3.Connection) -> ChainHead:
    row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    if row is None:
        raise AuditChainBroken(
            "audit log head is missing: the audit_head row was deleted. " + RESTORE
        )
    return ChainHead(int(row[0]), str(row[1]))


def _stored_hash(conn: sqlite3.Connection, seq: int) -> str | None:
    if seq == 0:
        return GENESIS_HASH
    row = conn.execute("SELECT hash FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else str(row[0])


def append(
    conn: sqlite3.Connection,
    key: AuditKey,
    at: str,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
    columns: Subject = Subject(),
) -> ChainHead:
    """Insert one keyed row at the head and advance the head; the caller holds a write
    transaction and, once it commits, writes the head file (`AuditLog` does both)."""
    action = str(action)  # an AuditEvent is stored and hashed as its plain text
    text = details_json(details)
    head = _head(conn)
    seq = head.seq + 1
    mac = chain_mac(key, head.hash, seq, at, actor, action, subject, json.loads(text), columns)
    conn.execute(
        "INSERT INTO audit_log (seq, at, actor, action, subject, details_json, prev_hash, hash, "
        + ", ".join(SUBJECT_COLUMNS)
        + ", alg) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            seq, at, actor, action, subject, text, head.hash, mac,
            *(getattr(columns, c) for c in SUBJECT_COLUMNS), str(ChainAlg.HMAC_SHA256),
        ),
    )  # fmt: skip
    conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, mac))
    return ChainHead(seq, mac)


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


def _keyed_from(conn: sqlite3.Connection, key: AuditKey) -> int:
    """From which seq on rows must be keyed: 1 unless 0004 recorded otherwise.

    Missing means 1, so deleting the record lets no unkeyed row in; a record
    that is not authentic is an error of its own.
    """
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (KEYED_FROM,)).fetchone()
    if row is None:
        return 1
    seq = parse_keyed_from(str(row[0]), key)
    if seq is None:
        raise AuditChainBroken(
            f"the record of where the keyed audit chain begins ({KEYED_FROM} in state.db) "
            "is not authentic: it was edited to let unkeyed rows in. " + RESTORE
        )
    return seq


def restore_triggers(conn: sqlite3.Connection) -> list[str]:
    """Re-create the append-only triggers that are missing (from the migrations' SQL)."""
    from certgit.reconciler.store.migrate import available_migrations

    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    definitions: dict[str, str] = {}
    for migration in available_migrations():
        for match in re.finditer(
            r"CREATE TRIGGER (\w+) .*?\bEND;", migration.sql, flags=re.S | re.I
        ):
            definitions[match.group(1)] = match.group(0)
    restored = [name for name in APPEND_ONLY_TRIGGERS if name not in present]
    for name in restored:
        conn.execute(definitions[name])
    return restored


# Created by the migrations; `verify` reports any that is missing.
APPEND_ONLY_TRIGGERS = (
    "audit_log_no_update",
    "audit_log_no_delete",
    "audit_log_chain",
    "audit_head_no_delete",
    "audit_head_forward_only",
    "audit_log_keyed",
)


def verify(conn: sqlite3.Connection, key: AuditKey, head_file: Path) -> ChainReport:
    """Verify the stored chain against its head and the head file.

    Call it first thing in a read transaction: the head file is read before the
    first query fixes the snapshot, so an append racing with this can only leave
    the file behind the rows read, never ahead of them.
    """
    anchor = read_head_file(head_file, key)
    head = _head(conn)
    report = verify_chain(
        read_entries(conn), head.seq, head.hash, key, anchor, keyed_from=_keyed_from(conn, key),
        head_file=f"audit head file {head_file}",
    )  # fmt: skip
    if anchor is None and report.entries:
        raise AuditChainBroken(
            f"audit head file {head_file} is missing, but the log has "
            f"{_entries(report.entries)}: it was deleted (certgit writes it with every "
            "entry), and without it deleted or replaced entries go unnoticed. Restore it "
            "from a backup of this state directory and investigate who had write access; "
            + REANCHOR
        )
    # The chain holds; were the triggers that keep it append-only dropped? (Checked
    # last so a broken chain is reported as what it is.)
    present = {
        row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    }
    missing = sorted(set(APPEND_ONLY_TRIGGERS) - present)
    if missing:
        raise AuditChainBroken(
            f"the audit log's append-only triggers are gone ({', '.join(missing)}): someone "
            "with write access to state.db dropped them, so rows may have been changed in "
            "ways the chain alone cannot show. Investigate who had access; restore state.db "
            "from a backup (its triggers come back with it)"
        )
    return report


def anchor_step(key: AuditKey, head_file: Path) -> Callable[[sqlite3.Connection], None]:
    """Migration 0004's Python step: anchor the chain as found, in the migration's transaction.

    Records (authenticated, in meta) that every row after the current head is
    keyed, and writes the head file for that head (the last unkeyed row, or seq
    0 on a fresh store), so the rows written before the upgrade are covered
    from now on. An existing head file is left alone: it belongs to a newer
    state of this directory (an older state.db put back) and is evidence for
    `verify`. The caller has checked the master key is the store's own: a head
    file made with a wrong key would read as forged ever after.
    """

    def step(conn: sqlite3.Connection) -> None:
        head = _head(conn)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            (KEYED_FROM, keyed_from_record(head.seq + 1, key)),
        )
        if head_file.exists():
            return
        try:
            write_head_file(head_file, head, key)
        except OSError as exc:
            raise StoreError(
                f"cannot write the audit head file {head_file} ({exc.strerror}): check the "
                "state directory is writable and not full, then start certgit again"
            ) from None

    return step


class AuditLog:
    """The audit_log and audit_head tables of one store, and its head file.

    ``to_syslog`` sends `syslog_line` for every entry to the system log after
    it is committed (default off; the site policy's ``[audit] syslog`` turns it on).
    """

    def __init__(
        self, db: Database, key: AuditKey, head_file: Path, *, to_syslog: bool = False
    ) -> None:
        self._db = db
        self._key = key
        self.head_file = head_file
        self.to_syslog = to_syslog
        # Inside `deferred_head()`: (seq before the first deferred row, latest head).
        self._deferred: list[Any] | None = None

    @contextlib.contextmanager
    def deferred_head(self) -> Iterator[None]:
        """Write the head file once, when the block ends, instead of after every append.

        An apply appends a row per issuance and per deploy; each head-file write
        costs an fsync pair (~2 ms here). A crash inside the block leaves the
        head file behind the database, which verify accepts (rows after it
        must chain from it), never ahead. Nested blocks join the outer one.
        """
        if self._deferred is not None:
            yield
            return
        self._deferred = []
        try:
            yield
        finally:
            pending, self._deferred = self._deferred, None
            if pending:
                self._advance_head_file(pending[0], pending[1])

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
        return self.append_many([AuditRecord(actor, action, subject, details, at, columns)])[0]

    def append_many(self, records: Sequence[AuditRecord]) -> list[int]:
        """Append rows in one write transaction, then write the head file once; their seqs."""
        if not records:
            return []
        with self._db.transaction() as conn:
            heads = [
                append(conn, self._key, db_timestamp(r.at), r.actor, r.action, r.subject,
                       r.details, r.columns)
                for r in records
            ]  # fmt: skip
        # Committed. A crash before the head file is written leaves it behind the
        # database, which verify accepts; the other order would leave it ahead.
        if self._deferred is None:
            self._advance_head_file(heads[0].seq - 1, heads[-1])
        elif self._deferred:
            self._deferred[1] = heads[-1]
        else:
            self._deferred[:] = [heads[0].seq - 1, heads[-1]]
        if self.to_syslog:
            for record, head in zip(records, heads, strict=True):
                self._send_syslog(syslog_line(head, str(record.action), record.subject))
        return [h.seq for h in heads]

    def _advance_head_file(self, prior_seq: int, head: ChainHead) -> None:
        """Move the head file forward to ``head`` unless it is evidence of tampering.

        Never raises: the rows are committed and an audit write never aborts a
        run. What the file holds is checked against the database first: a file
        that is missing on a log that had rows, not authentic, ahead of the
        database or disagreeing with it is left as it is (and logged) for
        `certgit audit verify` to report; writing over it would erase the proof.
        """
        where = f"audit head file {self.head_file}"
        try:
            current = read_head_file(self.head_file, self._key)
        except StoreError as exc:  # AuditChainBroken included
            log.warning("%s not advanced to seq %d: %s", where, head.seq, exc)
            return
        if current is None and prior_seq > 0:
            log.warning(
                "%s is missing; not re-created at seq %d so `certgit audit verify` can "
                "report it", where, head.seq,
            )  # fmt: skip
            return
        if current is not None:
            stored = _stored_hash(self._db.conn, current.seq)
            if stored != current.hash:
                log.warning(
                    "%s (seq %d) does not match state.db; left as it is, not advanced to "
                    "seq %d: run `certgit audit verify`", where, current.seq, head.seq,
                )  # fmt: skip
                return
            if current.seq >= head.seq:
                return  # another process wrote a later head already: never move it back
        try:
            write_head_file(self.head_file, head, self._key)
        except OSError as exc:
            log.warning("%s not written at seq %d (%s): it stays behind", where, head.seq, exc)

    @staticmethod
    def _send_syslog(line: str) -> None:
        try:
            syslog.syslog(syslog.LOG_NOTICE, line)
        except OSError as exc:  # never abort a run for the log's copy
            log.warning("audit entry not sent to syslog (%s): %s", exc, line)

    def anchor(self, actor: str, reason: str, at: datetime) -> ChainReport:
        """Accept state.db as it is: verify every row with the key, ignoring the head
        file, record an ``audit.anchored`` row saying what the head file held, and
        rewrite the head file at that row. An edited row still raises
        `AuditChainBroken`: this fixes a head file, never the rows.
        """
        was: str | dict[str, Any]
        try:
            found = read_head_file(self.head_file, self._key)
        except StoreError as exc:  # not authentic, garbled or unreadable: say which
            was = f"unusable: {exc}"
        else:
            was = "missing" if found is None else {"seq": found.seq, "hash": found.hash}
        with self._db.transaction() as conn:
            db_head = _head(conn)
            verify_chain(
                read_entries(conn), db_head.seq, db_head.hash, self._key,
                keyed_from=_keyed_from(conn, self._key),
            )  # fmt: skip
            # accepting the rows includes making the table append-only again
            restored = restore_triggers(conn)
            head = append(
                conn, self._key, db_timestamp(at), actor, AuditEvent.AUDIT_ANCHORED,
                self.head_file.name,
                {"reason": reason, "head_file_was": was, "database_ended_at": db_head.seq,
                 **({"triggers_restored": restored} if restored else {})},
            )  # fmt: skip
        try:
            write_head_file(self.head_file, head, self._key)
        except OSError as exc:
            raise StoreError(
                f"cannot write the audit head file {self.head_file} ({exc.strerror}): make "
                "the state directory writable and run `certgit audit anchor` again"
            ) from None
        if self.to_syslog:
            self._send_syslog(syslog_line(head, AuditEvent.AUDIT_ANCHORED, self.head_file.name))
        return self.check()

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

    def check(self) -> ChainReport:
        """Verify the chain, its head and the head file; `AuditChainBroken` says what broke."""
        with self._db.transaction(write=False) as conn:
            return verify(conn, self._key, self.head_file)

    def verify(self) -> int:
        """Verify the whole chain, its head and the head file; return rows verified."""
        return self.check().entries
