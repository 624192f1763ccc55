"""The nginx connector against a real nginx on loopback (Debian nginx 1.22).

Each test starts its own nginx (prefix and config in tmp_path) serving
web.example.test (and other.example.test) from the target directory, then
deploys through the connector with the test instance's `nginx -t` as the
validate step and a SIGHUP of the master as the reload.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from certgit.connectors.errors import ReloadFailed, ValidateFailed, VerifyMismatch
from certgit.connectors.model import Deployment, TargetSpec, VerifyConfig
from certgit.connectors.sdk.conformance import ConnectorConformance
from tests.integration.conftest import deploy, issue, make_target, sha256_file
from tests.integration.servers import (
    NginxServer,
    Site,
    free_port,
    require_binary,
    served_fingerprint,
    start_nginx,
    wait_for,
    wait_served,
    write_pair,
)

WEB = "web.example.test"
OTHER = "other.example.test"


@pytest.fixture
def nginx_bin() -> str:
    return require_binary("nginx")


class Env:
    """A running nginx and the nginx target that manages its certificate files."""

    def __init__(self, tmp_path: Path, server: NginxServer, old: Deployment, other: Deployment):
        self.tmp_path = tmp_path
        self.server = server
        self.old = old
        self.other = other
        self.certs = tmp_path / "certs"

    def target(self, *, verify: VerifyConfig | None = None, **settings: Any) -> TargetSpec:
        base: dict[str, Any] = {
            "directory": str(self.certs),
            "validateCommand": self.server.validate_argv(),
            "reloadCommand": self.server.reload_argv(),
        }
        base.update(settings)
        return make_target(self.tmp_path, "nginx", base, verify=verify)

    def on_disk(self) -> str:
        return sha256_file(self.certs / "web.crt")


@pytest.fixture
def env(tmp_path: Path, nginx_bin: str, stop_later: Callable[[Any], Any]) -> Env:
    certs = tmp_path / "certs"
    old, other = issue("web"), issue("other")
    write_pair(old, certs / "web.crt", certs / "web.key")
    write_pair(other, certs / "other.crt", certs / "other.key")
    sites = [
        Site(WEB, certs / "web.crt", certs / "web.key"),
        Site(OTHER, certs / "other.crt", certs / "other.key"),
    ]
    server = stop_later(start_nginx(tmp_path / "nginx", sites))
    assert served_fingerprint(server.port, WEB) == old.fingerprint
    return Env(tmp_path, server, old, other)


def test_deploy_serves_the_new_certificate(env: Env) -> None:
    new = issue("web", 2)
    reloads = env.server.reload_count()
    report = deploy(env.target(), new)
    assert (report.changed, report.validated, report.reloaded) == (True, True, True)
    assert wait_served(env.server.port, WEB, new.fingerprint)
    assert served_fingerprint(env.server.port, OTHER) == env.other.fingerprint
    assert wait_for(lambda: env.server.reload_count() == reloads + 1)
    assert stat.S_IMODE((env.certs / "web.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((env.certs / "web.crt").stat().st_mode) == 0o644
    assert (env.certs / "web.crt").read_bytes() == new.fullchain_pem
    # the same deploy again is a no-op: no validate, no reload
    again = deploy(env.target(), new)
    assert (again.changed, again.validated, again.reloaded) == (False, False, False)


def test_config_error_fails_validate_and_keeps_the_old_certificate(env: Env) -> None:
    before = env.on_disk()
    reloads = env.server.reload_count()
    env.server.write_config(extra="    this_is_not_a_directive on;")
    with pytest.raises(ValidateFailed):
        deploy(env.target(), issue("web", 2))
    assert env.on_disk() == before
    assert served_fingerprint(env.server.port, WEB) == env.old.fingerprint
    assert env.server.reload_count() == reloads


def test_weak_rsa_key_is_caught_by_validate_not_reload(env: Env) -> None:
    # Below the schema: OpenSSL 3 at security level 2 refuses a 1024-bit RSA key.
    weak = issue("web", 2, rsa_bits=1024)
    before = env.on_disk()
    reloads = env.server.reload_count()
    with pytest.raises(ValidateFailed) as caught:
        deploy(env.target(), weak)
    assert not isinstance(caught.value, ReloadFailed)
    assert env.server.reload_count() == reloads, "no reload may run on a rejected certificate"
    assert env.on_disk() == before
    assert served_fingerprint(env.server.port, WEB) == env.old.fingerprint


def _reload_that_fails_once(env: Env) -> list[str]:
    """A reload that really signals nginx, then reports failure (once)."""
    pid = env.server.pid()
    flag = env.tmp_path / "fail-once"
    flag.write_text("1")
    script = env.tmp_path / "reload.sh"
    script.write_text(
        f"#!/bin/sh\n/usr/bin/kill -HUP {pid} || exit 1\n"
        f"if [ -e {flag} ]; then rm -f {flag}; echo 'reload broke' >&2; exit 1; fi\n"
    )
    script.chmod(0o755)
    return [str(script)]


def test_failing_reload_rolls_back_and_serves_the_old_certificate(env: Env) -> None:
    before = env.on_disk()
    new = issue("web", 2)
    with pytest.raises(ReloadFailed):
        deploy(env.target(reloadCommand=_reload_that_fails_once(env)), new)
    assert env.on_disk() == before
    # the failed reload loaded the new files; the rollback reload puts the old ones back
    assert wait_served(env.server.port, WEB, env.old.fingerprint)


def test_verify_endpoint_serving_something_else_rolls_back(env: Env) -> None:
    before = env.on_disk()
    # The binding's verify SNI selects the other site, so the endpoint never serves the
    # new leaf for it.
    verify = VerifyConfig(
        host="127.0.0.1", port=env.server.port, server_name=None,
        initial_delay=0.05, max_delay=0.1, attempts=2, timeout=2.0,
    )
    with pytest.raises(VerifyMismatch):
        deploy(env.target(verify=verify), replace(issue("web", 2), server_name=OTHER))
    assert env.on_disk() == before
    assert wait_served(env.server.port, WEB, env.old.fingerprint)


def test_verify_endpoint_serving_the_new_leaf_passes(env: Env) -> None:
    verify = VerifyConfig(
        host="127.0.0.1", port=env.server.port, server_name=WEB,
        initial_delay=0.05, max_delay=0.2, attempts=5, timeout=2.0,
    )
    new = issue("web", 2)
    report = deploy(env.target(verify=verify), new)
    assert report.verified is True
    # During a reload old workers still answer for a moment: wait, do not sample once.
    assert wait_served(env.server.port, WEB, new.fingerprint)


# -- conformance against a real nginx --------------------------------------------------------


class TestNginxConformance(ConnectorConformance):
    """The SDK's conformance suite; nginx loads certificates per handshake by SNI here.

    `ssl_certificate` with a variable lets nginx start before any file exists
    (the suite begins with an empty directory); validate and reload still run
    the real `nginx -t` and SIGHUP.
    """

    connector_name = "nginx"

    def make_target(self, tmp_path: Path) -> TargetSpec:
        require_binary("nginx")
        certs = tmp_path / "certs"
        certs.mkdir()
        server = NginxServer(prefix=tmp_path / "nginx", port=free_port(), sites=())
        server.dynamic_dir = certs
        server.start()
        self.__dict__.setdefault("_servers", []).append(server)
        self.__dict__["_port"] = server.port
        return make_target(
            tmp_path,
            "nginx",
            {
                "directory": str(certs),
                "validateCommand": server.validate_argv(),
                "reloadCommand": server.reload_argv(),
            },
        )

    def served_fingerprint(self, target: TargetSpec, certificate: str) -> str | None:
        return served_fingerprint(self.__dict__["_port"], f"{certificate}.example.test")

    @pytest.fixture(autouse=True)
    def _stop_servers(self) -> Any:
        yield
        for server in self.__dict__.get("_servers", []):
            server.stop()
