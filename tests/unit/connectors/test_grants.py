"""Grants match structurally: paths by component after resolution, hosts exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from certgit.connectors.errors import DeniedError
from certgit.connectors.sdk.grants import Grants, normalize_path, parse_endpoint, path_within
from certgit.connectors.sdk.sandbox import Sandbox
from certgit.connectors.sdk.transport import LocalTransport


def test_path_prefix_is_by_component() -> None:
    grants = Grants(fs_write=("/etc/ssl",))
    assert grants.allows_write("/etc/ssl/x.pem")
    assert grants.allows_write("/etc/ssl")
    assert grants.allows_write("/etc/ssl/private/deep/k.pem")
    assert not grants.allows_write("/etc/ssl-evil/x.pem")
    assert not grants.allows_write("/etc/ss")
    assert not grants.allows_write("/etc")
    assert not grants.allows_read("/etc/ssl/x.pem")  # write does not grant read


def test_trailing_slash_and_dots_normalise() -> None:
    assert path_within("/etc/ssl/./a/../x.pem", "/etc/ssl/")
    assert not path_within("/etc/ssl/../shadow", "/etc/ssl")
    assert normalize_path("//etc//ssl/") == "/etc/ssl"
    with pytest.raises(ValueError):
        normalize_path("etc/ssl")
    assert not path_within("relative/x", "/etc")


def test_dotdot_escape_is_denied(tmp_path: Path) -> None:
    granted = tmp_path / "granted"
    granted.mkdir()
    sandbox = Sandbox(Grants(fs_read=(str(granted),)), LocalTransport())
    (tmp_path / "secret").write_text("s")
    with pytest.raises(DeniedError):
        sandbox.read_bytes(f"{granted}/../secret")
    assert sandbox.read_bytes(f"{granted}/sub/../missing") is None


def test_symlink_escape_is_denied(tmp_path: Path) -> None:
    granted = tmp_path / "granted"
    granted.mkdir()
    outside = tmp_path / "outside.pem"
    outside.write_text("outside")
    (granted / "link.pem").symlink_to(outside)
    (granted / "dirlink").symlink_to(tmp_path)
    sandbox = Sandbox(Grants(fs_read=(str(granted),), fs_write=(str(granted),)), LocalTransport())
    with pytest.raises(DeniedError) as caught:
        sandbox.read_bytes(str(granted / "link.pem"))
    assert caught.value.operation == "fs.read"
    with pytest.raises(DeniedError):
        sandbox.read_bytes(str(granted / "dirlink" / "outside.pem"))
    with pytest.raises(DeniedError):
        sandbox.check_write(str(granted / "dirlink" / "new.pem"))


def test_symlink_inside_grant_is_followed(tmp_path: Path) -> None:
    granted = tmp_path / "granted"
    (granted / "real").mkdir(parents=True)
    (granted / "real" / "x.pem").write_text("inside")
    (granted / "alias").symlink_to(granted / "real")
    sandbox = Sandbox(Grants(fs_read=(str(granted),)), LocalTransport())
    assert sandbox.read_bytes(str(granted / "alias" / "x.pem")) == b"inside"


def test_granted_dir_behind_a_symlink_matches_its_real_location(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "x.pem").write_text("x")
    (tmp_path / "alias").symlink_to(real)
    sandbox = Sandbox(Grants(fs_read=(str(tmp_path / "alias"),)), LocalTransport())
    assert sandbox.read_bytes(str(tmp_path / "alias" / "x.pem")) == b"x"


def test_host_is_matched_exactly() -> None:
    grants = Grants(net_dial=("fw.example:443", "API.Example.com:8443"))
    assert grants.allows_dial("fw.example", 443)
    assert grants.allows_dial("FW.EXAMPLE.", 443)  # case and root dot do not matter
    assert not grants.allows_dial("fw.example.evil.com", 443)
    assert not grants.allows_dial("evil-fw.example", 443)
    assert not grants.allows_dial("example", 443)
    assert grants.allows_dial("api.example.com", 8443)


def test_port_must_match() -> None:
    grants = Grants(net_dial=("fw.example:443",))
    assert not grants.allows_dial("fw.example", 8443)
    assert not grants.allows_dial("fw.example", 44)
    assert not Grants(net_dial=("fw.example",)).allows_dial("fw.example", 443)


def test_ipv6_form() -> None:
    grants = Grants(net_dial=("[::1]:443", "127.0.0.1:8080"))
    assert grants.allows_dial("::1", 443)
    assert grants.allows_dial("[::1]", 443)
    assert grants.allows_dial("0:0:0:0:0:0:0:1", 443)
    assert not grants.allows_dial("::2", 443)
    assert not grants.allows_dial("::1", 8080)
    assert grants.allows_dial("127.0.0.1", 8080)
    assert not grants.allows_dial("127.0.0.10", 8080)
    assert parse_endpoint("[2001:DB8::1]:443") == ("2001:db8::1", 443)
    with pytest.raises(ValueError):
        parse_endpoint("::1:443")  # ambiguous without brackets
    with pytest.raises(ValueError):
        parse_endpoint("host:99999")


def test_exec_is_exact_binary() -> None:
    grants = Grants(process_exec=("/usr/sbin/nginx",))
    assert grants.allows_exec("/usr/sbin/nginx")
    assert not grants.allows_exec("/usr/sbin/nginx-evil")
    assert not grants.allows_exec("/usr/sbin")
    assert not grants.allows_exec("nginx")


def test_denied_error_names_operation_and_grant(tmp_path: Path) -> None:
    sandbox = Sandbox(Grants(), LocalTransport())
    with pytest.raises(DeniedError) as caught:
        sandbox.check_write(str(tmp_path / "x.pem"))
    message = str(caught.value)
    assert "fs.write" in message and f"fs.write:{tmp_path}" in message
    assert caught.value.grant == f"fs.write:{tmp_path}"
    with pytest.raises(DeniedError) as dial:
        sandbox.tls_leaf_fingerprint("fw.example.evil.com", 443, None)
    assert "net.dial:fw.example.evil.com:443" in str(dial.value)
