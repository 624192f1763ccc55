"""A real nginx on loopback under certgit's control, driven through the CLI like an operator.

`NginxLab` is a Git repository (Issuer + Certificates + one `nginx` Target), a
state directory and an nginx that serves one TLS virtual host per certificate
(SNI `<name>.example.test`) from the files certgit writes. Before the first
apply the files are placeholders written by the test (nginx cannot start
without them), so the lab's Target says `adopt: true` unless told otherwise.
validate and reload run through counting wrappers, so tests can assert how
often certgit touched the server.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2

from certgit.reconciler.cli import main
from tests.gitutil import commit_files, init_repo
from tests.integration.conftest import issue
from tests.integration.servers import (
    NginxServer,
    Site,
    count_lines,
    counting_command,
    free_port,
    served_fingerprint,
    wait_for,
    write_pair,
)

ISSUER = b"""apiVersion: certgit.dev/v1
kind: Issuer
metadata: {name: ca}
spec:
  type: local-ca
  localCA: {commonName: lab CA}
"""


@dataclass
class Result:
    code: int
    out: str
    err: str


def certificate_yaml(
    name: str,
    targets: Sequence[str] = ("web",),
    *,
    dns: Sequence[str] | None = None,
    extra: str = "",
    binding_extra: Mapping[str, str] | None = None,
    labels: str = "",
) -> bytes:
    names = list(dns or [f"{name}.example.test"])
    deploy = ""
    for target in targets:
        more = (binding_extra or {}).get(target, "")
        deploy += f"    - target: {target}\n{more}"
    label_line = f"  labels: {labels}\n" if labels else ""
    return (
        f"apiVersion: certgit.dev/v1\nkind: Certificate\nmetadata:\n  name: {name}\n{label_line}"
        f"spec:\n  dnsNames: [{', '.join(names)}]\n  issuerRef: {{name: ca}}\n{extra}"
        f"  deployTo:\n{deploy}"
    ).encode()


@dataclass
class NginxLab:
    root: Path
    names: tuple[str, ...]
    adopt: bool = True
    approval: bool = False
    server: NginxServer = field(init=False)
    repo: pygit2.Repository = field(init=False)

    def __post_init__(self) -> None:
        self.repo_path = self.root / "desired"
        self.state = self.root / "state"
        self.certs = self.root / "certs"
        self.certs.mkdir(parents=True)
        port = free_port()
        sites = [
            Site(f"{n}.example.test", self.certs / f"{n}.crt", self.certs / f"{n}.key")
            for n in self.names
        ]
        for n in self.names:  # placeholders: nginx needs the files to start
            write_pair(issue(f"{n}.example.test"), self.certs / f"{n}.crt", self.certs / f"{n}.key")
        self.server = NginxServer(prefix=self.root / "nginx", port=port, sites=tuple(sites))
        self.server.prefix.mkdir()
        self.server.start()
        tools = self.root / "tools"
        self.validate_argv, self.validate_counter = counting_command(
            tools, "validate", self.server.validate_argv()
        )
        pid = self.server.pid_file
        self.reload_argv, self.reload_counter = counting_command(
            tools, "reload", ["/bin/sh", "-c", f'exec /usr/bin/kill -HUP "$(cat {pid})"']
        )
        self.repo = init_repo(self.repo_path)
        files: dict[str, bytes | None] = {"issuer.yaml": ISSUER, "target.yaml": self.target_yaml()}
        for n in self.names:
            files[f"certs/{n}.yaml"] = certificate_yaml(n)
        self.commit(files, "lab: initial desired state")

    def target_yaml(self, *, settings: str = "", verify_name: str | None = None) -> bytes:
        verify = f"  verify:\n    endpoint: 127.0.0.1:{self.server.port}\n"
        if verify_name:
            verify += f"    serverName: {verify_name}\n"
        approval = "  approval: {required: true}\n" if self.approval else ""
        adopt = "  adopt: true\n" if self.adopt else ""
        return (
            "apiVersion: certgit.dev/v1\nkind: Target\nmetadata:\n  name: web\n"
            "  labels: {env: production}\nspec:\n  type: nginx\n"
            f"{adopt}{approval}"
            "  settings:\n"
            f"    directory: {self.certs}\n"
            f"    validateCommand: {json.dumps(self.validate_argv)}\n"
            f"    reloadCommand: {json.dumps(self.reload_argv)}\n"
            f"{settings}{verify}"
        ).encode()

    # -- driving ----------------------------------------------------------------------------

    def commit(self, files: Mapping[str, bytes | None], message: str) -> str:
        return commit_files(self.repo, files, message)

    def cli(self, *args: str) -> Result:
        argv = [*args]
        if not (args and args[0] == "validate" and len(args) > 1):
            argv += ["--repo", str(self.repo_path), "--state-dir", str(self.state)]
        out, err = io.StringIO(), io.StringIO()
        code = main(argv, out, err)
        return Result(code, out.getvalue(), err.getvalue())

    def served(self, name: str) -> str:
        return served_fingerprint(self.server.port, f"{name}.example.test")

    def wait_served(self, name: str, fingerprint: str) -> bool:
        """True once 8 handshakes in a row serve `fingerprint`: after a reload nginx's old
        workers answer for a few tens of milliseconds more."""
        def steady() -> bool:
            return all(self.served(name) == fingerprint for _ in range(8))

        return wait_for(steady, timeout=10.0)

    def reloads(self) -> int:
        return count_lines(self.reload_counter)

    def validates(self) -> int:
        return count_lines(self.validate_counter)

    # -- reading the state store (as an operator would with sqlite3) ------------------------

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.state / "state.db")) as db:
            return list(db.execute(sql, params))

    def deployed(self, cert: str, target: str = "web") -> tuple[str | None, int | None]:
        rows = self.query(
            "SELECT fingerprint, version FROM deployments WHERE certificate = ? AND target = ?",
            cert, target,
        )
        return rows[0] if rows else (None, None)

    def fingerprint(self, cert: str, version: int) -> str:
        """The recorded fingerprint of one version of `cert`."""
        rows = self.query(
            "SELECT fingerprint FROM certificate_versions WHERE certificate = ? AND version = ?",
            cert, version,
        )
        assert rows, f"{cert} has no v{version}"
        return str(rows[0][0])

    def versions(self, cert: str) -> int:
        return int(self.query(
            "SELECT COUNT(*) FROM certificate_versions WHERE certificate = ?", cert
        )[0][0])

    def status(self) -> dict[tuple[str, str], dict[str, Any]]:
        r = self.cli("status", "--json")
        assert r.code == 0, r.out + r.err
        return {(b["certificate"], b["target"]): b for b in json.loads(r.out)["bindings"]}

    def stop(self) -> None:
        self.server.stop()
