"""The CLI end to end on real Git repositories: validate, plan, status, audit."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import SAMPLE
from tests.gitutil import commit_files

BIN = Path(sys.executable).parent


def test_validate_sample_repo_is_clean(cli) -> None:
    r = cli("validate", str(SAMPLE))
    assert r.code == 0, r.out + r.err
    assert "6 certificates" in r.out and "3 targets" in r.out


BROKEN = {
    # 1. broken indentation: " spec:" is indented one space, inside no mapping
    "certs/indent.yaml": (
        "apiVersion: certgit.dev/v1\n"
        "kind: Certificate\n"
        "metadata:\n"
        "  name: indent\n"
        " spec:\n"
        "  dnsNames: [a.example.com]\n"
    ),
    # 2. misspelled field (dnsName) 3. dangling issuerRef 4. duplicate name (2nd doc)
    "certs/more.yaml": (
        "apiVersion: certgit.dev/v1\n"
        "kind: Certificate\n"
        "metadata:\n"
        "  name: typo\n"
        "spec:\n"
        "  dnsName: [b.example.com]\n"
        "  commonName: b.example.com\n"
        "  issuerRef: {name: internal-ca}\n"
        "  deployTo: [{target: web-1}]\n"
        "---\n"
        "apiVersion: certgit.dev/v1\n"
        "kind: Certificate\n"
        "metadata:\n"
        "  name: www\n"
        "spec:\n"
        "  dnsNames: [c.example.com]\n"
        "  issuerRef:\n"
        "    name: no-such-ca\n"
        "  deployTo: [{target: web-1}]\n"
    ),
}


def test_validate_reports_four_problems_with_positions(cli, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(SAMPLE, broken)
    for rel, text in BROKEN.items():
        (broken / rel).parent.mkdir(parents=True, exist_ok=True)
        (broken / rel).write_text(text)
    r = cli("validate", str(broken))
    assert r.code == 1
    lines = r.out.splitlines()
    assert len(lines) == 4, r.out
    positions = [line.split(": ", 1)[0] for line in lines]
    assert positions == [
        "certs/indent.yaml:5:2",  # the mis-indented key
        "certs/more.yaml:6:3",  # the misspelled key
        "certs/more.yaml:14:9",  # the duplicate name's value
        "certs/more.yaml:18:11",  # the dangling issuer name's value
    ], r.out
    assert "dnsNames" in lines[1]  # did you mean
    assert "certificates/www.yaml" in lines[2]  # points at the first definition
    assert "no-such-ca" in lines[3]
    assert "nothing was changed" in r.err


def test_plan_json_lists_issue_and_deploy_per_binding_and_hash_is_stable(cli, sample_git) -> None:
    _, path = sample_git
    assert cli("init").code == 0
    first = cli("plan", "--detailed-exitcode", "--json", "--repo", str(path))
    assert first.code == 2, first.err
    plan = json.loads(first.out)
    issues = [a for a in plan["actions"] if a["kind"] == "issue"]
    deploys = [a for a in plan["actions"] if a["kind"] == "deploy"]
    assert sorted(a["certificate"] for a in issues) == [
        "api",
        "grafana",
        "ldap",
        "legacy-app",
        "staging-wildcard",
        "www",
    ]
    assert sorted((a["certificate"], a["target"]) for a in deploys) == [
        ("api", "web-1"),
        ("grafana", "staging-1"),
        ("ldap", "staging-1"),
        ("legacy-app", "staging-1"),
        ("staging-wildcard", "staging-1"),
        ("staging-wildcard", "web-2"),
        ("www", "web-1"),
        ("www", "web-2"),
    ]
    assert all(a["reason"] and a["drift"] == "missing" for a in plan["actions"])
    gated = sorted((a["certificate"], a["target"]) for a in plan["actions"] if a["gated"])
    assert gated == [
        ("api", "web-1"),
        ("staging-wildcard", "web-2"),
        ("www", "web-1"),
        ("www", "web-2"),
    ]
    second = cli("plan", "--detailed-exitcode", "--json", "--repo", str(path))
    assert second.code == 2
    assert json.loads(second.out)["hash"] == plan["hash"]


def test_plan_text_is_terraform_like(cli, sample_git) -> None:
    _, path = sample_git
    assert cli("init").code == 0
    r = cli("plan", "--detailed-exitcode", "--repo", str(path))
    assert r.code == 2
    assert "+ issue    www" in r.out
    assert "+ deploy   www -> web-1" in r.out
    assert "needs approval (policy production-gate/production-changes)" in r.out
    assert "Plan: 8 to deploy, 6 to issue; 4 need approval." in r.out


def test_bad_commit_is_rejected_and_last_good_commit_named(cli, sample_git) -> None:
    repo, path = sample_git
    assert cli("init").code == 0
    good = cli("plan", "--json", "--repo", str(path))
    good_commit = json.loads(good.out)["commit"]
    bad_commit = commit_files(repo, {"certificates/www.yaml": b"kind: [unclosed\n"}, "oops")
    bad = cli("validate", "--repo", str(path))
    assert bad.code == 1
    assert bad.out.startswith("certificates/www.yaml:2:1: YAML syntax error")
    assert f"last good commit {good_commit[:12]} stays in force" in bad.err
    # plan works on from the last good commit, with one warning on stderr (DESIGN §8).
    kept = cli("plan", "--detailed-exitcode", "--json", "--repo", str(path))
    assert kept.code == 2, kept.err
    data = json.loads(kept.out)
    assert data["commit"] == good_commit and data["hash"] == json.loads(good.out)["hash"]
    assert data["degraded"]["head"] == bad_commit
    assert kept.err == (
        f"warning: HEAD {bad_commit[:12]} is invalid (1 problem, run `certgit validate`); "
        f"the last good commit {good_commit[:12]} stays in force\n"
    )


def test_status_lists_every_binding(cli, sample_git) -> None:
    _, path = sample_git
    assert cli("init").code == 0
    r = cli("status", "--json", "--repo", str(path))
    assert r.code == 0, r.err
    rows = json.loads(r.out)["bindings"]
    assert len(rows) == 8
    assert {row["drift"] for row in rows} == {"missing"}
    assert all(row["deployed_fingerprint"] is None for row in rows)
    text = cli("status", "--repo", str(path))
    assert text.out.splitlines()[0].split() == [
        "CERTIFICATE",
        "TARGET",
        "VERSION",
        "FINGERPRINT",
        "NOT",
        "AFTER",
        "DAYS",
        "LEFT",
        "KEY",
        "SANS",
        "DRIFT",
        "REASON",
    ]


def test_audit_verify_detects_a_direct_edit(cli, sample_git, tmp_path: Path) -> None:
    repo, path = sample_git
    assert cli("init").code == 0  # audit entry 1: state.init
    assert cli("plan", "--detailed-exitcode", "--repo", str(path)).code == 2
    www = (SAMPLE / "certificates" / "www.yaml").read_bytes()
    commit_files(
        repo, {"certificates/www.yaml": www.replace(b"example.com\n", b"example.org\n", 1)}, "san"
    )
    assert cli("plan", "--detailed-exitcode", "--repo", str(path)).code == 2
    ok = cli("audit", "verify")
    assert ok.code == 0 and "3 entries verified" in ok.out, ok.out + ok.err

    db = sqlite3.connect(tmp_path / "state" / "state.db")
    triggers = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
    for name in triggers:
        db.execute(f'DROP TRIGGER "{name}"')
    db.execute(
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = (SELECT MIN(seq) FROM audit_log)"
    )
    db.commit()
    db.close()
    bad = cli("audit", "verify")
    assert bad.code == 1
    assert "TAMPERED" in bad.err


def test_history_rewrite_refused_unless_allowed(cli, sample_git, tmp_path: Path) -> None:
    """A head that does not descend from the last applied commit is refused."""
    from certgit.reconciler.store import Store

    repo, path = sample_git
    first = repo.head.target
    commit_files(repo, {"extra.txt": b"x"}, "second")
    # Mark the second commit as applied (apply arrives with issue 9), then rewrite history.
    store = Store.open(tmp_path / "state")
    store.set_source_state("last_applied_commit", str(repo.head.target))
    store.close()
    commit_files(repo, {"other.txt": b"y"}, "rewritten", parents=[str(first)])
    refused = cli("plan", "--repo", str(path))
    assert refused.code == 1
    assert "allowHistoryRewrite" in refused.err or "allow-history-rewrite" in refused.err
    allowed = cli("plan", "--detailed-exitcode", "--repo", str(path), "--allow-history-rewrite")
    assert allowed.code == 2, allowed.err


def test_console_script_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run(
        [str(BIN / "certgit"), "validate", str(SAMPLE)], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(
        [str(BIN / "certgit"), "plan", "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert missing.returncode == 1
    assert "no repository configured" in missing.stderr
