"""The `nginx` connector: fullchain + key files, `nginx -t` with them in place, one reload.

Debian defaults: /etc/nginx/ssl/{name}.crt (leaf + chain, 0644) and
/etc/nginx/ssl/{name}.key (0600). nginx reads `ssl_certificate` as a full chain,
so no separate leaf/chain files. Every default is overridable per target
(settings.directory, files, mode, keyMode, owner, group, validateCommand,
reloadCommand). For large configs a reloadCommand of `[kill, -HUP, <pid>]`
after the single `nginx -t` halves the time to serve (see FACTS.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from certgit.connectors.sdk.base import FULLCHAIN_AND_KEY, KEY_TYPES, FileConnector
from certgit.connectors.sdk.staging import NGINX, ServerTest


class NginxConnector(FileConnector):
    """nginx: `ssl_certificate` = {name}.crt (full chain), `ssl_certificate_key` = {name}.key."""

    name: ClassVar[str] = "nginx"
    # Every KEY_TYPES entry, Ed25519 included. Checked against nginx 1.22.1 (OpenSSL 3.0.19)
    # on Debian 12: each type's leaf served over HTTPS
    # (tests/integration/test_key_types.py).
    accepted_keys: ClassVar[frozenset[str]] = frozenset(KEY_TYPES)
    roles: ClassVar[Mapping[str, str | None]] = FULLCHAIN_AND_KEY
    default_directory: ClassVar[str | None] = "/etc/nginx/ssl"
    validate_command: ClassVar[tuple[str, ...] | None] = ("nginx", "-t")
    reload_command: ClassVar[tuple[str, ...] | None] = ("nginx", "-s", "reload")
    config_test: ClassVar[ServerTest | None] = NGINX
