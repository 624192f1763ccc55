"""CLI conventions (issue 13 item 4): exit codes, usage errors, --json everywhere (errors
too), --version, flag positions, logging, tracebacks only with --debug, broken pipe,
NO_COLOR / rich on a TTY, status filters, shell completion, the bundled schema, init DIR."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from certgit.reconciler import cli
from certgit.reconciler.cli import main
from tests.e2e.conftest import SAMPLE, Result
from tests.gitutil import commit_files, init_repo

ROOT = Path(__file__).resolve().parents[2]
ISSUER_ONLY = {"issuers/ca.yaml": (SAMPLE / "issuers" / "internal-ca.yaml").read_bytes()}


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _json(r: Result) -> dict:
    data = json.loads(r.out)
    assert data["format_version"] == 1, r.out
    return data


# ------------------------------------------------------------------ exit codes


def test_plan_exits_0_and_detailed_exitcode_gives_0_1_2(cli, sample_git, tmp_path) -> None:
    _, path = sample_git
    assert cli("init").code == 0
    assert cli("plan", "--repo", str(path)).code == 0  # changes pending, still success
    assert cli("plan", "--detailed-exitcode", "--repo", str(path)).code == 2
    quiet = tmp_path / "quiet"
    commit_files(init_repo(quiet), ISSUER_ONLY, "an issuer, no certificate")
    # its own state: against the sample's, dropping the sample's Policy is a gate change
    quiet_state = str(tmp_path / "quiet-state")
    assert cli("init", "--state-dir", quiet_state).code == 0
    r = cli("plan", "--detailed-exitcode", "--repo", str(quiet), "--state-dir", quiet_state)
    assert r.code == 0, r.out + r.err
    bad = tmp_path / "bad"
    commit_files(init_repo(bad), {"a.yaml": b"kind: [unclosed\n"}, "broken")
    r = cli("plan", "--detailed-exitcode", "--repo", str(bad))
    assert r.code == 1, r.out + r.err


@pytest.mark.parametrize(
    "argv",
    [
        ["bogus"],
        ["plan", "--no-such-flag"],
        ["approve", "abc12345"],  # --reason is required
        ["rollback", "web", "--to", "x"],
        ["completion", "tcsh"],
        [],
    ],
)
def test_usage_errors_exit_64_not_2(cli, argv) -> None:
    r = cli(*argv)
    assert r.code == cli_module_exit_usage() == 64, r.err
    assert "usage: certgit" in r.err and r.out == ""


def cli_module_exit_usage() -> int:
    return cli.EXIT_USAGE


def test_usage_error_with_json_is_a_json_error_object(cli) -> None:
    r = cli("--json", "plan", "--no-such-flag")
    assert r.code == 64
    err = _json(r)["error"]
    assert err["type"] == "UsageError" and "--no-such-flag" in err["message"]
    assert err["exit_code"] == 64


@pytest.mark.parametrize("argv", [["--help"], ["plan", "--help"], ["audit", "verify", "--help"]])
def test_help_documents_every_exit_code(cli, argv) -> None:
    r = cli(*argv)
    assert r.code == 0
    for code in ("0 ", "1 ", "2 ", "64 ", "130 ", "141 "):
        assert f"\n  {code}" in r.out, (code, r.out)
    assert "--detailed-exitcode" in r.out


def test_version(cli) -> None:
    r = cli("--version")
    assert r.code == 0 and r.out.strip() == f"certgit {version('certgit')}"


# ------------------------------------------------------------------ flag positions


@pytest.mark.parametrize(
    "argv",
    [
        ["--state-dir", "{X}", "audit", "verify"],
        ["audit", "--state-dir", "{X}", "verify"],
        ["audit", "verify", "--state-dir", "{X}"],
    ],
)
def test_common_flags_before_or_after_the_subcommand(cli, tmp_path, argv) -> None:
    x = tmp_path / "elsewhere"
    r = cli(*[a.replace("{X}", str(x)) for a in argv])
    # CERTGIT_STATE_DIR points at tmp_path/state; the flag must win wherever it stands.
    assert r.code == 1 and f"no certgit state in {x}" in r.err, r.err
    assert not x.exists()


def test_json_before_the_subcommand_and_state_dir_after(cli, sample_git, tmp_path) -> None:
    _, path = sample_git
    state = tmp_path / "other-state"
    assert cli("init", "--state-dir", str(state)).code == 0
    r = cli("--json", "--repo", str(path), "status", "--state-dir", str(state))
    assert r.code == 0, r.err
    assert len(_json(r)["bindings"]) == 8


def test_as_only_on_commands_that_change_something(cli) -> None:
    for command in ("status", "validate", "history"):
        assert cli(command, "--as", "bob").code == 64
    for command in ("init", "plan", "apply", "approve", "reject", "rollback", "release", "retry"):
        assert "--as" in cli(command, "--help").out, command


# ------------------------------------------------------------------ --json


def test_json_error_objects_keep_the_exit_code(cli, tmp_path) -> None:
    missing = cli("audit", "verify", "--json", "--state-dir", str(tmp_path / "nope"))
    assert missing.code == 1
    err = _json(missing)["error"]
    assert err["type"] == "StateMissing" and "no certgit state" in err["message"]

    bad = tmp_path / "bad"
    (bad / "x").mkdir(parents=True)
    (bad / "x" / "c.yaml").write_text("apiVersion: certgit.dev/v1\nkind: Nope\n")
    invalid = cli("validate", "--json", str(bad))
    assert invalid.code == 1
    err = _json(invalid)["error"]
    assert err["type"] == "ConfigErrors" and "problem" in err["message"]
    assert err["problems"][0]["file"] == "x/c.yaml" and err["problems"][0]["line"] >= 1

    broken = tmp_path / "broken"
    commit_files(init_repo(broken), {"a.yaml": b"kind: [unclosed\n"}, "broken")
    assert cli("init").code == 0
    plan = cli("plan", "--json", "--repo", str(broken))
    assert plan.code == 1
    assert _json(plan)["error"]["problems"][0]["file"] == "a.yaml"

    not_dir = cli("validate", "--json", str(tmp_path / "nothing-here"))
    assert not_dir.code == 1 and "is not a directory" in _json(not_dir)["error"]["message"]


def test_every_json_output_carries_format_version(cli, sample_git) -> None:
    _, path = sample_git
    repo = ["--repo", str(path)]
    for argv in (
        ["init"],
        ["validate", str(SAMPLE)],
        ["plan", *repo],
        ["status", *repo],
        ["history"],
        ["audit", "verify"],
        ["audit", "show"],
        ["retry"],
        ["completion", "bash"],
    ):
        r = cli(*argv, "--json")
        assert r.code == 0, (argv, r.err)
        data = _json(r)
        assert "error" not in data and "output" not in data, (argv, data)  # native JSON
    assert isinstance(_json(cli("audit", "show", "--json"))["entries"], list)
    assert _json(cli("audit", "verify", "--json")) == {
        "format_version": 1, "intact": True, "entries": 3}  # init, plan recorded x2
    v = _json(cli("validate", "--json", str(SAMPLE)))
    assert v["valid"] is True and v["counts"]["certificates"] == 6
    assert _json(cli("init", "--json"))["created"] is False
    assert _json(cli("retry", "--json"))["rearmed"] == 0
    assert "$defs" in _json(cli("schema", "--json"))["schema"]


def test_json_timestamps_are_iso_8601() -> None:
    from datetime import UTC, datetime

    from certgit.reconciler.cli_output import dump

    out = io.StringIO()
    dump({"a": str(datetime(2026, 12, 2, 10, 48, tzinfo=UTC)),
          "b": datetime(2026, 12, 2, 10, 48, tzinfo=UTC)}, out)
    data = json.loads(out.getvalue())
    assert data["a"] == data["b"] == "2026-12-02T10:48:00+00:00"


# ------------------------------------------------------------------ failures and pipes


def test_unexpected_error_is_one_line_unless_debug(cli, monkeypatch) -> None:
    def boom(args, out, err):
        raise RuntimeError("kaputt")

    monkeypatch.setitem(cli_commands(), "history", boom)
    r = cli("history")
    assert r.code == 1
    assert r.err == "error: unexpected RuntimeError: kaputt (run with --debug for the traceback)\n"
    debug = cli("history", "--debug")
    assert debug.code == 1 and "Traceback (most recent call last)" in debug.err
    as_json = cli("history", "--json")
    assert as_json.code == 1 and _json(as_json)["error"]["type"] == "RuntimeError"


def cli_commands() -> dict:
    return cli.COMMANDS


def test_broken_pipe_exits_quietly(cli, sample_git, tmp_path) -> None:
    """`certgit status --json | head -c1`: the reader is gone before certgit writes."""
    _, path = sample_git
    assert cli("init").code == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "certgit.reconciler", "status", "--json", "--repo", str(path),
         "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the closed read end: every write raises EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err


def test_logging_configured_once_with_verbosity(cli) -> None:
    logger = logging.getLogger("certgit")
    cli("-vv", "validate", str(SAMPLE))
    assert logger.level == logging.DEBUG
    cli("validate", str(SAMPLE), "-q")
    assert logger.level == logging.ERROR
    cli("validate", str(SAMPLE))
    assert logger.level == logging.WARNING
    assert sum(type(h) is logging.StreamHandler for h in logger.handlers) == 1


# ------------------------------------------------------------------ human output


def test_plain_when_not_a_tty_rich_on_a_tty_and_no_color(monkeypatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    plain = io.StringIO()
    assert main(["validate", str(SAMPLE)], plain, io.StringIO()) == 0
    assert "\x1b[" not in plain.getvalue()
    assert plain.getvalue() == "valid: 1 issuers, 6 certificates, 3 targets, 1 policies\n"

    tty = _Tty()
    assert main(["validate", str(SAMPLE)], tty, io.StringIO()) == 0
    assert "\x1b[" in tty.getvalue() and "valid: 1 issuers" in tty.getvalue()

    monkeypatch.setenv("NO_COLOR", "1")
    no_color = _Tty()
    assert main(["validate", str(SAMPLE)], no_color, io.StringIO()) == 0
    assert "\x1b[" not in no_color.getvalue()
    assert "valid: 1 issuers, 6 certificates" in no_color.getvalue()


# ------------------------------------------------------------------ status


def test_status_filters_and_columns(cli, sample_git) -> None:
    _, path = sample_git
    repo = ["--repo", str(path)]
    assert cli("init").code == 0

    def rows(*flags: str) -> list[dict]:
        r = cli("status", "--json", *repo, *flags)
        assert r.code == 0, r.err
        return _json(r)["bindings"]

    assert len(rows()) == 8
    assert {r["target"] for r in rows("--target", "web-1")} == {"web-1"}
    assert {(r["certificate"], r["target"]) for r in rows("--certificate", "www")} == {
        ("www", "web-1"), ("www", "web-2")}
    assert {r["target"] for r in rows("--label", "env=staging")} >= {"staging-1"}
    assert {r["certificate"] for r in rows("--label", "team=identity")} == {"ldap"}
    assert rows("--drift", "missing") == rows() and rows("--drift", "expired") == []
    assert rows("--target", "web-1", "--certificate", "api")[0]["key"] == "ECDSA P-384"
    www = rows("--certificate", "www")[0]
    assert www["sans"] == ["www.example.com", "example.com"] and www["days_left"] is None
    assert cli("status", *repo, "--drift", "nonsense").code == 64

    text = cli("status", *repo, "--target", "web-2", "--wide").out.splitlines()
    assert text[0].split()[-3:] == ["DRIFT", "REASON", "FILES"]
    assert len(text) == 3  # www and staging-wildcard


# ------------------------------------------------------------------ completion, schema, init


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(cli, shell) -> None:
    r = cli("completion", shell)
    assert r.code == 0 and "certgit" in r.out and "_ARGCOMPLETE" in r.out


def _documents(root: Path) -> list[tuple[Path, dict]]:
    return [(p, doc) for p in sorted(root.rglob("*.yaml"))
            for doc in yaml.safe_load_all(p.read_text()) if doc]


def test_schema_is_self_contained_and_validates_the_sample_repo(cli, tmp_path) -> None:
    r = cli("schema")
    assert r.code == 0
    schema = json.loads(r.out)
    refs = [line for line in r.out.splitlines() if '"$ref"' in line]
    assert refs and all('"$ref": "#/' in line for line in refs), refs
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)  # no registry: a remote $ref would fail
    docs = _documents(SAMPLE)
    assert {d["kind"] for _, d in docs} == {"Issuer", "Certificate", "Target", "Policy"}
    for p, doc in docs:
        assert not list(validator.iter_errors(doc)), p
    cert = next(d for _, d in docs if d["kind"] == "Certificate")
    assert list(validator.iter_errors({**cert, "spec": {**cert["spec"], "dnsName": ["x"]}}))
    assert list(validator.iter_errors({**cert, "kind": "Certifcate"}))

    out = tmp_path / "certgit.schema.json"
    assert cli("schema", "--output", str(out)).code == 0
    assert json.loads(out.read_text()) == schema


def test_init_dir_scaffolds_a_repo_that_validates(cli, tmp_path) -> None:
    d = tmp_path / "starter"
    r = cli("init", str(d))
    assert r.code == 0, r.err
    assert not (tmp_path / "state").exists()  # no state directory: only the repo
    v = cli("validate", str(d))
    assert v.code == 0 and "valid: 1 issuers, 1 certificates, 1 targets, 1 policies" in v.out
    validator = Draft202012Validator(json.loads((d / "certgit.schema.json").read_text()))
    for p, doc in _documents(d):
        assert not list(validator.iter_errors(doc)), p
    assert "# yaml-language-server: $schema=" in (d / "targets" / "web.yaml").read_text()
    again = cli("init", str(d))
    assert again.code == 1 and "already exists" in again.err
    assert cli("init").code == 0 and (tmp_path / "state").is_dir()  # without DIR: state


def test_apply_json_reports_targets_and_waiting_actions(cli, sample_git) -> None:
    _, path = sample_git
    r = cli("apply", "--json", "--repo", str(path))
    assert r.code == 2, r.err  # production deploys wait for an approval
    data = _json(r)
    assert data["exit_code"] == 2 and len(data["plan_hash"]) == 64
    assert {t["target"] for t in data["targets"]} == {"staging-1"}
    assert all(t["status"] == "deployed" for t in data["targets"])
    assert {a["target"] for a in data["waiting"]} == {"web-1", "web-2"}
    assert {i["certificate"] for i in data["issued"]} >= {"www", "api"}
    approved = _json(cli("approve", data["plan_hash"], "--reason", "ok", "--json",
                         "--repo", str(path)))
    assert approved["decision"] == "approved" and approved["plan_hash"] == data["plan_hash"]
    done = _json(cli("apply", "--json", "--repo", str(path)))
    assert done["exit_code"] == 0 and {t["target"] for t in done["targets"]} == {"web-1", "web-2"}
    assert _json(cli("release", "web-1", "--json"))["released"] == 0
    status = _json(cli("status", "--json", "--repo", str(path), "--target", "staging-1"))
    row = status["bindings"][0]
    assert row["not_after"].endswith("+00:00") and "T" in row["not_after"]
    assert row["days_left"] > 0 and row["files"]


def test_apply_progress_on_stderr_with_verbose(cli, sample_git) -> None:
    _, path = sample_git
    r = cli("apply", "-v", "--repo", str(path))
    assert r.code == 2, r.err
    assert r.err.startswith("planned "), r.err
    assert "issued www v1" in r.err and "deployed staging-1: " in r.err
    assert "Apply finished" in r.out and "planned" not in r.out
    quiet = cli("apply", "--repo", str(path))
    assert quiet.code == 2 and "planned" not in quiet.err  # not a TTY, no -v: report only


def test_tampered_audit_log_is_a_json_error_and_history_times_are_iso(cli, sample_git, tmp_path):
    import sqlite3

    _, path = sample_git
    assert cli("apply", "--repo", str(path)).code == 2
    history = cli("history", "--json")
    assert history.code == 0
    text = history.out
    assert '"format_version": 1' in text
    assert "+00:00" in text
    assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", text)  # no `str(datetime)` left

    db = sqlite3.connect(tmp_path / "state" / "state.db")
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f'DROP TRIGGER "{name}"')
    db.execute(
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = (SELECT MIN(seq) FROM audit_log)"
    )
    db.commit()
    db.close()
    bad = cli("audit", "verify", "--json")
    assert bad.code == 1
    assert _json(bad)["error"]["type"] == "AuditChainBroken"


def test_check_jsonschema_validates_the_sample_repo_offline(cli, tmp_path) -> None:
    """The acceptance tool: check-jsonschema reads one document per file, so the sample
    repo's multi-document files are split first; no network (a dead proxy)."""
    import os
    import shutil

    pytest.importorskip("check_jsonschema")
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert exe, "check-jsonschema is installed but its script is missing"
    schema = tmp_path / "certgit.schema.json"
    assert cli("schema", "--output", str(schema)).code == 0
    files = []
    for i, (p, doc) in enumerate(_documents(SAMPLE)):
        one = tmp_path / "docs" / f"{i:02d}-{p.stem}.yaml"
        one.parent.mkdir(exist_ok=True)
        one.write_text(yaml.safe_dump(doc))
        files.append(str(one))
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "http_proxy": dead, "https_proxy": dead, "HTTPS_PROXY": dead}
    r = subprocess.run([exe, "--schemafile", str(schema), *files], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "docs" / "bad.yaml"
    bad.write_text("apiVersion: certgit.dev/v1\nkind: Target\nmetadata: {name: x}\n"
                   "spec: {type: files, setings: {}}\n")
    r = subprocess.run([exe, "--schemafile", str(schema), str(bad)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stdout + r.stderr


def test_status_on_a_tty_is_a_rich_table(cli, sample_git, monkeypatch) -> None:
    _, path = sample_git
    assert cli("init").code == 0
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = _Tty()
    assert main(["status", "--repo", str(path), "--wide"], tty, io.StringIO()) == 0
    text = tty.getvalue()
    assert "\x1b[" in text and "CERTIFICATE" in text and "FILES" in text
    # Colour only: without the escape sequences it is the plain table, byte for byte.
    assert re.sub(r"\x1b\[[0-9;]*m", "", text) == cli("status", "--repo", str(path), "--wide").out
