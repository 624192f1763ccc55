"""`validate_only` (apply --dry-run) runs the config test on the NEW files, live ones untouched.

Against real nginx, Apache, HAProxy and Caddy on loopback: a healthy server passes
and the dry run lists the files it would create/replace; a broken server
config, a certificate only the server refuses (1024-bit RSA, which preflight
lets through for nginx/HAProxy) and a removal the config still needs all raise
DryRunFailed with the server's message. In every case no live file changes
(content or mtime), no reload runs, and the private staging directory is gone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certgit.connectors.model import ChangeSet, Deployment, Removal, TargetSpec
from certgit.connectors.sdk.registry import load_connector, sandbox_for
from certgit.connectors.sdk.staging import DryRunFailed
from tests.integration.conftest import issue, make_target
from tests.integration.servers import (
    ApacheServer,
    CaddyServer,
    HAProxyServer,
    NginxServer,
    Site,
    apache_site,
    count_lines,
    counting_command,
    require_binary,
    served_fingerprint,
    start_apache,
    start_caddy,
    start_haproxy,
    start_nginx,
    write_apache_layout,
    write_pair,
)

WEB = "web.example.test"
OTHER = "other.example.test"


def dry_run(
    target: TargetSpec, *deployments: Deployment, removals: tuple[Removal, ...] = ()
) -> list[str]:
    connector = load_connector(target.type)
    change = ChangeSet(target=target, deployments=deployments, removals=removals)
    return connector.validate_only(sandbox_for(connector, target), change)


def snapshot(*roots: Path) -> dict[str, tuple[int, bytes]]:
    """mtime_ns and content of every file under `roots` (the live state a dry run must keep)."""
    out: dict[str, tuple[int, bytes]] = {}
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            out[str(path)] = (path.stat().st_mtime_ns, path.read_bytes())
    return out


def snapshot_file(path: Path) -> dict[str, tuple[int, bytes]]:
    return {str(path): (path.stat().st_mtime_ns, path.read_bytes())}


def no_stage_left(target: TargetSpec) -> bool:
    return not [p for p in Path(target.work_dir).iterdir() if p.name.startswith("dry-run-")]


class Live:
    """A running server, its live files and the target managing them."""

    def __init__(
        self, tmp_path: Path, server: Any, type_: str, certs: Path, config: Path, old: Deployment
    ) -> None:
        self.tmp_path = tmp_path
        self.server = server
        self.type = type_
        self.certs = certs
        self.config = config
        self.old = old
        self.reload_argv, self.reload_counter = counting_command(
            tmp_path / "wrappers", "reload", server.reload_argv()
        )

    def target(self, **settings: Any) -> TargetSpec:
        base: dict[str, Any] = {
            "directory": str(self.certs),
            "validateCommand": self.server.validate_argv(),
            "reloadCommand": self.reload_argv,
        }
        base.update(settings)
        return make_target(self.tmp_path, self.type, base)

    def state(self) -> dict[str, tuple[int, bytes]]:
        # the certificate files and the server's config (not its logs, caches, storage)
        return {**snapshot(self.certs), **snapshot_file(self.config)}

    def assert_untouched(self, before: dict[str, tuple[int, bytes]], target: TargetSpec) -> None:
        after = self.state()
        assert after.keys() == before.keys()
        changed = [p for p in before if after[p] != before[p]]
        assert changed == [], f"a dry run changed live files: {changed}"
        assert count_lines(self.reload_counter) == 0, "a dry run ran the reload command"
        assert no_stage_left(target)
        assert served_fingerprint(self.server.port, WEB) == self.old.fingerprint


def _seed_web_and_other(certs: Path) -> tuple[Deployment, list[Site]]:
    """The files a fullchain+key server starts on (web and other), and its two vhosts."""
    old, other = issue("web"), issue("other")
    write_pair(old, certs / "web.crt", certs / "web.key")
    write_pair(other, certs / "other.crt", certs / "other.key")
    return old, [
        Site(WEB, certs / "web.crt", certs / "web.key"),
        Site(OTHER, certs / "other.crt", certs / "other.key"),
    ]


# -- nginx -----------------------------------------------------------------------------------


@pytest.fixture
def nginx(tmp_path: Path, stop_later: Callable[[Any], Any]) -> Live:
    require_binary("nginx")
    certs = tmp_path / "certs"
    old, sites = _seed_web_and_other(certs)
    server: NginxServer = stop_later(start_nginx(tmp_path / "nginx", sites))
    return Live(tmp_path, server, "nginx", certs, server.conf, old)


def test_nginx_healthy_dry_run_passes_and_changes_nothing(nginx: Live) -> None:
    target = nginx.target()
    reloads = nginx.server.reload_count()
    before = nginx.state()
    lines = dry_run(target, issue("web", 2), issue("third"))
    certs = nginx.certs
    assert f"replace {certs}/web.crt (web fullchain)" in lines
    assert f"replace {certs}/web.key (web key)" in lines
    assert f"create  {certs}/third.crt (third fullchain)" in lines
    assert any(
        line.startswith("test    ") and "passes with the new files" in line for line in lines
    )
    nginx.assert_untouched(before, target)
    assert nginx.server.reload_count() == reloads
    assert not (certs / "third.crt").exists()


def test_nginx_broken_config_would_fail_with_nginx_message(nginx: Live) -> None:
    nginx.server.write_config(extra="    this_is_not_a_directive on;")
    target = nginx.target()
    before = nginx.state()
    with pytest.raises(DryRunFailed) as caught:
        dry_run(target, issue("web", 2))
    assert 'unknown directive "this_is_not_a_directive"' in caught.value.detail
    assert str(nginx.server.conf) in caught.value.detail  # staged paths shown as live ones
    assert f"replace {nginx.certs}/web.crt (web fullchain)" in caught.value.lines
    nginx.assert_untouched(before, target)


def test_nginx_new_certificate_only_nginx_refuses_would_fail(nginx: Live) -> None:
    # Preflight accepts a 1024-bit RSA leaf for nginx; OpenSSL 3 in nginx -t refuses it.
    # The live config passes nginx -t: only a test on the staged new files catches this.
    target = nginx.target()
    before = nginx.state()
    with pytest.raises(DryRunFailed) as caught:
        dry_run(target, issue("web", 2, rsa_bits=1024))
    assert "key too small" in caught.value.detail
    assert f"{nginx.certs}/web.crt" in caught.value.detail
    nginx.assert_untouched(before, target)


def test_nginx_removal_of_a_file_the_config_needs_would_fail(nginx: Live) -> None:
    target = nginx.target()
    before = nginx.state()
    with pytest.raises(DryRunFailed) as caught:
        dry_run(target, issue("web", 2), removals=(Removal("other"),))
    assert f"{nginx.certs}/other.crt" in caught.value.detail
    nginx.assert_untouched(before, target)


def test_nginx_custom_validate_command_is_not_run(nginx: Live, tmp_path: Path) -> None:
    wrapper, counter = counting_command(
        tmp_path / "wrappers", "validate", nginx.server.validate_argv()
    )
    target = nginx.target(validateCommand=wrapper)
    before = nginx.state()
    lines = dry_run(target, issue("web", 2))
    assert any(
        line.startswith("test    new files not tested: custom validateCommand") for line in lines
    )
    assert count_lines(counter) == 0, "an unknown command may change things: not run"
    nginx.assert_untouched(before, target)


def test_nginx_config_outside_the_grants_falls_back_to_the_live_test(nginx: Live) -> None:
    # nginx -t -c CONF with an include the grants do not cover: the staged copy cannot be
    # built, so the (read-only) live nginx -t runs and the line says the new files were not.
    outside = nginx.tmp_path / "elsewhere" / "extra.conf"
    outside.parent.mkdir()
    outside.write_text("# nothing\n")
    nginx.server.write_config(extra=f"    include {outside};")
    target = nginx.target()
    before = nginx.state()
    lines = dry_run(target, issue("web", 2))
    [test_line] = [line for line in lines if line.startswith("test    ")]
    assert test_line.startswith("test    new files not tested: staging refused: denied: fs.read")
    assert "the current config passes" in test_line
    nginx.assert_untouched(before, target)


# -- Apache ----------------------------------------------------------------------------------






@pytest.fixture
def apache(tmp_path: Path, stop_later: Callable[[Any], Any]) -> Live:
    require_binary("apache2")
    certs = tmp_path / "ssl"
    old, other = issue("web"), issue("other")
    write_apache_layout(certs, old)
    write_apache_layout(certs, other)
    sites = [apache_site(certs, WEB, "web"), apache_site(certs, OTHER, "other")]
    server: ApacheServer = stop_later(start_apache(tmp_path / "apache", sites))
    return Live(tmp_path, server, "apache", certs, server.conf, old)


def test_apache_healthy_dry_run_passes_and_says_certificates_are_not_loaded(apache: Live) -> None:
    target = apache.target()
    reloads = apache.server.reload_count()
    before = apache.state()
    lines = dry_run(target, issue("web", 2))
    assert f"replace {apache.certs}/certs/web.crt (web certificate)" in lines
    assert f"replace {apache.certs}/private/web.key (web key)" in lines
    assert any(
        line.startswith("test    ") and "passes with the new files" in line for line in lines
    )
    assert any(
        line.startswith("note    ") and "does not load certificates" in line for line in lines
    )
    apache.assert_untouched(before, target)
    assert apache.server.reload_count() == reloads


def test_apache_broken_config_would_fail_with_apache_message(apache: Live) -> None:
    apache.server.write_config(extra="ThisIsNotADirective on")
    target = apache.target()
    before = apache.state()
    with pytest.raises(DryRunFailed) as caught:
        dry_run(target, issue("web", 2))
    assert "ThisIsNotADirective" in caught.value.detail
    assert "Invalid command" in caught.value.detail
    apache.assert_untouched(before, target)


def test_apache_removal_of_a_file_the_config_needs_would_fail(apache: Live) -> None:
    # configtest does not parse certificates, but it does check the files exist.
    target = apache.target()
    before = apache.state()
    with pytest.raises(DryRunFailed) as caught:
        dry_run(target, issue("web", 2), removals=(Removal("other"),))
    assert f"{apache.certs}/certs/other.crt" in caught.value.detail
    apache.assert_untouched(before, target)


# -- HAProxy ---------------------------------------------------------------------------------


@pytest.fixture
def haproxy(tmp_path: Path, stop_later: Callable[[Any], Any]) -> Live:
    require_binary("haproxy")
    certs = tmp_path / "certs"
    certs.mkdir()
    old, other = issue("web"), issue("other")
    for deployment in (old, other):
        pem = certs / f"{deployment.certificate}.pem"
        pem.write_bytes(deployment.fullchain_pem + deployment.key_pem)
        os.chmod(pem, 0o600)
    # `crt <directory>`: the dry run must stage a copy of the whole directory
    server: HAProxyServer = stop_later(start_haproxy(tmp_path / "haproxy", certs))
    return Live(tmp_path, server, "haproxy", certs, server.cfg, old)


def test_haproxy_healthy_dry_run_passes_and_changes_nothing(haproxy: Live) -> None:
    target = haproxy.target()
    before = haproxy.state()
    lines = dry_run(target, issue("web", 2))
    assert f"replace {haproxy.certs}/web.pem (web combined)" in lines
    assert any(
        line.startswith("test    ") and "passes with the new files" in line for line in lines
    )
    haproxy.assert_untouched(before, target)


def test_haproxy_broken_config_would_fail_with_haproxy_message(haproxy: Live) -> None:
    haproxy.server.write_config(extra="    this-is-not-a-keyword on")
    target = haproxy.target()
    before = haproxy.state()
    with pytest.raises(DryRunFailed) as caught:
        dry_run(target, issue("web", 2))
    assert "this-is-not-a-keyword" in caught.value.detail
    haproxy.assert_untouched(before, target)


def test_haproxy_combined_file_haproxy_rejects_would_fail(haproxy: Live) -> None:
    # haproxy -c loads every PEM of the `crt` directory: a 1024-bit RSA one is refused.
    target = haproxy.target()
    before = haproxy.state()
    with pytest.raises(DryRunFailed) as caught:
        dry_run(target, issue("web", 2, rsa_bits=1024))
    assert f"{haproxy.certs}/web.pem" in caught.value.detail
    haproxy.assert_untouched(before, target)


# -- Caddy (file mode) -----------------------------------------------------------------------


@pytest.fixture
def caddy(tmp_path: Path, stop_later: Callable[[Any], Any]) -> Live:
    require_binary("caddy")
    certs = tmp_path / "certs"
    old, sites = _seed_web_and_other(certs)
    server: CaddyServer = stop_later(start_caddy(tmp_path / "caddy", sites))
    return Live(tmp_path, server, "caddy", certs, server.config_path, old)


def test_caddy_healthy_dry_run_passes_and_changes_nothing(caddy: Live) -> None:
    target = caddy.target()
    before = caddy.state()
    lines = dry_run(target, issue("web", 2))
    assert f"replace {caddy.certs}/web.crt (web fullchain)" in lines
    assert any(
        line.startswith("test    ") and "passes with the new files" in line for line in lines
    )
    caddy.assert_untouched(before, target)


def test_caddy_removal_of_a_file_the_config_loads_would_fail(caddy: Live) -> None:
    # caddy validate provisions the TLS app, which loads every `load_files` entry
    target = caddy.target()
    before = caddy.state()
    with pytest.raises(DryRunFailed) as caught:
        dry_run(target, issue("web", 2), removals=(Removal("other"),))
    assert f"{caddy.certs}/other.crt" in caught.value.detail
    caddy.assert_untouched(before, target)
