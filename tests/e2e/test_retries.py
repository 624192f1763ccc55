"""Failed deploys are retried, abandoned, re-armed and isolated, against a real nginx.

A failed deploy is retried by a later `apply` after its backoff, with the version
already issued and the approval already given; out of attempts it is abandoned
(visible in status and apply, left alone by later applies) until `certgit retry`
re-arms it. One binding that cannot deploy never takes its target's other
bindings down, and one failing target never takes another down. The backoff is
made zero through the engine API (the CLI's is 5 s doubling), everything else
runs as an operator would run it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from certgit.reconciler.commands import ApplyOutcome, apply
from certgit.reconciler.config import resolve_settings
from certgit.reconciler.engine import Engine
from certgit.reconciler.executor import ExecutorConfig
from certgit.reconciler.render import render_apply
from certgit.reconciler.store.outbox import Backoff
from tests.e2e.labs import ISSUER, NginxLab, certificate_yaml
from tests.gitutil import commit_files, init_repo

POLICY = b"""apiVersion: certgit.dev/v1
kind: Policy
metadata: {name: production-gate}
spec:
  approvals:
    - name: production-changes
      match:
        targetLabels: {env: production}
        actions: [deploy, remove]
"""
PEM_BEGIN = "-----BEGIN"


def _settings(repo: Path, state: Path):
    return resolve_settings({
        "repo": str(repo), "state_dir": str(state), "ref": None, "path": None,
        "config": None, "allow_history_rewrite": None,
    })


def apply_now(repo: Path, state: Path, actor: str = "tester") -> ApplyOutcome:
    """`certgit apply` with no backoff: a failed action is due again at once."""
    engine = Engine(_settings(repo, state))
    try:
        return apply(engine, actor, config=ExecutorConfig(backoff=Backoff(base=0.0)))
    finally:
        engine.close()


def lab_apply(lab: NginxLab) -> ApplyOutcome:
    return apply_now(lab.repo_path, lab.state)


def _converge(lab: NginxLab) -> None:
    r = lab.cli("apply", "--as", "tester")
    assert r.code == 0, r.out + r.err


def _outbox(lab: NginxLab, cert: str) -> list[tuple[str, int]]:
    return [
        (str(state), int(attempts))
        for state, attempts in lab.query(
            "SELECT state, attempts FROM outbox WHERE json_extract(payload_json, '$.certificate')"
            " = ? AND json_extract(payload_json, '$.kind') = 'deploy' ORDER BY id",
            cert,
        )
    ]


# --------------------------------------------------------------------------- acceptance 1


def test_failed_deploy_is_retried_with_the_same_version_and_the_same_approval(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a",))
    _converge(lab)
    fp1, v1 = lab.deployed("a")
    assert v1 == 1 and lab.wait_served("a", fp1)
    # Prod is gated from now on, and a's spec changes: a new version must be deployed.
    lab.commit({
        "policy.yaml": POLICY,
        "certs/a.yaml": certificate_yaml("a", extra="  key: {algorithm: ECDSA, size: 384}\n"),
    }, "gate prod; a on P-384")
    plan = lab.cli("plan", "--detailed-exitcode")
    assert plan.code == 2, plan.out + plan.err
    assert "needs approval" in plan.out
    plan_hash = re.search(r"Plan hash: ([0-9a-f]+)", plan.out).group(1)  # type: ignore[union-attr]
    r = lab.cli("approve", plan_hash, "--reason", "P-384 for a", "--as", "alice")
    assert r.code == 0, r.out + r.err

    lab.server.write_config(extra="bogus;")  # nginx -t fails from now on
    reloads = lab.reloads()
    first = lab_apply(lab)
    assert [t.status for t in first.run.targets] == ["retrying"], first.run.targets
    assert first.exit_code == 1 and first.retrying, first  # this run failed; a retry waits
    assert "ValidateFailed" in (first.run.targets[0].error or "")
    assert not first.waiting, "the approval given before the failure still counts"
    assert lab.versions("a") == 2  # v2 was issued once
    assert lab.deployed("a") == (fp1, 1)  # the failure kept the last good deployment
    assert lab.served("a") == fp1  # validate failed before any reload
    assert lab.reloads() == reloads
    assert lab.status()[("a", "web")]["drift"] == "failing"

    lab.server.write_config()  # the operator fixes nginx
    second = lab_apply(lab)
    assert not second.run.failed, second.run
    assert not second.waiting and not second.rejected, second
    assert second.exit_code == 0, second
    assert lab.versions("a") == 2  # the same version, not a new issuance
    fp2, v2 = lab.deployed("a")
    assert v2 == 2 and fp2 != fp1
    assert lab.wait_served("a", fp2)
    assert lab.reloads() == reloads + 1
    approvals = lab.query("SELECT COUNT(*) FROM approvals")[0][0]
    assert approvals == 1
    assert lab.status()[("a", "web")]["drift"] == "in-sync"
    assert lab.cli("plan").code == 0


# --------------------------------------------------------------------------- acceptance 2


@pytest.fixture
def quick_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """Post-deploy verify keeps its 3 handshakes per attempt, its 1 s + 2 s waits cut to
    0.25 s each (not to nothing: a reload by SIGHUP takes effect asynchronously, and a
    loaded CI machine needs a moment before nginx serves the new leaf)."""
    import time

    from certgit.connectors.sdk import verify

    monkeypatch.setattr(
        verify.verify_with_retry, "__kwdefaults__", {"sleep": lambda s: time.sleep(min(s, 0.25))}
    )


def test_verify_failing_five_times_is_abandoned_until_retry(nginx_lab, quick_verify) -> None:
    lab: NginxLab = nginx_lab(("a", "b"))
    lab.commit({"certs/b.yaml": None}, "a only")
    _converge(lab)
    fp_a, _ = lab.deployed("a")
    assert lab.wait_served("a", fp_a)
    # b's check asks for a name nginx does not serve: it answers with a's (the default
    # server), so every deploy of b fails verify and is rolled back.
    lab.commit(
        {"certs/b.yaml": certificate_yaml(
            "b", binding_extra={"web": "      verify: {serverName: zzz.example.test}\n"}
        )},
        "b, verified under a name nginx does not serve",
    )
    before_b = lab.served("b")  # the placeholder
    for attempt in range(1, 6):
        reloads, validates = lab.reloads(), lab.validates()
        outcome = lab_apply(lab)
        assert 1 <= lab.reloads() - reloads <= 2, f"attempt {attempt}"
        assert lab.validates() - validates >= 1, f"attempt {attempt}"
        [target] = outcome.run.targets
        assert "VerifyMismatch" in (target.error or ""), target
        assert "zzz.example.test" in (target.error or "")
        if attempt < 5:
            assert target.status == "retrying", (attempt, target)
            assert lab.status()[("b", "web")]["drift"] == "failing"
        else:
            assert target.status == "abandoned", target
            assert outcome.exit_code == 1
            assert [a.certificate for a in outcome.abandoned] == ["b"]
        assert lab.wait_served("b", before_b)  # rolled back every time
        assert lab.wait_served("a", fp_a)  # a is untouched throughout
    assert lab.versions("b") == 1  # retried with the version issued once
    assert lab.deployed("b") == (None, None)

    row = lab.status()[("b", "web")]
    assert row["drift"] == "abandoned", row
    assert "abandoned after 5 attempts" in row["reason"]
    assert "VerifyMismatch" in row["reason"] and "zzz.example.test" in row["reason"]
    assert "certgit retry web" in row["reason"]
    assert lab.status()[("a", "web")]["drift"] == "in-sync"
    plan = lab.cli("plan", "--detailed-exitcode")
    assert "abandoned" in plan.out, plan.out

    # Later applies leave it alone: no reload, no validate, still abandoned.
    reloads, validates = lab.reloads(), lab.validates()
    for _ in range(2):
        outcome = lab_apply(lab)
        assert outcome.run.claimed == 0, outcome.run
        assert outcome.exit_code == 1 and [a.certificate for a in outcome.abandoned] == ["b"]
    cli_apply = lab.cli("apply", "--as", "tester")
    assert cli_apply.code == 1 and "abandoned" in cli_apply.out, cli_apply.out
    assert (lab.reloads(), lab.validates()) == (reloads, validates)
    assert lab.versions("b") == 1

    # `certgit retry web` re-arms it with a fresh budget: the next apply attempts it again.
    r = lab.cli("retry", "web", "--reason", "nginx fixed?", "--as", "bob")
    assert r.code == 0 and "re-armed 1 action on web" in r.out, r.out + r.err
    assert lab.status()[("b", "web")]["drift"] == "failing"
    outcome = lab_apply(lab)
    assert 1 <= lab.reloads() - reloads <= 2
    [target] = outcome.run.targets
    assert target.status == "retrying", target  # attempt 1 of a new budget
    assert _outbox(lab, "b")[-1] == ("RETRY_WAIT", 1)
    entries = json.loads(lab.cli("audit", "show", "--json", "--limit", "0").out)["entries"]
    retried = [e for e in entries if e["action"] == "action.retried"]
    assert [(e["actor"], e["subject"]) for e in retried] == [("bob", "web")]


# --------------------------------------------------------------------------- acceptance 3


def test_server_output_about_private_keys_fails_only_its_target(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    # HAProxy 2.6's words when validate fails; then the key file itself, as a server
    # that echoes its input would print it.
    script = tmp_path / "validate.sh"
    script.write_text(
        "#!/bin/sh\n"
        "echo \"No Private Key found in '/x'\" >&2\n"
        f"cat {bad}/a.key >&2\n"
        "exit 1\n"
    )
    script.chmod(0o755)

    def target(name: str, directory: Path, extra: str = "") -> bytes:
        return (
            f"apiVersion: certgit.dev/v1\nkind: Target\nmetadata: {{name: {name}}}\nspec:\n"
            f"  type: files\n  settings:\n    directory: {directory}\n{extra}"
        ).encode()

    repo_path = tmp_path / "desired"
    repo = init_repo(repo_path)
    commit_files(repo, {
        "issuer.yaml": ISSUER,
        "targets.yaml": target("good", good) + b"---\n"
        + target("bad", bad, f"    validateCommand: [{script}]\n"),
        "a.yaml": certificate_yaml("a", ("good", "bad")),
    }, "a on two targets, one of them broken")
    flags = ("--repo", str(repo_path))

    r = cli("apply", *flags, "--as", "tester")
    assert r.code == 1, r.out + r.err  # bad failed (a retry waits); nothing aborted
    assert "No Private Key found in '/x'" in r.out
    assert PEM_BEGIN not in r.out + r.err  # the server's echo of the key is not printed
    state = tmp_path / "state"
    # good: deployed and recorded; bad: failing with the server's words, old files kept.
    status = {(b["certificate"], b["target"]): b
              for b in json.loads(cli("status", *flags, "--json").out)["bindings"]}
    assert status[("a", "good")]["drift"] == "in-sync", status
    assert status[("a", "good")]["deployed_version"] == 1
    assert (good / "a.key").exists() and (good / "a.crt").exists()
    assert status[("a", "bad")]["drift"] == "failing", status
    assert "No Private Key found in '/x'" in status[("a", "bad")]["reason"]
    assert PEM_BEGIN not in status[("a", "bad")]["reason"]
    assert not (bad / "a.key").exists()  # the failed validate restored "no file"

    show = cli("audit", "show", *flags, "--json", "--limit", "0")
    assert show.code == 0, show.err
    assert PEM_BEGIN not in show.out
    entries = json.loads(show.out)["entries"]
    failed = [e for e in entries if e["action"] == "deploy.failed"]
    assert [e["subject"] for e in failed] == ["bad"]
    assert "No Private Key found in '/x'" in failed[0]["details"]["error"]
    assert "[redacted PEM block]" in failed[0]["details"]["error"]
    done = [e for e in entries if e["action"] == "deploy.completed"]
    assert [e["subject"] for e in done] == ["good"]
    assert cli("audit", "verify", *flags).code == 0
    # Nor does any of the key reach the state store's error columns or the terminal.
    key_lines = [
        line for line in (good / "a.key").read_text().splitlines() if not line.startswith("-----")
    ]
    with closing(sqlite3.connect(state / "state.db")) as db:
        errors = [str(e) for (e,) in db.execute(
            "SELECT last_error FROM outbox UNION ALL SELECT last_error FROM deployments"
        ) if e]
    assert errors and all("No Private Key found in '/x'" in e for e in errors), errors
    seen = "\n".join([*errors, show.out, r.out, r.err, json.dumps(list(status.values()))])
    assert PEM_BEGIN not in seen
    assert not [line for line in key_lines if line in seen]


def test_command_output_summary_never_keeps_a_piece_of_a_pem_block() -> None:
    """The tail kept for error messages is taken after the PEM blocks are cut out."""
    from certgit.connectors.sdk.transport import ExecResult

    body = "\n".join(["QUJD" * 16] * 40)
    key = f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"
    result = ExecResult(1, "", f"No Private Key found in '/x'\n{key}\nline after")
    text = result.summary(limit=200)
    assert text.startswith("exit 1: ") and text.endswith("[redacted PEM block]\nline after")
    assert "QUJD" not in text and "-----" not in text
    unterminated = ExecResult(1, f"bad input:\n-----BEGIN CERTIFICATE-----\n{body}", "")
    assert unterminated.summary() == "exit 1: bad input:\n[redacted PEM block]"


# --------------------------------------------------------------------------- isolation


def test_one_refused_binding_does_not_hold_back_the_others(nginx_lab) -> None:
    """First contact without `adopt` refuses c's foreign files; a and b deploy in one reload."""
    lab: NginxLab = nginx_lab(("a", "b", "c"), adopt=False)
    adopt = {"web": "      adopt: true\n"}
    lab.commit({
        "certs/a.yaml": certificate_yaml("a", binding_extra=adopt),
        "certs/b.yaml": certificate_yaml("b", binding_extra=adopt),
    }, "a and b take over their placeholders; c does not")
    foreign_c = (lab.certs / "c.crt").read_bytes()
    reloads, validates = lab.reloads(), lab.validates()
    first = lab_apply(lab)
    out = render_apply(first)
    assert first.exit_code == 1, out
    assert (lab.reloads(), lab.validates()) == (reloads + 1, validates + 1)
    for name in ("a", "b"):
        fp, version = lab.deployed(name)
        assert version == 1
        assert lab.wait_served(name, fp)
    assert (lab.certs / "c.crt").read_bytes() == foreign_c
    assert lab.deployed("c") == (None, None)
    assert re.search(rf"failed +c -> web: .*{re.escape(str(lab.certs / 'c'))}", out), out
    status = lab.status()
    assert status[("c", "web")]["drift"] == "failing", status[("c", "web")]
    assert str(lab.certs / "c.crt") in status[("c", "web")]["reason"]
    assert "adopt" in status[("c", "web")]["reason"]
    assert {status[(n, "web")]["drift"] for n in ("a", "b")} == {"in-sync"}

    # Retried alone, the refused binding costs no validate and no reload.
    outcome = lab_apply(lab)
    [target] = outcome.run.targets
    assert target.status == "retrying" and "adopt" in (target.error or ""), target
    assert (lab.reloads(), lab.validates()) == (reloads + 1, validates + 1)

    # The operator lets certgit take the file over: the next apply deploys c alone.
    lab.commit({"certs/c.yaml": certificate_yaml("c", binding_extra=adopt)}, "adopt c")
    outcome = lab_apply(lab)
    assert not outcome.run.failed and outcome.exit_code == 0, outcome
    fp_c, v_c = lab.deployed("c")
    assert v_c == 1 and lab.versions("c") == 1
    assert lab.wait_served("c", fp_c)
    assert (lab.reloads(), lab.validates()) == (reloads + 2, validates + 2)
