"""`certgit apply` end to end on the sample repo with the real `files` connector.

Asserts what an operator would check: the files on disk (content = the
recorded version, modes 0644 certificate / 0600 key), the recorded state, the
audit log, and that a re-apply touches nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.gitutil import commit_files

STAGING = ("grafana", "ldap", "legacy-app", "staging-wildcard")


def _fp(path: Path) -> str:
    return x509.load_pem_x509_certificate(path.read_bytes()).fingerprint(hashes.SHA256()).hex()


def _deployments(state: Path) -> dict[tuple[str, str], tuple[str | None, int | None]]:
    with closing(sqlite3.connect(state / "state.db")) as db:
        return {
            (c, t): (fp, v)
            for c, t, fp, v in db.execute(
                "SELECT certificate, target, fingerprint, version FROM deployments"
            )
        }


def _audit_actions(cli) -> list[str]:
    r = cli("audit", "show", "--json", "--limit", "0")
    return [row["action"] for row in json.loads(r.out)["entries"]]


def _plan_hash(cli, repo: str) -> str:
    return json.loads(cli("plan", "--repo", repo, "--json").out)["hash"]


def _snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(directory.iterdir())
    }


def test_apply_writes_files_with_modes_and_records_state(cli, sample_git, tmp_path) -> None:
    _, path = sample_git
    state = tmp_path / "state"
    r = cli("apply", "--repo", str(path), "--as", "tester")
    assert r.code == 2, r.out + r.err  # production deploys wait for approval
    assert "waiting for approval" in r.out
    staging = state / "targets" / "staging-1"
    recorded = _deployments(state)
    for cert in STAGING:
        crt, key = staging / f"{cert}.crt", staging / f"{cert}.key"
        assert stat.S_IMODE(crt.stat().st_mode) == 0o644
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE((staging / f"{cert}.fullchain.pem").stat().st_mode) == 0o644
        assert recorded[(cert, "staging-1")] == (_fp(crt), 1)
        assert (staging / f"{cert}.fullchain.pem").read_bytes().startswith(crt.read_bytes())
        assert b"PRIVATE KEY" in key.read_bytes()
    # Gated: nothing on the production targets yet.
    assert not any(t == "web-1" for (_, t) in recorded)
    assert not (state / "targets" / "web-1").exists() or not any(
        (state / "targets" / "web-1").iterdir()
    )
    actions = _audit_actions(cli)
    assert actions.count("deploy.completed") == 1  # one ChangeSet for staging-1
    assert actions.count("certificate.issued") == 6

    # Re-apply: no file is rewritten, no deploy runs.
    before = _snapshot(staging)
    r = cli("apply", "--repo", str(path))
    assert r.code == 2, r.out + r.err
    assert _snapshot(staging) == before
    assert _audit_actions(cli).count("deploy.completed") == 1


def test_approved_apply_converges_and_reapply_is_a_noop(cli, sample_git, tmp_path) -> None:
    _, path = sample_git
    repo = str(path)
    state = tmp_path / "state"
    assert cli("apply", "--repo", repo).code == 2
    r = cli("approve", _plan_hash(cli, repo), "--repo", repo, "--reason", "rollout", "--as", "al")
    assert r.code == 0, r.out + r.err
    r = cli("apply", "--repo", repo)
    assert r.code == 0, r.out + r.err
    web1 = state / "targets" / "web-1"
    assert stat.S_IMODE((web1 / "www.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE((web1 / "www.key").stat().st_mode) == 0o600
    web2 = state / "targets" / "web-2"
    assert (web2 / "www.example.com.crt").exists()  # the binding's files override
    assert not (web2 / "www.chain.pem").exists()  # chain: null on web-2
    recorded = _deployments(state)
    assert recorded[("www", "web-1")][0] == _fp(web1 / "www.crt")
    assert recorded[("www", "web-2")][0] == _fp(web2 / "www.example.com.crt")
    snapshots = {t: _snapshot(state / "targets" / t) for t in ("web-1", "web-2", "staging-1")}
    deploys = _audit_actions(cli).count("deploy.completed")
    r = cli("apply", "--repo", repo)
    assert r.code == 0 and "No changes" in r.out, r.out + r.err
    assert {t: _snapshot(state / "targets" / t) for t in snapshots} == snapshots
    assert _audit_actions(cli).count("deploy.completed") == deploys
    status = json.loads(cli("status", "--repo", repo, "--json").out)
    assert {b["drift"] for b in status["bindings"]} == {"in-sync"}


def test_dry_run_writes_nothing(cli, sample_git, tmp_path) -> None:
    _, path = sample_git
    state = tmp_path / "state"
    r = cli("apply", "--dry-run", "--repo", str(path))
    assert r.code == 2, r.out + r.err
    assert "would issue www" in r.out and "nothing is written" in r.out
    assert not (state / "targets").exists()
    assert _deployments(state) == {}
    with closing(sqlite3.connect(state / "state.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM certificate_versions").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0


def test_rollback_deploys_the_old_version_and_holds_until_release(
    cli, sample_git, tmp_path
) -> None:
    repo, path = sample_git
    state = tmp_path / "state"
    staging = state / "targets" / "staging-1"
    assert cli("apply", "--repo", str(path)).code == 2
    v1 = _fp(staging / "legacy-app.crt")
    internal = (path / "certificates" / "internal.yaml").read_bytes()
    files = {"certificates/internal.yaml": internal.replace(
        b"dnsNames: [legacy.example.com]", b"dnsNames: [legacy.example.com, old.example.com]"
    )}
    commit_files(repo, files, "legacy-app: add a name")
    assert cli("apply", "--repo", str(path)).code == 2  # production still waits
    v2 = _fp(staging / "legacy-app.crt")
    assert v2 != v1 and _deployments(state)[("legacy-app", "staging-1")] == (v2, 2)

    r = cli("rollback", "staging-1", "--certificate", "legacy-app", "--repo", str(path),
            "--reason", "old client breaks", "--as", "oncall")
    assert r.code == 0, r.out + r.err
    assert _fp(staging / "legacy-app.crt") == v1
    assert _deployments(state)[("legacy-app", "staging-1")] == (v1, 1)
    assert stat.S_IMODE((staging / "legacy-app.key").stat().st_mode) == 0o600
    status = json.loads(cli("status", "--repo", str(path), "--json").out)
    held = [b for b in status["bindings"] if b["certificate"] == "legacy-app"]
    assert held[0]["drift"] == "held"
    # The hold keeps apply away: v1 stays.
    cli("apply", "--repo", str(path))
    assert _fp(staging / "legacy-app.crt") == v1

    history = cli("history", "staging-1", "--repo", str(path))
    assert "legacy-app" in history.out and "rollback.deployed" in history.out

    r = cli(
        "release", "staging-1", "--repo", str(path), "--reason", "client fixed", "--as", "oncall"
    )
    assert r.code == 0, r.out + r.err
    # The dry run asks the real connector what would change, and changes nothing.
    r = cli("apply", "--dry-run", "--repo", str(path))
    assert f"staging-1: replace {staging / 'legacy-app.crt'}" in r.out, r.out + r.err
    assert _fp(staging / "legacy-app.crt") == v1
    cli("apply", "--repo", str(path))
    assert _fp(staging / "legacy-app.crt") == v2
    assert _deployments(state)[("legacy-app", "staging-1")] == (v2, 2)
    rows = json.loads(cli("audit", "show", "--json", "--limit", "0").out)["entries"]
    mine = [(r["actor"], r["action"], r["details"].get("reason")) for r in rows
            if r["actor"] == "oncall"]
    assert ("oncall", "rollback.requested", "old client breaks") in mine
    assert ("oncall", "hold.released", "client fixed") in mine
    assert cli("audit", "verify").code == 0
