"""The append-only audit log, keyed and anchored: tampering that bypasses the triggers is caught."""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import logging
import sqlite3
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certgit.reconciler.errors import AuditChainBroken, StoreError
from certgit.reconciler.model import canonical_json, sha256_hex
from certgit.reconciler.store import (
    GENESIS_HASH,
    AuditEvent,
    Store,
    current_version,
    latest_version,
)
from certgit.reconciler.store.anchors import AuditKey, ChainHead, read_head_file, syslog_line
from certgit.reconciler.store.audit import (
    REDACTED_TEXT,
    AuditEntry,
    AuditRecord,
    chain_hash,
    chain_mac,
    redact,
    verify_chain,
)
from certgit.reconciler.store.migrate import available_migrations

# The modules, not the package's re-exported functions of the same names.
migrate_module = importlib.import_module("certgit.reconciler.store.migrate")
audit_module = importlib.import_module("certgit.reconciler.store.audit")

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
KEY = bytes(range(32))
AUDIT_KEY = AuditKey.derive(KEY)
WRONG_KEY = AuditKey.derive(bytes(32))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state", master_key=KEY)
    for i in range(1, 6):
        s.audit(
            f"user{i}",
            "approve",
            f"plan p{i}",
            {"reason": f"change {i}", "fingerprint": f"{i:064x}", "n": i},
            NOW + timedelta(minutes=i),
        )
    yield s
    s.close()


def _drop_triggers(store: Store) -> None:
    store.connection.execute("DROP TRIGGER audit_log_no_update")
    store.connection.execute("DROP TRIGGER audit_log_no_delete")


def _drop_all_triggers(conn: sqlite3.Connection) -> None:
    """What an attacker with write access to state.db does first."""
    names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for (name,) in names:
        conn.execute(f'DROP TRIGGER "{name}"')


Hasher = Callable[[str, dict, dict], str]


def _sha256(prev: str, row: dict, details: dict) -> str:
    return chain_hash(prev, row["seq"], row["at"], row["actor"], row["action"],
                      row["subject"], details)  # fmt: skip


def _mac_with(key: AuditKey) -> Hasher:
    def mac(prev: str, row: dict, details: dict) -> str:
        return chain_mac(key, prev, row["seq"], row["at"], row["actor"], row["action"],
                         row["subject"], details)  # fmt: skip

    return mac


def _rechain(
    conn: sqlite3.Connection, from_seq: int, hasher: Hasher, alg: str | None = None
) -> None:
    """Recompute every hash from `from_seq` on and the audit_head row, as a forger would
    (rows without subject columns only, which is what the fixture writes)."""
    _drop_all_triggers(conn)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM audit_log ORDER BY seq")]
    conn.row_factory = None
    prev = GENESIS_HASH
    for row in rows:
        if row["seq"] >= from_seq:
            digest = hasher(prev, row, json.loads(row["details_json"]))
            conn.execute(
                "UPDATE audit_log SET prev_hash = ?, hash = ?, alg = COALESCE(?, alg) "
                "WHERE seq = ?", (prev, digest, alg, row["seq"]),
            )  # fmt: skip
            row["hash"] = digest
        prev = row["hash"]
    conn.execute("UPDATE audit_head SET seq = ?, hash = ?", (rows[-1]["seq"], prev))


def _head_file(store: Store) -> dict:
    return json.loads(store.audit_head_file.read_text())


def _assert_integrity(store: Store) -> None:
    assert store.connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_append_and_verify(store: Store) -> None:
    assert store.verify_audit() == 5
    rows = store.audit_rows()
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev_hash"] == GENESIS_HASH
    assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, 5))
    assert rows[2]["details"] == {"reason": "change 3", "fingerprint": f"{3:064x}", "n": 3}
    assert rows[2]["at"] == NOW + timedelta(minutes=3)
    assert rows[2]["actor"] == "user3"
    assert [r["seq"] for r in store.audit_rows(since_seq=3)] == [4, 5]
    assert [r["seq"] for r in store.audit_rows(limit=2)] == [1, 2]
    # The stored hash is exactly the documented formula: an HMAC under K_chain.
    r = rows[0]
    expected = chain_mac(
        AUDIT_KEY, GENESIS_HASH, 1, "2026-01-02T03:05:05.000000+00:00", "user1", "approve",
        "plan p1", r["details"],
    )  # fmt: skip
    assert r["hash"] == expected
    assert {row["alg"] for row in rows} == {"hmac-sha256"}
    assert store.audit("bob", "release", "nginx", {}, NOW) == 6
    assert store.verify_audit() == 6
    _assert_integrity(store)


