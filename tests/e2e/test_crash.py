"""Crash test: `certgit apply` on 20 `files` targets, killed with SIGKILL at random moments.

Every round commits a SAN change to all 20 certificates (so the apply issues
20 new versions and redeploys 20 targets), starts `certgit apply` in a
subprocess, kills it after a random delay drawn from the observed duration of
a full apply (seeded: round i uses seed i), then runs `certgit apply` again and
checks that it converged:

- every target's files are entirely the latest version (certificate, key and
  fullchain all from one version), and no apply journal is left behind;
- the recorded deployment of every binding names that same version;
- `PRAGMA integrity_check` is ok;
- every reload that ever ran (each target's reloadCommand appends the SHA-256
  of the files it saw) saw one version's files, never a mix.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from certgit.reconciler.store import Store
from tests.gitutil import commit_files, init_repo

TARGETS = 20
ROUNDS = 30
ROLES = ("crt", "key", "fullchain.pem")

RELOAD_SH = """#!/bin/sh
# $1: target directory, $2: log file. One line per call: the sha256 of each file seen.
line="reload"
for f in "$1"/c.crt "$1"/c.key "$1"/c.fullchain.pem; do
  if [ -f "$f" ]; then line="$line $(sha256sum < "$f" | cut -c1-64)"; else line="$line absent"; fi
done
echo "$line" >> "$2"
"""


def _desired(root: Path, round_no: int) -> dict[str, bytes | None]:
    files: dict[str, bytes | None] = {
        "issuer.yaml": (
            b"apiVersion: certgit.dev/v1\nkind: Issuer\nmetadata: {name: ca}\n"
            b"spec:\n  type: local-ca\n  localCA: {commonName: crash test CA}\n"
        )
    }
    for i in range(TARGETS):
        name = f"t{i:02d}"
        files[f"targets/{name}.yaml"] = (
            "apiVersion: certgit.dev/v1\nkind: Target\n"
            f"metadata: {{name: {name}}}\n"
            "spec:\n  type: files\n  settings:\n"
            f"    directory: targets/{name}\n"
            "    files: {certificate: c.crt, key: c.key, fullchain: c.fullchain.pem, chain: null}\n"
            f"    reloadCommand: [/bin/sh, {root / 'reload.sh'}, "
            f"{root / 'state' / 'targets' / name}, {root / 'logs' / name}.log]\n"
        ).encode()
        files[f"certificates/c{i:02d}.yaml"] = (
            "apiVersion: certgit.dev/v1\nkind: Certificate\n"
            f"metadata: {{name: c{i:02d}}}\n"
            "spec:\n"
            f"  dnsNames: [c{i:02d}.example.com, r{round_no}.c{i:02d}.example.com]\n"
            "  issuerRef: {name: ca}\n"
            f"  deployTo: [{{target: {name}}}]\n"
        ).encode()
    return files


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _env(root: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CERTGIT_", "GIT_"))
    }
    env.update(
        CERTGIT_REPO=str(root / "repo"),
        CERTGIT_STATE_DIR=str(root / "state"),
        HOME=str(root / "home"),
        XDG_CONFIG_HOME=str(root / "home"),
        GIT_CONFIG_NOSYSTEM="1",
        # the suite's site policy (tests/conftest.py): it allows the reload.sh hook
        CERTGIT_SITE_POLICY=os.environ["CERTGIT_SITE_POLICY"],
    )
    return env


def _apply(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "certgit.reconciler", "apply", "--as", "crash-test"],
        env=_env(root),
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _converge(root: Path) -> str:
    proc = _apply(root)
    out, _ = proc.communicate(timeout=180)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


def _version_files(store: Store) -> dict[str, tuple[str, int]]:
    """sha256 of every file content any version produces -> (certificate, version)."""
    out: dict[str, tuple[str, int]] = {}
    for i in range(TARGETS):
        cert = f"c{i:02d}"
        for v in store.versions(cert, include_retired=True):
            cert_pem, chain_pem, key_pem = store.version_material(cert, v.version)
            leaf = cert_pem if cert_pem.endswith(b"\n") else cert_pem + b"\n"
            for data in (cert_pem, key_pem, leaf + chain_pem):
                out[_sha(data)] = (cert, v.version)
    return out


def _check(root: Path, round_no: int) -> None:
    state = root / "state"
    # closing(): a connection left open in this process would share SQLite's per-inode
    # lock and WAL-index state with the Store opened below.
    with closing(sqlite3.connect(state / "state.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        recorded = {
            (c, t): (fp, v)
            for c, t, fp, v in db.execute(
                "SELECT certificate, target, fingerprint, version FROM deployments"
            )
        }
    with Store.open(state) as store:
        by_sha = _version_files(store)
        latest = {f"c{i:02d}": store.versions(f"c{i:02d}")[-1] for i in range(TARGETS)}
    for i in range(TARGETS):
        cert, target = f"c{i:02d}", f"t{i:02d}"
        directory = state / "targets" / target
        owners = {by_sha.get(_sha((directory / f"c.{role}").read_bytes())) for role in ROLES}
        assert owners == {(cert, latest[cert].version)}, f"round {round_no}: {target} {owners}"
        assert recorded[(cert, target)] == (latest[cert].fingerprint, latest[cert].version)
        assert not (state / "work" / target / "journal.json").exists()
        for line in (root / "logs" / f"{target}.log").read_text().splitlines():
            shas = line.split()[1:]
            seen = {by_sha.get(s) for s in shas}
            assert len(shas) == 3 and len(seen) == 1 and None not in seen, (
                f"round {round_no}: a reload of {target} saw a mixed set: {seen}"
            )


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs /bin/sh")
def test_sigkill_during_apply_always_converges(tmp_path: Path) -> None:
    root = tmp_path
    (root / "logs").mkdir()
    (root / "home").mkdir()
    (root / "reload.sh").write_text(RELOAD_SH)
    repo = init_repo(root / "repo")
    commit_files(repo, _desired(root, 0), "round 0")

    started = time.monotonic()
    _converge(root)
    full = time.monotonic() - started  # a full apply: 20 issuances, 20 deploys
    _check(root, 0)

    kills = 0
    for round_no in range(1, ROUNDS + 1):
        commit_files(repo, _desired(root, round_no), f"round {round_no}")
        rng = random.Random(round_no)
        proc = _apply(root)
        try:
            proc.wait(timeout=rng.uniform(0.0, full))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
        _converge(root)
        _check(root, round_no)
    # The delays are drawn within a full apply's duration: most rounds must really kill.
    print(f"full apply {full:.2f}s, {kills} kills")
    assert kills >= ROUNDS // 3
