"""The `dovecot` connector: fullchain + key for ssl_cert/ssl_key; `doveconf -n`; `doveadm reload`.

Debian defaults: /etc/dovecot/private/{name}.crt (0644) and {name}.key (0600),
referenced as `ssl_cert = </etc/dovecot/private/NAME.crt` and `ssl_key =
</etc/dovecot/private/NAME.key`. `doveconf -n` parses the config and reads
the files it names with `<`, so a missing file fails the validate step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from certgit.connectors.sdk.base import FULLCHAIN_AND_KEY, KEY_TYPES, FileConnector


class DovecotConnector(FileConnector):
    """Dovecot IMAP/POP3 TLS files."""

    name: ClassVar[str] = "dovecot"
    # Every KEY_TYPES entry, Ed25519 included. Checked against Dovecot 2.3.19.1 (OpenSSL 3.0.19)
    # on Debian 12: each type's leaf served on a TLS listener
    # (tests/integration/test_key_types.py).
    accepted_keys: ClassVar[frozenset[str]] = frozenset(KEY_TYPES)
    roles: ClassVar[Mapping[str, str | None]] = FULLCHAIN_AND_KEY
    default_directory: ClassVar[str | None] = "/etc/dovecot/private"
    validate_command: ClassVar[tuple[str, ...] | None] = ("doveconf", "-n")
    reload_command: ClassVar[tuple[str, ...] | None] = ("doveadm", "reload")
