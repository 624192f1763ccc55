"""The `envoy` connector: cert + key files plus an SDS file Envoy watches.

Envoy reads a `Secret` from a path-based SDS config source
(`sds_config: {path_config_source: {path: /etc/envoy/certs/NAME.sds.yaml}}`)
and reloads it when the file is moved into place, which is exactly what the
atomic apply does, so there is no validate or reload command by default. The
Secret names the files and sets `watched_directory` so Envoy also re-reads the
certificate and key when they are renamed in, even when the SDS text itself
did not change. Settings: the usual file settings plus `sdsFile` (name
template, default `{name}.sds.yaml`) and `secretName` (default `{name}`).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import ClassVar

from certgit.connectors.model import Deployment, Removal, TargetSpec
from certgit.connectors.sdk.base import FULLCHAIN_AND_KEY, FileConnector, FileSpec

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
DEFAULT_SDS_FILE = "{name}.sds.yaml"


class EnvoyConnector(FileConnector):
    """Envoy with file-based SDS."""

    name: ClassVar[str] = "envoy"
    roles: ClassVar[Mapping[str, str | None]] = FULLCHAIN_AND_KEY
    default_directory: ClassVar[str | None] = "/etc/envoy/certs"

    def sds_path(self, target: TargetSpec, certificate: str) -> str:
        """Where the SDS file of `certificate` goes."""
        template = str((target.settings or {}).get("sdsFile") or DEFAULT_SDS_FILE)
        directory = self.settings(target).directory
        filename = template.replace("{name}", certificate)
        return posixpath.normpath(posixpath.join(directory, filename))

    def file_specs(self, target: TargetSpec, deployment: Deployment) -> list[FileSpec]:
        """The fullchain and key files, then the SDS file naming them (renamed in last)."""
        name = str((target.settings or {}).get("secretName") or "{name}")
        secret = name.replace("{name}", deployment.certificate)
        return self.with_companion(
            target,
            deployment,
            super().file_specs(target, deployment),
            self.sds_path(target, deployment.certificate),
            lambda cert, key: sds_secret(secret, cert, key),
            role="sds",
        )

    def removal_paths(self, target: TargetSpec, removal: Removal) -> list[str]:
        """The binding's files and its SDS file."""
        return [*super().removal_paths(target, removal), self.sds_path(target, removal.certificate)]


def sds_secret(name: str, cert_file: str, key_file: str) -> bytes:
    """An SDS DiscoveryResponse-style YAML document with one tls_certificate Secret."""
    watched = posixpath.dirname(cert_file)
    return (
        f"# managed by certgit: secret {name}; do not edit\n"
        "resources:\n"
        f'  - "@type": {json.dumps(SECRET_TYPE)}\n'
        f"    name: {json.dumps(name)}\n"
        "    tls_certificate:\n"
        f"      certificate_chain: {{filename: {json.dumps(cert_file)}}}\n"
        f"      private_key: {{filename: {json.dumps(key_file)}}}\n"
        f"      watched_directory: {{path: {json.dumps(watched)}}}\n"
    ).encode()
