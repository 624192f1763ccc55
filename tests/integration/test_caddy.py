"""The caddy connector against a real Caddy 2.6 on loopback: file mode and admin-API mode.

File mode: Caddy's TLS app loads the connector's {name}.crt/{name}.key
(`load_files`); validate is `caddy validate --config`, reload `caddy reload
--force`. Admin-API mode: certificates go through `POST /load` on the admin
listener (127.0.0.1, free port) and nothing is written to disk.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from certgit.connectors.errors import DeniedError, ValidateFailed, VerifyMismatch
from certgit.connectors.model import ChangeSet, Deployment, TargetSpec, VerifyConfig
from certgit.connectors.sdk.conformance import ConnectorConformance
from certgit.connectors.sdk.grants import Grants
from certgit.connectors.sdk.registry import load_connector, sandbox_for
from certgit.connectors.sdk.sandbox import Sandbox
from certgit.connectors.sdk.transport import LocalTransport
from tests.integration.conftest import (
    SeededServerConformance,
    ServerAcceptance,
    ServerEnv,
    deploy,
    issue,
    make_target,
)
from tests.integration.servers import (
    CaddyServer,
    Site,
    free_port,
    require_binary,
    served_fingerprint,
    start_caddy,
    wait_for,
    wait_served,
    write_pair,
)


class TestCaddyFilesAcceptance(ServerAcceptance):
    rejects_weak_rsa = False
    weak_rsa_skip = "Go's crypto/tls (Caddy) loads 1024-bit RSA keys; nothing to catch"

    def start(self, tmp_path: Path, old: Deployment, other: Deployment) -> ServerEnv:
        require_binary("caddy")
        certs = tmp_path / "certs"
        write_pair(old, certs / "web.crt", certs / "web.key")
        write_pair(other, certs / "other.crt", certs / "other.key")
        sites = [
            Site(self.server_name, certs / "web.crt", certs / "web.key"),
            Site(self.other_name, certs / "other.crt", certs / "other.key"),
        ]
        server = start_caddy(tmp_path / "caddy", sites)
        return ServerEnv(
            tmp_path, server, "caddy", old, certs / "web.crt", {"directory": str(certs)}
        )

    def break_config(self, env: ServerEnv) -> None:
        server: CaddyServer = env.server
        config = server.config()
        config["apps"]["tls"]["no_such_field"] = True  # type: ignore[index]
        server.config_path.write_text(json.dumps(config))


class TestCaddyFilesConformance(SeededServerConformance):
    """The SDK's conformance suite against a real Caddy loading the files (`load_files`)."""

    connector_name = "caddy"

    def make_server(self, tmp_path: Path, directory: Path) -> CaddyServer:
        require_binary("caddy")
        sites = [
            Site(self.dns_names_for(name)[0], directory / f"{name}.crt", directory / f"{name}.key")
            for name in self.certificate_names
        ]
        return CaddyServer(
            root=tmp_path / "caddy", port=free_port(), admin_port=free_port(), sites=tuple(sites)
        )


# -- admin-API mode -------------------------------------------------------------------------


@pytest.fixture
def caddy_api(tmp_path: Path, stop_later: Any) -> CaddyServer:
    require_binary("caddy")
    return stop_later(start_caddy(tmp_path / "caddy"))


def api_target(tmp_path: Path, server: CaddyServer, **kw: Any) -> TargetSpec:
    return make_target(
        tmp_path, "caddy", {"method": "admin-api", "adminEndpoint": server.admin}, **kw
    )


def _load_pem(server: CaddyServer) -> list[dict[str, Any]]:
    import urllib.request

    with urllib.request.urlopen(
        f"http://{server.admin}/config/apps/tls/certificates/load_pem", timeout=5
    ) as response:
        return json.loads(response.read()) or []


def test_admin_api_deploy_serves_and_writes_no_files(tmp_path: Path, caddy_api: CaddyServer):
    target = api_target(tmp_path, caddy_api)
    web, other = issue("web"), issue("other")
    report = deploy(target, web, other)
    assert report.changed is True
    assert wait_served(caddy_api.port, "web.example.test", web.fingerprint)
    assert served_fingerprint(caddy_api.port, "other.example.test") == other.fingerprint
    entries = _load_pem(caddy_api)
    assert [e["tags"] for e in entries] == [["certgit:web"], ["certgit:other"]]
    # redeploy: nothing posted
    loads = caddy_api.reload_count()
    assert deploy(target, web, other).changed is False
    assert caddy_api.reload_count() == loads
    # a new version replaces the entry in place, others untouched
    web2 = issue("web", 2)
    deploy(target, web2)
    assert wait_served(caddy_api.port, "web.example.test", web2.fingerprint)
    assert len(_load_pem(caddy_api)) == 2
    seen = load_connector("caddy").observe(
        sandbox_for(load_connector("caddy"), target), target, "web", {}
    )
    assert seen.error is None and seen.fingerprint == web2.fingerprint
    assert not any(tmp_path.glob("**/web.key"))


