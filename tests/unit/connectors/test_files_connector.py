"""The generic `files` connector: the conformance suite, plus what a user checks on disk."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from certgit.connectors.errors import DeniedError, PreflightFailed, ValidateFailed, VerifyMismatch
from certgit.connectors.files import FilesConnector
from certgit.connectors.model import (
    Capability,
    ChangeSet,
    Deployment,
    Removal,
    TargetSpec,
    VerifyConfig,
)
from certgit.connectors.sdk.conformance import ConnectorConformance, make_bundle
from certgit.connectors.sdk.registry import sandbox_for
from tests.unit.connectors.test_verify import TLSServer, _context


class TestFilesConformance(ConnectorConformance):
    connector_name = "files"

    def make_target(self, tmp_path: Path) -> TargetSpec:
        (tmp_path / "certs").mkdir()
        return TargetSpec(
            name="files-1",
            type="files",
            settings={"directory": str(tmp_path / "certs")},
            work_dir=tmp_path / "work",
            base_dir=tmp_path,
        )


# -- file-level behaviour ----------------------------------------------------------------------


def _target(tmp_path: Path, **settings: Any) -> TargetSpec:
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    verify = settings.pop("verify", None)
    return TargetSpec(
        name="files-1",
        type="files",
        settings={"directory": str(certs), **settings},
        work_dir=tmp_path / "work",
        base_dir=tmp_path,
        verify=verify,
    )


def _dep(name: str, **kw: Any) -> Deployment:
    overrides = kw.pop("overrides", None)
    return make_bundle(f"{name}.example.test", **kw).deployment(name, overrides=overrides)


def _deploy(target: TargetSpec, *deps: Deployment, removals: tuple[Removal, ...] = ()) -> Any:
    connector = FilesConnector()
    change = ChangeSet(target=target, deployments=deps, removals=removals)
    return connector.deploy(sandbox_for(connector, target), change)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\nimport sys, pathlib\n{body}")
    path.chmod(0o755)
    return str(path)


def test_writes_every_role_with_default_modes(tmp_path: Path) -> None:
    target = _target(tmp_path)
    dep = _dep("www")
    report = _deploy(target, dep)
    certs = tmp_path / "certs"
    assert (certs / "www.crt").read_bytes() == dep.cert_pem
    assert (certs / "www.chain.pem").read_bytes() == dep.chain_pem
    assert (certs / "www.fullchain.pem").read_bytes() == dep.cert_pem + dep.chain_pem
    assert (certs / "www.key").read_bytes() == dep.key_pem
    assert not (certs / "www.combined.pem").exists()
    assert _mode(certs / "www.crt") == 0o644
    assert _mode(certs / "www.fullchain.pem") == 0o644
    assert _mode(certs / "www.key") == 0o600
    assert report.changed and report.fingerprints == {"www": dep.fingerprint}
    assert set(report.files) >= {str(certs / "www.crt"), str(certs / "www.key")}


def test_explicit_modes_templates_and_combined(tmp_path: Path) -> None:
    target = _target(
        tmp_path,
        mode="0640",
        keyMode="0400",
        files={"chain": None, "fullchain": None, "combined": "{name}.pem", "key": "{name}-key.pem"},
    )
    dep = _dep("mail")
    _deploy(target, dep)
    certs = tmp_path / "certs"
    assert sorted(p.name for p in certs.iterdir()) == ["mail-key.pem", "mail.crt", "mail.pem"]
    assert (certs / "mail.pem").read_bytes() == dep.cert_pem + dep.chain_pem + dep.key_pem
    assert _mode(certs / "mail.crt") == 0o640
    assert _mode(certs / "mail.pem") == 0o400  # holds the key: keyMode
    assert _mode(certs / "mail-key.pem") == 0o400


def test_existing_mode_wins_over_default(tmp_path: Path) -> None:
    target = _target(tmp_path)
    key = tmp_path / "certs" / "www.key"
    key.write_bytes(b"old")
    key.chmod(0o640)
    _deploy(target, _dep("www"))
    assert _mode(key) == 0o640
    assert key.read_bytes() != b"old"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_owner_and_group(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    target = _target(tmp_path, owner="nobody", group=group)
    _deploy(target, _dep("www"))
    for name in ("www.key", "www.crt"):
        st = (tmp_path / "certs" / name).stat()
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)


def test_binding_overrides_and_relative_directory(tmp_path: Path) -> None:
    (tmp_path / "rel").mkdir()
    target = TargetSpec(
        name="rel",
        type="files",
        settings={"directory": "rel", "files": {"chain": None}},
        work_dir=tmp_path / "work",
        base_dir=tmp_path,
    )
    dep = _dep("api", overrides={"files": {"key": "{name}.private.pem", "fullchain": None}})
    _deploy(target, dep)
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == ["api.crt", "api.private.pem"]


def test_two_bindings_writing_one_path_fail_before_writing(tmp_path: Path) -> None:
    target = _target(tmp_path)
    same = {"files": {"certificate": "shared.pem"}}
    with pytest.raises(PreflightFailed, match=r"shared\.pem"):
        _deploy(target, _dep("a", overrides=same), _dep("b", overrides=same))
    assert list((tmp_path / "certs").iterdir()) == []


def test_expired_certificate_is_refused_before_writing(tmp_path: Path) -> None:
    import datetime as dt

    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    dep = _dep("old", not_before=past - dt.timedelta(days=30), not_after=past)
    with pytest.raises(PreflightFailed):
        _deploy(_target(tmp_path), dep)
    assert list((tmp_path / "certs").iterdir()) == []


def test_validate_sees_the_new_files_and_a_failure_restores(tmp_path: Path) -> None:
    seen = tmp_path / "validate-saw.pem"
    flag = tmp_path / "reject"
    certs = tmp_path / "certs"
    validate = _script(
        tmp_path / "validate.py",
        f"pathlib.Path({str(seen)!r}).write_bytes(pathlib.Path({str(certs / 'www.crt')!r})"
        ".read_bytes())\n"
        f"sys.exit(1 if pathlib.Path({str(flag)!r}).exists() else 0)\n",
    )
    reloads = tmp_path / "reloads"
    reload = _script(tmp_path / "reload.py", f"open({str(reloads)!r}, 'a').write('r\\n')\n")
    target = _target(tmp_path, validateCommand=[validate], reloadCommand=[reload])
    caps = FilesConnector().capabilities(target)
    assert {Capability.VALIDATE, Capability.RELOAD} <= caps
    old, new = _dep("www"), _dep("www")
    report = _deploy(target, old)
    assert report.validated and report.reloaded
    assert seen.read_bytes() == old.cert_pem  # validated with the new file in place

    flag.write_text("x")
    with pytest.raises(ValidateFailed):
        _deploy(target, new)
    assert seen.read_bytes() == new.cert_pem  # the check ran on the new file...
    assert (certs / "www.crt").read_bytes() == old.cert_pem  # ...and the old one is back
    assert (certs / "www.key").read_bytes() == old.key_pem
    assert reloads.read_text() == "r\n"  # no reload after the failed validate


def test_removal_deletes_the_binding_files(tmp_path: Path) -> None:
    target = _target(tmp_path)
    _deploy(target, _dep("gone"), _dep("kept"))
    report = _deploy(target, removals=(Removal("gone"),))
    assert report.changed
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == [
        "kept.chain.pem",
        "kept.crt",
        "kept.fullchain.pem",
        "kept.key",
    ]


def test_verify_mismatch_rolls_back(tmp_path: Path) -> None:
    other = make_bundle("www.example.test")
    with TLSServer([_context(other, tmp_path, "other")]) as server:
        config = VerifyConfig(
            host="127.0.0.1",
            port=server.port,
            server_name="www.example.test",
            initial_delay=0.01,
            max_delay=0.02,
            attempts=2,
        )
        old, new = _dep("www"), _dep("www")
        plain = _target(tmp_path)
        _deploy(plain, old)
        with pytest.raises(VerifyMismatch):
            _deploy(_target(tmp_path, verify=config), new)
        assert server.handshakes == 2
    certs = tmp_path / "certs"
    assert (certs / "www.crt").read_bytes() == old.cert_pem
    assert (certs / "www.key").read_bytes() == old.key_pem
    assert (
        FilesConnector().observe(sandbox_for(FilesConnector(), plain), plain, "www", {}).fingerprint
        == old.fingerprint
    )


def test_verify_success_is_reported(tmp_path: Path) -> None:
    bundle = make_bundle("www.example.test")
    dep = bundle.deployment("www")
    with TLSServer([_context(bundle, tmp_path, "served")]) as server:
        config = VerifyConfig(host="127.0.0.1", port=server.port, server_name="www.example.test")
        report = _deploy(_target(tmp_path, verify=config), dep)
        assert server.handshakes == 1
    assert report.verified is True


def test_grants_are_least_privilege(tmp_path: Path) -> None:
    reload = _script(tmp_path / "reload.py", "")
    target = _target(tmp_path, reloadCommand=[reload], verify=VerifyConfig(host="::1", port=8443))
    grants = FilesConnector().grants(target)
    assert grants.fs_write == (str(tmp_path / "certs"),)
    assert grants.process_exec == (reload,)
    assert grants.allows_dial("::1", 8443)
    assert not grants.allows_write(str(tmp_path / "certs-evil" / "x"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "0999"}, "octal"),
        ({"reloadCommand": "nginx -s reload"}, "list of strings"),
        ({"files": {"cert": "x.pem"}}, "unknown file role"),
    ],
)
def test_bad_settings_say_what_to_do(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(PreflightFailed, match=message):
        _deploy(_target(tmp_path, **settings), _dep("www"))


def test_missing_directory_setting(tmp_path: Path) -> None:
    target = TargetSpec(name="t", type="files", settings={}, work_dir=tmp_path, base_dir=tmp_path)
    with pytest.raises(PreflightFailed, match=r"settings\.directory is required"):
        FilesConnector().grants(target)


def test_dry_run_lists_changes_and_writes_nothing(tmp_path: Path) -> None:
    target = _target(tmp_path)
    dep = _dep("www")
    connector = FilesConnector()
    lines = connector.validate_only(
        sandbox_for(connector, target), ChangeSet(target=target, deployments=(dep,))
    )
    assert any(line.startswith("create") and "www.key" in line for line in lines)
    assert list((tmp_path / "certs").iterdir()) == []
    _deploy(target, dep)
    again = connector.validate_only(
        sandbox_for(connector, target), ChangeSet(target=target, deployments=(dep,))
    )
    assert again[-1] == "target files-1: nothing to change"


def test_dry_run_checks_grants(tmp_path: Path) -> None:
    from certgit.connectors.sdk.grants import Grants
    from certgit.connectors.sdk.sandbox import Sandbox
    from certgit.connectors.sdk.transport import LocalTransport

    target = _target(tmp_path)
    bare = Sandbox(Grants(), LocalTransport(), target=target.name)
    change = ChangeSet(target=target, deployments=(_dep("www"),))
    with pytest.raises(DeniedError, match=r"fs\.write"):
        FilesConnector().validate_only(bare, change)
    assert list((tmp_path / "certs").iterdir()) == []


def test_keys_stay_out_of_reprs(tmp_path: Path) -> None:
    dep = _dep("www")
    specs = FilesConnector().file_specs(_target(tmp_path), dep)
    assert specs and all(b"PRIVATE KEY" not in repr(s).encode() for s in specs)
    assert "PRIVATE KEY" not in repr(dep)
