"""The master key and AES-256-GCM sealing of private keys at rest.

Where the master key comes from, first match wins:

1. ``CERTGIT_MASTER_KEY_FILE``: a file holding 32 raw bytes, 64 hex characters
   or base64 of 32 bytes. It must not be readable by group or others.
2. ``CERTGIT_MASTER_KEY``: base64 or hex of 32 bytes.
3. ``<state_dir>/master.key``: generated on first run (mode 0600).

A sealed blob is ``version (1 byte) || nonce (12 bytes) || ciphertext+tag``.
The AAD binds a blob to what it belongs to (certificate and fingerprint), so
a blob copied onto another row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from certgit.reconciler.errors import StoreError
from certgit.reconciler.statedir import StateDir, make_private_dir, publish_private_file

__all__ = [
    "ENV_KEY",
    "ENV_KEY_FILE",
    "KEY_FILE_NAME",
    "KEY_SIZE",
    "Sealer",
    "key_id",
    "load_master_key",
]

ENV_KEY_FILE = "CERTGIT_MASTER_KEY_FILE"
ENV_KEY = "CERTGIT_MASTER_KEY"
KEY_FILE_NAME = StateDir.KEY_FILE_NAME
KEY_SIZE = 32
_FORMAT_VERSION = 1
_NONCE_SIZE = 12


def key_id(key: bytes) -> str:
    """A short, non-secret identifier of a master key: first 8 hex of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def _decode_text_key(text: str) -> bytes | None:
    """Hex (64 chars) or base64 of 32 bytes; None when neither decodes to 32 bytes."""
    text = text.strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass  # 64 chars of base64 alphabet that are not hex: try base64 below
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_SIZE else None


def _read_key_file(path: Path) -> bytes:
    try:
        st = path.stat()
    except OSError as exc:
        raise StoreError(
            f"cannot read master key file {path} ({exc.strerror}): "
            f"check {ENV_KEY_FILE} points at an existing, readable file"
        ) from None
    if st.st_mode & 0o077:
        raise StoreError(
            f"master key file {path} is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): run `chmod 600 {path}`"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(
            f"cannot read master key file {path} ({exc.strerror}): check its owner and mode"
        ) from None
    if len(data) == KEY_SIZE:
        return data
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = None
    key = _decode_text_key(text) if text is not None else None
    if key is None:
        raise StoreError(
            f"master key file {path} does not hold a 32-byte key: it must contain "
            "32 raw bytes, 64 hex characters or base64 of 32 bytes "
            "(create one with `head -c 32 /dev/urandom | base64 > FILE`)"
        )
    return key


def _generate_key_file(path: Path) -> bytes:
    """Create ``path`` with a fresh key, or read it if another process won the race.

    The key is published with `publish_private_file` (temp file, fsync, link(2)
    which fails if ``path`` exists): a concurrent reader never sees a half-written key.
    """
    key = secrets.token_bytes(KEY_SIZE)
    try:
        publish_private_file(path, key, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    except OSError as exc:
        raise StoreError(
            f"cannot create master key {path} ({exc.strerror}): check the state directory "
            f"is writable, or set {ENV_KEY_FILE} / {ENV_KEY}"
        ) from None
    return key


def load_master_key(state_dir: Path, env: Mapping[str, str] = os.environ) -> bytes:
    """Return the 32-byte master key: from the key file, the env var, or state_dir/master.key.

    The last one is generated on first run. Raises `StoreError` with the fix when a
    key is unreadable, badly encoded, of the wrong length, or too widely readable.
    """
    key_file = env.get(ENV_KEY_FILE)
    if key_file:
        return _read_key_file(Path(key_file))
    key_text = env.get(ENV_KEY)
    if key_text:
        key = _decode_text_key(key_text)
        if key is None:
            raise StoreError(
                f"{ENV_KEY} is not a 32-byte key: give base64 or 64 hex characters of "
                "32 random bytes (e.g. `head -c 32 /dev/urandom | base64`)"
            )
        return key
    path = StateDir(state_dir).master_key
    if path.exists():
        return _read_key_file(path)
    make_private_dir(Path(state_dir), parents=True)
    return _generate_key_file(path)


class Sealer:
    """AES-256-GCM with a random nonce per seal. Never logs or echoes plaintext."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise StoreError(f"master key must be {KEY_SIZE} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id: str = key_id(key)

    def __repr__(self) -> str:
        return f"Sealer(key_id={self.key_id!r})"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``aad``: version || nonce || ciphertext+tag."""
        nonce = secrets.token_bytes(_NONCE_SIZE)
        return bytes([_FORMAT_VERSION]) + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob made by `seal` with the same key and ``aad``; `StoreError` otherwise."""
        if len(blob) < 1 + _NONCE_SIZE + 16 or blob[0] != _FORMAT_VERSION:
            raise StoreError(
                f"cannot decrypt sealed key for {aad.decode(errors='replace')!r}: "
                "unknown format or truncated blob; the state store may be corrupt"
            )
        nonce = blob[1 : 1 + _NONCE_SIZE]
        try:
            return self._aead.decrypt(nonce, blob[1 + _NONCE_SIZE :], aad)
        except InvalidTag:
            raise StoreError(
                f"cannot decrypt sealed key for {aad.decode(errors='replace')!r}: "
                f"wrong master key? (this key is {self.key_id}); set {ENV_KEY_FILE} or "
                f"{ENV_KEY} to the key the store was created with, or the data was tampered with"
            ) from None
