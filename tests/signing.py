"""Test helpers for signed commits: real ssh-keygen keys, GPG homes and git CLI commits.

ssh_key(directory, name)                     -> SshKey (ed25519, no passphrase)
write_allowed_signers(path, [(email, key)])  -> path (ssh-keygen ALLOWED SIGNERS format)
SigningRepo(path).commit(files, msg, ssh=key | gpg=GpgKey | None) -> commit sha
gpg_key(directory, "Name <email>")           -> GpgKey (a fresh GNUPGHOME, key ultimately trusted)

Every git and gpg run gets a private HOME and no system or global git config, so
the machine's ~/.gitconfig or ~/.gnupg never signs (or fails to sign) a test commit.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

AUTHOR = ("certgit-test", "signer@example.org")


@dataclass(frozen=True)
class SshKey:
    private: Path
    public: str  # "ssh-ed25519 AAAA... comment"


@dataclass(frozen=True)
class GpgKey:
    home: Path  # its GNUPGHOME
    fingerprint: str


def _env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GNUPGHOME": str(home / "no-gnupg"),
    }
    env.update(extra or {})
    return env


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str],
    data: bytes | None = None,
) -> str:
    done = subprocess.run(
        list(argv), cwd=cwd, env=dict(env), input=data, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode(errors='replace')}"
        )
    return done.stdout.decode()


def ssh_key(directory: Path, name: str) -> SshKey:
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / name
    run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(private)],
        env=_env(directory / ".home"),
    )
    return SshKey(private, (directory / f"{name}.pub").read_text().strip())


def write_allowed_signers(path: Path, entries: Sequence[tuple[str, SshKey]]) -> Path:
    lines = [f'{email} namespaces="git" {key.public}' for email, key in entries]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def gpg_key(directory: Path, uid: str) -> GpgKey:
    """A GNUPGHOME in `directory` with one fresh ed25519 signing key (ultimately trusted).

    Stop its gpg-agent with `stop_gpg_agent(key.home)` when done.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = _env(directory / ".home", {"GNUPGHOME": str(directory)})
    run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
        env=env,
    )
    listing = run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env=env)
    fingerprint = next(
        line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
    )
    return GpgKey(directory, fingerprint)


def gpg_import(directory: Path, key: GpgKey) -> Path:
    """A GNUPGHOME in `directory` that holds `key`'s public key, imported but NOT trusted."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    exported = run(
        ["gpg", "--batch", "--export", "--armor", key.fingerprint],
        env=_env(key.home / ".home", {"GNUPGHOME": str(key.home)}),
    )
    run(
        ["gpg", "--batch", "--import"],
        env=_env(directory / ".home", {"GNUPGHOME": str(directory)}),
        data=exported.encode(),
    )
    return directory


def stop_gpg_agent(home: Path) -> None:
    """Stop the gpg-agent that key generation or signing started for this GNUPGHOME."""
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False
    )


class SigningRepo:
    """A non-bare repository on branch main, committed to with the real git CLI."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.home = path.parent / f".{path.name}-home"
        self.env = _env(self.home)
        run(["git", "init", "-q", "-b", "main", str(path)], env=self.env)

    def git(
        self, *args: str, env: Mapping[str, str] | None = None, data: bytes | None = None
    ) -> str:
        base = ["git", "-c", f"user.name={AUTHOR[0]}", "-c", f"user.email={AUTHOR[1]}"]
        return run([*base, *args], cwd=self.path, env=env or self.env, data=data)

    @property
    def git_dir(self) -> Path:
        return self.path / ".git"

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def commit(
        self,
        files: Mapping[str, bytes | str | None],
        message: str,
        *,
        ssh: SshKey | None = None,
        gpg: GpgKey | None = None,
    ) -> str:
        """Write `files` (None deletes), commit them all; signed with `ssh` or `gpg` if given."""
        for name, data in files.items():
            target = self.path / name
            if data is None:
                target.unlink(missing_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.encode() if isinstance(data, str) else data)
        self.git("add", "-A")
        args = ["commit", "-q", "--allow-empty", "-m", message]
        env = self.env
        if ssh is not None:
            args = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={ssh.private}", *args, "-S"]
        elif gpg is not None:
            args = [
                "-c",
                "gpg.format=openpgp",
                "-c",
                f"user.signingkey={gpg.fingerprint}",
                *args,
                "-S",
            ]
            env = {**self.env, "GNUPGHOME": str(gpg.home)}
        self.git(*args, env=env)
        return self.head()

    def merge(self, branch: str, message: str, *, ssh: SshKey | None = None) -> str:
        args = ["merge", "-q", "--no-ff", "-m", message, branch]
        if ssh is not None:
            args = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={ssh.private}", *args, "-S"]
        self.git(*args)
        return self.head()

    def tamper(self, commit: str, old: bytes, new: bytes) -> str:
        """A copy of `commit` with `old` replaced by `new` in its raw object (signature kept)."""
        raw = self.git("cat-file", "commit", commit).encode()
        assert old in raw, raw
        forged = self.git(
            "hash-object", "-t", "commit", "-w", "--stdin", data=raw.replace(old, new, 1)
        ).strip()
        self.git("update-ref", "refs/heads/main", forged)
        return forged
