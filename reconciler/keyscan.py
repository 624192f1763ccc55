"""Find private keys committed to the desired-state repository.

A private key in Git is a leaked key: every clone, fork, CI cache and backup
holds it, and removing the file leaves it in history. `certgit validate`
(and so every load) refuses a commit in which any file, YAML or not, holds

- a PEM private key block: `-----BEGIN [...]PRIVATE KEY-----` — PKCS#8,
  PKCS#1 (`RSA`), SEC1 (`EC`), `OPENSSH`, `DSA`, PGP's `PRIVATE KEY BLOCK`,
  **and** `ENCRYPTED PRIVATE KEY` (encrypted PKCS#8) or a `Proc-Type:
  4,ENCRYPTED` PKCS#1 key: a passphrase-protected key in Git can be attacked
  offline forever by anyone who ever cloned the repository, its passphrase
  cannot be rotated out of the clones, and certgit could not use it anyway
  (a CA key comes through a secretRef, decrypted: `env`, `file` or `sops`);
- the same PEM block base64-encoded from its first byte, the way a Kubernetes
  Secret's `data:` holds `tls.key` (`LS0tLS1CRUdJTi...`);
- an age identity (`AGE-SECRET-KEY-1...`): the key that decrypts the
  repository's SOPS files must never sit beside them.

Scanning is a byte search, so it costs next to nothing; callers still cache
the verdict by the file's content key (Git blob id), so an unchanged file is
read and scanned once, ever.
"""

from __future__ import annotations

import base64
import binascii
import re

MESSAGE = (
    "a private key is committed here; remove it from the repository (and its history) "
    "and reference it with secretRef"
)
AGE_MESSAGE = (
    "an age secret key is committed here; remove it from the repository (and its history) "
    "and give it to certgit only through the site policy's [secrets] sopsAgeKeyFile"
)

_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_AGE = re.compile(rb"AGE-SECRET-KEY-1[0-9A-Z]{20,}")
# base64("-----BEGIN") as it starts an encoded PEM file, then the rest of the run
_B64_PEM = re.compile(rb"LS0tLS1CRUdJTi[A-Za-z0-9+/]{16,}")
# Quick rejection: a file containing none of these needs no regex at all.
_NEEDLES = (b"PRIVATE KEY", b"AGE-SECRET-KEY-1", b"LS0tLS1CRUdJTi")


def find_private_keys(data: bytes) -> tuple[tuple[int, int, str], ...]:
    """(line, column, message) of every committed key in `data`, 1-based, in file order."""
    if not any(needle in data for needle in _NEEDLES):
        return ()
    found: list[tuple[int, str]] = [(m.start(), MESSAGE) for m in _PEM.finditer(data)]
    found += [(m.start(), AGE_MESSAGE) for m in _AGE.finditer(data)]
    found += [(m.start(), MESSAGE) for m in _B64_PEM.finditer(data) if _encodes_key(m.group())]
    return tuple((*_position(data, offset), message) for offset, message in sorted(found))


def _encodes_key(run: bytes) -> bool:
    head = run[: len(run) // 4 * 4][:120]  # the BEGIN line is well inside 120 characters
    try:
        decoded = base64.b64decode(head, validate=True)
    except (binascii.Error, ValueError):
        return False
    return _PEM.match(decoded) is not None


def _position(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", "replace")) + 1  # characters, not bytes
    return data.count(b"\n", 0, offset) + 1, column
