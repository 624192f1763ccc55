"""Signed commits (DESIGN §10): with `[signatures] required = true` in the site policy, only
commits signed by an allowed key are applied.

    verify_commits(git_dir, head, last_applied, policy) -> tuple[SignatureCheck, ...]
    CommitVerifier(policy).verify(git_dir, head, last_applied)   the same, remembering passes

The head and every commit since the last applied one (`git rev-list last..head`,
merges and their branches included; only the head when nothing was applied yet,
and the head also when it is not new) must carry a good signature from an allowed
signer. The real git CLI decides, in the bare mirror:

- SSH signatures are checked against the policy's `allowedSigners` file
  (`gpg.ssh.allowedSignersFile`, an ssh-keygen ALLOWED SIGNERS file);
- GPG signatures against the keyring in the policy's `gpgHome` (GNUPGHOME); a key
  there must also be trusted (`gpg --quick-lsign-key`, or ownertrust), else git
  says U.

Only git's `%G?` = G counts. U (a good signature from a key that is not allowed or
of unknown validity), B (bad), X/Y (expired signature/key), R (revoked key), E
(cannot be checked) and N (no signature) are refused with `UnsignedCommit`,
naming the commit, what git said and what to do.

git runs with a scrubbed environment: PATH from certgit's environment, HOME,
XDG_CONFIG_HOME and (without `gpgHome`) GNUPGHOME in a private temporary
directory, LANG=C, no system or global git config, no CERTGIT_* variable. An
operator's ~/.gitconfig or ~/.gnupg therefore cannot change the verdict, and
the verifier programs are pinned (`ssh-keygen`, `gpg` from PATH). Without an
allowedSigners file an empty one stands in, so an SSH signature is U, not N.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from certgit.reconciler.errors import SourceError, UnsignedCommit
from certgit.reconciler.sitepolicy import SignaturePolicy

GOOD = "G"
_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# git log's signature fields; `-z` ends each commit with NUL, so NUL separates fields too.
_FIELDS = ("%H", "%G?", "%GS", "%GK", "%GG")
_FORMAT = "%x00".join(_FIELDS)
_KEEP = "nothing is applied and the last good commit stays in force"
_TIMEOUT = 600.0  # seconds for one git log over the range (two ssh-keygen runs per commit)

# What each %G? letter means, phrased after "commit X ...".
_MEANING = {
    "N": "is not signed",
    "U": "is signed by a key that is not an allowed signer",
    "B": "has a BAD signature (changed after signing, or corrupt)",
    "X": "has an expired signature",
    "Y": "is signed by an expired key",
    "R": "is signed by a revoked key",
    "E": "has a signature that cannot be checked",
}
# Verifier lines that say nothing about the verdict.
_NOISE = re.compile(r"keybox .* created|^Signature made|^ *using \S+ key|^issuer ", re.I)


@dataclass(frozen=True)
class SignatureCheck:
    """git's verdict on one commit: `verdict` is its `%G?` letter; only G passes."""

    commit: str
    verdict: str
    signer: str = ""  # %GS: the allowed-signers principal (SSH) or the key's user ID (GPG)
    key: str = ""  # %GK: the key fingerprint (SSH) or key ID (GPG)
    detail: str = ""  # %GG: the verifier's own words

    @property
    def ok(self) -> bool:
        return self.verdict == GOOD


def verify_commits(
    git_dir: Path,
    head: str,
    last_applied: str | None,
    policy: SignaturePolicy,
    *,
    env: Mapping[str, str] | None = None,
) -> tuple[SignatureCheck, ...]:
    """Check the head and every commit since `last_applied` (newest first); return the checks.

    Raises UnsignedCommit when any of them lacks a good signature from an allowed
    key, and SourceError (never temporary unless git timed out) when they cannot
    be checked: no git on PATH, the allowed signers file or GPG home missing, or
    `last_applied` not in the mirror.
    """
    checks = _git_checks(
        Path(git_dir), head, last_applied, policy, os.environ if env is None else env
    )
    refused = [c for c in checks if not c.ok]
    if refused:
        raise _refusal(refused, head, last_applied, policy)
    return checks


class CommitVerifier:
    """verify_commits, remembering the ranges that passed while the trust anchors are unchanged.

    A poll whose head and last applied commit have not moved costs no git run; a
    changed allowed-signers file or GPG keyring checks again (a removed key counts
    at once). Refusals are never remembered.
    """

    def __init__(self, policy: SignaturePolicy, *, env: Mapping[str, str] | None = None) -> None:
        self.policy = policy
        self.env = os.environ if env is None else env
        self._passed: set[tuple[str, str, str | None, str]] = set()

    def verify(self, git_dir: Path, head: str, last_applied: str | None) -> None:
        key = (str(git_dir), head, last_applied, _anchor_digest(self.policy))
        if key in self._passed:
            return
        verify_commits(git_dir, head, last_applied, self.policy, env=self.env)
        self._passed.add(key)


