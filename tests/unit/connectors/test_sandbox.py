"""Every Sandbox method is denied without its grant and works with it."""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from certgit.connectors.errors import DeniedError, TransportError
from certgit.connectors.sdk.atomic import FileSpec
from certgit.connectors.sdk.grants import Grants
from certgit.connectors.sdk.sandbox import Sandbox
from certgit.connectors.sdk.transport import LocalTransport

TRUE = shutil.which("true")


def sandbox(grants: Grants) -> Sandbox:
    return Sandbox(grants, LocalTransport(), target="t1")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir()
    (d / "x.pem").write_bytes(b"hello")
    (d / "x.pem").chmod(0o640)
    return d


def test_file_reads_denied_without_grant(files: Path) -> None:
    box = sandbox(Grants(fs_write=(str(files),)))
    for call in (box.read_bytes, box.file_sha256, box.stat):
        with pytest.raises(DeniedError) as caught:
            call(str(files / "x.pem"))
        assert caught.value.operation == "fs.read"


def test_file_reads_with_grant(files: Path) -> None:
    box = sandbox(Grants(fs_read=(str(files),)))
    assert box.read_bytes(str(files / "x.pem")) == b"hello"
    assert box.file_sha256(str(files / "x.pem")) == hashlib.sha256(b"hello").hexdigest()
    st = box.stat(str(files / "x.pem"))
    assert st is not None and st.mode == 0o640 and st.size == 5 and st.kind == "file"
    assert box.read_bytes(str(files / "absent.pem")) is None
    assert box.stat(str(files / "absent.pem")) is None


def test_apply_and_remove_denied_without_write_grant(files: Path, tmp_path: Path) -> None:
    box = sandbox(Grants(fs_read=(str(files),)))
    with pytest.raises(DeniedError) as caught:
        box.apply_files(
            [FileSpec(str(files / "x.pem"), b"new")],
            validate=None,
            reload=None,
            work_dir=tmp_path / "work",
        )
    assert caught.value.operation == "fs.write"
    with pytest.raises(DeniedError):
        box.remove_files(
            [str(files / "x.pem")], validate=None, reload=None, work_dir=tmp_path / "work"
        )
    assert (files / "x.pem").read_bytes() == b"hello"


def test_apply_denied_when_reload_binary_not_granted(files: Path, tmp_path: Path) -> None:
    box = sandbox(Grants(fs_write=(str(files),)))
    with pytest.raises(DeniedError) as caught:
        box.apply_files(
            [FileSpec(str(files / "x.pem"), b"new")],
            validate=None,
            reload=["true"],
            work_dir=tmp_path / "work",
        )
    assert caught.value.operation == "process.exec"
    assert (files / "x.pem").read_bytes() == b"hello"  # checked before anything was written


def test_apply_through_sandbox_keys_result_by_given_path(files: Path, tmp_path: Path) -> None:
    assert TRUE is not None
    alias = tmp_path / "alias"
    alias.symlink_to(files)
    box = sandbox(Grants(fs_write=(str(files),), process_exec=(TRUE,)))
    result = box.apply_files(
        [FileSpec(str(alias / "x.pem"), b"new")],
        validate=None,
        reload=["true"],
        work_dir=tmp_path / "work",
    )
    assert result.changed and result.reloaded
    assert (files / "x.pem").read_bytes() == b"new"
    assert alias.is_symlink()  # the granted real directory was written, the alias kept
    assert result.files == {str(alias / "x.pem"): hashlib.sha256(b"new").hexdigest()}
    removed = box.remove_files(
        [str(files / "x.pem")], validate=None, reload=None, work_dir=tmp_path / "work"
    )
    assert removed.changed and not (files / "x.pem").exists()


def test_run_resolves_binary_before_the_grant_check(tmp_path: Path) -> None:
    assert TRUE is not None
    box = sandbox(Grants(process_exec=(TRUE,)))
    assert box.run(["true"]).returncode == 0
    assert box.run([TRUE]).returncode == 0
    # A copy of the granted binary elsewhere is a different binary.
    copy = tmp_path / "true"
    shutil.copy2(TRUE, copy)
    with pytest.raises(DeniedError) as caught:
        box.run([str(copy)])
    assert caught.value.grant == f"process.exec:{copy}"
    # A symlink named like a granted binary resolves to what it points at.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "true").symlink_to(shutil.which("sh") or "/bin/sh")
    with pytest.raises(DeniedError):
        box.run([str(tmp_path / "bin" / "true")])
    with pytest.raises(DeniedError):
        box.run(["true"], env={"PATH": str(tmp_path / "bin")})


def test_run_relative_copy_is_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert TRUE is not None
    shutil.copy2(TRUE, tmp_path / "true")
    monkeypatch.chdir(tmp_path)
    box = sandbox(Grants(process_exec=(TRUE,)))
    with pytest.raises(DeniedError):
        box.run(["./true"])


def test_run_reports_exit_code_and_output(tmp_path: Path) -> None:
    sh = shutil.which("sh")
    assert sh is not None
    box = sandbox(Grants(process_exec=(sh,)))
    result = box.run([sh, "-c", "echo out; echo err >&2; exit 7"])
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    timed = box.run([sh, "-c", "sleep 30"], timeout=0.5)
    assert timed.returncode == 124 and "timed out" in timed.stderr
    missing = sandbox(Grants()).run(["certgit-no-such-binary-xyz"])
    assert missing.returncode == 127


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201)
            self.end_headers()
            self.wfile.write(b"got " + body + b" at " + self.path.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_request_needs_dial_grant(http_server: int) -> None:
    url = f"http://127.0.0.1:{http_server}/load?x=1"
    with pytest.raises(DeniedError) as caught:
        sandbox(Grants(net_dial=("127.0.0.1:1",))).http_request("POST", url, body=b"cfg")
    assert caught.value.grant == f"net.dial:127.0.0.1:{http_server}"
    box = sandbox(Grants(net_dial=(f"127.0.0.1:{http_server}",)))
    status, body = box.http_request("POST", url, body=b"cfg")
    assert (status, body) == (201, b"got cfg at /load?x=1")
    with pytest.raises(DeniedError):
        box.http_request("GET", f"https://127.0.0.1:{http_server}/")


def test_http_request_unreachable_is_transport_error() -> None:
    port = free_port()
    box = sandbox(Grants(net_dial=(f"127.0.0.1:{port}",)))
    with pytest.raises(TransportError):
        box.http_request("GET", f"http://127.0.0.1:{port}/", timeout=2)


def test_tls_fingerprint_denied_without_grant_and_delegates_with_it() -> None:
    port = free_port()
    with pytest.raises(DeniedError):
        sandbox(Grants()).tls_leaf_fingerprint("127.0.0.1", port, None)
    # Granted: the check passes and the TLS code runs (nothing listens, so it fails to connect).
    with pytest.raises(OSError):
        sandbox(Grants(net_dial=(f"127.0.0.1:{port}",))).tls_leaf_fingerprint(
            "127.0.0.1", port, None, timeout=2
        )


def test_repr_shows_grants_not_secrets(files: Path) -> None:
    box = sandbox(Grants(fs_read=(str(files),)))
    assert f"fs.read:{files}" in repr(box)
