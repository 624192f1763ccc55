"""The attack suite's lab: a good desired state applied under a safe site policy.

`Lab` is a real Git repository, a state directory and a site policy: the
built-in defaults (CERTGIT_SITE_POLICY removed, no /etc/certgit/site.toml) or
the strict policy `strict_policy_text` writes (its own roots, an operator
hook directory, one endpoint, tight limits). The good commit is applied once
per lab; each attack is a commit pushed on top of it (its parent is always the
good commit) and run through `validate`, `plan`, `apply` and `status` with the
real CLI, in the checkout as working directory (the adversarial case for
relative paths and ./certgit.toml). `Lab.refused` asserts the three things
every attack must show:

1. refused: `validate` and `apply` exit 1, `validate` prints FILE:LINE:COL
   and the rule;
2. nothing written or run: every file under the watched trees (the allowed
   root, the state directory's own files, the bait directory outside) keeps
   its bytes, mode and mtime, and no sentinel appears;
3. the last good commit stays in force: `status --json` reports it (degraded:
   invalid head), the store's last good/applied commit is unchanged, and the
   deployed certificate is still the good commit's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pygit2
import pytest

from certgit.reconciler.cli import main
from certgit.reconciler.sitepolicy import DEFAULT_SITE_POLICY
from tests.gitutil import commit_files, init_repo

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

# Environment variables that would point the CLI elsewhere than the lab.
_AMBIENT = (
    "CERTGIT_REPO",
    "CERTGIT_REF",
    "CERTGIT_PATH",
    "CERTGIT_CONFIG",
    "CERTGIT_STATE_DIR",
    "CERTGIT_SITE_POLICY",
    "CERTGIT_ALLOW_HISTORY_REWRITE",
)
# Files of the state directory that change on every read-only command (the store, its
# document cache, the Git mirror, the audit head): not evidence of a deploy.
_VOLATILE = ("state.db", "state.db-wal", "state.db-shm", "state.db-journal", "audit.head")
_VOLATILE_DIRS = ("cache", "git", "mirror")

ISSUER = """\
apiVersion: certgit.dev/v1
kind: Issuer
metadata: {name: ca}
spec:
  type: local-ca
  localCA: {commonName: attack suite CA}
"""


def target_yaml(
    name: str,
    directory: str,
    *,
    settings: str = "",
    spec: str = "",
    labels: str = "",
    type_: str = "files",
) -> str:
    """A Target; `settings`/`spec` are extra lines (indented by the caller: 4 / 2 spaces)."""
    label_line = f"  labels: {labels}\n" if labels else ""
    directory_line = f"    directory: {directory}\n" if directory else ""
    return (
        "apiVersion: certgit.dev/v1\nkind: Target\n"
        f"metadata:\n  name: {name}\n{label_line}"
        f"spec:\n  type: {type_}\n{spec}"
        f"  settings:\n{directory_line}{settings}"
    )


def certificate_yaml(
    name: str,
    target: str = "web",
    *,
    dns: Sequence[str] = (),
    spec: str = "",
    binding: str = "",
    labels: str = "",
) -> str:
    """A Certificate deployed to `target`; `spec` lines (2 spaces), `binding` lines (6 spaces)."""
    names = ", ".join(dns or (f"{name}.example.test",))
    label_line = f"  labels: {labels}\n" if labels else ""
    return (
        "apiVersion: certgit.dev/v1\nkind: Certificate\n"
        f"metadata:\n  name: {name}\n{label_line}"
        f"spec:\n  dnsNames: [{names}]\n  issuerRef: {{name: ca}}\n{spec}"
        f"  deployTo:\n    - target: {target}\n{binding}"
    )


def position(files: Mapping[str, str | bytes | None], path: str, needle: str) -> str:
    """`path:LINE:COL` of the first occurrence of `needle` in the committed `path`."""
    text = files[path]
    assert text is not None, path
    text = text.decode() if isinstance(text, bytes) else text
    for number, line in enumerate(text.splitlines(), 1):
        column = line.find(needle)
        if column >= 0:
            return f"{path}:{number}:{column + 1}"
    raise AssertionError(f"{needle!r} is not in {path}")


def strict_policy_text(lab: Lab) -> str:
    """A strict site policy: nothing built in, one root, one hook dir, one endpoint."""
    return f"""\
# The attack suite's strict site policy (tests/security/conftest.py).
targetTypes = ["files", "caddy"]
issuers = ["local-ca"]

[paths]
builtin = false
allow = ["{lab.root}", "{lab.tmp / 'policy'}"]  # the policy's own directory: see the attacks

[commands]
builtin = false
allow = [{{ under = "{lab.hooks}" }}, ["/usr/bin/true"]]

[endpoints]
loopback = false
allow = ["127.0.0.1:8443"]