def test_admin_api_rejected_config_is_validate_failed(tmp_path: Path, caddy_api: CaddyServer):
    target = api_target(tmp_path, caddy_api)
    web = issue("web")
    deploy(target, web)
    broken = issue("web", 2)
    # Caddy refuses a certificate/key pair it cannot load; the preflight is bypassed by
    # corrupting the PEM below the dataclass (what a bug elsewhere could send).
    bad = Deployment(
        certificate="web", version=2, fingerprint=broken.fingerprint,
        cert_pem=broken.cert_pem.replace(b"MII", b"XXX", 1), chain_pem=b"",
        key_pem=broken.key_pem, dns_names=broken.dns_names,
    )
    connector = load_connector("caddy")
    connector.preflight = lambda deployment: None  # type: ignore[method-assign]
    with pytest.raises(ValidateFailed) as caught:
        connector.deploy(sandbox_for(connector, target), ChangeSet(target, (bad,)))
    assert "PRIVATE KEY" not in str(caught.value)
    assert served_fingerprint(caddy_api.port, "web.example.test") == web.fingerprint
    assert [e["tags"] for e in _load_pem(caddy_api)] == [["certgit:web"]]


def test_admin_api_verify_mismatch_loads_the_previous_config(
    tmp_path: Path, caddy_api: CaddyServer
) -> None:
    base = api_target(tmp_path, caddy_api)
    web, other = issue("web"), issue("other")
    deploy(base, web, other)
    verify = VerifyConfig(
        "127.0.0.1", caddy_api.port, None,
        initial_delay=0.05, max_delay=0.1, attempts=2, timeout=2.0,
    )
    target = api_target(tmp_path, caddy_api, verify=verify)
    # The binding checks a name that serves another certificate: a mismatch.
    with pytest.raises(VerifyMismatch):
        deploy(target, replace(issue("web", 2), server_name="other.example.test"))
    assert wait_served(caddy_api.port, "web.example.test", web.fingerprint)
    assert len(_load_pem(caddy_api)) == 2


def test_admin_api_needs_its_dial_grant(tmp_path: Path, caddy_api: CaddyServer) -> None:
    target = api_target(tmp_path, caddy_api)
    connector = load_connector("caddy")
    assert connector.grants(target).net_dial == (caddy_api.admin,)
    bare = Sandbox(Grants(), LocalTransport(), target=target.name)
    with pytest.raises(DeniedError):
        connector.deploy(bare, ChangeSet(target, (issue("web"),)))
    assert _load_pem(caddy_api) == []


def test_admin_endpoint_must_be_loopback(tmp_path: Path) -> None:
    target = make_target(
        tmp_path, "caddy", {"method": "admin-api", "adminEndpoint": "10.0.0.1:2019"}
    )
    from certgit.connectors.errors import PreflightFailed

    with pytest.raises(PreflightFailed, match="loopback"):
        load_connector("caddy").grants(target)


class TestCaddyAdminApiConformance(ConnectorConformance):
    """The conformance suite against a real Caddy through its admin API (no reload command)."""

    connector_name = "caddy"
    wrap_reload = False

    def make_target(self, tmp_path: Path) -> TargetSpec:
        require_binary("caddy")
        server = start_caddy(tmp_path / "caddy")
        self.__dict__["_server"] = server
        return api_target(tmp_path, server)

    def served_fingerprint(self, target: TargetSpec, certificate: str) -> str | None:
        server: CaddyServer = self.__dict__["_server"]
        name = f"{certificate}.example.test"
        want = load_connector("caddy").observe(
            sandbox_for(load_connector("caddy"), target), target, certificate, {}
        ).fingerprint
        wait_for(lambda: served_fingerprint(server.port, name) == want, timeout=5)
        return served_fingerprint(server.port, name)

    def reload_count(self, target: TargetSpec) -> int:
        return self.__dict__["_server"].reload_count()

    @pytest.fixture(autouse=True)
    def _stop_server(self) -> Any:
        yield
        server = self.__dict__.get("_server")
        if server is not None:
            server.stop()
