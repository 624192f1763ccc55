"""The apache connector against a real apache2 (Debian 2.4, mpm_event + mod_ssl) on loopback.

Files follow the connector's layout under one directory: certs/NAME.crt,
certs/NAME.chain.pem and private/NAME.key; validate is the test instance's
`apache2 -f CONF -t`, reload its `-k graceful`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from certgit.connectors.errors import PreflightFailed
from certgit.connectors.model import Deployment
from tests.integration.conftest import (
    SeededServerConformance,
    ServerAcceptance,
    ServerEnv,
    deploy,
    issue,
    make_target,
    sha256_file,
)
from tests.integration.servers import (
    ApacheServer,
    apache_site,
    free_port,
    require_binary,
    served_fingerprint,
    start_apache,
    write_apache_layout,
)


class TestApacheAcceptance(ServerAcceptance):
    # `apache2 -t` does not load certificates: the connector's preflight refuses weak keys.
    rejects_weak_rsa = False
    weak_rsa_skip = "covered by test_weak_rsa_key_is_refused_before_anything_is_written"

    def start(self, tmp_path: Path, old: Deployment, other: Deployment) -> ServerEnv:
        require_binary("apache2")
        ssl_dir = tmp_path / "ssl"
        write_apache_layout(ssl_dir, old)
        write_apache_layout(ssl_dir, other)
        server = start_apache(
            tmp_path / "apache",
            [
                apache_site(ssl_dir, self.server_name, "web"),
                apache_site(ssl_dir, self.other_name, "other"),
            ],
        )
        return ServerEnv(
            tmp_path,
            server,
            "apache",
            old,
            ssl_dir / "certs" / "web.crt",
            {"directory": str(ssl_dir)},
        )

    def break_config(self, env: ServerEnv) -> None:
        server: ApacheServer = env.server
        server.write_config(extra="ThisIsNotADirective on")


def test_weak_rsa_key_is_refused_before_anything_is_written(tmp_path: Path, stop_later) -> None:
    """configtest passes a 1024-bit key and graceful then kills Apache: preflight stops it."""
    require_binary("apache2")
    ssl_dir = tmp_path / "ssl"
    old = issue("web")
    write_apache_layout(ssl_dir, old)
    server = stop_later(
        start_apache(tmp_path / "apache", [apache_site(ssl_dir, "web.example.test", "web")])
    )
    target = make_target(
        tmp_path,
        "apache",
        {
            "directory": str(ssl_dir),
            "validateCommand": server.validate_argv(),
            "reloadCommand": server.reload_argv(),
        },
    )
    before = sha256_file(ssl_dir / "certs" / "web.crt")
    with pytest.raises(PreflightFailed, match="2048"):
        deploy(target, issue("web", 2, rsa_bits=1024))
    assert sha256_file(ssl_dir / "certs" / "web.crt") == before
    assert server.reload_count() == 0
    assert served_fingerprint(server.port, "web.example.test") == old.fingerprint


class TestApacheConformance(SeededServerConformance):
    """The SDK's conformance suite against a real apache2: one vhost per suite certificate."""

    connector_name = "apache"

    def make_server(self, tmp_path: Path, directory: Path) -> ApacheServer:
        require_binary("apache2")
        sites = [
            apache_site(directory, self.dns_names_for(name)[0], name)
            for name in self.certificate_names
        ]
        return ApacheServer(root=tmp_path / "apache", port=free_port(), sites=tuple(sites))
