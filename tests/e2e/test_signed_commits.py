"""Signed commits end to end (issue 14 part 2), through the real CLI and a real state dir.

The site policy (a TOML file in tmp_path, passed with --site-policy) says
`[signatures] required = true` with an allowed signers file that lists alice's
SSH key. Commits are made and signed with the git CLI and real ed25519 keys.
A refused head leaves the last good commit in force: `status` and `plan` say
why, `apply` exits 1 and writes nothing of the refused commit (the sentinel: its
certificate file never appears in the target directory).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import Result
from tests.signing import SigningRepo, SshKey, ssh_key, write_allowed_signers

EXIT_OK, EXIT_ERROR = 0, 1
KEEP = "nothing is applied and the last good commit {} stays in force"

ISSUER = """\
apiVersion: certgit.dev/v1
kind: Issuer
metadata: {name: ca}
spec:
  type: local-ca
  localCA: {commonName: signed commits test CA}
"""
TARGET = """\
apiVersion: certgit.dev/v1
kind: Target
metadata: {name: web}
spec:
  type: files
  settings:
    directory: targets/web
"""


def certificate(name: str, *dns: str) -> str:
    names = ", ".join(dns or (f"{name}.example.test",))
    return (
        "apiVersion: certgit.dev/v1\nkind: Certificate\n"
        f"metadata: {{name: {name}}}\n"
        f"spec:\n  dnsNames: [{names}]\n  issuerRef: {{name: ca}}\n"
        "  deployTo: [{target: web}]\n"
    )


BASE = {"issuer.yaml": ISSUER, "target.yaml": TARGET, "certs/www.yaml": certificate("www")}
# The sentinel: a certificate whose files must never reach the target directory.
EVIL = {"certs/evil.yaml": certificate("evil", "evil.example.test")}


@dataclass
class Site:
    repo: SigningRepo
    alice: SshKey
    mallory: SshKey
    state: Path
    run: Callable[..., Result]

    @property
    def web(self) -> Path:
        return self.state / "targets" / "web"

    def files(self) -> dict[str, tuple[str, int]]:
        """The target directory: name -> (sha256, mtime_ns); a write shows as a change."""
        if not self.web.exists():
            return {}
        return {
            p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(self.web.iterdir())
        }

    def source_state(self, key: str) -> str | None:
        with closing(sqlite3.connect(self.state / "state.db")) as db:
            row = db.execute("SELECT value FROM source_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def plans_of(self, commit: str) -> int:
        with closing(sqlite3.connect(self.state / "state.db")) as db:
            return int(
                db.execute("SELECT COUNT(*) FROM plans WHERE commit_id = ?", (commit,)).fetchone()[
                    0
                ]
            )


@pytest.fixture
def site(cli, tmp_path: Path) -> Site:
    keys = tmp_path / "keys"
    alice, mallory = ssh_key(keys, "alice"), ssh_key(keys, "mallory")
    allowed = write_allowed_signers(tmp_path / "allowed_signers", [("alice@example.org", alice)])
    policy = tmp_path / "site.toml"
    policy.write_text(f'[signatures]\nrequired = true\nallowedSigners = "{allowed}"\n')
    repo = SigningRepo(tmp_path / "desired")

    def run(*args: str) -> Result:
        return cli(*args, "--repo", str(repo.path), "--site-policy", str(policy))

    return Site(repo, alice, mallory, tmp_path / "state", run)


def _one_warning(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, err
    return lines[0]


def _apply_ok(site: Site) -> str:
    r = site.run("apply", "--as", "tester")
    assert r.code == EXIT_OK, r.out + r.err
    head = site.repo.head()
    assert site.source_state("last_applied_commit") == head
    assert site.source_state("last_good_commit") == head
    return head


def test_signed_heads_apply_and_an_unsigned_head_leaves_the_last_good_commit(site) -> None:
    site.repo.commit(BASE, "desired state", ssh=site.alice)
    good = _apply_ok(site)
    written = site.files()
    assert "www.crt" in written and not [f for f in written if f.startswith("evil")]

    bad = site.repo.commit(EVIL, "unsigned: add a certificate")
    warning = (
        f"warning: the head commit {bad[:12]} is not signed (git: %G? = N); the site policy "
        "requires a good signature from an allowed key: sign it with an allowed key "
        f"(`git commit --amend --no-edit -S`) and push; {KEEP.format(good[:12])}"
    )

    # validate reports the refusal and exits 1.
    v = site.run("validate")
    assert v.code == EXIT_ERROR, v.out + v.err
    assert f"the head commit {bad[:12]} is not signed (git: %G? = N)" in v.err

    # status: the last good commit's bindings, one warning saying why.
    s = site.run("status")
    assert s.code == EXIT_OK, s.out + s.err
    assert s.err.strip() == warning
    sj = site.run("status", "--json")
    assert sj.code == EXIT_OK, sj.out + sj.err
    data = json.loads(sj.out)
    assert data["commit"] == good
    degraded = data["degraded"]
    assert degraded["reason"] == "unsigned-head"
    assert (degraded["commit"], degraded["head"], degraded["problems"]) == (good, bad, [])
    assert degraded["signature"] == {"commit": bad, "verdict": "N", "signer": "", "key": ""}
    assert degraded["error"].startswith(f"the head commit {bad[:12]} is not signed")
    assert {b["certificate"] for b in data["bindings"]} == {"www"}

    # plan: converged on the last good commit, the same warning.
    p = site.run("plan")
    assert p.code == EXIT_OK, p.out + p.err
    assert _one_warning(p.err) == warning

    # apply: exit 1, nothing of the refused commit written or recorded.
    a = site.run("apply", "--as", "tester")
    assert a.code == EXIT_ERROR, a.out + a.err
    assert _one_warning(a.err) == warning
    assert f"HEAD was not applied: the last good commit {good[:12]}" in a.out
    assert site.files() == written
    assert site.source_state("last_applied_commit") == good
    assert site.source_state("last_good_commit") == good
    assert site.plans_of(bad) == 0

    # A signed commit on top does not launder the unsigned one below it.
    on_top = site.repo.commit(
        {"certs/www.yaml": certificate("www", "www.example.test", "w2.example.test")},
        "signed on top",
        ssh=site.alice,
    )
    a = site.run("apply", "--as", "tester")
    assert a.code == EXIT_ERROR, a.out + a.err
    line = _one_warning(a.err)
    assert line.startswith(
        f"warning: commit {bad[:12]} (since the last applied {good[:12]}, below the head) "
        "is not signed (git: %G? = N)"
    )
    assert f"git rebase --exec 'git commit --amend --no-edit -S' {good[:12]}" in line
    sj = json.loads(site.run("status", "--json").out)
    assert sj["degraded"]["head"] == on_top and sj["degraded"]["signature"]["commit"] == bad
    assert site.files() == written and site.source_state("last_good_commit") == good

    # Re-signed history (the operator's fix): applied, the sentinel still absent.
    site.repo.git("reset", "-q", "--hard", good)
    fixed = site.repo.commit(
        {"certs/www.yaml": certificate("www", "www.example.test", "w2.example.test")},
        "signed fix",
        ssh=site.alice,
    )
    assert _apply_ok(site) == fixed
    assert not [f for f in site.files() if f.startswith("evil")]
    s = site.run("status")
    assert s.code == EXIT_OK and "warning" not in s.err, s.out + s.err


def test_a_key_not_in_the_allowed_signers_is_refused(site) -> None:
    site.repo.commit(BASE, "desired state", ssh=site.alice)
    good = _apply_ok(site)
    written = site.files()
    bad = site.repo.commit(EVIL, "signed by mallory", ssh=site.mallory)

    a = site.run("apply", "--as", "tester")
    assert a.code == EXIT_ERROR, a.out + a.err
    line = _one_warning(a.err)
    sj = json.loads(site.run("status", "--json").out)
    verdict = sj["degraded"]["signature"]["verdict"]
    # git 2.39 says U ("No principal matched"); E would be refused just the same.
    assert verdict in ("U", "E"), sj
    assert sj["degraded"]["signature"]["key"].startswith("SHA256:")
    assert line.startswith(f"warning: the head commit {bad[:12]} ")
    assert f"(git: %G? = {verdict}, SSH key SHA256:" in line
    assert "add its public key to the allowed signers file" in line
    assert line.endswith(KEEP.format(good[:12]))
    assert site.files() == written
    assert site.source_state("last_applied_commit") == good
    assert site.source_state("last_good_commit") == good


def test_an_unsigned_first_commit_is_never_applied(site) -> None:
    """No last good commit to fall back to: apply fails and writes nothing at all."""
    bad = site.repo.commit({**BASE, **EVIL}, "unsigned from the start")
    a = site.run("apply", "--as", "tester")
    assert a.code == EXIT_ERROR, a.out + a.err
    assert f"the head commit {bad[:12]} is not signed (git: %G? = N)" in a.err
    assert site.files() == {}
    assert site.source_state("last_good_commit") is None
    assert site.source_state("last_applied_commit") is None


def test_requiring_signatures_later_asks_for_a_signed_head(site, cli) -> None:
    """A commit applied before the policy was switched on is not signed: the head must be."""
    site.repo.commit(BASE, "applied before signatures were required")
    r = cli("apply", "--repo", str(site.repo.path), "--as", "tester")  # no signatures required
    assert r.code == EXIT_OK, r.out + r.err
    unsigned = site.repo.head()
    s = site.run("status")
    assert s.code == EXIT_ERROR, s.out + s.err
    assert f"the head commit {unsigned[:12]} is not signed" in s.err
    signed = site.repo.commit({}, "first signed commit", ssh=site.alice)
    assert _apply_ok(site) == signed