def test_empty_log_verifies(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", master_key=bytes(32)) as s:
        assert s.verify_audit() == 0


def test_details_stored_canonically(store: Store) -> None:
    seq = store.audit("a", "b", "c", {"z": 1, "a": [1, 2]}, NOW)
    (text,) = store.connection.execute(
        "SELECT details_json FROM audit_log WHERE seq = ?", (seq,)
    ).fetchone()
    assert text == '{"a":[1,2],"z":1}'


def test_update_blocked_by_trigger(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.connection.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.connection.execute("DELETE FROM audit_log WHERE seq = 5")
    assert store.verify_audit() == 5


def test_insert_that_skips_the_head_blocked(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="chain head"):
        store.connection.execute(
            "INSERT INTO audit_log (seq, at, actor, action, subject, details_json, prev_hash, "
            "hash, alg) VALUES (9, 'x', 'x', 'x', 'x', '{}', ?, 'x', 'hmac-sha256')",
            (GENESIS_HASH,),
        )
    with pytest.raises(sqlite3.IntegrityError, match="advance"):
        store.connection.execute("UPDATE audit_head SET seq = 4")


def test_edited_row_detected(store: Store) -> None:
    _drop_triggers(store)
    store.connection.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    with pytest.raises(AuditChainBroken, match="seq 3: MAC mismatch"):
        store.verify_audit()
    _assert_integrity(store)


def test_edited_details_detected(store: Store) -> None:
    _drop_triggers(store)
    store.connection.execute(
        'UPDATE audit_log SET details_json = \'{"n":2,"reason":"nothing"}\' WHERE seq = 2'
    )
    with pytest.raises(AuditChainBroken, match="seq 2: MAC mismatch"):
        store.verify_audit()


def test_rehashed_row_still_detected(store: Store) -> None:
    # A forger who recomputes only the edited row's hash is caught at that row: no key.
    _drop_triggers(store)
    row = store.audit_rows()[2]
    forged = chain_hash(row["prev_hash"], 3, "2026-01-02T03:07:05.000000+00:00", "mallory",
                        "approve", "plan p3", row["details"])  # fmt: skip
    store.connection.execute(
        "UPDATE audit_log SET actor = 'mallory', hash = ? WHERE seq = 3", (forged,)
    )
    with pytest.raises(AuditChainBroken, match="seq 3: MAC mismatch"):
        store.verify_audit()


def test_deleted_middle_row_detected(store: Store) -> None:
    _drop_triggers(store)
    store.connection.execute("DELETE FROM audit_log WHERE seq = 3")
    with pytest.raises(AuditChainBroken, match="seq 3: row missing"):
        store.verify_audit()
    _assert_integrity(store)


def test_deleted_last_row_detected(store: Store) -> None:
    _drop_triggers(store)
    store.connection.execute("DELETE FROM audit_log WHERE seq = 5")
    with pytest.raises(AuditChainBroken, match="seq 5: head mismatch"):
        store.verify_audit()
    _assert_integrity(store)


def test_deleted_first_row_detected(store: Store) -> None:
    _drop_triggers(store)
    store.connection.execute("DELETE FROM audit_log WHERE seq = 1")
    with pytest.raises(AuditChainBroken, match="seq 1"):
        store.verify_audit()


def test_deleted_head_detected(store: Store) -> None:
    store.connection.execute("DROP TRIGGER audit_head_no_delete")
    store.connection.execute("DELETE FROM audit_head")
    with pytest.raises(AuditChainBroken, match="head is missing"):
        store.verify_audit()


def test_private_key_words_stored_verbatim(store: Store) -> None:
    # HAProxy 2.6's validate failure: recording it must never abort a run.
    error = "[ALERT] (1) : No Private Key found in '/x'"
    seq = store.audit("alice", "deploy", "web", {"error": error, "also": "private key"}, NOW)
    assert store.audit_rows(since_seq=seq - 1)[0]["details"] == {
        "error": error,
        "also": "private key",
    }
    assert store.verify_audit() == 6


def test_pem_key_block_inside_error_is_redacted(store: Store) -> None:
    secret = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n"
    seq = store.audit("alice", "deploy", "web", {"error": f"nginx said: {secret}and gave up"}, NOW)
    (text,) = store.connection.execute(
        "SELECT details_json FROM audit_log WHERE seq = ?", (seq,)
    ).fetchone()
    assert "MIGHAgEAMBMG" not in text and "PRIVATE KEY" not in text
    details = store.audit_rows(since_seq=seq - 1)[0]["details"]
    assert details == {"error": "nginx said: [redacted PEM block]\nand gave up"}
    assert store.verify_audit() == 6


def test_nested_details_are_redacted(store: Store) -> None:
    key = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----"
    cert = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----"
    details = {
        "material": {"key": key, "list": ["ok", cert, {"deep": (1, key)}]},
        "n": 3,
        "flag": True,
        "none": None,
    }
    seq = store.audit("alice", "deploy", "web", details, NOW)
    assert store.audit_rows(since_seq=seq - 1)[0]["details"] == {
        "material": {
            "key": "[redacted PEM block]",
            "list": ["ok", "[redacted PEM block]", {"deep": [1, "[redacted PEM block]"]}],
        },
        "n": 3,
        "flag": True,
        "none": None,
    }


def test_redact_edge_cases() -> None:
    # An unterminated block (truncated output) is cut to the end of the string.
    assert redact("out: -----BEGIN RSA PRIVATE KEY-----\nMIIE") == "out: [redacted PEM block]"
    # Two blocks, text between them kept.
    assert (
        redact("a -----BEGIN X-----\n1\n-----END X----- b -----BEGIN Y-----\n2\n-----END Y----- c")
        == "a [redacted PEM block] b [redacted PEM block] c"
    )
    # A mangled header that slips past the block pattern: the whole string goes.
    mangled = "x -----BEGIN\nPRIVATE KEY-----\nMIGH"
    assert redact(mangled) == REDACTED_TEXT
    assert redact({"-----BEGIN A-----\nk\n-----END A-----": 1}) == {"[redacted PEM block]": 1}
    assert redact(5) == 5 and redact("No private key") == "No private key"


def test_verify_chain_pure() -> None:
    h1 = chain_hash(GENESIS_HASH, 1, "t", "a", "x", "s", {})
    entries = [AuditEntry(1, "t", "a", "x", "s", "{}", GENESIS_HASH, h1)]
    report = verify_chain(entries, 1, h1, keyed_from=2)  # one row from before keying
    assert (report.entries, report.legacy, report.anchor_seq) == (1, 1, None)
    with pytest.raises(AuditChainBroken, match="seq 1: the row claims an unkeyed"):
        verify_chain(entries, 1, h1)  # by default every row must be keyed
    with pytest.raises(AuditChainBroken, match="head mismatch"):
        verify_chain(entries, 2, "f" * 64, keyed_from=2)
    broken = [AuditEntry(1, "t", "a", "x", "s", "not json", GENESIS_HASH, h1)]
    with pytest.raises(AuditChainBroken, match="seq 1: hash mismatch"):
        verify_chain(broken, 1, h1, keyed_from=2)
    m1 = chain_mac(AUDIT_KEY, GENESIS_HASH, 1, "t", "a", "x", "s", {})
    keyed = [AuditEntry(1, "t", "a", "x", "s", "{}", GENESIS_HASH, m1, alg="hmac-sha256")]
    assert verify_chain(keyed, 1, m1, AUDIT_KEY, ChainHead(1, m1)).anchor_seq == 1
    with pytest.raises(ValueError, match="AuditKey"):
        verify_chain(keyed, 1, m1)


# ----------------------------------------------------------------- subject columns (0003)


def test_subject_columns_round_trip_and_filter(store: Store) -> None:
    approved = store.audit(
        "alice", AuditEvent.PLAN_APPROVED, "a" * 64, {"reason": "ok"}, NOW,
        plan_hash="a" * 64, action_id="act-1",
    )  # fmt: skip
    deployed = store.audit(
        "certgit", AuditEvent.DEPLOY_COMPLETED, "web", {"plans": ["a" * 64]}, NOW,
        certificate="www", target="web", plan_hash="a" * 64, action_id="act-1", version=2,
    )  # fmt: skip
    # A target's row about several actions lists them in details only.
    several = store.audit(
        "certgit", AuditEvent.DEPLOY_COMPLETED, "api", {"plans": ["a" * 64],
        "actions": ["act-1", "act-2"]}, NOW, target="api",
    )  # fmt: skip
    rows = {r["seq"]: r for r in store.audit_rows(since_seq=5)}
    assert rows[approved]["action"] == "plan.approved"
    assert (rows[approved]["plan_hash"], rows[approved]["action_id"]) == ("a" * 64, "act-1")
    assert rows[approved]["certificate"] is None
    assert {k: rows[deployed][k] for k in ("certificate", "target", "version")} == {
        "certificate": "www", "target": "web", "version": 2,
    }  # fmt: skip
    assert [r["seq"] for r in store.audit_rows(action_id="act-1")] == [approved, deployed, several]
    assert [r["seq"] for r in store.audit_rows(action_id="act-2")] == [several]
    assert [r["seq"] for r in store.audit_rows(certificate="www")] == [deployed]
    assert [r["seq"] for r in store.audit_rows(target="api", since_seq=5)] == [several]
    assert store.verify_audit() == 8


def test_row_without_columns_hashes_as_before(store: Store) -> None:
    # The message of a row without subject columns is the pre-0003 one; only the key is new.
    seq = store.audit("bob", "release", "nginx", {"n": 1}, NOW)
    row = store.audit_rows(since_seq=seq - 1)[0]
    message = row["prev_hash"] + canonical_json(
        [seq, "2026-01-02T03:04:05.000000+00:00", "bob", "release", "nginx", {"n": 1}]
    )
    keyed = hmac.new(AUDIT_KEY.chain, message.encode(), hashlib.sha256).hexdigest()
    assert row["hash"] == keyed != sha256_hex(message)


@pytest.mark.parametrize(
    ("column", "value"),
    [("action_id", "'forged'"), ("plan_hash", "NULL"), ("version", "7"), ("target", "'x'")],
)
def test_edited_subject_column_detected(store: Store, column: str, value: str) -> None:
    store.audit("a", "deploy.completed", "web", {}, NOW, target="web", plan_hash="p",
                action_id="act", version=1)  # fmt: skip
    _drop_triggers(store)
    store.connection.execute(f"UPDATE audit_log SET {column} = {value} WHERE seq = 6")
    with pytest.raises(AuditChainBroken, match="seq 6: MAC mismatch"):
        store.verify_audit()


def test_column_set_on_an_old_row_detected(store: Store) -> None:
    _drop_triggers(store)
    store.connection.execute("UPDATE audit_log SET action_id = 'sneaked-in' WHERE seq = 2")
    with pytest.raises(AuditChainBroken, match="seq 2: MAC mismatch"):
        store.verify_audit()


def _schema_2_store_with_rows(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store at schema 2 holding three audit rows exactly as the schema-2 code wrote them."""
    every = available_migrations()
    monkeypatch.setattr(migrate_module, "available_migrations", lambda: every[:2])
    with Store.open(state, master_key=bytes(32)) as old:
        assert current_version(old.connection) == 2
        prev = GENESIS_HASH
        for seq in (1, 2, 3):
            at = f"2026-01-0{seq}T00:00:00.000000+00:00"
            digest = chain_hash(prev, seq, at, "u", "approve", f"plan p{seq}", {"n": seq})
            with old.transaction() as conn:
                conn.execute(
                    "INSERT INTO audit_log VALUES (?, ?, 'u', 'approve', ?, ?, ?, ?)",
                    (seq, at, f"plan p{seq}", f'{{"n":{seq}}}', prev, digest),
                )
                conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1",
                             (seq, digest))  # fmt: skip
            prev = digest
    monkeypatch.undo()
    assert not (state / "audit.head").exists()


def test_rows_written_before_0003_verify_after_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store at schema 2 with audit rows, migrated to 3 and 4, then new rows with columns."""
    state = tmp_path / "state"
    _schema_2_store_with_rows(state, monkeypatch)
    with Store.open(state, master_key=bytes(32)) as new:
        assert current_version(new.connection) == latest_version() >= 4
        assert new.verify_audit() == 3
        new.audit("alice", AuditEvent.PLAN_APPROVED, "p", {}, NOW, plan_hash="p",
                  action_id="a1")  # fmt: skip
        assert new.verify_audit() == 4
        assert [r["plan_hash"] for r in new.audit_rows()] == [None, None, None, "p"]
        assert [r["alg"] for r in new.audit_rows()] == ["sha256"] * 3 + ["hmac-sha256"]
        assert new.check_audit().legacy == 3


def test_unkeyed_rows_are_anchored_by_the_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0004 writes the head file for the chain as found, so even before the first keyed
    # row the old rows cannot be edited and re-hashed with plain SHA-256 unnoticed.
    state = tmp_path / "state"
    _schema_2_store_with_rows(state, monkeypatch)
    with Store.open(state, master_key=bytes(32)) as new:
        report = new.check_audit()
        assert (report.entries, report.legacy, report.anchor_seq) == (3, 3, 3)
        (marker,) = new.connection.execute(
            "SELECT value FROM meta WHERE key = 'audit_keyed_from'"
        ).fetchone()
        assert json.loads(marker)["seq"] == 4
        new.connection.execute("DROP TRIGGER audit_log_no_update")
        new.connection.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
        _rechain(new.connection, 2, _sha256)
        with pytest.raises(AuditChainBroken, match=r"does not match state.db at seq 3"):
            new.verify_audit()


# ----------------------------------------------------------------- keyed chain (0004)


def test_audit_keys_are_hkdf_of_the_master_key() -> None:
    def hkdf(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(KEY)

    assert AUDIT_KEY.chain == hkdf(b"certgit audit chain v1")
    assert AUDIT_KEY.head == hkdf(b"certgit audit head v1")
    assert len({AUDIT_KEY.chain, AUDIT_KEY.head, KEY}) == 3
    assert KEY.hex() not in repr(AUDIT_KEY) and AUDIT_KEY.chain.hex() not in repr(AUDIT_KEY)


def test_unkeyed_insert_refused_by_trigger(store: Store) -> None:
    head = store.audit_rows()[-1]["hash"]
    with pytest.raises(sqlite3.IntegrityError, match="not keyed"):
        store.connection.execute(
            "INSERT INTO audit_log (seq, at, actor, action, subject, details_json, prev_hash, "
            "hash) VALUES (6, 'x', 'x', 'x', 'x', '{}', ?, 'x')",
            (head,),
        )


def test_chain_recomputed_with_sha256_detected(store: Store) -> None:
    # An attacker without the key edits row 3 and recomputes everything after it.
    _drop_all_triggers(store.connection)
    store.connection.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    _rechain(store.connection, 3, _sha256)
    with pytest.raises(AuditChainBroken, match="seq 3: MAC mismatch") as e:
        store.verify_audit()
    assert "not made with this store's master key" in str(e.value)
    assert "Restore the state store from a backup" in str(e.value)


def test_chain_recomputed_with_a_wrong_key_detected(store: Store) -> None:
    _drop_all_triggers(store.connection)
    store.connection.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    _rechain(store.connection, 3, _mac_with(WRONG_KEY))
    with pytest.raises(AuditChainBroken, match="seq 3: MAC mismatch"):
        store.verify_audit()


def test_rows_relabelled_unkeyed_detected(store: Store) -> None:
    # Claiming the rows predate 0004 does not help: keyed rows came first ...
    _drop_all_triggers(store.connection)
    store.connection.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    _rechain(store.connection, 3, _sha256, alg="sha256")
    with pytest.raises(AuditChainBroken, match="seq 3: the row claims an unkeyed SHA-256 hash"):
        store.verify_audit()


def test_whole_log_relabelled_unkeyed_detected(store: Store) -> None:
    # ... nor relabelling every row: this store was keyed from seq 1, and says so in an
    # authenticated record; deleting that record and the head file does not help ...
    _rechain(store.connection, 1, _sha256, alg="sha256")
    with pytest.raises(AuditChainBroken, match="seq 1: the row claims an unkeyed"):
        store.verify_audit()
    store.audit_head_file.unlink()
    store.connection.execute("DELETE FROM meta WHERE key = 'audit_keyed_from'")
    with pytest.raises(AuditChainBroken, match="seq 1: the row claims an unkeyed"):
        store.verify_audit()
    # ... and the operator's re-anchoring does not launder it either.
    with pytest.raises(AuditChainBroken, match="seq 1: the row claims an unkeyed"):
        store.anchor_audit("alice", "head file was missing", NOW)
    assert not store.audit_head_file.exists()


def test_keyed_from_record_cannot_be_moved(store: Store) -> None:
    _rechain(store.connection, 1, _sha256, alg="sha256")
    forged = json.dumps({"format": "certgit-audit-keyed-from/1", "seq": 9, "mac": "0" * 64})
    store.connection.execute("UPDATE meta SET value = ? WHERE key = 'audit_keyed_from'", (forged,))
    with pytest.raises(AuditChainBroken, match=r"audit_keyed_from in state.db.*not authentic"):
        store.verify_audit()


# ----------------------------------------------------------------- the head file


def test_head_file_written_and_advanced(tmp_path: Path) -> None:
    with Store.open(tmp_path / "state", master_key=KEY) as s:
        path = s.audit_head_file
        assert path == tmp_path / "state" / "audit.head"
        # A fresh store is anchored at seq 0 by migration 0004, before any entry.
        assert read_head_file(path, AUDIT_KEY) == ChainHead(0, GENESIS_HASH)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        seq = s.audit("a", "x", "s", {}, NOW)
        head = _head_file(s)
        assert head.keys() == {"format", "seq", "hash", "mac"}
        assert (head["seq"], head["hash"]) == (seq, s.audit_rows()[-1]["hash"])
        report = s.check_audit()
        assert (report.entries, report.legacy, report.anchor_seq, report.behind) == (1, 0, 1, 0)
        assert [p.name for p in path.parent.iterdir() if p.name.startswith(".audit")] == []


def test_last_rows_deleted_with_head_rewritten_detected(store: Store) -> None:
    _drop_all_triggers(store.connection)
    store.connection.execute("DELETE FROM audit_log WHERE seq > 2")
    store.connection.execute(
        "UPDATE audit_head SET seq = 2, hash = (SELECT hash FROM audit_log WHERE seq = 2)"
    )
    with pytest.raises(AuditChainBroken) as e:
        store.verify_audit()
    message = str(e.value)
    assert "records seq 5, but state.db ends at seq 2" in message
    assert "entries were deleted from the end of the log, or state.db was replaced" in message
    assert "certgit audit anchor --reason" in message


def test_older_copy_of_the_database_detected(store: Store, tmp_path: Path) -> None:
    copy = tmp_path / "old.db"
    with sqlite3.connect(copy) as old:
        store.connection.backup(old)
    old.close()
    store.audit("alice", AuditEvent.PLAN_APPROVED, "p", {}, NOW)
    path = store.path
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(copy.read_bytes())
    with Store.open(path.parent, master_key=KEY) as s:
        with pytest.raises(AuditChainBroken, match=r"records seq 6, but state.db ends at seq 5"):
            s.verify_audit()


def test_truncated_then_appended_past_the_head_file_detected(store: Store) -> None:
    # Rows 3..5 deleted, then certgit writes 4 new rows: the head file at seq 5 is not
    # moved onto a chain it does not belong to, and disagrees with the new row 5.
    _drop_all_triggers(store.connection)
    store.connection.execute("DELETE FROM audit_log WHERE seq > 2")
    store.connection.execute(
        "UPDATE audit_head SET seq = 2, hash = (SELECT hash FROM audit_log WHERE seq = 2)"
    )
    for i in range(4):
        store.audit("certgit", "plan.recorded", f"p{i}", {}, NOW)
    assert _head_file(store)["seq"] == 5
    with pytest.raises(AuditChainBroken, match=r"does not match state.db at seq 5"):
        store.verify_audit()


def test_missing_head_file(store: Store, tmp_path: Path, caplog) -> None:
    store.audit_head_file.unlink()
    with pytest.raises(AuditChainBroken) as e:
        store.verify_audit()
    assert f"audit head file {store.audit_head_file} is missing, but the log has 5" in str(e.value)
    # An append does not re-create it: that would hide what happened.
    with caplog.at_level(logging.WARNING):
        store.audit("a", "x", "s", {}, NOW)
    assert not store.audit_head_file.exists()
    assert "is missing; not re-created" in caplog.text
    with pytest.raises(AuditChainBroken, match="is missing"):
        store.verify_audit()
    # A store without entries has nothing to anchor: no head file is fine.
    with Store.open(tmp_path / "fresh", master_key=KEY) as fresh:
        fresh.audit_head_file.unlink()
        assert fresh.verify_audit() == 0
        fresh.audit("a", "x", "s", {}, NOW)  # nothing to hide yet: written again
        assert fresh.check_audit().anchor_seq == 1


def _mac_of(head: dict, key: AuditKey) -> str:
    """A head file's MAC made with `key` (another store's, in the test)."""
    return key.head_mac(canonical_json({k: head[k] for k in ("format", "hash", "seq")}))


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda h: {**h, "seq": 4}, "is not authentic"),
        (lambda h: {**h, "mac": "0" * 64}, "is not authentic"),
        (lambda h: {**h, "mac": _mac_of(h, WRONG_KEY)}, "is not authentic"),
        (lambda h: {**h, "extra": 1}, "is garbled"),
        (lambda h: "not json", "is garbled"),
        (lambda h: {**h, "seq": "5"}, "is garbled"),
    ],
)
def test_forged_head_file_detected_and_kept(store: Store, edit, error: str) -> None:
    forged = edit(_head_file(store))
    text = forged if isinstance(forged, str) else json.dumps(forged)
    store.audit_head_file.write_text(text)
    with pytest.raises(AuditChainBroken, match=error):
        store.verify_audit()
    store.audit("a", "x", "s", {}, NOW)  # never written over: it is the evidence
    assert store.audit_head_file.read_text() == text


def test_head_file_of_another_store_detected(store: Store, tmp_path: Path) -> None:
    with Store.open(tmp_path / "other", master_key=bytes(32)) as other:
        for i in range(5):
            other.audit("x", "y", f"z{i}", {}, NOW)
        store.audit_head_file.write_bytes(other.audit_head_file.read_bytes())
    with pytest.raises(AuditChainBroken, match=r"not authentic.*another state directory"):
        store.verify_audit()


def test_crash_between_commit_and_head_file(store: Store, monkeypatch) -> None:
    # The database commits first; the head file is written after. A crash in between
    # (here: the write never happens) leaves it behind, which verify accepts.
    writes: list[ChainHead] = []
    monkeypatch.setattr(audit_module, "write_head_file", lambda p, head, k: writes.append(head))
    store.audit("a", "x", "s", {}, NOW)
    store.audit_log.append_many([AuditRecord("a", "x", f"s{i}", {}, NOW) for i in range(2)])
    assert [h.seq for h in writes] == [6, 8]
    monkeypatch.undo()
    report = store.check_audit()
    assert (report.entries, report.anchor_seq, report.behind) == (8, 5, 3)
    # The next entry brings it up to date.
    store.audit("a", "x", "s", {}, NOW)
    assert store.check_audit().behind == 0 and _head_file(store)["seq"] == 9


def test_rows_after_a_lagging_head_file_must_be_keyed(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(audit_module, "write_head_file", lambda *a: None)
    store.audit("a", "x", "s", {}, NOW)
    monkeypatch.undo()
    _rechain(store.connection, 6, _sha256, alg="sha256")
    with pytest.raises(AuditChainBroken, match="seq 6: the row claims an unkeyed"):
        store.verify_audit()


def test_head_file_never_moves_back(store: Store) -> None:
    rows = store.audit_rows()
    # Another process finished seq 5 first; this one's late write for seq 3 is dropped.
    store.audit_log._advance_head_file(2, ChainHead(3, rows[2]["hash"]))
    assert _head_file(store)["seq"] == 5


def test_unwritable_head_file_never_aborts_an_append(store: Store, monkeypatch, caplog) -> None:
    def refuse(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit_module, "write_head_file", refuse)
    with caplog.at_level(logging.WARNING):
        assert store.audit("a", "x", "s", {}, NOW) == 6
    assert "not written at seq 6" in caplog.text
    monkeypatch.undo()
    assert store.check_audit().behind == 1


def test_append_many_writes_the_head_file_once(store: Store, monkeypatch) -> None:
    real = audit_module.write_head_file
    calls: list[int] = []

    def counting(path: Path, head: ChainHead, key: AuditKey) -> None:
        calls.append(head.seq)
        real(path, head, key)

    monkeypatch.setattr(audit_module, "write_head_file", counting)
    seqs = store.audit_log.append_many(
        [AuditRecord("a", AuditEvent.DEPLOY_COMPLETED, f"t{i}", {"n": i}, NOW) for i in range(3)]
    )
    assert seqs == [6, 7, 8] and calls == [8]
    assert store.audit_log.append_many([]) == []
    assert store.verify_audit() == 8


def test_upgrade_with_a_wrong_key_writes_no_head_file(tmp_path: Path, monkeypatch) -> None:
    every = available_migrations()
    state = tmp_path / "state"
    monkeypatch.setattr(migrate_module, "available_migrations", lambda: every[:3])
    Store.open(state, master_key=KEY).close()
    monkeypatch.undo()
    with pytest.raises(StoreError, match="created with master key"):
        Store.open(state, master_key=bytes(32))
    assert not (state / "audit.head").exists()
    with Store.open(state, master_key=KEY) as s:
        assert current_version(s.connection) == latest_version()
        assert read_head_file(s.audit_head_file, AUDIT_KEY) == ChainHead(0, GENESIS_HASH)


def test_upgrade_keeps_an_existing_head_file(tmp_path: Path, monkeypatch) -> None:
    # A pre-0004 state.db put back under a newer head file: the file is the evidence.
    every = available_migrations()
    state = tmp_path / "state"
    monkeypatch.setattr(migrate_module, "available_migrations", lambda: every[:3])
    Store.open(state, master_key=KEY).close()
    monkeypatch.undo()
    audit_module.write_head_file(state / "audit.head", ChainHead(7, "ab" * 32), AUDIT_KEY)
    with Store.open(state, master_key=KEY) as s:
        with pytest.raises(AuditChainBroken, match=r"records seq 7, but state.db ends at seq 0"):
            s.verify_audit()


# ----------------------------------------------------------------- re-anchoring


def test_anchor_accepts_the_database_and_records_it(store: Store) -> None:
    _drop_all_triggers(store.connection)
    store.connection.execute("DELETE FROM audit_log WHERE seq > 3")
    store.connection.execute(
        "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE seq = 3)"
    )
    old = _head_file(store)
    with pytest.raises(AuditChainBroken, match="records seq 5"):
        store.verify_audit()
    report = store.anchor_audit("alice", "restored state.db from last night's backup", NOW)
    assert (report.entries, report.anchor_seq, report.behind) == (4, 4, 0)
    row = store.audit_rows()[-1]
    assert row["action"] == "audit.anchored" and row["subject"] == "audit.head"
    assert row["actor"] == "alice"
    assert row["details"] == {
        "reason": "restored state.db from last night's backup",
        "head_file_was": {"seq": 5, "hash": old["hash"]},
        "database_ended_at": 3,
        # accepting the rows makes the table append-only again
        "triggers_restored": [
            "audit_log_no_update", "audit_log_no_delete", "audit_log_chain",
            "audit_head_no_delete", "audit_head_forward_only", "audit_log_keyed",
        ],
    }
    assert store.verify_audit() == 4
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.connection.execute("DELETE FROM audit_log WHERE seq = 1")


def test_anchor_records_a_missing_or_forged_head_file(store: Store) -> None:
    store.audit_head_file.unlink()
    store.anchor_audit("alice", "head file lost with a disk", NOW)
    assert store.audit_rows()[-1]["details"]["head_file_was"] == "missing"
    store.audit_head_file.write_text("{}")
    store.anchor_audit("alice", "again", NOW)
    assert store.audit_rows()[-1]["details"]["head_file_was"].startswith("unusable: audit head")
    assert store.verify_audit() == 7


def test_anchor_never_accepts_an_edited_row(store: Store) -> None:
    _drop_all_triggers(store.connection)
    store.connection.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    _rechain(store.connection, 3, _sha256)
    head = store.audit_head_file.read_bytes()
    with pytest.raises(AuditChainBroken, match="seq 3: MAC mismatch"):
        store.anchor_audit("mallory", "nothing to see", NOW)
    assert store.audit_head_file.read_bytes() == head
    assert len(store.audit_rows()) == 5


# ----------------------------------------------------------------- syslog


def test_syslog_line_per_entry_when_asked(tmp_path: Path, monkeypatch) -> None:
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(audit_module.syslog, "syslog", lambda prio, line: sent.append((prio, line)))
    with Store.open(tmp_path / "quiet", master_key=KEY) as quiet:
        quiet.audit("a", "x", "s", {}, NOW)
    assert sent == []  # off by default
    with Store.open(tmp_path / "loud", master_key=KEY, audit_syslog=True) as loud:
        seq = loud.audit("alice", AuditEvent.PLAN_APPROVED, "plan p1\nforged=1", {}, NOW)
        mac = loud.audit_rows()[-1]["hash"]
        loud.audit_log.append_many([AuditRecord("a", "x", "web", {}, NOW)] * 2)
    assert sent[0] == (
        audit_module.syslog.LOG_NOTICE,
        f'certgit audit seq={seq} action=plan.approved subject="plan p1\\nforged=1" mac={mac[:16]}',
    )
    assert [line.split()[2] for _, line in sent[1:]] == ["seq=2", "seq=3"]
    assert all("\n" not in line for _, line in sent)


def test_syslog_line_quotes_what_is_not_one_token() -> None:
    head = ChainHead(7, "ab" * 32)
    assert syslog_line(head, "deploy.completed", "web") == (
        "certgit audit seq=7 action=deploy.completed subject=web mac=abababababababab"
    )
    assert 'subject="a=b"' in syslog_line(head, "x", "a=b")
    assert 'subject=""' in syslog_line(head, "x", "")


def test_a_batch_writes_the_head_file_once_at_its_end(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    real = audit_module.write_head_file

    def counting(path: Path, head: ChainHead, key: AuditKey) -> None:
        writes.append(head.seq)
        real(path, head, key)

    monkeypatch.setattr(audit_module, "write_head_file", counting)
    with store.audit_batch():
        for i in range(3):
            store.audit("bob", "deploy", f"t{i}", {}, NOW)
        assert writes == []  # rows committed, head file not yet moved
        assert _head_file(store)["seq"] == 5
        assert store.verify_audit() == 8  # behind the database is fine: rows chain from it
    assert writes == [8]
    assert _head_file(store)["seq"] == 8
    with pytest.raises(RuntimeError), store.audit_batch():
        store.audit("bob", "deploy", "t9", {}, NOW)
        raise RuntimeError("a crash inside the batch")
    assert writes == [8, 9]  # still written when the block ends early
    assert store.verify_audit() == 9


def test_dropped_triggers_are_reported_even_when_the_chain_holds(store: Store) -> None:
    store.connection.execute("DROP TRIGGER audit_log_no_delete")
    gone = r"append-only triggers are gone \(audit_log_no_delete\)"
    with pytest.raises(AuditChainBroken, match=gone):
        store.verify_audit()
