"""The haproxy connector against a real HAProxy 2.6 (master-worker) on loopback.

`bind ... ssl crt <default.pem> crt <target dir>`: the combined PEMs the
connector writes are picked by SNI; validate is `haproxy -c -f CFG`, reload a
SIGUSR2 to the master.
"""

from __future__ import annotations

from pathlib import Path

from certgit.connectors.model import Deployment
from tests.integration.conftest import SeededServerConformance, ServerAcceptance, ServerEnv
from tests.integration.servers import HAProxyServer, free_port, require_binary, start_haproxy


def _combined(deployment: Deployment) -> bytes:
    return deployment.fullchain_pem + deployment.key_pem


class TestHAProxyAcceptance(ServerAcceptance):
    key_suffixes = (".pem",)  # the combined PEM carries the key

    def start(self, tmp_path: Path, old: Deployment, other: Deployment) -> ServerEnv:
        require_binary("haproxy")
        certs = tmp_path / "certs"
        certs.mkdir()
        (certs / "web.pem").write_bytes(_combined(old))
        (certs / "other.pem").write_bytes(_combined(other))
        for pem in certs.iterdir():
            pem.chmod(0o600)
        server = start_haproxy(tmp_path / "haproxy", certs)
        return ServerEnv(
            tmp_path, server, "haproxy", old, certs / "web.pem", {"directory": str(certs)}
        )

    def break_config(self, env: ServerEnv) -> None:
        server: HAProxyServer = env.server
        server.write_config(extra="    this-is-not-a-keyword on")


class TestHAProxyConformance(SeededServerConformance):
    """The SDK's conformance suite against a real HAProxy loading every PEM of the directory."""

    connector_name = "haproxy"

    def make_server(self, tmp_path: Path, directory: Path) -> HAProxyServer:
        require_binary("haproxy")
        root = tmp_path / "haproxy"
        root.mkdir()  # reload_argv() writes its script there before the start
        return HAProxyServer(root=root, port=free_port(), crt=directory)
