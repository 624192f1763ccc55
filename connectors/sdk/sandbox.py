"""The Sandbox: a connector's only door to files, processes and the network.

Deny by default. Every method resolves its subject first (paths through the
transport's realpath, so `..` and symlinks cannot escape; binaries through
PATH and realpath) and checks the matching grant, raising DeniedError that
names the operation and the missing grant. Only then does it act, through the
transport (files, processes) or the SDK's verify/http helpers (network).
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from certgit.connectors.errors import DeniedError, TransportError
from certgit.connectors.sdk.atomic import ApplyResult, FileSpec, apply_files, recover
from certgit.connectors.sdk.grants import Grants, format_endpoint, normalize_path
from certgit.connectors.sdk.transport import ExecResult, FileStat, Transport

__all__ = ["ExecResult", "FileStat", "Sandbox"]


class Sandbox:
    """Grant-checked I/O for one connector on one target."""

    def __init__(self, grants: Grants, transport: Transport, *, target: str = "") -> None:
        self.grants = grants
        self.transport = transport
        self.target = target
        self._resolved: Grants | None = None

    def __repr__(self) -> str:
        return f"Sandbox(target={self.target!r}, grants={self.grants.describe()!r})"

    # -- checks ---------------------------------------------------------------------

    def _effective(self) -> Grants:
        # Grant paths resolved on the target once: `/bin/sh` also matches `/usr/bin/dash`.
        if self._resolved is None:
            self._resolved = self.grants.resolved(self.transport.realpath)
        return self._resolved

    def resolve_path(self, path: str) -> str:
        """The path as the target's filesystem sees it (`..` and symlinks resolved)."""
        try:
            return self.transport.realpath(normalize_path(path))
        except ValueError as exc:
            raise DeniedError("fs", path, f"an absolute path ({exc})") from None

    def check_read(self, path: str) -> str:
        """Resolve `path`; DeniedError unless fs.read covers it. Returns the resolved path."""
        resolved = self.resolve_path(path)
        if not self._effective().allows_read(resolved):
            raise DeniedError("fs.read", path, f"fs.read:{_dirname(resolved)}")
        return resolved

    def check_write(self, path: str) -> str:
        """Resolve `path`; DeniedError unless fs.write covers it. Returns the resolved path."""
        resolved = self.resolve_path(path)
        if not self._effective().allows_write(resolved):
            raise DeniedError("fs.write", path, f"fs.write:{_dirname(resolved)}")
        return resolved

    def check_exec(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """argv with argv[0] made absolute; DeniedError unless its real binary is granted.

        A bare name is looked up on PATH; the grant is checked on the realpath,
        so a copy of a granted binary elsewhere (or a symlink to an ungranted
        one) does not pass. Returns argv unchanged when the binary does not exist
        (running it then reports exit 127, not a grant problem).
        """
        if not argv:
            raise ValueError("empty command")
        found = self.transport.which(argv[0], env)
        if found is None:
            return list(argv)
        real = self.transport.realpath(found)
        if not self._effective().allows_exec(real):
            raise DeniedError("process.exec", argv[0], f"process.exec:{real}")
        return [found, *argv[1:]]

    def check_dial(self, host: str, port: int) -> None:
        """DeniedError unless exactly host:port is granted."""
        if not self.grants.allows_dial(host, port):
            endpoint = format_endpoint(host, port)
            raise DeniedError("net.dial", endpoint, f"net.dial:{endpoint}")

    # -- files ----------------------------------------------------------------------

    def read_bytes(self, path: str) -> bytes | None:
        """The file's content, or None if absent (fs.read)."""
        return self.transport.read(self.check_read(path))

    def file_sha256(self, path: str) -> str | None:
        """SHA-256 hex of the file, or None if absent (fs.read)."""
        data = self.read_bytes(path)
        return hashlib.sha256(data).hexdigest() if data is not None else None

    def stat(self, path: str) -> FileStat | None:
        """Mode/owner/size of the file, or None if absent (fs.read)."""
        return self.transport.stat(self.check_read(path))

    # -- processes and network --------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        """Run a granted binary (process.exec); a nonzero exit is returned, not raised."""
        return self.transport.run(self.check_exec(argv, env), timeout, env)

    def tls_leaf_fingerprint(
        self, host: str, port: int, server_name: str | None, *, timeout: float = 5.0
    ) -> str:
        """SHA-256 hex of the leaf served at host:port for SNI `server_name` (net.dial)."""
        self.check_dial(host, port)
        from certgit.connectors.sdk.verify import tls_leaf_fingerprint

        return tls_leaf_fingerprint(host, port, server_name, timeout=timeout)

    def http_request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        """A plain-HTTP request to a granted host:port (loopback/admin APIs); (status, body).

        Raises TransportError when the endpoint cannot be reached.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise DeniedError("net.dial", url, "an http://host:port URL (only plain HTTP here)")
        port = parts.port or 80
        self.check_dial(parts.hostname, port)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        connection = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return response.status, response.read()
        except OSError as exc:
            raise TransportError(
                f"{method} {url} failed: {exc}; check that the service listens there",
                target=self.target or None,
            ) from None
        finally:
            connection.close()

    # -- atomic apply -----------------------------------------------------------------

    def apply_files(
        self,
        files: Sequence[FileSpec],
        *,
        validate: Sequence[str] | None,
        reload: Sequence[str] | None,
        work_dir: Path,
        verify: Callable[[], None] | None = None,
        retention: int = 3,
        remove: Sequence[str] = (),
        backup_key: bytes | None = None,
    ) -> ApplyResult:
        """Atomically write `files` and delete `remove` (fs.write each), validate, reload, verify.

        Checks every grant before anything is written: fs.write on every path
        (resolved), process.exec on validate/reload; a journal left by a crash is
        checked against the same grants before it is recovered. `backup_key`
        (TargetSpec.backup_key) seals the backups. `result.files` is keyed by
        the paths as the connector gave them.
        """
        resolved_specs: list[FileSpec] = []
        back: dict[str, str] = {}
        for spec in files:
            resolved = self.check_write(spec.path)
            back[resolved] = spec.path
            resolved_specs.append(replace(spec, path=resolved))
        resolved_remove: list[str] = []
        for path in remove:
            resolved_remove.append(self.check_write(path))
        validate_argv = self.check_exec(validate) if validate else None
        reload_argv = self.check_exec(reload) if reload else None
        result = apply_files(
            self.transport,
            resolved_specs,
            validate=validate_argv,
            reload=reload_argv,
            work_dir=work_dir,
            verify=verify,
            retention=retention,
            target=self.target,
            remove=resolved_remove,
            backup_key=backup_key,
            allowed_exec=self.check_exec,
            allowed_write=self.check_write,
        )
        return replace(result, files={back.get(p, p): sha for p, sha in result.files.items()})

    def recover(self, work_dir: Path, *, backup_key: bytes | None = None) -> list[str]:
        """Crash recovery (`atomic.recover`) trusting the journal no further than the grants.

        A journal whose reload command or files are not granted to this sandbox is
        set aside and RollbackFailed raised before anything is restored or run.
        """
        return recover(
            self.transport,
            work_dir,
            backup_key,
            allowed_exec=self.check_exec,
            allowed_write=self.check_write,
        )

    def remove_files(
        self,
        paths: Sequence[str],
        *,
        validate: Sequence[str] | None,
        reload: Sequence[str] | None,
        work_dir: Path,
    ) -> ApplyResult:
        """Delete files as one transaction (with backups), then validate and reload."""
        return self.apply_files(
            [], validate=validate, reload=reload, work_dir=work_dir, remove=paths
        )


def _dirname(path: str) -> str:
    parent = path.rpartition("/")[0]
    return parent or "/"
