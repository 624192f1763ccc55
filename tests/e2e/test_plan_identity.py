"""Plan identity, per-binding verify, exact removals, first contact, sealed backups, expiry
and relocation, against a real nginx on loopback, driven through the CLI like an operator.

Each test checks what an operator would: the hash `plan` prints and `apply` asks to
approve, the fingerprint nginx serves, the files on disk, the recorded state.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certgit.connectors.sdk.atomic import open_backup
from certgit.reconciler.config import resolve_settings
from certgit.reconciler.engine import Engine
from certgit.reconciler.render import status_rows
from certgit.reconciler.sealing import load_master_key
from certgit.reconciler.targets import backup_key
from tests.e2e.labs import NginxLab, certificate_yaml
from tests.integration.conftest import issue
from tests.integration.servers import Site, write_pair

GATES = b"""apiVersion: certgit.dev/v1
kind: Policy
metadata: {name: gates}
spec:
  pruneOrphans: true
  approvals:
    - name: prod
      match: {targetLabels: {env: production}}
"""

PRUNE = b"""apiVersion: certgit.dev/v1
kind: Policy
metadata: {name: prune}
spec:
  pruneOrphans: true
"""

_HASH = re.compile(r"^Plan hash: ([0-9a-f]{64})$", re.MULTILINE)


def _converge(lab: NginxLab) -> str:
    r = lab.cli("apply", "--as", "tester")
    assert r.code == 0, r.out + r.err
    return r.out


def _plan_json(lab: NginxLab) -> dict:
    r = lab.cli("plan", "--detailed-exitcode", "--json", "--as", "tester")
    assert r.code in (0, 2), r.out + r.err
    return json.loads(r.out)


def _rows(lab: NginxLab, sql: str, *params: object) -> list[tuple]:
    return lab.query(sql, *params)


# -- 1. the hash plan prints is the one apply waits for; stale, failing, prefixes --------------


def test_plan_hash_is_what_apply_waits_for_and_survives_failures(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a", "b"))
    lab.commit({"policy.yaml": GATES}, "gate production")
    assert lab.cli("init", "--as", "tester").code == 0

    plan = lab.cli("plan", "--detailed-exitcode", "--as", "tester")
    assert plan.code == 2, plan.out + plan.err
    found = _HASH.search(plan.out)
    assert found, plan.out
    h1 = found.group(1)
    assert "needs approval (policy gates/prod)" in plan.out

    r = lab.cli("apply", "--as", "tester")
    assert r.code == 2, r.out + r.err
    assert f"certgit approve {h1} --reason TEXT" in r.out
    assert lab.deployed("a") == (None, None) and lab.deployed("b") == (None, None)

    # Another change lands after the operator reviewed H1: approving H1 is refused.
    lab.commit({"certs/b.yaml": certificate_yaml("b", extra="  duration: 60d\n")}, "b: 60d")
    stale = lab.cli("approve", h1, "--reason", "reviewed", "--as", "alice")
    assert stale.code == 1, stale.out + stale.err
    h2 = _plan_json(lab)["hash"]
    assert h2 != h1
    assert f"plan {h1} is no longer current" in stale.err
    assert h2 in stale.err, stale.err

    # An 8-hex-digit prefix of the current hash approves the whole plan.
    ok = lab.cli("approve", h2[:8], "--reason", "reviewed", "--as", "alice")
    assert ok.code == 0, ok.out + ok.err
    assert f"approved plan {h2}" in ok.out

    # nginx's config is broken: every apply fails at validate, with nginx's own error text.
    lab.server.write_config(extra="bogus;")
    failed = lab.cli("apply", "--as", "tester")
    assert failed.code in (1, 2), failed.out + failed.err
    assert lab.deployed("a")[0] is None
    first = _plan_json(lab)
    lab.server.write_config(extra="bogus_other_directive on;")  # different error text
    assert lab.cli("retry", "web", "--reason", "try again", "--as", "tester").code == 0
    failed = lab.cli("apply", "--as", "tester")
    assert failed.code in (1, 2), failed.out + failed.err
    second = _plan_json(lab)
    reasons = {a["reason"] for a in first["actions"]}, {a["reason"] for a in second["actions"]}
    assert any("bogus" in why for why in reasons[0]), reasons
    assert reasons[0] != reasons[1]  # the errors differ...
    assert first["hash"] == second["hash"] == h2  # ...the plan and its approval do not

    # Repaired, the approval given for H2 still covers the retry.
    lab.server.write_config()
    assert lab.cli("retry", "web", "--reason", "fixed nginx", "--as", "tester").code == 0
    _converge(lab)
    # (issuance is not gated: a v1 and b v1 were issued by the first apply, b v2 for 60d)
    for name, want in (("a", 1), ("b", 2)):
        fp, version = lab.deployed(name)
        assert version == want and lab.wait_served(name, fp)


# -- 2. each binding verifies with its own SNI ------------------------------------------------


def test_deploying_only_b_verifies_b_with_its_own_name(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a", "b"))
    lab.commit({"target.yaml": lab.target_yaml(verify_name="a.example.test")}, "verify as a")
    _converge(lab)
    fp_a, _ = lab.deployed("a")
    fp_b, _ = lab.deployed("b")
    reloads = lab.reloads()
    lab.commit({"certs/b.yaml": certificate_yaml("b", extra="  duration: 60d\n")}, "b: 60d")
    plan = lab.cli("plan")
    assert "b -> web" in plan.out and "a -> web" not in plan.out, plan.out
    out = _converge(lab)
    assert "verified" in out, out
    new_b, version = lab.deployed("b")
    assert version == 2 and new_b != fp_b
    assert lab.wait_served("b", new_b)
    assert lab.deployed("a")[0] == fp_a and lab.served("a") == fp_a
    assert lab.reloads() == reloads + 1


# -- 3. a removal deletes exactly what the deploy wrote, key included -------------------------


def test_removal_deletes_the_files_an_overridden_binding_wrote(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a", "b"))
    # nginx serves b from b.crt; this binding writes elsewhere, so there is nothing to verify.
    extra = "      files: {fullchain: other-b.pem, key: other-b-key.pem}\n      verify: false\n"
    lab.commit(
        {"policy.yaml": PRUNE, "certs/b.yaml": certificate_yaml("b", binding_extra={"web": extra})},
        "b: own file names",
    )
    _converge(lab)
    rows = _rows(lab, "SELECT files_json FROM deployments WHERE certificate = 'b'")
    written = sorted(lab.certs / name for name in ("other-b.pem", "other-b-key.pem"))
    assert all(p.exists() for p in written)
    assert (lab.certs / "other-b-key.pem").stat().st_mode & 0o777 == 0o600
    assert sorted(str(p) for p in written) == sorted(
        str(path) for path, _role, _sha in json.loads(rows[0][0])
    ), rows
    placeholders = {p: p.read_bytes() for p in (lab.certs / "b.crt", lab.certs / "b.key")}

    lab.commit({"certs/b.yaml": None}, "b: gone")
    plan = lab.cli("plan", "--detailed-exitcode")
    assert plan.code == 2 and "- remove   b -> web" in plan.out, plan.out
    for path in written:
        assert f"- {path}" in plan.out
    out = _converge(lab)
    assert "removed b" in out, out
    assert not any(p.exists() for p in written)
    # Files certgit never wrote for this binding are left alone.
    assert {p: p.read_bytes() for p in placeholders} == placeholders
    assert _rows(lab, "SELECT COUNT(*) FROM deployments WHERE certificate = 'b'") == [(0,)]
    assert ("b", "web") not in lab.status()
    assert lab.cli("plan").code == 0


# -- 4. first contact: foreign files are not overwritten without adopt -----------------------


def test_foreign_file_is_refused_without_adopt_and_sealed_when_adopted(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a",), adopt=False)
    foreign = {p: p.read_bytes() for p in (lab.certs / "a.crt", lab.certs / "a.key")}
    served = lab.served("a")
    r = lab.cli("apply", "--as", "tester")
    assert r.code in (1, 2) and "Apply complete" not in r.out, r.out + r.err
    assert f"{lab.certs / 'a.crt'} already exists and certgit did not write it" in r.out
    assert "adopt: true" in r.out + r.err
    assert {p: p.read_bytes() for p in foreign} == foreign
    assert lab.served("a") == served
    assert lab.deployed("a")[0] is None

    lab.adopt = True
    lab.commit({"target.yaml": lab.target_yaml()}, "web: adopt the existing files")
    # Saying adopt is a new intent: no `certgit retry` needed.
    _converge(lab)
    fp, _ = lab.deployed("a")
    assert lab.wait_served("a", fp) and fp != served
    audit = json.loads(lab.cli("audit", "show", "--json", "--limit", "0").out)["entries"]
    adopted = [row["details"]["adopted"] for row in audit if row["action"] == "deploy.completed"]
    assert sorted(adopted[-1]) == sorted(str(p) for p in foreign), adopted
    backups = lab.state / "work" / "web" / "backups"
    copies = [p for p in backups.rglob("*") if p.is_file()]
    assert copies, f"no backup of the adopted files under {backups}"
    for copy in copies:
        data = copy.read_bytes()
        assert b"PRIVATE KEY" not in data, copy
        assert all(old not in data for old in foreign.values()), copy
    # The copies are sealed, and the master key opens them to the replaced files.
    (manifest_path,) = backups.glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_bytes())
    assert manifest["encrypted"] is True
    key = backup_key(load_master_key(lab.state, {}))
    opened = {
        Path(dest).name: open_backup(
            key, Path(entry["backup"]).read_bytes(), dest, manifest["backup_id"]
        )
        for dest, entry in manifest["files"].items()
    }
    assert opened == {p.name: data for p, data in foreign.items()}


# -- 5. no plain private key anywhere in the state directory ---------------------------------


def test_no_plain_private_key_in_the_state_dir_after_five_deploys(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a",))
    _converge(lab)
    for days in (40, 41, 42, 43, 44):
        lab.commit({"certs/a.yaml": certificate_yaml("a", extra=f"  duration: {days}d\n")},
                   f"a: {days}d")
        _converge(lab)
    assert lab.versions("a") == 6
    fp, _ = lab.deployed("a")
    assert lab.wait_served("a", fp)
    assert b"PRIVATE KEY" in (lab.certs / "a.key").read_bytes()  # the check can see a key
    checked = 0
    encrypted: list[str] = []
    for root, _dirs, files in os.walk(lab.state):
        for name in files:
            if name.startswith("state.db"):
                continue  # keys there are sealed (AES-256-GCM); tested with the store
            path = Path(root) / name
            data = path.read_bytes()
            # The local CA's key is PKCS#8-encrypted (its PEM label says ENCRYPTED).
            plain = data.replace(b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"").replace(
                b"-----END ENCRYPTED PRIVATE KEY-----", b""
            )
            assert b"PRIVATE KEY" not in plain, path
            if plain != data:
                encrypted.append(path.relative_to(lab.state).as_posix())
            checked += 1
    assert checked > 0
    assert encrypted == ["ca/ca/ca.key"], encrypted


# -- 6. expired sorts first ----------------------------------------------------------------


def test_expired_deployment_sorts_first_and_says_how_long_ago(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a", "b", "c"))
    lab.commit({"certs/b.yaml": certificate_yaml("b", extra="  duration: 10d\n")}, "b: 10d")
    _converge(lab)
    (lab.certs / "c.crt").write_bytes((lab.certs / "a.crt").read_bytes())  # c modified
    later = datetime.now(UTC) + timedelta(days=20)
    settings = resolve_settings({"repo": str(lab.repo_path), "state_dir": str(lab.state)})
    engine = Engine(settings, clock=lambda: later, create_state=False)
    try:
        plan = engine.plan()
    finally:
        engine.close()
    rows = status_rows(plan.bindings)
    assert [(r.certificate, str(r.drift)) for r in rows] == [
        ("b", "expired"), ("c", "modified"), ("a", "in-sync")
    ], rows
    assert re.match(r"v1 expired (9|10)d ago \(", rows[0].reason), rows[0].reason
    assert rows[0].not_after is not None and rows[0].not_after < later
    assert plan.attention()[0].certificate == "b"
    # Today, the real clock: nothing has expired.
    assert lab.status()[("b", "web")]["drift"] == "in-sync"


# -- 7. a new directory in Git moves every binding --------------------------------------------


def test_changing_the_directory_redeploys_there_and_removes_the_old_files(nginx_lab) -> None:
    lab: NginxLab = nginx_lab(("a", "b"))
    _converge(lab)
    before = {n: lab.deployed(n) for n in ("a", "b")}
    versions = {n: lab.versions(n) for n in ("a", "b")}
    old = lab.certs
    new = lab.root / "certs-new"
    new.mkdir()
    # nginx reads the new directory once reloaded (the config is checked with the files in place).
    lab.server.sites = tuple(
        Site(f"{n}.example.test", new / f"{n}.crt", new / f"{n}.key") for n in ("a", "b")
    )
    lab.server.write_config()
    lab.certs = new
    lab.commit({"target.yaml": lab.target_yaml()}, "web: new directory")

    plan = lab.cli("plan", "--detailed-exitcode")
    assert plan.code == 2, plan.out + plan.err
    assert plan.out.count(f"~ directory: {old} → {new}") == 2, plan.out
    assert "a -> web" in plan.out and "b -> web" in plan.out

    _converge(lab)
    for n in ("a", "b"):
        assert (new / f"{n}.crt").exists() and (new / f"{n}.key").exists()
        assert not (old / f"{n}.crt").exists() and not (old / f"{n}.key").exists()
        assert lab.deployed(n) == before[n]
        assert lab.versions(n) == versions[n]  # moved, not reissued
        assert lab.wait_served(n, before[n][0])
        files = json.loads(_rows(lab, "SELECT files_json FROM deployments WHERE certificate = ?",
                                 n)[0][0])
        assert sorted(p for p, _r, _s in files) == [str(new / f"{n}.crt"), str(new / f"{n}.key")]
    assert lab.cli("plan").code == 0


def test_a_binding_that_cannot_move_keeps_its_old_files(nginx_lab) -> None:
    """The move is per binding: one refused at the new place is not deleted at the old one."""
    lab: NginxLab = nginx_lab(("a", "b"))
    _converge(lab)
    old = lab.certs
    b_files = {p: p.read_bytes() for p in (old / "b.crt", old / "b.key")}
    new = lab.root / "certs-new"
    write_pair(issue("b.example.test"), new / "b.crt", new / "b.key")  # not certgit's
    lab.server.sites = tuple(
        Site(f"{n}.example.test", new / f"{n}.crt", new / f"{n}.key") for n in ("a", "b")
    )
    lab.server.write_config()
    lab.certs, lab.adopt = new, False
    lab.commit({"target.yaml": lab.target_yaml()}, "web: new directory, no adopt")

    r = lab.cli("apply", "--as", "tester")
    assert r.code in (1, 2), r.out + r.err
    assert f"{new / 'b.crt'} already exists and certgit did not write it" in r.out
    assert (new / "a.crt").exists() and not (old / "a.crt").exists()  # a moved
    assert {p: p.read_bytes() for p in b_files} == b_files  # b's files stay where they were
    files = json.loads(_rows(lab, "SELECT files_json FROM deployments WHERE certificate = 'b'")
                       [0][0])
    assert sorted(p for p, _r, _s in files) == sorted(str(p) for p in b_files)
