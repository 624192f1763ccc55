"""The `caddy` connector: certificate files, or certificates pushed through Caddy's admin API.

`settings.method` chooses:

- `files` (default): {name}.crt (full chain) and {name}.key in /etc/caddy/certs
  for `tls /etc/caddy/certs/NAME.crt /etc/caddy/certs/NAME.key` (or a
  `load_files` entry); `caddy validate` with the new files in place, then
  `caddy reload --force` (the config text did not change, only the files, so
  without --force Caddy would skip the reload).
- `admin-api`: no files. The connector reads the running config
  (`GET /config/`), replaces the entries it owns in
  `apps.tls.certificates.load_pem` (tagged `certgit:<certificate>`), and
  applies the whole config with one `POST /load`. Caddy provisions a new config
  before switching to it and keeps the old one when that fails (HTTP 400 with
  `{"error": "..."}`): that is the validate step, and nothing was swapped.
  The config is then read back; a post-deploy verify mismatch loads the
  previous config again. `adminEndpoint` (host:port, loopback only: the admin
  API has no authentication) defaults to 127.0.0.1:2019.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from certgit.connectors.errors import (
    PreflightFailed,
    RollbackFailed,
    TransportError,
    ValidateFailed,
    VerifyMismatch,
)
from certgit.connectors.model import (
    Capability,
    ChangeSet,
    Deployment,
    DeployReport,
    Observation,
    TargetSpec,
)
from certgit.connectors.sdk.base import (
    FULLCHAIN_AND_KEY,
    KEY_TYPES,
    FileConnector,
    expected_pairs,
)
from certgit.connectors.sdk.grants import Grants
from certgit.connectors.sdk.staging import CADDY, ServerTest

if TYPE_CHECKING:
    from certgit.connectors.sdk.sandbox import Sandbox

ADMIN_API = "admin-api"
DEFAULT_ADMIN = "127.0.0.1:2019"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
TAG_PREFIX = "certgit:"


class CaddyConnector(FileConnector):
    """Caddy 2: certificate files (default) or the admin API (`method: admin-api`)."""

    name: ClassVar[str] = "caddy"
    # Every KEY_TYPES entry, Ed25519 included. Checked against Caddy 2.6.2 (Go crypto/tls)
    # on Debian 12: each type's leaf served over HTTPS from load_files
    # (tests/integration/test_key_types.py).
    accepted_keys: ClassVar[frozenset[str]] = frozenset(KEY_TYPES)
    roles: ClassVar[Mapping[str, str | None]] = FULLCHAIN_AND_KEY
    default_directory: ClassVar[str | None] = "/etc/caddy/certs"
    validate_command: ClassVar[tuple[str, ...] | None] = (
        "caddy",
        "validate",
        "--config",
        "/etc/caddy/Caddyfile",
    )
    reload_command: ClassVar[tuple[str, ...] | None] = (
        "caddy",
        "reload",
        "--force",
        "--config",
        "/etc/caddy/Caddyfile",
    )
    config_test: ClassVar[ServerTest | None] = CADDY

    # -- mode selection -------------------------------------------------------------------

    @staticmethod
    def uses_api(target: TargetSpec) -> bool:
        """True when the target deploys through the admin API."""
        method = (target.settings or {}).get("method", "files")
        if method not in ("files", ADMIN_API):
            raise PreflightFailed(
                f"target {target.name}: settings.method {method!r} is not 'files' or '{ADMIN_API}'",
                target=target.name,
            )
        return method == ADMIN_API

    @staticmethod
    def admin_endpoint(target: TargetSpec) -> tuple[str, int]:
        """(host, port) of the admin API; refuses anything but loopback."""
        raw = str((target.settings or {}).get("adminEndpoint") or DEFAULT_ADMIN)
        host, sep, port = raw.rpartition(":")
        if not sep or not port.isdigit() or host.lower() not in LOOPBACK_HOSTS:
            raise PreflightFailed(
                f"target {target.name}: settings.adminEndpoint {raw!r} must be a loopback "
                "host:port such as 127.0.0.1:2019 (Caddy's admin API has no authentication; "
                "reach a remote Caddy through the ssh transport)",
                target=target.name,
            )
        return host, int(port)

    def _url(self, target: TargetSpec, path: str) -> str:
        host, port = self.admin_endpoint(target)
        return f"http://{host}:{port}{path}"

    # -- Connector protocol ---------------------------------------------------------------

    def capabilities(self, target: TargetSpec) -> frozenset[Capability]:
        """Files mode: as FileConnector. Admin API: API, VALIDATE (Caddy's own) and OBSERVE."""
        if not self.uses_api(target):
            return super().capabilities(target)
        return frozenset({Capability.API, Capability.VALIDATE, Capability.OBSERVE})

    def grants(self, target: TargetSpec) -> Grants:
        """Admin API: net.dial on the admin endpoint (and the verify endpoint) only."""
        if not self.uses_api(target):
            return super().grants(target)
        host, port = self.admin_endpoint(target)
        dial = [f"{host}:{port}"]
        if target.verify is not None:
            vhost = target.verify.host
            if ":" in vhost and not vhost.startswith("["):
                vhost = f"[{vhost}]"
            dial.append(f"{vhost}:{target.verify.port}")
        return Grants(net_dial=tuple(dict.fromkeys(dial)))

    def deploy(self, sandbox: Sandbox, change: ChangeSet) -> DeployReport:
        """Files mode: the atomic file apply. Admin API: one POST /load of the whole config."""
        if not self.uses_api(change.target):
            return super().deploy(sandbox, change)
        return self._deploy_api(sandbox, change)

    def observe(
        self, sandbox: Sandbox, target: TargetSpec, certificate: str, overrides: Mapping[str, Any]
    ) -> Observation:
        """Admin API: the load_pem entry tagged for `certificate` (fingerprint and SHA-256)."""
        if not self.uses_api(target):
            return super().observe(sandbox, target, certificate, overrides)
        try:
            config = self._get_config(sandbox, target)
        except (TransportError, ValidateFailed, OSError) as exc:
            return Observation(
                certificate=certificate, target=target.name, fingerprint=None, error=str(exc)
            )
        entry = _find(_load_pem(config), certificate)
        key = self._entry_id(target, certificate)
        if entry is None:
            return Observation(
                certificate=certificate, target=target.name, fingerprint=None, files={key: None}
            )
        from certgit.connectors.sdk.base import _leaf_fingerprint

        pem = str(entry.get("certificate", "")).encode()
        return Observation(
            certificate=certificate,
            target=target.name,
            fingerprint=_leaf_fingerprint(pem),
            files={key: _entry_sha(entry)},
        )

    def validate_only(
        self, sandbox: Sandbox, change: ChangeSet, *, always_test: bool = False
    ) -> list[str]:
        """Dry run. Admin API: preflight, read the config, say which entries would change."""
        target = change.target
        if not self.uses_api(target):
            return super().validate_only(sandbox, change, always_test=always_test)
        for deployment in change.deployments:
            self.preflight(deployment)
        current = _load_pem(self._get_config(sandbox, target))
        wanted = _merge(current, change)
        lines: list[str] = []
        for deployment in change.deployments:
            before = _find(current, deployment.certificate)
            after = _find(wanted, deployment.certificate)
            verb = "create " if before is None else ("keep   " if before == after else "replace")
            lines.append(f"{verb} load_pem[{deployment.certificate}] via {self._url(target, '')}")
        for removal in change.removals:
            if _find(current, removal.certificate) is not None:
                lines.append(f"delete  load_pem[{removal.certificate}]")
        if wanted == current:
            lines.append(f"target {target.name}: nothing to change")
        else:
            lines.append("run     POST /load (Caddy validates before switching)")
        return lines

    # -- admin API ------------------------------------------------------------------------

    def _entry_id(self, target: TargetSpec, certificate: str) -> str:
        return f"{self._url(target, '/config/apps/tls/certificates/load_pem')}#{certificate}"

    def _request(
        self, sandbox: Sandbox, target: TargetSpec, method: str, path: str, body: Any = None
    ) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            return sandbox.http_request(
                method, self._url(target, path), body=data, headers=headers, timeout=30.0
            )
        except OSError as exc:
            raise TransportError(
                f"target {target.name}: Caddy admin API at {self._url(target, '')} unreachable; "
                "is Caddy running with that admin listener?",
                target=target.name,
                detail=f"{type(exc).__name__}: {exc}",
            ) from exc

    def _get_config(self, sandbox: Sandbox, target: TargetSpec) -> dict[str, Any]:
        # A /load that carries the admin settings restarts Caddy's admin listener: a
        # read right after it can meet a reset connection. Ask again, briefly.
        for pause in (0.1, 0.3, 0.9, None):
            try:
                status, raw = self._request(sandbox, target, "GET", "/config/")
                break
            except TransportError:
                if pause is None:
                    raise
                time.sleep(pause)
        if status != 200:
            raise TransportError(
                f"target {target.name}: GET /config/ answered HTTP {status}",
                target=target.name,
                detail=_caddy_error(raw),
            )
        config = json.loads(raw or b"null")
        return config if isinstance(config, dict) else {}

    def _load(self, sandbox: Sandbox, target: TargetSpec, config: Mapping[str, Any]) -> None:
        status, raw = self._request(sandbox, target, "POST", "/load", config)
        if status != 200:
            raise ValidateFailed(
                f"target {target.name}: Caddy refused the new config (HTTP {status}) and kept "
                "the old one; fix the certificate or the Caddy config and redeploy",
                target=target.name,
                detail=_caddy_error(raw),
            )

    def _deploy_api(self, sandbox: Sandbox, change: ChangeSet) -> DeployReport:
        target = change.target
        for deployment in change.deployments:
            self.preflight(deployment)
        fingerprints = {d.certificate: d.fingerprint for d in change.deployments}
        old_config = self._get_config(sandbox, target)
        current = _load_pem(old_config)
        wanted = _merge(current, change)
        files = {
            self._entry_id(target, d.certificate): _entry_sha(_entry(d)) for d in change.deployments
        }
        if wanted == current:
            return DeployReport(
                target=target.name, changed=False, files=files, fingerprints=fingerprints
            )
        new_config = _with_load_pem(old_config, wanted)
        self._load(sandbox, target, new_config)
        # Read back: the config Caddy runs must hold exactly the entries we sent.
        if _load_pem(self._get_config(sandbox, target)) != wanted:
            self._restore(sandbox, target, old_config, "the config read back differs")
            raise ValidateFailed(
                f"target {target.name}: Caddy accepted /load but its config does not hold the "
                "new certificates (another writer?); the previous config was loaded again",
                target=target.name,
            )
        verified = False
        config = target.verify
        pairs = expected_pairs(config, change.deployments) if config else []
        if config is not None and pairs:
            from certgit.connectors.sdk.verify import verify_with_retry

            def check(name: str | None, expected: str) -> None:
                def served() -> str:
                    return sandbox.tls_leaf_fingerprint(
                        config.host, config.port, name, timeout=config.timeout
                    )

                verify_with_retry(served, expected, replace(config, server_name=name))

            try:
                # Each binding with its own SNI, as the file connectors do.
                for name, expected in pairs:
                    check(name, expected)
            except VerifyMismatch:
                self._restore(sandbox, target, old_config, "verify mismatch")
                raise
            verified = True
        return DeployReport(
            target=target.name,
            changed=True,
            validated=True,
            reloaded=True,
            verified=verified,
            files=files,
            fingerprints=fingerprints,
        )

    def _restore(
        self, sandbox: Sandbox, target: TargetSpec, old: Mapping[str, Any], why: str
    ) -> None:
        try:
            self._load(sandbox, target, old)
        except (ValidateFailed, TransportError) as exc:
            raise RollbackFailed(
                f"target {target.name}: {why}, and loading the previous Caddy config failed; "
                "check `GET /config/` on the admin API and load a known-good config "
                "(caddy run --resume keeps the last one that worked)",
                target=target.name,
                detail=str(exc),
            ) from exc


# -- load_pem helpers (pure) --------------------------------------------------------------------


def _entry(deployment: Deployment) -> dict[str, Any]:
    return {
        "certificate": deployment.fullchain_pem.decode("ascii"),
        "key": deployment.key_pem.decode("ascii"),
        "tags": [f"{TAG_PREFIX}{deployment.certificate}"],
    }


def _entry_sha(entry: Mapping[str, Any]) -> str:
    text = str(entry.get("certificate", "")) + str(entry.get("key", ""))
    return hashlib.sha256(text.encode()).hexdigest()


def _owned_by(entry: Any, certificate: str) -> bool:
    return isinstance(entry, Mapping) and f"{TAG_PREFIX}{certificate}" in (entry.get("tags") or ())


def _find(entries: list[Any], certificate: str) -> Mapping[str, Any] | None:
    for entry in entries:
        if _owned_by(entry, certificate):
            return entry
    return None


def _load_pem(config: Mapping[str, Any]) -> list[Any]:
    found = (((config.get("apps") or {}).get("tls") or {}).get("certificates") or {}).get(
        "load_pem"
    )
    return list(found) if isinstance(found, list) else []


def _merge(current: list[Any], change: ChangeSet) -> list[Any]:
    """`current` with our entries replaced in place (others untouched), new ones appended."""
    replacements = {d.certificate: _entry(d) for d in change.deployments}
    removed = {r.certificate for r in change.removals} - set(replacements)
    out: list[Any] = []
    placed: set[str] = set()
    for entry in current:
        name = next((n for n in replacements if _owned_by(entry, n)), None)
        if name is not None:
            if name not in placed:
                out.append(replacements[name])
                placed.add(name)
            continue
        if any(_owned_by(entry, n) for n in removed):
            continue
        out.append(entry)
    out.extend(entry for name, entry in replacements.items() if name not in placed)
    return out


def _with_load_pem(config: Mapping[str, Any], entries: list[Any]) -> dict[str, Any]:
    new = json.loads(json.dumps(config))  # deep copy of plain JSON
    certificates = new.setdefault("apps", {}).setdefault("tls", {}).setdefault("certificates", {})
    if entries:
        certificates["load_pem"] = entries
    else:
        certificates.pop("load_pem", None)
    return new


def _caddy_error(raw: bytes) -> str:
    """Caddy's `{"error": "..."}` message, cut short and with any PEM block removed."""
    try:
        message = str(json.loads(raw).get("error", ""))
    except (ValueError, AttributeError):
        message = raw.decode("utf-8", "replace")
    if "-----BEGIN" in message:
        message = message.split("-----BEGIN", 1)[0] + "[PEM removed]"
    return message[:500]
