"""Hash chaining of the audit log (the table and its triggers live in the migrations).

    hash(n) = sha256_hex(prev_hash(n) + canonical_json([seq, at, actor, action, subject, details]))
    prev_hash(1) = GENESIS_HASH, prev_hash(n) = hash(n - 1)

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
from dataclasses import dataclass
from typing import Any

from certgit.reconciler.errors import AuditChainBroken
from certgit.reconciler.model import canonical_json, sha256_hex

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
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
    prev_hash: str, seq: int, at: str, actor: str, action: str, subject: str, details: Any
) -> str:
    """The hash of one row, given the previous row's hash and the parsed details."""
    return sha256_hex(prev_hash + canonical_json([seq, at, actor, action, subject, details]))


def _entry_hash(entry: AuditEntry) -> str | None:
    try:
        details = json.loads(entry.details_json)
    except (TypeError, ValueError):
        return None
    return chain_hash(
        entry.prev_hash, entry.seq, entry.at, entry.actor, entry.action, entry.subject, details
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
    "SELECT seq, at, actor, action, subject, details_json, prev_hash, hash FROM audit_log"
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
) -> int:
    """Insert one row at the head and advance the head; the caller holds a write transaction."""
    text = details_json(details)
    head_seq, head_hash = _head(conn)
    seq = head_seq + 1
    digest = chain_hash(head_hash, seq, at, actor, action, subject, json.loads(text))
    conn.execute(
        "INSERT INTO audit_log (seq, at, actor, action, subject, details_json, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, at, actor, action, subject, text, head_hash, digest),
    )
    conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
    return seq


def read_entries(
    conn: sqlite3.Connection, *, since_seq: int = 0, limit: int | None = None
) -> Iterator[AuditEntry]:
    """Rows with seq > since_seq in seq order, streamed."""
    cursor = conn.execute(
        _SELECT + " WHERE seq > ? ORDER BY seq LIMIT ?",
        (since_seq, -1 if limit is None else limit),
    )
    return (AuditEntry(*row) for row in cursor)


def verify(conn: sqlite3.Connection) -> int:
    """Verify the stored chain against its head; run inside one read transaction."""
    head_seq, head_hash = _head(conn)
    return verify_chain(read_entries(conn), head_seq, head_hash)
