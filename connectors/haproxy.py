"""The `haproxy` connector: one combined PEM per certificate (leaf, chain, key).

Debian defaults: /etc/haproxy/certs/{name}.pem, mode 0600 (it holds the key),
for `bind ... ssl crt /etc/haproxy/certs/`; `haproxy -c -f
/etc/haproxy/haproxy.cfg` checks the config with the new files in place, then
`systemctl reload haproxy` (master-worker re-exec; in-flight connections finish
on the old worker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from certgit.connectors.sdk.base import KEY_TYPES, FileConnector, file_roles
from certgit.connectors.sdk.staging import HAPROXY, ServerTest


class HAProxyConnector(FileConnector):
    """HAProxy: `crt` files that carry the certificate, its chain and the private key."""

    name: ClassVar[str] = "haproxy"
    # Every KEY_TYPES entry, Ed25519 included. Checked against HAProxy 2.6.12 (OpenSSL 3.0.19)
    # on Debian 12: each type's leaf served over HTTPS from a combined crt
    # (tests/integration/test_key_types.py).
    accepted_keys: ClassVar[frozenset[str]] = frozenset(KEY_TYPES)
    roles: ClassVar[Mapping[str, str | None]] = file_roles(combined="{name}.pem")
    default_directory: ClassVar[str | None] = "/etc/haproxy/certs"
    default_mode: ClassVar[int] = 0o600
    validate_command: ClassVar[tuple[str, ...] | None] = (
        "haproxy",
        "-c",
        "-f",
        "/etc/haproxy/haproxy.cfg",
    )
    reload_command: ClassVar[tuple[str, ...] | None] = ("systemctl", "reload", "haproxy")
    config_test: ClassVar[ServerTest | None] = HAPROXY