[limits]
maxCertificates = 3
maxSansPerCertificate = 5
maxDuration = "90d"
keyTypes = ["ECDSA-256", "ECDSA-384"]

[secrets]
env = ["ALLOWED_SECRET_*"]
files = ["{lab.secrets}"]
"""


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Attack:
    """One malicious commit and what its refusal must say.

    `at` is the FILE:LINE:COL the problem must name (see `position`), `rule`
    a phrase of the message naming the rule broken. `sentinels` must not exist
    before or after (a write or a command run would create them); they are
    removed afterwards if a bug created them, so a failure does not damage the host.
    """

    files: Mapping[str, str | bytes | None]
    at: str
    rule: str | Sequence[str]
    sentinels: Sequence[Path] = ()
    after_commit: Callable[[], None] | None = None  # e.g. make a committed script executable


@dataclass
class Lab:
    tmp: Path
    kind: str  # "defaults" or "strict"
    policy: Path | None = None
    good: str = ""
    cwd: Path | None = None  # the CLI's working directory; None: the checkout
    baseline: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    # -- layout --------------------------------------------------------------------------

    @property
    def repo_path(self) -> Path:
        return self.tmp / "desired"

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    @property
    def root(self) -> Path:
        """The directory file targets may write under."""
        return self.state / "targets" if self.kind == "defaults" else self.tmp / "allowed"

    @property
    def web(self) -> Path:
        return self.root / "web"

    @property
    def web_directory(self) -> str:
        """The good Target's `directory` as written in Git."""
        return "targets/web" if self.kind == "defaults" else str(self.web)

    @property
    def hooks(self) -> Path:
        """The operator's hook directory (allowed by the strict policy)."""
        return self.tmp / "hooks"

    @property
    def secrets(self) -> Path:
        return self.tmp / "secrets"

    @property
    def outside(self) -> Path:
        """Bait outside every allowed root: its files must keep their bytes."""
        return self.tmp / "outside"

    @property
    def sentinels(self) -> Path:
        """Commands an attack would run touch files here; it must stay empty."""
        return self.tmp / "sentinels"

    def sentinel(self, name: str) -> Path:
        return self.sentinels / name

    # -- the repository -------------------------------------------------------------------

    def base_files(self) -> dict[str, str]:
        return {
            "issuer.yaml": ISSUER,
            "targets/web.yaml": target_yaml("web", self.web_directory),
            "certs/www.yaml": certificate_yaml("www"),
        }

    def commit(
        self, files: Mapping[str, str | bytes | None], message: str, *, on_good: bool = True
    ) -> str:
        repo = pygit2.Repository(str(self.repo_path))
        data = {k: (v.encode() if isinstance(v, str) else v) for k, v in files.items()}
        return commit_files(repo, data, message, parents=[self.good] if on_good else None)

    # -- the CLI --------------------------------------------------------------------------

    def run(self, *args: str) -> Result:
        """`certgit ARGS` in-process against this lab, with no ambient CERTGIT_* settings."""
        flags = ["--repo", str(self.repo_path), "--state-dir", str(self.state)]
        if self.policy is not None:
            flags += ["--site-policy", str(self.policy)]
        out, err = io.StringIO(), io.StringIO()
        with _environment(self.cwd or self.repo_path):
            code = main([*args, *flags], out, err)
        return Result(code, out.getvalue(), err.getvalue())

    def source_state(self, key: str) -> str | None:
        with contextlib.closing(sqlite3.connect(self.state / "state.db")) as db:
            row = db.execute("SELECT value FROM source_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def fingerprint(self, path: Path) -> str:
        """SHA-256 of the leaf in a deployed PEM file."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = x509.load_pem_x509_certificate(path.read_bytes())
        return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()

    # -- the disk -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, tuple[str, int, int]]:
        """Every watched file: path -> (sha256, mode, mtime_ns); symlinks by their target."""
        out: dict[str, tuple[str, int, int]] = {}
        for top in (self.state, self.root, self.outside, self.sentinels, self.hooks):
            if not top.exists():
                continue
            for dirpath, dirnames, filenames in os.walk(top):
                here = Path(dirpath)
                if here == self.state:
                    dirnames[:] = [d for d in dirnames if d not in _VOLATILE_DIRS]
                    filenames = [f for f in filenames if f not in _VOLATILE]
                for name in [*filenames, *dirnames]:
                    path = here / name
                    info = path.lstat()
                    if stat.S_ISLNK(info.st_mode):
                        out[str(path)] = ("-> " + os.readlink(path), info.st_mode, 0)
                    elif stat.S_ISREG(info.st_mode):
                        digest = hashlib.sha256(path.read_bytes()).hexdigest()
                        out[str(path)] = (digest, info.st_mode, info.st_mtime_ns)
                    else:
                        out[str(path)] = ("dir", info.st_mode, 0)
        return out

    # -- the assertion --------------------------------------------------------------------

    def refused(self, attack: Attack) -> str:
        """Commit `attack` on top of the good commit and assert it changes nothing."""
        for path in attack.sentinels:
            if os.path.lexists(path):
                pytest.skip(f"{path} exists on this machine; the attack's sentinel must not")
        rules = [attack.rule] if isinstance(attack.rule, str) else list(attack.rule)
        before = self.snapshot()
        assert before == self.baseline, "the lab changed before this attack ran"
        served = self.fingerprint(self.web / "www.crt")
        try:
            bad = self.commit(attack.files, "attack")
            if attack.after_commit is not None:
                attack.after_commit()
            keep = f"the last good commit {self.good[:12]} stays in force"

            v = self.run("validate")
            assert v.code == EXIT_ERROR, v.text
            problems = [line for line in v.out.splitlines() if line.startswith(attack.at + ": ")]
            assert problems, f"no problem at {attack.at}:\n{v.text}"
            assert any(all(rule in p for rule in rules) for p in problems), (rules, v.text)
            assert keep in v.err, v.err

            p = self.run("plan")
            assert p.code == EXIT_OK, p.text
            assert f"HEAD {bad[:12]} is invalid" in p.err and keep in p.err, p.err
            assert "No changes" in p.out, p.out

            a = self.run("apply", "--as", "attacker")
            assert a.code == EXIT_ERROR, a.text
            assert f"HEAD was not applied: the last good commit {self.good[:12]}" in a.out
            assert keep in a.err, a.err

            s = self.run("status", "--json")
            assert s.code == EXIT_OK, s.text
            status = json.loads(s.out)
            assert status["commit"] == self.good
            assert status["degraded"]["reason"] == "invalid-head", status["degraded"]
            assert status["degraded"]["head"] == bad
            assert {(b["certificate"], b["drift"]) for b in status["bindings"]} == {
                ("www", "in-sync")
            }

            assert self.source_state("last_good_commit") == self.good
            assert self.source_state("last_applied_commit") == self.good
            assert self.snapshot() == before
            assert self.fingerprint(self.web / "www.crt") == served
            for path in attack.sentinels:
                assert not os.path.lexists(path), f"{path} was written"
            assert not any(self.sentinels.iterdir()), list(self.sentinels.iterdir())
        finally:
            for path in attack.sentinels:
                _remove(path)
            self.restore_checkout(attack.files)
        return bad

    def restore_checkout(self, files: Mapping[str, object]) -> None:
        """Put the good commit's version of `files` back in the work tree (the CLI's cwd)."""
        repo = pygit2.Repository(str(self.repo_path))
        tree = repo[self.good].peel(pygit2.Commit).tree
        for name in files:
            path = self.repo_path / name
            if name in tree:
                path.write_bytes(repo[tree[name].id].data)
            else:
                path.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    """Undo what a successful attack left on the host (only ever a sentinel path)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def _environment(cwd: Path) -> Iterator[None]:
    """No ambient CERTGIT_* settings and `cwd` as the working directory, restored after."""
    saved = {name: os.environ.pop(name) for name in _AMBIENT if name in os.environ}
    here = os.getcwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(here)
        os.environ.update(saved)


