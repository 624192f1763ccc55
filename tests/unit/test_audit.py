"""The append-only, hash-chained audit log: tampering that bypasses the triggers is caught."""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certgit.reconciler.errors import AuditChainBroken
from certgit.reconciler.model import canonical_json, sha256_hex
from certgit.reconciler.store import (
    GENESIS_HASH,
    AuditEvent,
    Store,
    current_version,
    latest_version,
)
from certgit.reconciler.store.audit import (
    REDACTED_TEXT,
    AuditEntry,
    chain_hash,
    redact,
    verify_chain,
)
from certgit.reconciler.store.migrate import available_migrations

# The module, not the package's re-exported `migrate` function of the same name.
migrate_module = importlib.import_module("certgit.reconciler.store.migrate")

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state", master_key=bytes(range(32)))
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
    # The stored hash is exactly the documented formula.
    r = rows[0]
    expected = chain_hash(
        GENESIS_HASH, 1, "2026-01-02T03:05:05.000000+00:00", "user1", "approve", "plan p1",
        r["details"],
    )  # fmt: skip
    assert r["hash"] == expected
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
            "hash) VALUES (9, 'x', 'x', 'x', 'x', '{}', ?, 'x')",
            (GENESIS_HASH,),
        )
    with pytest.raises(sqlite3.IntegrityError, match="advance"):
        store.connection.execute("UPDATE audit_head SET seq = 4")


def test_edited_row_detected(store: Store) -> None:
    _drop_triggers(store)
    store.connection.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    with pytest.raises(AuditChainBroken, match="seq 3: hash mismatch"):
        store.verify_audit()
    _assert_integrity(store)


def test_edited_details_detected(store: Store) -> None:
    _drop_triggers(store)
    store.connection.execute(
        "UPDATE audit_log SET details_json = '{\"n\":2,\"reason\":\"nothing\"}' WHERE seq = 2"
    )
    with pytest.raises(AuditChainBroken, match="seq 2: hash mismatch"):
        store.verify_audit()


def test_rehashed_row_still_detected(store: Store) -> None:
    # A forger who recomputes the edited row's hash breaks the link to the next row.
    _drop_triggers(store)
    row = store.audit_rows()[2]
    forged = chain_hash(row["prev_hash"], 3, "2026-01-02T03:07:05.000000+00:00", "mallory",
                        "approve", "plan p3", row["details"])  # fmt: skip
    store.connection.execute(
        "UPDATE audit_log SET actor = 'mallory', hash = ? WHERE seq = 3", (forged,)
    )
    with pytest.raises(AuditChainBroken, match="seq 4: prev_hash"):
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
    seq = store.audit(
        "alice", "deploy", "web", {"error": f"nginx said: {secret}and gave up"}, NOW
    )
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
    assert verify_chain(entries, 1, h1) == 1
    with pytest.raises(AuditChainBroken, match="head mismatch"):
        verify_chain(entries, 2, "f" * 64)
    broken = [AuditEntry(1, "t", "a", "x", "s", "not json", GENESIS_HASH, h1)]
    with pytest.raises(AuditChainBroken, match="seq 1: hash mismatch"):
        verify_chain(broken, 1, h1)


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
    seq = store.audit("bob", "release", "nginx", {"n": 1}, NOW)
    row = store.audit_rows(since_seq=seq - 1)[0]
    legacy = sha256_hex(row["prev_hash"] + canonical_json(
        [seq, "2026-01-02T03:04:05.000000+00:00", "bob", "release", "nginx", {"n": 1}]
    ))  # fmt: skip
    assert row["hash"] == legacy


@pytest.mark.parametrize(
    ("column", "value"),
    [("action_id", "'forged'"), ("plan_hash", "NULL"), ("version", "7"), ("target", "'x'")],
)
def test_edited_subject_column_detected(store: Store, column: str, value: str) -> None:
    store.audit("a", "deploy.completed", "web", {}, NOW, target="web", plan_hash="p",
                action_id="act", version=1)  # fmt: skip
    _drop_triggers(store)
    store.connection.execute(f"UPDATE audit_log SET {column} = {value} WHERE seq = 6")
    with pytest.raises(AuditChainBroken, match="seq 6: hash mismatch"):
        store.verify_audit()


def test_column_set_on_an_old_row_detected(store: Store) -> None:
    _drop_triggers(store)
    store.connection.execute("UPDATE audit_log SET action_id = 'sneaked-in' WHERE seq = 2")
    with pytest.raises(AuditChainBroken, match="seq 2: hash mismatch"):
        store.verify_audit()


def test_rows_written_before_0003_verify_after_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store at schema 2 with audit rows, migrated to 3, then new rows with columns."""
    every = available_migrations()
    state = tmp_path / "state"
    monkeypatch.setattr(migrate_module, "available_migrations", lambda: every[:2])
    with Store.open(state, master_key=bytes(32)) as old:
        assert current_version(old.connection) == 2
        prev = GENESIS_HASH
        for seq in (1, 2, 3):
            at = f"2026-01-0{seq}T00:00:00.000000+00:00"
            digest = chain_hash(prev, seq, at, "u", "approve", f"plan p{seq}", {"n": seq})
            with old.transaction() as conn:  # exactly what the schema-2 code wrote
                conn.execute(
                    "INSERT INTO audit_log VALUES (?, ?, 'u', 'approve', ?, ?, ?, ?)",
                    (seq, at, f"plan p{seq}", f'{{"n":{seq}}}', prev, digest),
                )
                conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1",
                             (seq, digest))  # fmt: skip
            prev = digest
    monkeypatch.undo()
    with Store.open(state, master_key=bytes(32)) as new:
        assert current_version(new.connection) == latest_version() >= 3
        assert new.verify_audit() == 3
        new.audit("alice", AuditEvent.PLAN_APPROVED, "p", {}, NOW, plan_hash="p",
                  action_id="a1")  # fmt: skip
        assert new.verify_audit() == 4
        assert [r["plan_hash"] for r in new.audit_rows()] == [None, None, None, "p"]
