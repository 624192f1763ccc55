"""First contact with a state directory: who may create it, and what is refused.

Read-only commands (plan, status, history, audit, validate of the repo) on a
missing or mistyped state dir exit 1 and create nothing; `init` and `apply`
create it; a master key or CA without its state.db, and a state dir or work/
that others can write, are refused by every command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

READ_ONLY = [
    ("status",),
    ("status", "--json"),
    ("plan",),
    ("plan", "--json"),
    ("history",),
    ("history", "web-1"),
    ("audit", "verify"),
    ("audit", "show"),
    ("validate",),
]


def _tree(root: Path) -> dict[str, int]:
    """Every path under root with its size (directories 0), the repo's .git left out."""
    return {
        str(p.relative_to(root)): 0 if p.is_dir() else p.stat().st_size
        for p in sorted(root.rglob("*"))
        if ".git" not in p.relative_to(root).parts
    }


@pytest.mark.parametrize("argv", READ_ONLY, ids=" ".join)
def test_read_only_command_on_missing_state_exits_1_and_creates_nothing(
    cli, sample_git, tmp_path: Path, argv: tuple[str, ...]
) -> None:
    _, path = sample_git
    before = _tree(tmp_path)
    r = cli(*argv, "--repo", str(path))
    assert r.code == 1, r.out + r.err
    assert f"no certgit state in {tmp_path / 'state'}" in r.err
    assert "certgit init" in r.err and "--state-dir / CERTGIT_STATE_DIR" in r.err
    assert not (tmp_path / "state").exists()
    assert _tree(tmp_path) == before


def test_mistyped_state_dir_is_not_a_new_empty_store(cli, sample_git, tmp_path: Path) -> None:
    _, path = sample_git
    assert cli("apply", "--repo", str(path)).code == 2
    assert cli("audit", "verify").code == 0
    typo = tmp_path / "stat"
    for argv in READ_ONLY:
        r = cli(*argv, "--repo", str(path), "--state-dir", str(typo))
        assert r.code == 1, (argv, r.out, r.err)
        assert f"no certgit state in {typo} (the directory does not exist)" in r.err
        assert "intact" not in r.out
    assert not typo.exists()


def test_read_only_command_on_empty_dir_leaves_it_empty(cli, sample_git, tmp_path: Path) -> None:
    _, path = sample_git
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    for argv in READ_ONLY:
        r = cli(*argv, "--repo", str(path))
        assert r.code == 1, (argv, r.out, r.err)
        assert "state.db is missing" in r.err
    assert list(state.iterdir()) == []


def test_init_then_status_plan_audit(cli, sample_git, tmp_path: Path) -> None:
    _, path = sample_git
    state = tmp_path / "state"
    r = cli("init", "--as", "alice")
    assert r.code == 0, r.err
    assert f"created certgit state in {state}" in r.out
    assert f"master key   {state / 'master.key'}" in r.out
    assert sorted(p.name for p in state.iterdir()) == ["audit.head", "master.key", "state.db"]
    assert (state.stat().st_mode & 0o777) == 0o700
    status = cli("status", "--json", "--repo", str(path))
    assert status.code == 0, status.err
    assert {row["drift"] for row in json.loads(status.out)["bindings"]} == {"missing"}
    assert cli("plan", "--detailed-exitcode", "--repo", str(path)).code == 2
    rows = json.loads(cli("audit", "show", "--json").out)["entries"]
    assert rows[0]["action"] == "state.init" and rows[0]["actor"] == "alice"
    again = cli("init")
    assert again.code == 0 and "already exists" in again.out and "nothing changed" in again.out
    assert [r["action"] for r in json.loads(cli("audit", "show", "--json").out)["entries"]].count(
        "state.init"
    ) == 1


def test_init_names_a_master_key_from_the_environment(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERTGIT_MASTER_KEY", bytes(range(32)).hex())
    r = cli("init")
    assert r.code == 0, r.err
    assert "master key   the CERTGIT_MASTER_KEY environment variable" in r.out
    assert not (tmp_path / "state" / "master.key").exists()


def test_apply_creates_state_on_first_use(cli, sample_git, tmp_path: Path) -> None:
    _, path = sample_git
    r = cli("apply", "--repo", str(path))
    assert r.code == 2, r.out + r.err
    assert (tmp_path / "state" / "state.db").stat().st_size > 0


@pytest.mark.parametrize("db", ["missing", "empty"])
@pytest.mark.parametrize("command", ["apply", "init", "status", "approve"])
def test_lost_store_beside_master_key_and_ca_is_refused(
    cli, sample_git, tmp_path: Path, db: str, command: str
) -> None:
    _, path = sample_git
    state = tmp_path / "state"
    assert cli("apply", "--repo", str(path)).code == 2
    assert (state / "ca").is_dir()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (state / name).unlink(missing_ok=True)
    if db == "empty":
        (state / "state.db").touch(mode=0o600)
    before = _tree(tmp_path)
    extra = ("deadbeef", "--reason", "x") if command == "approve" else ()
    r = cli(command, *extra, "--repo", str(path))
    assert r.code == 1, r.out + r.err
    assert f"holds master.key and ca/ but its state store {state / 'state.db'} is {db}" in r.err
    assert "Restore state.db from a backup, or move the directory aside" in r.err
    assert _tree(tmp_path) == before


def test_group_writable_state_dir_refused_even_for_apply(cli, sample_git, tmp_path: Path) -> None:
    _, path = sample_git
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o770)
    r = cli("apply", "--repo", str(path))
    assert r.code == 1, r.out + r.err
    assert f"state directory {state} is unsafe: mode 0770 is group-writable" in r.err
    assert f"chmod go-w {state}" in r.err
    assert list(state.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_state_dir_owned_by_another_user_refused(cli, sample_git, tmp_path: Path) -> None:
    _, path = sample_git
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    r = cli("apply", "--repo", str(path))
    assert r.code == 1
    assert "(uid 65534)" in r.err and "chown" in r.err
    assert list(state.iterdir()) == []


def test_writable_work_dir_fails_the_deploy(cli, sample_git, tmp_path: Path) -> None:
    _, path = sample_git
    state = tmp_path / "state"
    assert cli("init").code == 0
    (state / "work").mkdir()
    (state / "work").chmod(0o777)
    r = cli("apply", "--repo", str(path))
    # The target's deploys fail (exit 1, or 2 while they wait for a retry); nothing is written.
    assert r.code in (1, 2), r.out + r.err
    assert "Apply complete" not in r.out
    assert (
        "staging-1: grafana v1, ldap v1, legacy-app v1, staging-wildcard v1: UnsafeStateDir: "
        f"work directory {state / 'work'} is unsafe: mode 0777"
    ) in r.out
    assert "chmod go-w" in r.out
    assert not (state / "targets" / "staging-1").exists()
    assert list((state / "work").iterdir()) == []