def skip_if_a_machine_policy(kind: str) -> None:
    if kind == "defaults" and DEFAULT_SITE_POLICY.exists():
        pytest.skip(
            f"{DEFAULT_SITE_POLICY} exists on this machine and would apply instead of the "
            "built-in defaults"
        )


def make_lab(tmp: Path, kind: str) -> Lab:
    """A lab whose good commit is applied (www deployed to web)."""
    skip_if_a_machine_policy(kind)
    lab = Lab(tmp, kind)
    for directory in (lab.outside, lab.sentinels, lab.hooks, lab.secrets, lab.root):
        directory.mkdir(parents=True, exist_ok=True)
    (lab.outside / "victim.pem").write_bytes(b"operator's file: must keep these bytes\n")
    if kind == "strict":
        lab.policy = tmp / "policy" / "site.toml"
        lab.policy.parent.mkdir()
        lab.policy.write_text(strict_policy_text(lab))
        lab.policy.chmod(0o600)
    init_repo(lab.repo_path)
    lab.good = lab.commit(lab.base_files(), "good desired state", on_good=False)
    a = lab.run("apply", "--as", "operator")
    assert a.code == EXIT_OK, a.text
    assert (lab.web / "www.crt").is_file(), a.text
    assert lab.source_state("last_applied_commit") == lab.good
    lab.baseline = lab.snapshot()
    return lab


@pytest.fixture(scope="module", params=["defaults", "strict"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """One applied lab per module and policy kind, shared by its attacks (all refused)."""
    return make_lab(tmp_path_factory.mktemp(f"lab-{request.param}"), request.param)
