"""Operator rollback along the per-target deploy history, against a real nginx, via the CLI.

What an on-call engineer checks after `certgit rollback` / `release` / `history`:
the leaf fingerprint nginx serves, the version certgit recorded as deployed,
the exit code and the lines printed.
"""

from __future__ import annotations

import json
import re

from tests.e2e.labs import NginxLab, certificate_yaml

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

POLICY = b"""apiVersion: certgit.dev/v1
kind: Policy
metadata: {name: gates}
spec:
  approvals:
    - name: prod
      match: {targetLabels: {env: production}}
"""

STAGING = b"""apiVersion: certgit.dev/v1
kind: Target
metadata:
  name: staging
  labels: {env: staging}
spec:
  type: files
  settings:
    directory: targets/staging
"""


def _apply(lab: NginxLab, *, expect: int = EXIT_OK) -> str:
    r = lab.cli("apply", "--as", "tester")
    assert r.code == expect, r.out + r.err
    return r.out + r.err




def _approve_plan(lab: NginxLab) -> None:
    plan = lab.cli("plan", "--json")
    data = json.loads(plan.out)
    assert data["actions"], plan.out
    r = lab.cli("approve", data["hash"], "--reason", "change ticket 42", "--as", "lead")
    assert r.code == EXIT_OK, r.out + r.err


def _history(lab: NginxLab, name: str = "web") -> dict:
    r = lab.cli("history", name, "--json")
    assert r.code == EXIT_OK, r.out + r.err
    return json.loads(r.out)


def _deploys(lab: NginxLab, cert: str, target: str = "web") -> list[tuple[str, int, int | None]]:
    return [
        (d["kind"], d["version"], d["replaced_version"])
        for d in _history(lab, target)["deploys"]
        if d["certificate"] == cert and d["target"] == target
    ]


def _three_versions(lab: NginxLab) -> None:
    """v1 on web; v2 issued and deployed to staging only (web gated, never approved);
    v3 approved and deployed to web."""
    _apply(lab)
    assert lab.deployed("a") == (lab.fingerprint("a", 1), 1)
    assert lab.wait_served("a", lab.fingerprint("a", 1))
    lab.commit(
        {
            "policy.yaml": POLICY,
            "staging.yaml": STAGING,
            "certs/a.yaml": certificate_yaml(
                "a", ("web", "staging"), dns=["a.example.test", "v2.a.example.test"]
            ),
        },
        "a: second SAN, also on staging; production gated",
    )
    out = _apply(lab, expect=EXIT_CHANGES)  # staging deployed, web waits for an approval
    assert lab.versions("a") == 2, out
    assert lab.deployed("a", "staging") == (lab.fingerprint("a", 2), 2)
    assert lab.deployed("a") == (lab.fingerprint("a", 1), 1)
    assert lab.wait_served("a", lab.fingerprint("a", 1))
    lab.commit(
        {"certs/a.yaml": certificate_yaml(
            "a", ("web", "staging"), dns=["a.example.test", "v3.a.example.test"]
        )},
        "a: third SAN",
    )
    _apply(lab, expect=EXIT_CHANGES)  # v3 issued; web still gated
    assert lab.versions("a") == 3
    _approve_plan(lab)
    _apply(lab)
    fp3 = lab.fingerprint("a", 3)
    assert lab.deployed("a") == (fp3, 3)
    assert lab.deployed("a", "staging") == (fp3, 3)
    assert lab.wait_served("a", fp3)


