"""Crash recovery: a crash at every phase of the apply leaves files entirely old after recover()."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from certgit.connectors.errors import DeniedError, RollbackFailed
from certgit.connectors.sdk import atomic
from certgit.connectors.sdk.atomic import JOURNAL, recover
from certgit.connectors.sdk.grants import Grants
from certgit.connectors.sdk.sandbox import Sandbox
from certgit.connectors.sdk.transport import LocalTransport
from tests.unit.connectors.test_atomic import (
    KEY,
    Env,
    apply,
    assert_version,
    files_holding,
    make_env,
)


class Crash(BaseException):
    """Stands in for SIGKILL: nothing in the apply catches a BaseException."""


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def crash_at(monkeypatch: pytest.MonkeyPatch, phase: str) -> None:
    def hook(current: str) -> None:
        if current == phase:
            raise Crash(phase)

    monkeypatch.setattr(atomic, "_crash_hook", hook)


def assert_no_mixed_reload(env: Env) -> None:
    for line in env.lines("reload"):
        tags = {word for word in line.split()[1:] if word.startswith("v")}
        assert len(tags) <= 1, f"a reload ran on a mixed set: {line}"


@pytest.mark.parametrize(
    ("phase", "reloads_again"),
    [
        ("preparing", False),
        ("prepared", False),
        ("swapping", False),  # after the first of three renames: a mixed set on disk
        ("swapped", False),
        ("reloading", True),
        ("reloaded", True),
    ],
)
def test_crash_at_each_phase_recovers_to_old_then_converges(
    env: Env, monkeypatch: pytest.MonkeyPatch, phase: str, reloads_again: bool
) -> None:
    apply(env, env.specs("v1"))
    crash_at(monkeypatch, phase)
    with pytest.raises(Crash):
        apply(env, env.specs("v2"))
    assert (env.work / JOURNAL).exists()
    journaled = "prepared" if phase == "swapping" else phase  # mid-rename: still "prepared"
    assert json.loads((env.work / JOURNAL).read_text())["phase"] == journaled
    if phase == "swapping":
        assert (env.etc / "a.crt").read_text() == "cert v2\n"
        assert (env.etc / "a.key").read_text() == "key v1\n"  # really mixed before recover
    reloads_before = len(env.lines("reload"))
    monkeypatch.setattr(atomic, "_crash_hook", None)

    lines = recover(LocalTransport(), env.work)

    assert_version(env, "v1")  # entirely old, no temps left
    assert not (env.work / JOURNAL).exists()
    reloads = env.lines("reload")
    if reloads_again:
        assert len(reloads) == reloads_before + 1
        assert reloads[-1] == "reload cert v1 chain v1 key v1 "
        assert any(line.startswith("reloaded") for line in lines)
    else:
        assert len(reloads) == reloads_before
    assert recover(LocalTransport(), env.work) == []  # nothing left to do

    result = apply(env, env.specs("v2"))
    assert result.changed and result.reloaded
    assert_version(env, "v2")
    assert_no_mixed_reload(env)


def test_crash_on_first_deploy_removes_partial_new_files(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_at(monkeypatch, "swapping")
    with pytest.raises(Crash):
        apply(env, env.specs("v1"))
    assert (env.etc / "a.crt").exists() or (env.etc / "a.chain").exists()
    monkeypatch.setattr(atomic, "_crash_hook", None)
    recover(LocalTransport(), env.work)
    assert env.contents() == {}


def test_unlisted_temp_files_are_removed(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    apply(env, env.specs("v1"))
    crash_at(monkeypatch, "preparing")
    with pytest.raises(Crash):
        apply(env, env.specs("v2"))
    # A temp written after the "preparing" journal and before the crash: not listed yet.
    stray = env.etc / ".a.key.certgit-0123456789ab.tmp"
    stray.write_text("key v2\n")
    unrelated = env.etc / "operator-notes.txt"
    unrelated.write_text("keep me\n")
    monkeypatch.setattr(atomic, "_crash_hook", None)
    recover(LocalTransport(), env.work)
    assert not stray.exists()
    assert unrelated.read_text() == "keep me\n"


def test_apply_recovers_a_leftover_journal_first(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    apply(env, env.specs("v1"))
    crash_at(monkeypatch, "reloaded")
    with pytest.raises(Crash):
        apply(env, env.specs("v2"))
    monkeypatch.setattr(atomic, "_crash_hook", None)
    apply(env, env.specs("v3"))
    assert_version(env, "v3")
    assert not (env.work / JOURNAL).exists()
    assert [line.split()[2] for line in env.lines("reload")] == ["v1", "v2", "v1", "v3"]


def test_recover_without_backup_is_rollback_failed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply(env, env.specs("v1"))
    crash_at(monkeypatch, "swapped")
    with pytest.raises(Crash):
        apply(env, env.specs("v2"))
    monkeypatch.setattr(atomic, "_crash_hook", None)
    for backup in (env.work / "backups").rglob("*.bak"):
        backup.write_text("tampered\n")
    with pytest.raises(RollbackFailed) as caught:
        recover(LocalTransport(), env.work)
    assert "does not match its checksum" in str(caught.value)
    assert "restore them by hand" in str(caught.value)
    assert not (env.work / JOURNAL).exists()
    assert list(env.work.glob("journal.failed-*.json"))


def test_unreadable_journal_is_moved_aside(env: Env) -> None:
    (env.work / JOURNAL).write_text("{not json")
    with pytest.raises(RollbackFailed) as caught:
        recover(LocalTransport(), env.work)
    assert "unreadable" in str(caught.value)
    assert not (env.work / JOURNAL).exists()
    assert list(env.work.glob("journal.unreadable-*.json"))


def test_recover_without_journal_does_nothing(env: Env) -> None:
    assert recover(LocalTransport(), env.work) == []
    assert env.lines("reload") == []


# --- sealed backups and untrusted journals -------------------------------------------


def crash_mid_apply(
    env: Env, monkeypatch: pytest.MonkeyPatch, phase: str, **kwargs: object
) -> None:
    apply(env, env.specs("v1"), **kwargs)
    crash_at(monkeypatch, phase)
    with pytest.raises(Crash):
        apply(env, env.specs("v2"), **kwargs)
    monkeypatch.setattr(atomic, "_crash_hook", None)


def test_sealed_backups_need_the_key_to_recover(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    crash_mid_apply(env, monkeypatch, "reloading", backup_key=KEY)
    assert files_holding(env.work, b"key v1") == []  # the copies are sealed
    with pytest.raises(RollbackFailed) as caught:
        recover(LocalTransport(), env.work)
    assert "sealed" in str(caught.value) and "backup key" in str(caught.value)
    assert (env.work / JOURNAL).exists()  # kept for a caller holding the key
    assert not list(env.work.glob("journal.failed-*.json"))
    assert (env.etc / "a.key").read_text() == "key v2\n"  # nothing touched
    lines = recover(LocalTransport(), env.work, KEY)
    assert_version(env, "v1")
    assert any(line.startswith("reloaded") for line in lines)
    assert env.lines("reload")[-1] == "reload cert v1 chain v1 key v1 "
    assert len(list((env.work / "backups").iterdir())) == 2  # sealed sets are kept


def test_wrong_key_is_rollback_failed(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    crash_mid_apply(env, monkeypatch, "swapped", backup_key=KEY)
    with pytest.raises(RollbackFailed) as caught:
        recover(LocalTransport(), env.work, bytes(32))
    assert "cannot be decrypted" in str(caught.value)
    assert "wrong backup key" in str(caught.value)


def test_plain_backups_are_deleted_once_recovered(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_mid_apply(env, monkeypatch, "swapped")
    assert files_holding(env.work / "backups", b"key v1")  # needed until recovered
    recover(LocalTransport(), env.work)
    assert_version(env, "v1")
    assert list((env.work / "backups").iterdir()) == []
    assert files_holding(env.work, b"key v1") == []


def _edit_journal(env: Env, **changes: object) -> None:
    journal = json.loads((env.work / JOURNAL).read_text())
    journal.update(changes)
    (env.work / JOURNAL).write_text(json.dumps(journal))


def test_ungranted_reload_in_journal_is_refused(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_mid_apply(env, monkeypatch, "reloading", backup_key=KEY)
    evil = env.root / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch {env.root}/pwned\n")
    evil.chmod(0o755)
    _edit_journal(env, reload=[str(evil)])
    granted = list(env.reload)

    def allowed_exec(argv: Sequence[str]) -> None:
        if list(argv) != granted:
            raise DeniedError("process.exec", argv[0], f"process.exec:{argv[0]}")

    with pytest.raises(RollbackFailed) as caught:
        recover(LocalTransport(), env.work, KEY, allowed_exec=allowed_exec)
    message = str(caught.value)
    assert "not granted" in message and "may have been edited" in message
    assert "Nothing was restored or run" in message
    assert not (env.root / "pwned").exists()
    assert not (env.work / JOURNAL).exists()
    assert list(env.work.glob("journal.failed-*.json"))  # set aside for the operator
    assert (env.etc / "a.crt").read_text() == "cert v2\n"  # nothing restored either


def _sandbox(env: Env, **extra: tuple[str, ...]) -> Sandbox:
    grants = Grants(
        fs_write=extra.get("fs_write", (str(env.etc),)),
        process_exec=(*env.validate, *env.reload),
    )
    return Sandbox(grants, LocalTransport(), target="t1")


def test_sandbox_recover_checks_the_journal_against_its_grants(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_mid_apply(env, monkeypatch, "reloading", backup_key=KEY)
    journal = (env.work / JOURNAL).read_text()
    _edit_journal(env, reload=["/bin/rm", "-rf", str(env.etc)])
    with pytest.raises(RollbackFailed, match=r"process\.exec"):
        _sandbox(env).recover(env.work, backup_key=KEY)
    assert (env.etc / "a.crt").exists()
    # The untouched journal passes the same grants and recovers.
    (env.work / JOURNAL).write_text(journal)
    _sandbox(env).recover(env.work, backup_key=KEY)
    assert_version(env, "v1")


def test_sandbox_recover_refuses_a_file_outside_fs_write(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_mid_apply(env, monkeypatch, "swapped", backup_key=KEY)
    with pytest.raises(RollbackFailed, match=r"fs\.write"):
        _sandbox(env, fs_write=(str(env.etc / "a.crt"),)).recover(env.work, backup_key=KEY)
    assert (env.etc / "a.key").read_text() == "key v2\n"


def test_sandbox_apply_checks_a_leftover_journal(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_mid_apply(env, monkeypatch, "reloading", backup_key=KEY)
    _edit_journal(env, reload=["/bin/rm", "-rf", str(env.etc)])
    with pytest.raises(RollbackFailed, match="not granted"):
        _sandbox(env).apply_files(
            env.specs("v3"),
            validate=env.validate,
            reload=env.reload,
            work_dir=env.work,
            backup_key=KEY,
        )
    assert (env.etc / "a.crt").read_text() == "cert v2\n"
    # The journal is set aside: the next apply writes a complete new set.
    _sandbox(env).apply_files(
        env.specs("v3"), validate=env.validate, reload=env.reload, work_dir=env.work,
        backup_key=KEY,
    )  # fmt: skip
    assert_version(env, "v3")


@pytest.mark.parametrize(
    "edit",
    [
        {"backup_id": "../../escape"},
        {"reload": "rm -rf /"},
        {"files": [{"dest": "/etc/passwd", "directory": "/tmp", "temp_prefix": ".x"}]},
    ],
)
def test_malformed_journal_is_moved_aside(
    env: Env, monkeypatch: pytest.MonkeyPatch, edit: dict[str, object]
) -> None:
    crash_mid_apply(env, monkeypatch, "swapped", backup_key=KEY)
    _edit_journal(env, **edit)
    with pytest.raises(RollbackFailed, match="unreadable"):
        recover(LocalTransport(), env.work, KEY)
    assert list(env.work.glob("journal.unreadable-*.json"))
    assert (env.etc / "a.crt").read_text() == "cert v2\n"
