"""Unsigned and wrongly signed commits when the site policy requires signatures (issue 14).

The site policy requires a good SSH signature from alice (the allowed signers
file lists only her key) and allows one operator hook, which touches a
sentinel. Every attack commit asks for exactly that hook as the web target's
reloadCommand: within the site's paths and commands, so only its signature
can stop it. Refused means: `validate` and `apply` exit 1 naming the commit
and git's verdict, nothing is written (the target's files keep bytes and
mtime), the hook never runs (no sentinel), and `status` reports the last good
commit with the reason. The positive control: the same change signed by alice
is applied and the hook runs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.security.conftest import (
    EXIT_ERROR,
    EXIT_OK,
    ISSUER,
    Lab,
    certificate_yaml,
    target_yaml,
)
from tests.signing import SigningRepo, SshKey, ssh_key, write_allowed_signers

pytestmark = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None or shutil.which("git") is None,
    reason="signed commits need ssh-keygen and the git CLI",
)


@dataclass
class SignedLab(Lab):
    signing: SigningRepo | None = None
    alice: SshKey | None = None
    mallory: SshKey | None = None

    @property
    def hook(self) -> Path:
        return self.hooks / "reload-web"

    def base_files(self) -> dict[str, str]:
        return {
            "issuer.yaml": ISSUER,
            "targets/web.yaml": target_yaml("web", str(self.web)),
            "certs/www.yaml": certificate_yaml("www"),
        }

    def evil_files(self) -> dict[str, str]:
        """Allowed by the site's paths and commands: only a signature can refuse it."""
        settings = f"    reloadCommand: [{self.hook}]\n"
        return {
            "targets/web.yaml": target_yaml("web", str(self.web), settings=settings),
            "certs/www.yaml": certificate_yaml(
                "www", dns=["www.example.test", "evil.example.test"]
            ),
        }

    def reset(self) -> None:
        assert self.signing is not None
        self.signing.git("checkout", "-q", "main")
        self.signing.git("reset", "-q", "--hard", self.good)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> SignedLab:
    tmp = tmp_path_factory.mktemp("signed")
    lab = SignedLab(tmp, "strict")
    for directory in (lab.outside, lab.sentinels, lab.hooks, lab.secrets, lab.root):
        directory.mkdir(parents=True, exist_ok=True)
    lab.hook.write_text(f"#!/bin/sh\ntouch {lab.sentinel('hook-ran')}\n")
    lab.hook.chmod(0o755)
    keys = tmp / "keys"
    lab.alice, lab.mallory = ssh_key(keys, "alice"), ssh_key(keys, "mallory")
    allowed = write_allowed_signers(tmp / "allowed_signers", [("alice@example.org", lab.alice)])
    lab.policy = tmp / "site.toml"
    lab.policy.write_text(
        f'[paths]\nbuiltin = false\nallow = ["{lab.root}"]\n'
        f'[commands]\nbuiltin = false\nallow = [{{ under = "{lab.hooks}" }}]\n'
        f'[signatures]\nrequired = true\nallowedSigners = "{allowed}"\n'
    )
    lab.policy.chmod(0o600)
    lab.signing = SigningRepo(lab.repo_path)
    lab.good = lab.signing.commit(lab.base_files(), "good desired state", ssh=lab.alice)
    a = lab.run("apply", "--as", "operator")
    assert a.code == EXIT_OK, a.text
    assert (lab.web / "www.crt").is_file()
    lab.baseline = lab.snapshot()
    return lab


def refused(lab: SignedLab, bad: str, verdict: str | tuple[str, ...], *, head: str) -> None:
    """`bad` (the head or a commit below it) is refused; nothing written or run."""
    verdicts = (verdict,) if isinstance(verdict, str) else verdict
    keep = f"the last good commit {lab.good[:12]} stays in force"
    try:
        v = lab.run("validate")
        assert v.code == EXIT_ERROR, v.text
        assert bad[:12] in v.err and "the last good commit stays in force" in v.err, v.err
        assert any(f"(git: %G? = {x}" in v.err for x in verdicts), v.err

        p = lab.run("plan")
        assert p.code == EXIT_OK, p.text
        assert bad[:12] in p.err and keep in p.err and "No changes" in p.out, p.text

        a = lab.run("apply", "--as", "attacker")
        assert a.code == EXIT_ERROR, a.text
        assert f"HEAD was not applied: the last good commit {lab.good[:12]}" in a.out, a.out

        s = lab.run("status", "--json")
        assert s.code == EXIT_OK, s.text
        degraded = json.loads(s.out)["degraded"]
        assert json.loads(s.out)["commit"] == lab.good
        assert degraded["reason"] == "unsigned-head", degraded
        assert degraded["head"] == head
        assert degraded["signature"]["commit"] == bad
        assert degraded["signature"]["verdict"] in verdicts, degraded

        assert lab.source_state("last_good_commit") == lab.good
        assert lab.source_state("last_applied_commit") == lab.good
        assert lab.snapshot() == lab.baseline
        assert not lab.sentinel("hook-ran").exists()
    finally:
        lab.reset()


def test_unsigned_head(signed: SignedLab) -> None:
    assert signed.signing is not None
    bad = signed.signing.commit(signed.evil_files(), "unsigned")
    refused(signed, bad, "N", head=bad)


def test_signed_by_a_key_not_in_the_allowed_signers(signed: SignedLab) -> None:
    """A good signature from mallory's key, which the allowed signers do not list."""
    assert signed.signing is not None
    bad = signed.signing.commit(signed.evil_files(), "mallory", ssh=signed.mallory)
    refused(signed, bad, ("U", "E"), head=bad)  # git 2.39 says U; E is refused the same


def test_allowed_signature_on_tampered_content(signed: SignedLab) -> None:
    """alice signed a harmless commit; its raw object is edited, her signature kept."""
    assert signed.signing is not None
    signed.signing.commit({"README.md": "harmless\n"}, "harmless", ssh=signed.alice)
    forged = signed.signing.tamper(signed.signing.head(), b"harmless", b"takeover")
    refused(signed, forged, "B", head=forged)


def test_unsigned_commit_below_a_signed_head(signed: SignedLab) -> None:
    assert signed.signing is not None
    bad = signed.signing.commit(signed.evil_files(), "unsigned")
    head = signed.signing.commit({"README.md": "on top\n"}, "signed on top", ssh=signed.alice)
    refused(signed, bad, "N", head=head)


def test_unsigned_commit_through_a_signed_merge(signed: SignedLab) -> None:
    assert signed.signing is not None
    signed.signing.git("checkout", "-q", "-b", "topic")
    bad = signed.signing.commit(signed.evil_files(), "unsigned on a branch")
    signed.signing.git("checkout", "-q", "main")
    head = signed.signing.merge("topic", "signed merge", ssh=signed.alice)
    try:
        refused(signed, bad, "N", head=head)
    finally:
        signed.signing.git("branch", "-q", "-D", "topic")


def test_positive_control_the_same_change_signed_by_alice_is_applied(
    signed: SignedLab,
) -> None:
    """Last in this module: it moves the lab's good commit. The new certificate is
    deployed and the reload hook runs: the site policy allows both."""
    assert signed.signing is not None
    good = signed.signing.commit(signed.evil_files(), "reload hook", ssh=signed.alice)
    a = signed.run("apply", "--as", "operator")
    assert a.code == EXIT_OK, a.text
    assert signed.source_state("last_applied_commit") == good
    assert signed.sentinel("hook-ran").exists()  # the hook ran: it is within the policy
    www = str(signed.web / "www.crt")
    assert signed.snapshot()[www][0] != signed.baseline[www][0]  # the new certificate
