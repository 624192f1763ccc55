"""Shared fixtures for the integration tests: targets in tmp_path, deploy helpers, servers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from certgit.connectors.errors import ReloadFailed, ValidateFailed, VerifyMismatch
from certgit.connectors.model import ChangeSet, Deployment, DeployReport, TargetSpec, VerifyConfig
from certgit.connectors.sdk.conformance import ConnectorConformance, make_bundle
from certgit.connectors.sdk.registry import load_connector, sandbox_for


def make_target(
    tmp_path: Path,
    type_: str,
    settings: Mapping[str, Any],
    *,
    name: str = "t1",
    verify: VerifyConfig | None = None,
) -> TargetSpec:
    """A TargetSpec whose work_dir (journal, backups, locks) lives in tmp_path."""
    work = tmp_path / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    return TargetSpec(
        name=name, type=type_, settings=dict(settings), work_dir=work, base_dir=tmp_path,
        verify=verify,
    )


def deploy(target: TargetSpec, *deployments: Deployment) -> DeployReport:
    """Deploy through the registry and a sandbox built from the connector's own grants."""
    connector = load_connector(target.type)
    sandbox = sandbox_for(connector, target)
    return connector.deploy(sandbox, ChangeSet(target=target, deployments=deployments))


def issue(name: str, version: int = 1, *, rsa_bits: int | None = None) -> Deployment:
    """A fresh leaf for certificate `name` with DNS name `<name>.example.test`."""
    dns = f"{name}.example.test"
    if rsa_bits is not None:
        bundle = make_bundle(dns, dns_names=[dns], key_type="rsa", rsa_bits=rsa_bits)
    else:
        bundle = make_bundle(dns, dns_names=[dns])
    return bundle.deployment(name, version=version)


