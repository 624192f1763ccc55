"""The `traefik` connector: cert + key files plus a dynamic-config file per certificate.

Traefik's file provider (`providers.file.directory: /etc/traefik/certs`,
`watch: true`) merges every YAML file in the directory and reloads by itself,
so there is no validate and no reload command by default. Each certificate
gets `{name}.tls.yml` listing its certFile/keyFile; one file per certificate
keeps a deploy of one certificate from rewriting the others' entries. The
YAML is written as JSON-quoted scalars (valid YAML, no YAML library needed).
Settings: the usual file settings plus `dynamicFile` (name template, null
disables it when the operator lists the files in Traefik's config instead).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import ClassVar

from certgit.connectors.model import Deployment, Removal, TargetSpec
from certgit.connectors.sdk.base import FULLCHAIN_AND_KEY, FileConnector, FileSpec

DEFAULT_DYNAMIC_FILE = "{name}.tls.yml"


class TraefikConnector(FileConnector):
    """Traefik v2/v3 file provider."""

    name: ClassVar[str] = "traefik"
    roles: ClassVar[Mapping[str, str | None]] = FULLCHAIN_AND_KEY
    default_directory: ClassVar[str | None] = "/etc/traefik/certs"

    def dynamic_path(self, target: TargetSpec, certificate: str) -> str | None:
        """Where the dynamic-config file of `certificate` goes (None: disabled)."""
        template = (target.settings or {}).get("dynamicFile", DEFAULT_DYNAMIC_FILE)
        if not template:
            return None
        directory = self.settings(target).directory
        return posixpath.normpath(
            posixpath.join(directory, str(template).replace("{name}", certificate))
        )

    def file_specs(self, target: TargetSpec, deployment: Deployment) -> list[FileSpec]:
        """The fullchain and key files, then the dynamic config that points at them."""
        specs = super().file_specs(target, deployment)
        path = self.dynamic_path(target, deployment.certificate)
        if path is None:
            return specs
        return self.with_companion(
            target,
            deployment,
            specs,
            path,
            lambda cert, key: dynamic_config(deployment.certificate, cert, key),
            role="other",
        )

    def removal_paths(self, target: TargetSpec, removal: Removal) -> list[str]:
        """The binding's files and its dynamic-config file."""
        paths = super().removal_paths(target, removal)
        extra = self.dynamic_path(target, removal.certificate)
        return [*paths, extra] if extra else paths


def dynamic_config(certificate: str, cert_file: str, key_file: str) -> bytes:
    """A Traefik dynamic configuration (YAML) with one TLS certificate entry."""
    return (
        f"# managed by certgit: certificate {certificate}; do not edit\n"
        "tls:\n"
        "  certificates:\n"
        f"    - certFile: {json.dumps(cert_file)}\n"
        f"      keyFile: {json.dumps(key_file)}\n"
    ).encode()
