"""Signed commits (issue 14 part 2) against real signatures: ssh-keygen keys, a GPG home and
commits made with the git CLI; `verify_commits` run on the repository's git dir."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from certgit.reconciler.errors import SourceError, UnsignedCommit
from certgit.reconciler.signatures import CommitVerifier, scrubbed_env, verify_commits
from certgit.reconciler.sitepolicy import SignaturePolicy
from tests.signing import (
    GpgKey,
    SigningRepo,
    SshKey,
    gpg_import,
    gpg_key,
    ssh_key,
    stop_gpg_agent,
    write_allowed_signers,
)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, SshKey]:
    return {name: ssh_key(tmp_path / "keys", name) for name in ("alice", "mallory")}


@pytest.fixture
def policy(tmp_path: Path, keys: dict[str, SshKey]) -> SignaturePolicy:
    allowed = write_allowed_signers(
        tmp_path / "allowed_signers", [("alice@example.org", keys["alice"])]
    )
    return SignaturePolicy(required=True, allowed_signers=allowed)


@pytest.fixture
def repo(tmp_path: Path) -> SigningRepo:
    return SigningRepo(tmp_path / "desired")


def _refused(
    repo: SigningRepo, head: str, last: str | None, policy: SignaturePolicy
) -> UnsignedCommit:
    with pytest.raises(UnsignedCommit) as caught:
        verify_commits(repo.git_dir, head, last, policy)
    error = caught.value
    assert error.temporary is False and isinstance(error, SourceError)
    assert "nothing is applied and the last good commit stays in force" in str(error)
    return error


# --------------------------------------------------------------------------- SSH


def test_a_head_signed_by_an_allowed_key_passes(repo, keys, policy) -> None:
    head = repo.commit({"a.yaml": "a: 1\n"}, "signed", ssh=keys["alice"])
    checks = verify_commits(repo.git_dir, head, None, policy)
    assert [(c.commit, c.verdict, c.signer) for c in checks] == [(head, "G", "alice@example.org")]
    assert checks[0].key.startswith("SHA256:")


def test_an_unsigned_head_is_refused(repo, policy) -> None:
    head = repo.commit({"a.yaml": "a: 1\n"}, "unsigned")
    error = _refused(repo, head, None, policy)
    assert (error.commit, error.verdict, error.refused) == (head, "N", ((head, "N"),))
    message = str(error)
    assert message.startswith(f"the head commit {head[:12]} is not signed (git: %G? = N); ")
    assert "sign it with an allowed key (`git commit --amend --no-edit -S`) and push" in message


def test_a_key_not_in_the_allowed_signers_is_refused(repo, keys, policy) -> None:
    head = repo.commit({"a.yaml": "a: 1\n"}, "mallory", ssh=keys["mallory"])
    error = _refused(repo, head, None, policy)
    # git 2.39 says U (good signature, "No principal matched"); E would be refused the same.
    assert error.verdict in ("U", "E"), error.verdict
    assert error.commit == head and error.key.startswith("SHA256:")
    message = str(error)
    assert f"the head commit {head[:12]} " in message
    assert "not an allowed signer" in message or "cannot be checked" in message
    assert f"SSH key {error.key}" in message
    assert f"add its public key to the allowed signers file {policy.allowed_signers}" in message


def test_a_key_allowed_for_another_namespace_only_is_refused(tmp_path, repo, keys) -> None:
    signers = tmp_path / "file-only"
    signers.write_text(f'alice@example.org namespaces="file" {keys["alice"].public}\n')
    head = repo.commit({"a.yaml": "a: 1\n"}, "signed", ssh=keys["alice"])
    policy = SignaturePolicy(required=True, allowed_signers=signers)
    assert _refused(repo, head, None, policy).verdict != "G"


def test_an_unsigned_commit_below_a_signed_head_is_refused(repo, keys, policy) -> None:
    applied = repo.commit({"a.yaml": "a: 1\n"}, "applied", ssh=keys["alice"])
    sneaked = repo.commit({"a.yaml": "a: 2\n"}, "unsigned in between")
    head = repo.commit({"b.yaml": "b: 1\n"}, "signed on top", ssh=keys["alice"])
    error = _refused(repo, head, applied, policy)
    assert (error.commit, error.verdict, error.refused) == (sneaked, "N", ((sneaked, "N"),))
    assert str(error).startswith(
        f"commit {sneaked[:12]} (since the last applied {applied[:12]}, below the head) "
        "is not signed"
    )
    assert f"`git rebase --exec 'git commit --amend --no-edit -S' {applied[:12]}`" in str(error)
    # Once that range was applied, only the newer commits count.
    assert [c.commit for c in verify_commits(repo.git_dir, head, sneaked, policy)] == [head]


def test_every_refused_commit_of_the_range_is_named(repo, keys, policy) -> None:
    applied = repo.commit({"a.yaml": "a: 1\n"}, "applied", ssh=keys["alice"])
    unsigned = [repo.commit({"a.yaml": f"a: {i}\n"}, f"u{i}") for i in range(2, 7)]
    head = repo.commit({"b.yaml": "b: 1\n"}, "mallory on top", ssh=keys["mallory"])
    error = _refused(repo, head, applied, policy)
    assert error.commit == head and error.verdict == "U"
    assert error.refused == ((head, "U"), *((c, "N") for c in reversed(unsigned)))
    assert (
        f"also refused: {unsigned[-1][:12]}, {unsigned[-2][:12]}, {unsigned[-3][:12]} "
        "and 2 more" in str(error)
    )


def test_the_head_is_checked_even_when_it_is_the_last_applied_commit(repo, policy) -> None:
    head = repo.commit({"a.yaml": "a: 1\n"}, "applied before signatures were required")
    assert _refused(repo, head, head, policy).commit == head


def test_a_signed_merge_of_an_unsigned_branch_is_refused(repo, keys, policy) -> None:
    applied = repo.commit({"a.yaml": "a: 1\n"}, "applied", ssh=keys["alice"])
    repo.git("checkout", "-q", "-b", "feature")
    side = repo.commit({"c.yaml": "c: 1\n"}, "unsigned feature work")
    repo.git("checkout", "-q", "main")
    repo.commit({"b.yaml": "b: 1\n"}, "signed main work", ssh=keys["alice"])
    head = repo.merge("feature", "signed merge", ssh=keys["alice"])
    error = _refused(repo, head, applied, policy)
    assert (error.commit, error.verdict) == (side, "N")


def test_a_commit_changed_after_signing_is_refused_as_bad(repo, keys, policy) -> None:
    signed = repo.commit({"a.yaml": "a: 1\n"}, "harmless change", ssh=keys["alice"])
    forged = repo.tamper(signed, b"harmless change", b"harmless chang3")
    error = _refused(repo, forged, None, policy)
    assert error.verdict == "B"
    assert "BAD signature" in str(error) and "find out who changed it" in str(error)


def test_the_last_applied_commit_missing_from_the_mirror_cannot_be_checked(
    repo, keys, policy
) -> None:
    head = repo.commit({"a.yaml": "a: 1\n"}, "signed", ssh=keys["alice"])
    with pytest.raises(SourceError) as caught:
        verify_commits(repo.git_dir, head, "f" * 40, policy)
    assert not isinstance(caught.value, UnsignedCommit) and caught.value.temporary is False
    assert f"the last applied commit {'f' * 40} is not in the Git mirror" in str(caught.value)


def test_a_missing_allowed_signers_file_is_an_error_not_a_verdict(tmp_path, repo, keys) -> None:
    head = repo.commit({"a.yaml": "a: 1\n"}, "signed", ssh=keys["alice"])
    policy = SignaturePolicy(required=True, allowed_signers=tmp_path / "nowhere")
    with pytest.raises(SourceError) as caught:
        verify_commits(repo.git_dir, head, None, policy)
    assert not isinstance(caught.value, UnsignedCommit)
    assert f"the allowed signers file {tmp_path / 'nowhere'} " in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_commit_ids_are_never_taken_as_options(repo, keys, policy) -> None:
    repo.commit({"a.yaml": "a: 1\n"}, "signed", ssh=keys["alice"])
    with pytest.raises(ValueError, match="not a full commit id"):
        verify_commits(repo.git_dir, "--output=/tmp/x", None, policy)


# --------------------------------------------------------------------------- environment


def test_the_operators_git_config_and_environment_cannot_change_the_verdict(
    tmp_path, repo, keys, policy, monkeypatch
) -> None:
    """A ~/.gitconfig, GIT_CONFIG_* variables or XDG config that would allow mallory are ignored."""
    head = repo.commit({"a.yaml": "a: 1\n"}, "mallory", ssh=keys["mallory"])
    lenient = write_allowed_signers(tmp_path / "lenient", [("m@example.org", keys["mallory"])])
    home = tmp_path / "operator-home"
    (home / ".config" / "git").mkdir(parents=True)
    config = f'[gpg "ssh"]\n\tallowedSignersFile = {lenient}\n'
    (home / ".gitconfig").write_text(config)
    (home / ".config" / "git" / "config").write_text(config)
    hostile = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "gpg.ssh.allowedSignersFile",
        "GIT_CONFIG_VALUE_0": str(lenient),
        "GIT_CONFIG_PARAMETERS": f"'gpg.ssh.allowedsignersfile'='{lenient}'",
    }
    for name, value in hostile.items():
        monkeypatch.setenv(name, value)
    # Sanity: that environment does make plain git accept mallory.
    plain = subprocess.run(
        ["git", "--git-dir", str(repo.git_dir), "log", "-1", "--format=%G?"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert plain.stdout.strip() == "G"
    assert _refused(repo, head, None, policy).verdict == "U"


def test_git_runs_with_a_scrubbed_environment(tmp_path) -> None:
    env = scrubbed_env(
        tmp_path,
        SignaturePolicy(),
        {
            "PATH": "/usr/bin:/bin",
            "HOME": "/root",
            "CERTGIT_MASTER_KEY": "secret",
            "GIT_CONFIG_PARAMETERS": "x",
            "GNUPGHOME": "/root/.gnupg",
            "LANG": "de_DE.UTF-8",
        },
    )
    assert env["PATH"] == "/usr/bin:/bin" and env["HOME"] == str(tmp_path)
    assert env["LANG"] == env["LC_ALL"] == "C"
    assert env["GNUPGHOME"] == str(tmp_path / "gnupg")
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert not [name for name in env if name.startswith("CERTGIT_")]
    assert "GIT_CONFIG_PARAMETERS" not in env


# --------------------------------------------------------------------------- memo


def test_the_verifier_remembers_passes_but_not_a_removed_key(
    tmp_path, repo, keys, policy, monkeypatch
) -> None:
    head = repo.commit({"a.yaml": "a: 1\n"}, "signed", ssh=keys["alice"])
    verifier = CommitVerifier(policy)
    runs: list[list[str]] = []
    real = subprocess.run

    def counting(argv, *args, **kwargs):
        runs.append(list(argv))
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting)
    verifier.verify(repo.git_dir, head, None)
    verifier.verify(repo.git_dir, head, None)
    assert len(runs) == 1  # the second poll of an unchanged head runs no git

    assert policy.allowed_signers is not None
    write_allowed_signers(policy.allowed_signers, [("bob@example.org", keys["mallory"])])
    with pytest.raises(UnsignedCommit):
        verifier.verify(repo.git_dir, head, None)
    with pytest.raises(UnsignedCommit):
        verifier.verify(repo.git_dir, head, None)  # refusals are never remembered
    assert len(runs) == 3


# --------------------------------------------------------------------------- GPG


@pytest.fixture
def gpg(tmp_path: Path) -> Iterator[GpgKey]:
    # A short path: gpg-agent's socket lives in the GNUPGHOME and socket paths are short.
    key = gpg_key(tmp_path / "g", "Alice <alice@example.org>")
    yield key
    stop_gpg_agent(key.home)


def test_a_gpg_signature_by_a_trusted_key_in_gpg_home_passes(repo, gpg) -> None:
    head = repo.commit({"a.yaml": "a: 1\n"}, "gpg signed", gpg=gpg)
    policy = SignaturePolicy(required=True, gpg_home=gpg.home)
    (check,) = verify_commits(repo.git_dir, head, None, policy)
    assert (check.verdict, check.signer) == ("G", "Alice <alice@example.org>")
    assert gpg.fingerprint.endswith(check.key)


def test_a_gpg_key_imported_but_not_trusted_is_refused_as_u(tmp_path, repo, gpg) -> None:
    head = repo.commit({"a.yaml": "a: 1\n"}, "gpg signed", gpg=gpg)
    home = gpg_import(tmp_path / "i", gpg)
    try:
        error = _refused(repo, head, None, SignaturePolicy(required=True, gpg_home=home))
    finally:
        stop_gpg_agent(home)
    assert error.verdict == "U" and error.signer == "Alice <alice@example.org>"
    assert f"import and trust it in the GPG home {home}" in str(error)


def test_a_gpg_signature_without_a_gpg_home_cannot_be_checked(repo, gpg, policy) -> None:
    """The operator's ~/.gnupg is never consulted: without gpgHome a GPG signature is E."""
    head = repo.commit({"a.yaml": "a: 1\n"}, "gpg signed", gpg=gpg)
    error = _refused(repo, head, None, policy)
    assert error.verdict == "E"
    assert "GPG key" in str(error) and "Can't check signature: No public key" in str(error)
    assert "set signatures.gpgHome in the site policy" in str(error)
