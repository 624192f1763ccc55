"""Gated actions: never applied without an approval; an approval binds to one plan hash."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from tests.gitutil import commit_files


def _plan(cli, repo: str) -> dict:
    return json.loads(cli("plan", "--repo", repo, "--json").out)


def _on(state: Path, target: str) -> set[str]:
    with closing(sqlite3.connect(state / "state.db")) as db:
        return {
            c
            for (c,) in db.execute(
                "SELECT certificate FROM deployments WHERE target = ? AND fingerprint IS NOT NULL",
                (target,),
            )
        }


def _files(state: Path, target: str) -> list[str]:
    directory = state / "targets" / target
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _add_san(repo, path: Path, name: str) -> None:
    www = (path / "certificates" / "www.yaml").read_bytes()
    new = www.replace(b"    - example.com\n", f"    - example.com\n    - {name}\n".encode())
    assert new != www
    commit_files(repo, {"certificates/www.yaml": new}, f"www: add {name}")


def test_gated_actions_are_not_applied_without_approval(cli, sample_git, tmp_path) -> None:
    _, path = sample_git
    state = tmp_path / "state"
    for _ in range(2):
        r = cli("apply", "--repo", str(path))
        assert r.code == 2, r.out + r.err
        assert _files(state, "web-1") == [] and _files(state, "web-2") == []
        assert _on(state, "web-1") == set() and _on(state, "web-2") == set()
    plan = _plan(cli, str(path))
    waiting = [a for a in plan["actions"] if a["gated"]]
    assert {(a["certificate"], a["target"]) for a in waiting} == {
        ("api", "web-1"), ("www", "web-1"), ("www", "web-2"), ("staging-wildcard", "web-2")
    }
    for a in waiting:
        assert f"certgit approve {a['id']}" in r.out


def test_approval_for_hash_h_does_not_apply_a_changed_plan(cli, sample_git, tmp_path) -> None:
    repo, path = sample_git
    state = tmp_path / "state"
    assert cli("apply", "--repo", str(path)).code == 2
    h = _plan(cli, str(path))["hash"]
    r = cli("approve", h, "--repo", str(path), "--reason", "looks right", "--as", "alice")
    assert r.code == 0, r.out + r.err
    _add_san(repo, path, "shop.example.com")  # the plan is no longer H
    assert _plan(cli, str(path))["hash"] != h
    r = cli("apply", "--repo", str(path))
    assert r.code == 2, r.out + r.err
    assert _files(state, "web-1") == [] and _on(state, "web-1") == set()
    assert _on(state, "web-2") == set()
    # Approving the new plan applies it.
    h2 = _plan(cli, str(path))["hash"]
    r = cli("approve", h2, "--repo", str(path), "--reason", "with shop", "--as", "alice")
    assert r.code == 0, r.out + r.err
    r = cli("apply", "--repo", str(path))
    assert r.code == 0, r.out + r.err
    assert _on(state, "web-1") == {"api", "www"} and _on(state, "web-2") == {
        "www", "staging-wildcard"
    }
    rows = json.loads(cli("audit", "show", "--json", "--limit", "0").out)["entries"]
    approvals = [(r["actor"], r["subject"], r["details"]["reason"]) for r in rows
                 if r["action"] == "plan.approved"]
    assert approvals == [("alice", h, "looks right"), ("alice", h2, "with shop")]


def test_action_approval_applies_only_that_action(cli, sample_git, tmp_path) -> None:
    _, path = sample_git
    state = tmp_path / "state"
    assert cli("apply", "--repo", str(path)).code == 2
    plan = _plan(cli, str(path))
    action = next(a for a in plan["actions"] if (a["certificate"], a["target"]) == ("api", "web-1"))
    r = cli("approve", action["id"], "--repo", str(path), "--reason", "api first")
    assert r.code == 0 and action["id"] in r.out, r.out + r.err
    r = cli("apply", "--repo", str(path))
    assert r.code == 2, r.out + r.err
    assert _on(state, "web-1") == {"api"} and _on(state, "web-2") == set()
    assert _files(state, "web-1") == [
        "api.chain.pem", "api.crt", "api.fullchain.pem", "api.key"
    ]


def test_rejected_plan_is_not_applied(cli, sample_git, tmp_path) -> None:
    _, path = sample_git
    state = tmp_path / "state"
    assert cli("apply", "--repo", str(path)).code == 2
    h = _plan(cli, str(path))["hash"]
    r = cli("reject", h, "--repo", str(path), "--reason", "change freeze", "--as", "bob")
    assert r.code == 0, r.out + r.err
    r = cli("apply", "--repo", str(path))
    assert r.code == 2 and "rejected" in r.out, r.out + r.err
    assert _on(state, "web-1") == set()
    # approve/reject need a reason and a known plan or action.
    assert cli("approve", "deadbeef", "--repo", str(path), "--reason", "x").code == 1