# --------------------------------------------------------------------------- git


def scrubbed_env(home: Path, policy: SignaturePolicy, env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment git (and ssh-keygen / gpg under it) runs with."""
    return {
        "PATH": env.get("PATH") or os.defpath,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GNUPGHOME": str(policy.gpg_home or home / "gnupg"),
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }


def _git_checks(
    git_dir: Path,
    head: str,
    last_applied: str | None,
    policy: SignaturePolicy,
    env: Mapping[str, str],
) -> tuple[SignatureCheck, ...]:
    for commit in (head, last_applied):
        if commit is not None and not _COMMIT_ID.fullmatch(commit):
            raise ValueError(f"not a full commit id: {commit!r}")
    _check_anchors(policy)
    with tempfile.TemporaryDirectory(prefix="certgit-verify-") as tmp:
        home = Path(tmp)
        (home / "gnupg").mkdir(mode=0o700)
        empty_signers = home / "allowed_signers"
        empty_signers.write_bytes(b"")
        run_env = scrubbed_env(home, policy, env)
        git = shutil.which("git", path=run_env["PATH"])
        if git is None:
            raise SourceError(
                "signed commits are required (site policy [signatures]) but there is no `git` "
                f"on PATH ({run_env['PATH']}) to check them: install git; {_KEEP}",
                temporary=False,
            )
        base = [
            git,
            f"--git-dir={git_dir}",
            "-c",
            f"gpg.ssh.allowedSignersFile={(policy.allowed_signers or empty_signers).absolute()}",
            "-c",
            "gpg.ssh.program=ssh-keygen",
            "-c",
            "gpg.program=gpg",
            "-c",
            "log.showSignature=false",
            "log",
            "-z",
            f"--format={_FORMAT}",
        ]
        if last_applied is not None and last_applied != head:
            checks = _run([*base, head, f"^{last_applied}", "--"], run_env, git_dir, last_applied)
        else:
            checks = ()
        if not any(c.commit == head for c in checks):
            checks = _run([*base, "-1", head, "--"], run_env, git_dir, None) + checks
    return checks


def _run(
    argv: list[str], env: dict[str, str], git_dir: Path, last_applied: str | None
) -> tuple[SignatureCheck, ...]:
    try:
        done = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SourceError(
            f"checking commit signatures in {git_dir} took over {_TIMEOUT:.0f} s; "
            f"try again; {_KEEP}"
        ) from exc
    except OSError as exc:
        raise SourceError(
            f"could not run git to check commit signatures ({exc}); {_KEEP}", temporary=False
        ) from exc
    if done.returncode != 0:
        said = _printable(done.stderr.decode(errors="replace"), 300)
        if last_applied is not None and not _has_commit(argv[:2], env, last_applied):
            raise SourceError(
                f"the last applied commit {last_applied} is not in the Git mirror {git_dir}, so "
                "the commits since it cannot be checked for signatures (signatures.required); "
                f"restore that history in the repository; {_KEEP}",
                temporary=False,
            )
        raise SourceError(
            f"git could not list the commits to check for signatures in {git_dir} "
            f"(exit {done.returncode}: {said}); {_KEEP}",
            temporary=False,
        )
    return _parse(done.stdout.decode("utf-8", errors="replace"))


def _has_commit(git: list[str], env: dict[str, str], commit: str) -> bool:
    """Whether the git dir (`git` is [git, --git-dir=...]) holds `commit` as a commit."""
    try:
        probe = subprocess.run(
            [*git, "cat-file", "-e", f"{commit}^{{commit}}"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell: report git's own error
    return probe.returncode == 0


def _parse(output: str) -> tuple[SignatureCheck, ...]:
    fields = output.split("\0")
    if fields and fields[-1] == "" and len(fields) % len(_FIELDS) == 1:
        fields.pop()  # the terminator after the last commit
    if len(fields) % len(_FIELDS):
        raise SourceError(f"unexpected output from git log while checking signatures; {_KEEP}")
    n = len(_FIELDS)
    return tuple(
        SignatureCheck(
            commit=fields[i].strip(),
            verdict=fields[i + 1].strip() or "N",
            signer=fields[i + 2].strip(),
            key=fields[i + 3].strip(),
            detail=fields[i + 4].strip(),
        )
        for i in range(0, len(fields), n)
    )


# --------------------------------------------------------------------------- trust anchors


def _check_anchors(policy: SignaturePolicy) -> None:
    """The allowed signers file and GPG home must be there: git would just say N or E."""
    signers = policy.allowed_signers
    if signers is not None and not signers.is_file():
        raise SourceError(
            f"the allowed signers file {signers} (site policy signatures.allowedSigners) does "
            "not exist or is not a file, so no commit signature can be checked: create it "
            f'(lines `<email> namespaces="git" <ssh public key>`) or fix the path; {_KEEP}',
            temporary=False,
        )
    if signers is not None and not os.access(signers, os.R_OK):
        raise SourceError(
            f"the allowed signers file {signers} (site policy signatures.allowedSigners) is "
            f"not readable by certgit; fix its permissions; {_KEEP}",
            temporary=False,
        )
    gpg_home = policy.gpg_home
    if gpg_home is not None and not gpg_home.is_dir():
        raise SourceError(
            f"the GPG home {gpg_home} (site policy signatures.gpgHome) is not a directory, so "
            f"no GPG signature can be checked: create it or fix the path; {_KEEP}",
            temporary=False,
        )


def _anchor_digest(policy: SignaturePolicy) -> str:
    """Changes whenever the allowed signers file or the GPG keyring / trust database does."""
    digest = hashlib.sha256()
    if policy.allowed_signers is not None:
        try:
            digest.update(policy.allowed_signers.read_bytes())
        except OSError as exc:
            digest.update(f"unreadable: {exc}".encode())
    if policy.gpg_home is not None:
        for name in ("pubring.kbx", "pubring.gpg", "trustdb.gpg"):
            try:
                st = (policy.gpg_home / name).stat()
            except OSError:
                continue
            digest.update(f"{name}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- messages


def _printable(text: str, limit: int = 120) -> str:
    """Text from a commit or verifier made safe for a terminal: one line, no control bytes."""
    flat = " ".join(text.split())
    clean = "".join(ch if ch.isprintable() else "?" for ch in flat)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _verifier_said(detail: str) -> str:
    """The verifier's lines that explain a verdict ("Can't check signature: No public key")."""
    lines = [line.removeprefix("gpg:").strip() for line in detail.splitlines()]
    return "; ".join(line for line in lines if line and not _NOISE.search(line))


def _is_ssh(check: SignatureCheck) -> bool:
    return check.key.startswith("SHA256:")


def _refusal(
    refused: list[SignatureCheck],
    head: str,
    last_applied: str | None,
    policy: SignaturePolicy,
) -> UnsignedCommit:
    first = refused[0]
    short = first.commit[:12]
    if first.commit == head:
        which = f"the head commit {short}"
    else:
        which = f"commit {short} (since the last applied {str(last_applied)[:12]}, below the head)"
    said = f"git: %G? = {first.verdict}"
    if first.signer:
        said += f", signer {_printable(first.signer, 80)}"
    if first.key:
        said += f", {'SSH' if _is_ssh(first) else 'GPG'} key {_printable(first.key, 80)}"
    if first.verdict in ("B", "E", "X", "Y", "R") and _verifier_said(first.detail):
        said += f": {_printable(_verifier_said(first.detail))}"
    many = len(refused) > 1 or first.commit != head
    message = (
        f"{which} {_MEANING.get(first.verdict, 'has no good signature')} ({said}); the site "
        f"policy requires a good signature from an allowed key: "
        f"{_what_to_do(first, policy, last_applied if many else None)}"
    )
    others = [c.commit[:12] for c in refused[1:]]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        message += f"; also refused: {shown}"
    message += f"; {_KEEP}"
    return UnsignedCommit(
        message,
        commit=first.commit,
        verdict=first.verdict,
        signer=first.signer,
        key=first.key,
        refused=[(c.commit, c.verdict) for c in refused],
    )


def _what_to_do(check: SignatureCheck, policy: SignaturePolicy, since: str | None) -> str:
    if since is not None:
        sign = (
            "re-sign the commits with an allowed key "
            f"(`git rebase --exec 'git commit --amend --no-edit -S' {since[:12]}`) and push"
        )
    else:
        sign = "sign it with an allowed key (`git commit --amend --no-edit -S`) and push"
    if check.verdict == "B":
        return f"find out who changed it, then {sign}"
    if check.verdict in ("X", "Y", "R"):
        return sign
    if check.verdict not in ("U", "E") or not check.key:
        return sign
    if _is_ssh(check):
        if policy.allowed_signers is None:
            trust = "set signatures.allowedSigners in the site policy and add its key there"
        else:
            trust = f"add its public key to the allowed signers file {policy.allowed_signers}"
    elif policy.gpg_home is None:
        trust = "set signatures.gpgHome in the site policy to a GPG home that holds and trusts it"
    else:
        trust = f"import and trust it in the GPG home {policy.gpg_home}"
    return f"{sign}, or, if this key may sign desired state, {trust}"
