"""Where the audit chain is anchored outside state.db, and the keys that authenticate it.

    K_chain = HKDF-SHA256(master key, info b"certgit audit chain v1")   each row's MAC
    K_head  = HKDF-SHA256(master key, info b"certgit audit head v1")    the head file's MAC

    <state>/audit.head   {"format": "certgit-audit-head/1", "seq": N, "hash": <row N's MAC>,
                          "mac": HMAC(K_head, canonical_json({format, hash, seq}))}
    meta audit_keyed_from {"format": "certgit-audit-keyed-from/1", "seq": K,
                          "mac": HMAC(K_head, canonical_json({format, seq}))}

The head file is what `state.db` cannot vouch for itself: the seq and MAC of
the newest row, outside the file an attacker would edit, authenticated so it
cannot be written without the master key. ``audit_keyed_from`` (in state.db)
says from which seq on every row is keyed, authenticated the same way, so
rows cannot be relabelled as written before the chain was keyed. It is replaced atomically (temp
file, fsync, rename, directory fsync: `statedir.replace_private_file`), mode
0600. How it is kept and checked is in audit.py. The optional syslog line
(`syslog_line`) is a second copy that can leave the host.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certgit.reconciler.errors import AuditChainBroken, StoreError
from certgit.reconciler.model import canonical_json
from certgit.reconciler.statedir import replace_private_file

__all__ = [
    "CHAIN_KEY_INFO",
    "HEAD_FORMAT",
    "HEAD_KEY_INFO",
    "KEYED_FROM_FORMAT",
    "REANCHOR",
    "RESTORE",
    "AuditKey",
    "ChainHead",
    "keyed_from_record",
    "parse_keyed_from",
    "read_head_file",
    "syslog_line",
    "write_head_file",
]

CHAIN_KEY_INFO = b"certgit audit chain v1"
HEAD_KEY_INFO = b"certgit audit head v1"
HEAD_FORMAT = "certgit-audit-head/1"
KEYED_FROM_FORMAT = "certgit-audit-keyed-from/1"
_HEAD_MAX_BYTES = 4096  # the file is ~200 bytes; anything larger is not ours
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEXES = ("hash", "mac")
RESTORE = "Restore the state store from a backup and investigate who had write access"
REANCHOR = (
    "once you know why and accept state.db as it is, run "
    "`certgit audit anchor --reason TEXT` (recorded in the log)"
)


@dataclass(frozen=True)
class AuditKey:
    """The two keys derived from the master key: K_chain for rows, K_head for the head file.

    Separate keys (HKDF with distinct ``info``) so no MAC of one kind can stand
    in for the other, and neither is the master key that seals private keys.
    """

    chain: bytes = field(repr=False)
    head: bytes = field(repr=False)

    @classmethod
    def derive(cls, master_key: bytes) -> AuditKey:
        def hkdf(info: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
                master_key
            )

        return cls(hkdf(CHAIN_KEY_INFO), hkdf(HEAD_KEY_INFO))

    def row_mac(self, message: str) -> str:
        return hmac.new(self.chain, message.encode(), hashlib.sha256).hexdigest()

    def head_mac(self, body: str) -> str:
        return hmac.new(self.head, body.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ChainHead:
    """A position in the chain: a row's seq and hash (seq 0 and GENESIS_HASH before any)."""

    seq: int
    hash: str


def _head_body(head: ChainHead) -> str:
    return canonical_json({"format": HEAD_FORMAT, "hash": head.hash, "seq": head.seq})


def write_head_file(path: Path, head: ChainHead, key: AuditKey) -> None:
    """Replace the head file with ``head`` and its MAC (0600, fsynced, renamed into place)."""
    body = _head_body(head)
    record = {**json.loads(body), "mac": key.head_mac(body)}
    replace_private_file(path, (canonical_json(record) + "\n").encode(), 0o600)


def read_head_file(path: Path, key: AuditKey) -> ChainHead | None:
    """The authenticated head in ``path``; None when the file does not exist.

    Raises `AuditChainBroken` when it is garbled or its MAC was not made with
    ``key``, `StoreError` when it cannot be read at all (permissions).
    """
    try:
        with path.open("rb") as fh:
            data = fh.read(_HEAD_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(
            f"cannot read audit head file {path} ({exc.strerror}): check its owner and "
            "mode (certgit writes it 0600 beside state.db)"
        ) from None
    fix = (
        "Restore it from a backup of this state directory and investigate who had "
        "write access; " + REANCHOR
    )
    try:
        record = json.loads(data) if len(data) <= _HEAD_MAX_BYTES else None
    except ValueError:
        record = None
    if (
        not isinstance(record, dict)
        or record.keys() != {"format", "hash", "mac", "seq"}
        or record["format"] != HEAD_FORMAT
        or type(record["seq"]) is not int
        or record["seq"] < 0
        or not all(isinstance(record[k], str) and _HEX64.fullmatch(record[k]) for k in _HEXES)
    ):
        raise AuditChainBroken(f"audit head file {path} is garbled, not one certgit wrote. {fix}")
    head = ChainHead(record["seq"], record["hash"])
    if not hmac.compare_digest(key.head_mac(_head_body(head)), record["mac"]):
        raise AuditChainBroken(
            f"audit head file {path} is not authentic: its MAC was not made with this "
            "store's master key, so it was edited or copied from another state "
            f"directory. {fix}"
        )
    return head


def _keyed_from_body(seq: int) -> str:
    return canonical_json({"format": KEYED_FROM_FORMAT, "seq": seq})


def keyed_from_record(seq: int, key: AuditKey) -> str:
    """The text kept in state.db (meta ``audit_keyed_from``): from which seq on every row
    is keyed, with its MAC, so the boundary cannot be moved to let unkeyed rows in."""
    return canonical_json({"format": KEYED_FROM_FORMAT, "seq": seq, "mac": key.head_mac(
        _keyed_from_body(seq))})  # fmt: skip


def parse_keyed_from(text: str, key: AuditKey) -> int | None:
    """The seq in a `keyed_from_record`; None when it is garbled or not authentic."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or type(seq := record.get("seq")) is not int or seq < 1:
        return None
    mac = record.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(
        key.head_mac(_keyed_from_body(seq)), mac
    ):
        return None
    return seq


def _syslog_value(text: str) -> str:
    """A value as one token: bare when plain, else JSON-quoted (no line breaks get through)."""
    if text and all(c.isprintable() and not c.isspace() and c not in "\"'=\\" for c in text):
        return text
    return json.dumps(text)


def syslog_line(head: ChainHead, action: str, subject: str) -> str:
    """The line sent to the system log for one entry (with ``syslog=True``)."""
    return (
        f"certgit audit seq={head.seq} action={_syslog_value(action)} "
        f"subject={_syslog_value(subject)} mac={head.hash[:16]}"
    )