def test_rollback_goes_to_the_version_served_before_not_number_minus_one(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a",))
    _three_versions(lab)
    fp1, fp2 = lab.fingerprint("a", 1), lab.fingerprint("a", 2)

    r = lab.cli("rollback", "web", "--reason", "v3 breaks old clients", "--as", "oncall")
    assert r.code == EXIT_OK, r.out + r.err
    assert "rolled back a on web to v1 (held)" in r.out
    assert lab.wait_served("a", fp1), "nginx does not serve v1 after the rollback"
    assert lab.deployed("a") == (fp1, 1)
    assert _deploys(lab, "a") == [("deploy", 1, None), ("deploy", 3, 1), ("rollback", 1, 3)]
    assert lab.deployed("a", "staging") == (lab.fingerprint("a", 3), 3)  # untouched

    text = lab.cli("history", "web")
    assert text.code == EXIT_OK, text.out + text.err
    rows = {
        line.split()[1]: line for line in text.out.splitlines()
        if re.match(r"^a\s+v\d\s", line)
    }
    assert set(rows) == {"v1", "v2", "v3"}, text.out
    # DEPLOYED ON (last column) is what web serves now: v1 only.
    assert [rows[v].split()[-1] for v in ("v1", "v2", "v3")] == ["web", "-", "-"], text.out
    assert "v2.a.example.test" in rows["v2"] and "v3.a.example.test" in rows["v3"]
    assert re.search(r"\brollback\s+v1\s+v3\b", text.out), text.out

    # v2 was never served on web: an explicit --to goes through the deploy gate.
    reloads = lab.reloads()
    again = ("rollback", "web", "--certificate", "a", "--to", "2", "--reason", "try v2")
    waiting = lab.cli(*again)
    assert waiting.code == EXIT_CHANGES, waiting.out + waiting.err
    assert "waiting for approval" in waiting.out and "v2" in waiting.out
    match = re.search(r"certgit approve ([0-9a-f]{16,})", waiting.out)
    assert match, waiting.out
    assert lab.wait_served("a", fp1) and lab.deployed("a") == (fp1, 1)
    assert lab.reloads() == reloads

    ok = lab.cli("approve", match.group(1), "--reason", "v2 reviewed", "--as", "lead")
    assert ok.code == EXIT_OK, ok.out + ok.err
    done = lab.cli(*again)
    assert done.code == EXIT_OK, done.out + done.err
    assert "rolled back a on web to v2 (held)" in done.out
    assert lab.wait_served("a", fp2)
    assert lab.deployed("a") == (fp2, 2)
    assert _deploys(lab, "a")[-1] == ("rollback", 2, 1)
    assert lab.reloads() == reloads + 1


def test_release_then_apply_serves_git_again(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a",))
    _apply(lab)
    fp1 = lab.fingerprint("a", 1)
    lab.commit({"certs/a.yaml": certificate_yaml("a", dns=["a.example.test", "x.example.test"])},
               "a: extra SAN")
    _apply(lab)
    fp2 = lab.fingerprint("a", 2)
    assert lab.wait_served("a", fp2)

    r = lab.cli("rollback", "web", "--reason", "incident 7")
    assert r.code == EXIT_OK, r.out + r.err
    assert lab.wait_served("a", fp1)
    row = lab.status()[("a", "web")]
    assert row["drift"] == "held", row
    assert "incident 7" in row["reason"]
    held = _apply(lab)  # a hold is left alone by reconciliation
    assert "held" in held and "a -> web" in held
    assert "Every binding is in sync" not in held and "every binding is in sync" not in held
    assert lab.wait_served("a", fp1) and lab.deployed("a") == (fp1, 1)

    rel = lab.cli("release", "web", "--reason", "incident over")
    assert rel.code == EXIT_OK, rel.out + rel.err
    assert "released 1 hold on web" in rel.out
    _apply(lab)
    assert lab.wait_served("a", fp2)
    assert lab.deployed("a") == (fp2, 2)
    assert lab.versions("a") == 2  # Git's version redeployed, nothing issued
    assert lab.status()[("a", "web")]["drift"] == "in-sync"


def test_release_cancels_a_failed_rollbacks_retry(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a",))
    _apply(lab)
    lab.commit({"certs/a.yaml": certificate_yaml("a", dns=["a.example.test", "x.example.test"])},
               "a: extra SAN")
    _apply(lab)
    fp2 = lab.fingerprint("a", 2)
    assert lab.wait_served("a", fp2)

    lab.server.write_config(extra="bogus_directive on;")  # nginx -t now fails
    r = lab.cli("rollback", "web", "--reason", "incident 8")
    assert r.code == EXIT_ERROR, r.out + r.err
    assert "FAILED" in r.err and "certgit release web" in r.err
    assert lab.wait_served("a", fp2)  # the failed validate restored the files; no reload
    assert lab.deployed("a") == (fp2, 2)
    assert lab.status()[("a", "web")]["drift"] == "held"  # the hold stays
    queued = lab.query(
        "SELECT COUNT(*) FROM outbox WHERE target = 'web' AND state IN "
        "('PENDING', 'RETRY_WAIT', 'ABANDONED')"
    )[0][0]
    assert queued == 1  # the rollback waits to be retried

    rel = lab.cli("release", "web", "--reason", "give up on the rollback")
    assert rel.code == EXIT_OK, rel.out + rel.err
    assert "released 1 hold on web" in rel.out
    lab.server.write_config()
    # Without the release, `retry` would re-arm the rollback and the apply would run it.
    again = lab.cli("retry", "web", "--reason", "server fixed")
    assert again.code == EXIT_OK, again.out + again.err
    assert "nothing to retry on web" in again.out
    out = _apply(lab)
    assert re.search(r"^  ~ \w+ web: a v2\b", out, re.M), out
    assert lab.wait_served("a", fp2)
    assert lab.deployed("a") == (fp2, 2)
    assert all(kind != "rollback" for kind, _v, _r in _deploys(lab, "a"))
    assert lab.status()[("a", "web")]["drift"] == "in-sync"


def test_rollback_without_an_earlier_version_says_so(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a",))
    _apply(lab)
    fp1 = lab.fingerprint("a", 1)
    assert lab.wait_served("a", fp1)
    reloads = lab.reloads()
    r = lab.cli("rollback", "web", "--reason", "just in case")
    assert r.code == EXIT_ERROR, r.out + r.err
    assert "no earlier version" in r.err, r.err
    assert "certgit history web" in r.err
    assert lab.wait_served("a", fp1) and lab.deployed("a") == (fp1, 1)
    assert lab.reloads() == reloads
    assert lab.status()[("a", "web")]["drift"] == "in-sync"  # no hold was placed
    assert _deploys(lab, "a") == [("deploy", 1, None)]


def test_history_json_has_kinds_replaced_versions_and_version_details(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a",))
    _apply(lab)
    lab.commit({"certs/a.yaml": certificate_yaml("a", dns=["a.example.test", "x.example.test"])},
               "a: extra SAN")
    _apply(lab)
    r = lab.cli("rollback", "web", "--reason", "incident 9")
    assert r.code == EXIT_OK, r.out + r.err

    data = _history(lab)
    deploys = [
        {k: d[k] for k in ("certificate", "target", "kind", "version", "replaced_version")}
        for d in data["deploys"]
    ]
    assert deploys == [
        {"certificate": "a", "target": "web", "kind": "deploy", "version": 1,
         "replaced_version": None},
        {"certificate": "a", "target": "web", "kind": "deploy", "version": 2,
         "replaced_version": 1},
        {"certificate": "a", "target": "web", "kind": "rollback", "version": 1,
         "replaced_version": 2},
    ]
    assert data["deploys"][-1]["actor"]
    versions = {v["version"]: v for v in data["versions"]}
    assert set(versions) == {1, 2}
    assert versions[1]["sans"] == ["a.example.test"]
    assert sorted(versions[2]["sans"]) == ["a.example.test", "x.example.test"]
    assert all(v["key"] and v["key"] != "?" for v in versions.values())
    assert all(v["not_after"] for v in versions.values())
    assert versions[1]["deployed_on"] == ["web"] and versions[2]["deployed_on"] == []
    assert versions[1]["fingerprint"] == lab.deployed("a")[0]


def test_whole_target_rollback_moves_what_can_move_and_names_what_it_left(nginx_lab) -> None:
    """`rollback web` with a (deployed twice) and b (deployed once): a goes back, b stays
    and the output says so; nothing fails because b has no earlier version."""
    lab: NginxLab = nginx_lab(("a", "b"))
    _apply(lab)
    v1 = lab.fingerprint("a", 1)
    lab.commit({"certs/a.yaml": certificate_yaml("a", dns=["a.example.test", "a2.example.test"])},
               "a: new SAN")
    _apply(lab)
    b_fp = lab.deployed("b")[0]
    r = lab.cli("rollback", "web", "--reason", "bad a", "--as", "oncall")
    assert r.code == EXIT_OK, r.out + r.err
    assert "rolled back a on web to v1 (held)" in r.out
    assert "left alone: b on web: no earlier version was served there" in r.out
    assert lab.wait_served("a", v1)
    assert lab.deployed("b")[0] == b_fp and lab.wait_served("b", b_fp)
    assert lab.cli("rollback", "web", "--to", "v1", "--certificate", "a",
                   "--reason", "again").code == EXIT_OK  # `v1` is how history prints it
