"""DESIGN §8 against a real nginx, through the CLI: a bad commit (or a Git outage) leaves the
last good commit in force. Operators keep status, plan, apply (renewals and repairs),
approve, rollback, release, retry and history; `validate` still names the head's problems.
"""

from __future__ import annotations

import io
import json
import sqlite3
from contextlib import closing
from pathlib import Path

from certgit.reconciler.cli import main
from tests.e2e.labs import NginxLab, certificate_yaml

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def _source_state(lab: NginxLab, key: str) -> str | None:
    rows = lab.query("SELECT value FROM source_state WHERE key = ?", key)
    return str(rows[0][0]) if rows else None




def _bad_head(lab: NginxLab) -> str:
    """A typo: an unknown field in b's spec. The schema rejects the whole commit."""
    return lab.commit({"certs/b.yaml": certificate_yaml("b", extra="  colour: blue\n")}, "typo")


def _one_warning(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, err
    return lines[0]


def test_invalid_head_leaves_the_last_good_commit_in_force(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a", "b"))
    assert lab.cli("apply").code == EXIT_OK
    lab.commit({"certs/a.yaml": certificate_yaml("a", dns=["a.example.test", "x.example.test"])},
               "a: extra SAN")
    r = lab.cli("apply")
    assert r.code == EXIT_OK, r.out + r.err
    good = _source_state(lab, "last_good_commit")
    assert good and _source_state(lab, "last_applied_commit") == good
    fp_a1, fp_a2 = lab.fingerprint("a", 1), lab.fingerprint("a", 2)
    fp_b = lab.deployed("b")[0]
    assert fp_b and lab.wait_served("a", fp_a2)

    bad = _bad_head(lab)
    expected = (
        f"warning: HEAD {bad[:12]} is invalid (1 problem, run `certgit validate`); "
        f"the last good commit {good[:12]} stays in force"
    )

    # validate still reports the head's problem and exits 1.
    v = lab.cli("validate")
    assert v.code == EXIT_ERROR
    assert "certs/b.yaml:" in v.out and "colour" in v.out, v.out
    assert f"last good commit {good[:12]} stays in force" in v.err

    # status: exit 0, one warning on stderr; --json keeps stdout pure JSON.
    s = lab.cli("status")
    assert s.code == EXIT_OK, s.out + s.err
    assert s.err.strip() == expected
    assert "a.example.test" not in s.err and "in-sync" in s.out
    sj = lab.cli("status", "--json")
    assert sj.code == EXIT_OK, sj.out + sj.err
    data = json.loads(sj.out)
    assert data["commit"] == good
    assert data["degraded"]["reason"] == "invalid-head"
    assert (data["degraded"]["commit"], data["degraded"]["head"]) == (good, bad)
    assert len(data["degraded"]["problems"]) == 1 and "colour" in data["degraded"]["problems"][0]
    assert {b["drift"] for b in data["bindings"]} == {"in-sync"}
    assert sj.err.strip() == expected
    nr = lab.cli("status", "--refresh=false")
    assert nr.code == EXIT_OK and nr.err.strip() == expected, nr.out + nr.err

    # plan: converged (exit 0) against the last good commit.
    p = lab.cli("plan")
    assert p.code == EXIT_OK, p.out + p.err
    assert _one_warning(p.err) == expected

    # A file modified out of band is still repaired by apply (the last good desired state).
    (lab.certs / "b.crt").write_bytes((lab.certs / "a.crt").read_bytes())
    assert lab.status()[("b", "web")]["drift"] == "modified"
    p = lab.cli("plan", "--detailed-exitcode", "--json")
    assert p.code == EXIT_CHANGES, p.out + p.err
    assert json.loads(p.out)["degraded"]["head"] == bad
    reloads = lab.reloads()
    a = lab.cli("apply", "--as", "oncall")
    assert a.code == EXIT_ERROR, a.out + a.err  # repaired, but HEAD itself was not applied
    assert "HEAD was not applied" in a.out
    assert _one_warning(a.err) == expected
    assert lab.wait_served("b", fp_b) and lab.deployed("b")[0] == fp_b
    assert lab.reloads() == reloads + 1
    assert lab.versions("b") == 1

    # rollback during the incident, without --ref; then release, retry and history.
    rb = lab.cli("rollback", "web", "--certificate", "a", "--reason", "incident", "--as", "oncall")
    assert rb.code == EXIT_OK, rb.out + rb.err
    assert _one_warning(rb.err) == expected
    assert "rolled back a on web to v1 (held)" in rb.out
    assert lab.wait_served("a", fp_a1) and lab.deployed("a") == (fp_a1, 1)
    assert lab.cli("history", "web").code == EXIT_OK
    assert lab.cli("retry", "web", "--reason", "nothing waits").code == EXIT_OK
    rel = lab.cli("release", "web", "--reason", "incident over")
    assert rel.code == EXIT_OK, rel.out + rel.err
    a = lab.cli("apply")
    assert a.code == EXIT_ERROR, a.out + a.err  # converged on the last good commit, not HEAD
    assert lab.wait_served("a", fp_a2)  # the last good commit's version again

    # The invalid head is never recorded as applied, nor planned.
    assert _source_state(lab, "last_applied_commit") == good
    assert _source_state(lab, "last_good_commit") == good
    assert lab.query("SELECT COUNT(*) FROM plans WHERE commit_id = ?", bad)[0][0] == 0

    # Fixing the head ends the degraded mode: no warning, the new commit is the good one.
    fixed = lab.commit({"certs/b.yaml": certificate_yaml("b")}, "fix the typo")
    s = lab.cli("status", "--json")
    assert s.code == EXIT_OK and s.err == "", s.err
    assert json.loads(s.out)["degraded"] is None and json.loads(s.out)["commit"] == fixed
    assert _source_state(lab, "last_good_commit") == fixed


def test_approve_and_reject_work_from_the_last_good_commit(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a", "b"), approval=True)
    assert lab.cli("init").code == EXIT_OK
    plan = json.loads(lab.cli("plan", "--json").out)
    assert lab.cli("approve", plan["hash"], "--reason", "first deploy").code == EXIT_OK
    assert lab.cli("apply").code == EXIT_OK
    good = _source_state(lab, "last_good_commit")
    fp_b = lab.deployed("b")[0]
    bad = _bad_head(lab)
    (lab.certs / "b.crt").write_bytes((lab.certs / "a.crt").read_bytes())

    p = lab.cli("plan", "--detailed-exitcode", "--json")
    assert p.code == EXIT_CHANGES, p.out + p.err
    repair = json.loads(p.out)
    assert repair["commit"] == good and repair["degraded"]["head"] == bad
    assert [(x["certificate"], x["gated"]) for x in repair["actions"]] == [("b", True)]
    rj = lab.cli("reject", repair["hash"], "--reason", "not yet")
    assert rj.code == EXIT_OK, rj.out + rj.err
    assert f"the last good commit {good[:12]} stays in force" in _one_warning(rj.err)
    # rejected: still waiting, but HEAD was not applied, and that is what the exit says
    assert lab.cli("apply").code == EXIT_ERROR
    ok = lab.cli("approve", repair["actions"][0]["id"], "--reason", "repair b")
    assert ok.code == EXIT_OK, ok.out + ok.err
    assert f"HEAD {bad[:12]} is invalid" in _one_warning(ok.err)
    a = lab.cli("apply")
    assert a.code == EXIT_ERROR, a.out + a.err  # repaired; HEAD still invalid
    assert lab.wait_served("b", fp_b)
    assert _source_state(lab, "last_applied_commit") == good


def test_unreachable_repository_leaves_the_last_good_commit_in_force(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a", "b"))
    assert lab.cli("apply").code == EXIT_OK
    good = _source_state(lab, "last_good_commit")
    fp_b = lab.deployed("b")[0]
    moved = lab.repo_path.with_name("moved-away")
    lab.repo_path.rename(moved)

    s = lab.cli("status")
    assert s.code == EXIT_OK, s.out + s.err
    warning = _one_warning(s.err)
    assert f"repository path {lab.repo_path} does not exist (moved or deleted?)" in warning
    assert f"the last good commit {good[:12]} stays in force" in warning
    assert "unsupported URL protocol" not in s.err
    sj = lab.cli("status", "--json")
    assert sj.code == EXIT_OK, sj.out + sj.err
    data = json.loads(sj.out)
    assert data["commit"] == good and data["degraded"]["reason"] == "source-error"
    assert data["degraded"]["head"] is None and "does not exist" in data["degraded"]["error"]

    (lab.certs / "b.crt").write_bytes((lab.certs / "a.crt").read_bytes())
    a = lab.cli("apply")
    assert a.code == EXIT_ERROR, a.out + a.err  # repaired; the remote is still gone
    assert "does not exist (moved or deleted?)" in _one_warning(a.err)
    assert lab.wait_served("b", fp_b)
    rb = lab.cli("rollback", "web", "--certificate", "b", "--to", "1", "--reason", "repair")
    assert rb.code == EXIT_OK, rb.out + rb.err
    assert lab.cli("release", "web").code == EXIT_OK

    # validate of the configured repository still fails: it checks the head, not the fallback.
    v = lab.cli("validate")
    assert v.code == EXIT_ERROR and "does not exist (moved or deleted?)" in v.err

    moved.rename(lab.repo_path)
    back = lab.cli("status")
    assert back.code == EXIT_OK and back.err == "", back.err


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out, err), out.getvalue(), err.getvalue()


def test_without_a_last_good_commit_the_problems_are_reported(nginx_lab, tmp_path: Path) -> None:
    lab: NginxLab = nginx_lab(("a", "b"))
    _bad_head(lab)
    fresh = ["--repo", str(lab.repo_path), "--state-dir", str(tmp_path / "fresh")]
    assert _run("init", *fresh)[0] == EXIT_OK
    code, out, err = _run("status", *fresh)
    assert code == EXIT_ERROR
    assert "certs/b.yaml:" in out and "colour" in out
    assert "warning:" not in err and "last good commit" not in err
    code, out, err = _run("status", "--json", *fresh)
    assert code == EXIT_ERROR  # stdout is for JSON only: the error object
    assert json.loads(out)["error"]["type"] == "ConfigErrors"
    assert any("colour" in p["message"] for p in json.loads(out)["error"]["problems"])
    assert "colour" in err
    code, out, err = _run("apply", *fresh)
    assert code == EXIT_ERROR and "colour" in out
    assert _run("plan", *fresh)[0] == EXIT_ERROR
    with closing(sqlite3.connect(tmp_path / "fresh" / "state.db")) as db:
        assert list(db.execute("SELECT key FROM source_state")) == []
