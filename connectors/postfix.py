"""The `postfix` connector: fullchain + key for smtpd_tls_chain_files; `postfix check`/reload.

Debian defaults: /etc/postfix/certs/{name}.crt (0644) and {name}.key (0600).
Point `smtpd_tls_chain_files` at the key then the crt (Postfix >= 3.4), or
`smtpd_tls_cert_file`/`smtpd_tls_key_file` at them. Use
validateCommand [postfix, -c, DIR, check] for a non-default config directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from certgit.connectors.sdk.base import FULLCHAIN_AND_KEY, KEY_TYPES, FileConnector


class PostfixConnector(FileConnector):
    """Postfix SMTP server TLS files."""

    name: ClassVar[str] = "postfix"
    # Every KEY_TYPES entry, Ed25519 included. Checked against Postfix 3.7.11 (OpenSSL 3.0.19)
    # on Debian 12: each type's leaf served by smtpd after STARTTLS
    # (tests/integration/test_key_types.py).
    accepted_keys: ClassVar[frozenset[str]] = frozenset(KEY_TYPES)
    roles: ClassVar[Mapping[str, str | None]] = FULLCHAIN_AND_KEY
    default_directory: ClassVar[str | None] = "/etc/postfix/certs"
    validate_command: ClassVar[tuple[str, ...] | None] = ("postfix", "check")
    reload_command: ClassVar[tuple[str, ...] | None] = ("postfix", "reload")