def sha256_file(path: Path) -> str:
    """SHA-256 hex of a file's content."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def stop_later() -> Iterator[Callable[[Any], Any]]:
    """Register servers to stop at teardown, even when the test fails."""
    servers: list[Any] = []

    def register(server: Any) -> Any:
        servers.append(server)
        return server

    yield register
    for server in reversed(servers):
        server.stop()


# -- the acceptance tests shared by nginx-like servers (apache, haproxy, caddy) --------------


class ServerEnv:
    """A running server plus what a test needs to build targets for it."""

    def __init__(
        self,
        tmp_path: Path,
        server: Any,
        type_: str,
        old: Deployment,
        primary: Path,
        settings: Mapping[str, Any],
    ) -> None:
        self.tmp_path = tmp_path
        self.server = server
        self.type = type_
        self.old = old
        self.primary = primary  # the file holding the leaf of certificate "web"
        self.settings = dict(settings)
        self.counter = tmp_path / "reload.count"

    def target(self, *, verify: VerifyConfig | None = None, **settings: Any) -> TargetSpec:
        """The target with a counting wrapper around the reload command."""
        merged = {**self.settings, **settings}
        reload = list(merged.get("reloadCommand") or self.server.reload_argv())
        merged["reloadCommand"] = [*_counting_wrapper(self.tmp_path, reload, self.counter)]
        merged.setdefault("validateCommand", self.server.validate_argv())
        return make_target(self.tmp_path, self.type, merged, verify=verify)

    def reloads(self) -> int:
        return len(self.counter.read_text().splitlines()) if self.counter.exists() else 0

    def on_disk(self) -> str:
        return sha256_file(self.primary)


def _counting_wrapper(directory: Path, argv: list[str], counter: Path) -> list[str]:
    script = directory / f"count-{len(list(directory.glob('count-*.sh')))}.sh"
    quoted = " ".join("'" + a.replace("'", "'\"'\"'") + "'" for a in argv)
    script.write_text(f"#!/bin/sh\necho run >> '{counter}'\nexec {quoted}\n")
    script.chmod(0o755)
    return [str(script)]


def fail_once(env: ServerEnv) -> list[str]:
    """A reload command that really reloads, then reports failure the first time it runs."""
    flag = env.tmp_path / "fail-once"
    flag.write_text("1")
    script = env.tmp_path / "reload-fails-once.sh"
    quoted = " ".join("'" + a + "'" for a in env.server.reload_argv())
    script.write_text(
        f"#!/bin/sh\n{quoted} || exit 1\n"
        f"if [ -e '{flag}' ]; then rm -f '{flag}'; echo 'reload broke' >&2; exit 1; fi\n"
    )
    script.chmod(0o755)
    return [str(script)]


class ServerAcceptance:
    """Issue 9 acceptance against a real server. Subclasses implement `start` and `break_config`."""

    server_name = "web.example.test"
    other_name = "other.example.test"
    rejects_weak_rsa = True  # OpenSSL 3 refuses 1024-bit RSA at its default security level
    weak_rsa_skip = "this server's TLS stack accepts 1024-bit RSA; nothing to catch"
    key_mode = 0o600
    key_suffixes: tuple[str, ...] = (".key",)  # files that hold the private key

    def start(self, tmp_path: Path, old: Deployment, other: Deployment) -> ServerEnv:
        raise NotImplementedError

    def break_config(self, env: ServerEnv) -> None:
        raise NotImplementedError

    @pytest.fixture
    def env(self, tmp_path: Path, stop_later: Callable[[Any], Any]) -> ServerEnv:
        from tests.integration.servers import served_fingerprint

        old, other = issue("web"), issue("other")
        env = self.start(tmp_path, old, other)
        stop_later(env.server)
        assert served_fingerprint(env.server.port, self.server_name) == old.fingerprint
        return env

    def test_deploy_serves_the_new_certificate(self, env: ServerEnv) -> None:
        import stat

        from tests.integration.servers import wait_served

        new = issue("web", 2)
        report = deploy(env.target(), new)
        assert (report.changed, report.validated, report.reloaded) == (True, True, True)
        assert env.reloads() == 1
        assert wait_served(env.server.port, self.server_name, new.fingerprint)
        modes = {Path(p).name: stat.S_IMODE(Path(p).stat().st_mode) for p in report.files}
        assert all(
            mode == (self.key_mode if name.endswith(self.key_suffixes) else 0o644)
            for name, mode in modes.items()
        ), modes
        again = deploy(env.target(), new)
        assert (again.changed, again.reloaded) == (False, False)
        assert env.reloads() == 1

    def test_config_error_fails_validate_and_keeps_the_old_certificate(
        self, env: ServerEnv
    ) -> None:
        from tests.integration.servers import served_fingerprint

        before = env.on_disk()
        self.break_config(env)
        with pytest.raises(ValidateFailed):
            deploy(env.target(), issue("web", 2))
        assert env.on_disk() == before
        assert env.reloads() == 0
        assert served_fingerprint(env.server.port, self.server_name) == env.old.fingerprint

    def test_weak_rsa_key_is_caught_by_validate_not_reload(self, env: ServerEnv) -> None:
        from tests.integration.servers import served_fingerprint

        if not self.rejects_weak_rsa:
            pytest.skip(self.weak_rsa_skip)
        before = env.on_disk()
        with pytest.raises(ValidateFailed) as caught:
            deploy(env.target(), issue("web", 2, rsa_bits=1024))
        assert not isinstance(caught.value, ReloadFailed)
        assert env.reloads() == 0, "no reload may run on a rejected certificate"
        assert env.on_disk() == before
        assert served_fingerprint(env.server.port, self.server_name) == env.old.fingerprint

    def test_failing_reload_rolls_back_and_serves_the_old_certificate(
        self, env: ServerEnv
    ) -> None:
        from tests.integration.servers import wait_served

        before = env.on_disk()
        with pytest.raises(ReloadFailed):
            deploy(env.target(reloadCommand=fail_once(env)), issue("web", 2))
        assert env.reloads() == 2  # the failed one, then the one on the restored files
        assert env.on_disk() == before
        assert wait_served(env.server.port, self.server_name, env.old.fingerprint)

    def test_verify_endpoint_serving_something_else_rolls_back(self, env: ServerEnv) -> None:
        from tests.integration.servers import wait_served

        before = env.on_disk()
        verify = VerifyConfig(
            host="127.0.0.1", port=env.server.port, server_name=None,
            initial_delay=0.05, max_delay=0.1, attempts=2, timeout=2.0,
        )
        # The binding's own SNI names a vhost serving another certificate.
        new = replace(issue("web", 2), server_name=self.other_name)
        with pytest.raises(VerifyMismatch):
            deploy(env.target(verify=verify), new)
        assert env.on_disk() == before
        assert env.reloads() == 2  # the deploy's reload and the rollback's
        assert wait_served(env.server.port, self.server_name, env.old.fingerprint)


# -- the conformance suite against servers that need their files at start --------------------


class SeededServerConformance(ConnectorConformance):
    """ConnectorConformance against a real server started on seeded certificate files.

    Apache, HAProxy and Caddy's `load_files` refuse to start without their
    certificate files, so the suite seeds the target (`seed = True`: the
    connector deploys certificates of the suite's own for every name it uses)
    and `start_server` starts the server built by `make_server` on them. The
    suite's deploys then replace served certificates, as they would in use.
    """

    seed = True
    target_type = ""

    def make_server(self, tmp_path: Path, directory: Path) -> Any:
        """The (not yet started) server whose config reads the files in `directory`."""
        raise NotImplementedError

    def make_target(self, tmp_path: Path) -> TargetSpec:
        directory = tmp_path / "certs"
        server = self.make_server(tmp_path, directory)
        self.__dict__["_server"] = server
        return make_target(
            tmp_path,
            self.target_type or self.connector_name,
            {
                "directory": str(directory),
                "validateCommand": server.validate_argv(),
                "reloadCommand": server.reload_argv(),
            },
        )

    def start_server(self, target: TargetSpec) -> None:
        from tests.integration.servers import served_fingerprint

        server = self.__dict__["_server"]
        self.__dict__["_started"] = True  # stop it at teardown even if start fails half-way
        server.start()
        first = self.seed_deployments()[0]
        assert served_fingerprint(server.port, first.dns_names[0]) == first.fingerprint

    def served_fingerprint(self, target: TargetSpec, certificate: str) -> str | None:
        """What the server serves for `certificate`, once it serves what is on disk.

        Reloads finish asynchronously (graceful restarts, new workers), so wait
        (bounded) for the fingerprint on disk before sampling.
        """
        from tests.integration.servers import served_fingerprint, wait_served

        server = self.__dict__["_server"]
        name = self.dns_names_for(certificate)[0]
        connector = load_connector(self.connector_name)
        on_disk = connector.observe(
            sandbox_for(connector, target), target, certificate, {}
        ).fingerprint
        if on_disk is not None:
            wait_served(server.port, name, on_disk, timeout=5.0)
        return served_fingerprint(server.port, name)

    @pytest.fixture(autouse=True)
    def _stop_server(self) -> Iterator[None]:
        yield
        if self.__dict__.get("_started"):
            self.__dict__["_server"].stop()
