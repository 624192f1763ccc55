"""`certgit audit verify` against an attacker who can write state.db but not read the key.

The tampering is done the way such an attacker would: sqlite3 on the file, the
triggers dropped first, hashes recomputed with the published formula (or with
a key of their own). Issue 14's acceptance: verify exits 1 on a row edited
with the chain recomputed, the last 3 rows deleted with the head rewritten, and
state.db replaced by an older copy; a crash between commit and head-file write
is not tampering.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from certgit.reconciler.store.anchors import AuditKey
from certgit.reconciler.store.audit import Subject, chain_hash, chain_mac
from tests.e2e.conftest import SAMPLE, Result
from tests.gitutil import commit_files

Hasher = Callable[[str, dict, dict], str]


def _new_plan(cli, sample_git, i: int) -> None:
    """Commit a SAN change and plan it: one more audit entry (plan.recorded)."""
    repo, path = sample_git
    www = (SAMPLE / "certificates" / "www.yaml").read_bytes()
    changed = www.replace(b"example.com\n", f"example.com\n    - n{i}.example.com\n".encode(), 1)
    commit_files(repo, {"certificates/www.yaml": changed}, f"san {i}")
    assert cli("plan", "--repo", str(path)).code == 0


@pytest.fixture
def logged(cli, sample_git, tmp_path: Path) -> Path:
    """A state directory whose audit log holds 6 entries: init, then 5 recorded plans."""
    assert cli("init").code == 0
    for i in range(5):
        _new_plan(cli, sample_git, i)
    ok = cli("audit", "verify")
    assert ok.code == 0 and "6 entries verified" in ok.out, ok.out + ok.err
    return tmp_path / "state"


def _db(state: Path) -> closing[sqlite3.Connection]:
    conn = sqlite3.connect(state / "state.db", isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        conn.execute(f'DROP TRIGGER "{name}"')
    return closing(conn)


def _rechain(conn: sqlite3.Connection, from_seq: int, hasher: Hasher) -> None:
    """Recompute every hash from `from_seq` on, and the audit_head row."""
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM audit_log ORDER BY seq")]
    prev = "0" * 64
    for row in rows:
        if row["seq"] >= from_seq:
            row["hash"] = hasher(prev, row, json.loads(row["details_json"]))
            conn.execute(
                "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?",
                (prev, row["hash"], row["seq"]),
            )
        prev = row["hash"]
    conn.execute("UPDATE audit_head SET seq = ?, hash = ?", (rows[-1]["seq"], prev))


def _row_args(row: dict) -> tuple:
    """What the chain formula takes, from a raw row (subject columns as a Subject)."""
    columns = Subject(
        **{k: row[k] for k in ("certificate", "target", "plan_hash", "action_id", "version")}
    )
    return row["seq"], row["at"], row["actor"], row["action"], row["subject"], columns


def _sha256(prev: str, row: dict, details: dict) -> str:
    seq, at, actor, action, subject, columns = _row_args(row)
    return chain_hash(prev, seq, at, actor, action, subject, details, columns)


def _wrong_key(prev: str, row: dict, details: dict) -> str:
    seq, at, actor, action, subject, columns = _row_args(row)
    key = AuditKey.derive(b"\x07" * 32)  # a key of the attacker's own
    return chain_mac(key, prev, seq, at, actor, action, subject, details, columns)


def _tampered(r: Result, *phrases: str) -> None:
    assert r.code == 1, r.out + r.err
    assert r.err.startswith("audit log TAMPERED: "), r.err
    for phrase in phrases:
        assert phrase in r.err, r.err


@pytest.mark.parametrize("hasher", [_sha256, _wrong_key], ids=["sha256", "hmac-wrong-key"])
def test_edited_row_with_recomputed_chain(cli, logged: Path, hasher: Hasher) -> None:
    with _db(logged) as db:
        db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
        _rechain(db, 2, hasher)
    _tampered(
        cli("audit", "verify"),
        "audit log broken at seq 2: MAC mismatch",
        "Restore the state store from a backup",
    )
    r = cli("audit", "verify", "--json")
    assert r.code == 1 and json.loads(r.out)["error"]["type"] == "AuditChainBroken"


def test_last_three_rows_deleted_and_head_rewritten(cli, logged: Path) -> None:
    with _db(logged) as db:
        db.execute("DELETE FROM audit_log WHERE seq > 3")
        db.execute(
            "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE seq = 3)"
        )
    _tampered(
        cli("audit", "verify"),
        f"audit head file {logged / 'audit.head'} records seq 6, but state.db ends at seq 3",
        "entries were deleted from the end of the log",
        "certgit audit anchor --reason",
    )


def test_state_db_replaced_by_an_older_copy(cli, sample_git, logged: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    with (
        closing(sqlite3.connect(logged / "state.db")) as live,
        closing(sqlite3.connect(old)) as copy,
    ):
        live.backup(copy)
    _new_plan(cli, sample_git, 7)  # entry 7
    for name in ("state.db-wal", "state.db-shm"):
        (logged / name).unlink(missing_ok=True)
    shutil.copyfile(old, logged / "state.db")
    _tampered(
        cli("audit", "verify"),
        "records seq 7, but state.db ends at seq 6",
        "state.db was replaced by an older copy",
        "put back the audit.head saved with it",
    )
    # The operator who put the copy back on purpose accepts it, and that is recorded.
    r = cli("audit", "anchor", "--reason", "restored last night's backup", "--as", "alice")
    assert r.code == 0, r.out + r.err
    assert "audit log re-anchored: 7 entries verified" in r.out
    ok = cli("audit", "verify")
    assert ok.code == 0 and "7 entries verified" in ok.out, ok.err
    last = json.loads(cli("audit", "show", "--json", "--limit", "1").out)["entries"][0]
    assert (last["action"], last["actor"]) == ("audit.anchored", "alice")
    assert last["details"]["head_file_was"]["seq"] == 7


def test_head_file_deleted(cli, logged: Path) -> None:
    (logged / "audit.head").unlink()
    _tampered(
        cli("audit", "verify"),
        f"audit head file {logged / 'audit.head'} is missing, but the log has 6 entries",
    )


def test_crash_between_commit_and_head_file_is_not_tampering(cli, sample_git, logged: Path) -> None:
    before = (logged / "audit.head").read_bytes()
    _new_plan(cli, sample_git, 7)  # entry 7 committed ...
    (logged / "audit.head").write_bytes(before)  # ... and its head-file write never happened
    r = cli("audit", "verify")
    assert r.code == 0, r.err
    assert "7 entries verified" in r.out and "at seq 6" in r.out
    assert "1 entry behind state.db" in r.err


def test_anchor_refuses_an_edited_row(cli, logged: Path) -> None:
    with _db(logged) as db:
        db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 4")
        _rechain(db, 4, _sha256)
    r = cli("audit", "anchor", "--reason", "hide it")
    assert r.code == 1
    assert "not re-anchored: audit log broken at seq 4: MAC mismatch" in r.err
