"""The entry-point registry: listing without importing, loading, and every way loading fails."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from certgit.connectors.errors import CertgitError
from certgit.connectors.model import TargetSpec, VerifyConfig
from certgit.connectors.sdk import registry
from certgit.connectors.sdk.registry import (
    GROUP,
    ConnectorUnavailable,
    available,
    load_connector,
    sandbox_for,
)

BUILT_INS = {
    "files",
    "nginx",
    "apache",
    "haproxy",
    "caddy",
    "traefik",
    "envoy",
    "postfix",
    "dovecot",
}


def _fake(monkeypatch: pytest.MonkeyPatch, *pairs: tuple[str, str]) -> None:
    eps = [EntryPoint(name=n, value=v, group=GROUP) for n, v in pairs]
    monkeypatch.setattr(registry, "_entry_points", lambda: eps)


def _target(tmp_path: Path, **extra: object) -> TargetSpec:
    return TargetSpec(
        name="t1",
        type="files",
        settings={"directory": str(tmp_path / "certs")},
        work_dir=tmp_path / "work",
        base_dir=tmp_path,
        **extra,  # type: ignore[arg-type]
    )


def test_available_lists_the_built_ins_without_importing_them() -> None:
    code = (
        "import json, sys\n"
        "from certgit.connectors.sdk.registry import available\n"
        "found = available()\n"
        "loaded = [m for m in sys.modules if m.startswith('certgit.connectors.')"
        " and m.rsplit('.', 1)[-1] in found]\n"
        "print(json.dumps({'found': found, 'loaded': loaded}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    data = json.loads(out.stdout)
    assert BUILT_INS <= set(data["found"])
    assert data["found"]["files"] == "certgit.connectors.files:FilesConnector"
    assert data["loaded"] == []


def test_load_files_connector() -> None:
    connector = load_connector("files")
    assert connector.name == "files"
    assert type(connector).__name__ == "FilesConnector"


def test_unknown_name_is_unavailable_and_lists_known(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, ("files", "certgit.connectors.files:FilesConnector"))
    with pytest.raises(ConnectorUnavailable) as caught:
        load_connector("nginz")
    assert "known: files" in str(caught.value)
    assert isinstance(caught.value, CertgitError)


def test_import_failure_is_unavailable_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, ("broken", "certgit.connectors.no_such_module:Broken"))
    with pytest.raises(ConnectorUnavailable) as caught:
        load_connector("broken")
    message = str(caught.value)
    assert "ModuleNotFoundError" in message
    assert "reinstall" in message
    assert caught.value.name == "broken"


def test_duplicate_registration_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(
        monkeypatch,
        ("files", "certgit.connectors.files:FilesConnector"),
        ("files", "evil_pkg.connector:Files"),
    )
    with pytest.raises(ConnectorUnavailable, match="registered more than once"):
        load_connector("files")
    assert available() == {"files": "certgit.connectors.files:FilesConnector"}


def test_same_registration_twice_is_not_a_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    # an editable install can list the same entry point from two metadata dirs
    value = "certgit.connectors.files:FilesConnector"
    _fake(monkeypatch, ("files", value), ("files", value))
    assert load_connector("files").name == "files"


def test_entry_point_name_must_match_connector_name(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, ("nginx", "certgit.connectors.files:FilesConnector"))
    with pytest.raises(ConnectorUnavailable, match="names itself 'files'"):
        load_connector("nginx")


def test_sandbox_for_local_uses_the_connector_grants(tmp_path: Path) -> None:
    connector = load_connector("files")
    target = _target(tmp_path, verify=VerifyConfig(host="127.0.0.1", port=8443))
    sandbox = sandbox_for(connector, target)
    assert sandbox.grants == connector.grants(target)
    assert sandbox.grants.allows_write(str(tmp_path / "certs" / "x.pem"))
    assert not sandbox.grants.allows_write(str(tmp_path / "certs-evil" / "x.pem"))
    assert sandbox.grants.allows_dial("127.0.0.1", 8443)
    assert not sandbox.grants.allows_dial("127.0.0.1", 443)


def test_sandbox_for_ssh_says_when_it_arrives(tmp_path: Path) -> None:
    connector = load_connector("files")
    target = _target(tmp_path, transport={"type": "ssh", "host": "example.test"})
    with pytest.raises(ConnectorUnavailable, match="issue 6"):
        sandbox_for(connector, target)
