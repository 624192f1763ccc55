"""The SQLite state store: migrations, file modes, master key, versions, deployments,
holds, plans with their outbox, and the recorded-state read model."""

from __future__ import annotations

import base64
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certgit.reconciler.errors import StoreError, StoreLocked
from certgit.reconciler.model import CertificateVersion, RecordedState
from certgit.reconciler.sealing import ENV_KEY
from certgit.reconciler.statedir import StateDir, make_private_dir, publish_private_file
from certgit.reconciler.store import Decision, JobState, Store, latest_version
from certgit.reconciler.store.migrate import available_migrations, split_statements

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def make_cert(cn: str = "web.example", days: int = 90) -> tuple[bytes, bytes, bytes, str]:
    """A self-signed P-256 certificate: (cert_pem, chain_pem, key_pem, fingerprint)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, cert_pem, key_pem, cert.fingerprint(hashes.SHA256()).hex()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "state", master_key=KEY_A)
    yield s
    s.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------- open / migrations


def test_fresh_open_applies_migrations_and_reopen_is_noop(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Store.open(state, master_key=KEY_A) as s:
        applied = s.connection.execute(
            "SELECT version FROM schema_migrations ORDER BY version"
        ).fetchall()
        assert [v for (v,) in applied] == list(range(1, latest_version() + 1))
        tables = {
            name
            for (name,) in s.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert {
            "certificate_versions", "deployments", "plans", "plan_actions", "approvals",
            "holds", "outbox", "source_state", "audit_log", "audit_head", "meta",
        } <= tables  # fmt: skip
        s.set_source_state("last_applied_commit", "abc")
        (journal,) = s.connection.execute("PRAGMA journal_mode").fetchone()
        assert journal == "wal"
        assert s.connection.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert s.connection.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    with Store.open(state, master_key=KEY_A) as s:
        count = s.connection.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()
        assert count == (latest_version(),)
        assert s.last_applied_commit == "abc"  # data survives, nothing re-created


def test_newer_schema_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Store.open(state, master_key=KEY_A) as s:
        s.connection.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future', ?)",
            (latest_version() + 1, NOW.isoformat()),
        )
    with pytest.raises(StoreError, match="upgrade certgit"):
        Store.open(state, master_key=KEY_A)


def test_file_modes(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"
    old_umask = os.umask(0o022)
    try:
        with Store.open(state, env={}) as s:
            s.audit("t", "x", "y", {}, NOW)  # make sure the WAL file exists
            wal = state / "state.db-wal"
            assert wal.exists()
            assert _mode(wal) & 0o077 == 0
    finally:
        os.umask(old_umask)
    assert _mode(state) == 0o700
    assert _mode(state / "state.db") == 0o600
    assert _mode(state / "master.key") == 0o600


def test_master_key_from_env_and_wrong_key_on_reopen(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env_a = {ENV_KEY: base64.b64encode(KEY_A).decode()}
    with Store.open(state, env=env_a) as s:
        key_id = s.key_id
    assert not (state / "master.key").exists()
    with Store.open(state, env=env_a) as s:
        assert s.key_id == key_id
    with pytest.raises(StoreError, match=f"created with master key {key_id}"):
        Store.open(state, env={ENV_KEY: KEY_B.hex()})


def test_generated_master_key_is_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Store.open(state, env={}) as s:
        cert_pem, chain_pem, key_pem, _ = make_cert()
        s.add_version("web", cert_pem=cert_pem, chain_pem=chain_pem, key_pem=key_pem,
                      spec_hash="h", issued_at=NOW)  # fmt: skip
    with Store.open(state, env={}) as s:
        assert s.version_material("web", 1)[2] == key_pem


def test_not_a_database_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store.open(state, master_key=KEY_A)


def test_split_statements_keeps_triggers_whole() -> None:
    sql = (
        "CREATE TABLE a (x TEXT DEFAULT ';'); -- comment; here\n"
        "CREATE TRIGGER t BEFORE DELETE ON a BEGIN SELECT RAISE(ABORT, 'no;'); END;\n"
    )
    statements = split_statements(sql)
    assert len(statements) == 2
    assert "CREATE TRIGGER" in statements[1] and statements[1].endswith("END;")
    assert available_migrations()[0].version == 1


# ----------------------------------------------------------------- versions


def test_add_version_round_trip_and_key_not_in_plaintext(tmp_path: Path, store: Store) -> None:
    cert_pem, chain_pem, key_pem, fingerprint = make_cert()
    v = store.add_version(
        "web", cert_pem=cert_pem, chain_pem=chain_pem, key_pem=key_pem, spec_hash="s1",
        issued_at=NOW,
    )  # fmt: skip
    leaf = x509.load_pem_x509_certificate(cert_pem)
    assert v == CertificateVersion(
        certificate="web",
        version=1,
        fingerprint=fingerprint,
        serial=format(leaf.serial_number, "x"),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        spec_hash="s1",
        issued_at=NOW,
    )
    assert store.version_material("web", 1) == (cert_pem, chain_pem, key_pem)
    state = tmp_path / "state"

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in sorted(state.glob("state.db*")))

    snapshots = [on_disk()]  # with the WAL
    store.close()
    snapshots.append(on_disk())  # checkpointed into the main file
    body = key_pem.split(b"\n")[1]  # a base64 line of the key
    for data in snapshots:
        assert cert_pem.split(b"\n")[1] in data  # the scan looks at the right bytes
        assert b"PRIVATE KEY" not in data
        assert body not in data


def test_versions_numbered_per_certificate(store: Store) -> None:
    numbers = []
    for _ in range(3):
        cert_pem, chain_pem, key_pem, _fp = make_cert()
        added = store.add_version(
            "web", cert_pem=cert_pem, chain_pem=chain_pem, key_pem=key_pem, spec_hash="s",
            issued_at=NOW,
        )  # fmt: skip
        numbers.append(added.version)
    cert_pem, chain_pem, key_pem, _fp = make_cert("api.example")
    other = store.add_version("api", cert_pem=cert_pem, chain_pem=chain_pem, key_pem=key_pem,
                              spec_hash="s", issued_at=NOW)  # fmt: skip
    assert numbers == [1, 2, 3]
    assert other.version == 1
    assert [v.version for v in store.recorded_state().versions["web"]] == [1, 2, 3]


def test_duplicate_fingerprint_refused(store: Store) -> None:
    cert_pem, chain_pem, key_pem, _ = make_cert()
    store.add_version("web", cert_pem=cert_pem, chain_pem=chain_pem, key_pem=key_pem,
                      spec_hash="s", issued_at=NOW)  # fmt: skip
    with pytest.raises(StoreError, match="already recorded as web version 1"):
        store.add_version("other", cert_pem=cert_pem, chain_pem=chain_pem, key_pem=key_pem,
                          spec_hash="s", issued_at=NOW)  # fmt: skip


def test_mismatched_key_refused_and_not_echoed(store: Store) -> None:
    cert_pem, chain_pem, _, _ = make_cert()
    _, _, other_key, _ = make_cert()
    with pytest.raises(StoreError, match="does not match") as info:
        store.add_version("web", cert_pem=cert_pem, chain_pem=chain_pem, key_pem=other_key,
                          spec_hash="s", issued_at=NOW)  # fmt: skip
    assert b"PRIVATE" not in str(info.value).encode()
    assert store.versions("web") == []


def test_unknown_version_material(store: Store) -> None:
    with pytest.raises(StoreError, match="has no version 7"):
        store.version_material("web", 7)


def test_sealed_key_bound_to_its_row(store: Store) -> None:
    for cn in ("a.example", "b.example"):
        cert_pem, chain_pem, key_pem, _ = make_cert(cn)
        store.add_version(cn, cert_pem=cert_pem, chain_pem=chain_pem, key_pem=key_pem,
                          spec_hash="s", issued_at=NOW)  # fmt: skip
    # Copy one row's sealed key onto another: the AAD makes it undecryptable.
    store.connection.execute(
        "UPDATE certificate_versions SET key_sealed = "
        "(SELECT key_sealed FROM certificate_versions WHERE certificate = 'a.example') "
        "WHERE certificate = 'b.example'"
    )
    with pytest.raises(StoreError, match="cannot decrypt"):
        store.version_material("b.example", 1)


def test_retired_versions_left_out_of_recorded_state(store: Store) -> None:
    for _ in range(2):
        cert_pem, chain_pem, key_pem, _ = make_cert()
        store.add_version("web", cert_pem=cert_pem, chain_pem=chain_pem, key_pem=key_pem,
                          spec_hash="s", issued_at=NOW)  # fmt: skip
    assert store.retire_version("web", 1, NOW) is True
    assert store.retire_version("web", 1, NOW) is False
    assert [v.version for v in store.recorded_state().versions["web"]] == [2]
    assert [v.version for v in store.versions("web", include_retired=True)] == [1, 2]


# ----------------------------------------------------------------- deployments


def test_record_deployment_success_then_failure(store: Store) -> None:
    store.record_deployment("web", "nginx", fingerprint="aa" * 32, version=1, at=NOW)
    dep = store.recorded_state().deployments[("web", "nginx")]
    assert (dep.fingerprint, dep.version, dep.attempts, dep.last_error) == ("aa" * 32, 1, 0, None)
    assert dep.updated_at == NOW

    later = NOW + timedelta(minutes=5)
    for _ in range(2):
        store.record_deployment(
            "web", "nginx", fingerprint="bb" * 32, version=2, at=later, error="reload failed"
        )
    dep = store.recorded_state().deployments[("web", "nginx")]
    assert dep.fingerprint == "aa" * 32  # still what is actually deployed
    assert dep.version == 1
    assert dep.attempts == 2
    assert dep.last_error == "reload failed"
    assert dep.last_attempt_fingerprint == "bb" * 32
    assert dep.updated_at == later

    store.record_deployment("web", "nginx", fingerprint="bb" * 32, version=2, at=later)
    dep = store.recorded_state().deployments[("web", "nginx")]
    assert (dep.fingerprint, dep.version, dep.attempts, dep.last_error) == ("bb" * 32, 2, 0, None)


def test_first_attempt_failure_records_nothing_deployed(store: Store) -> None:
    store.record_deployment("web", "nginx", fingerprint="cc" * 32, version=1, at=NOW, error="x")
    dep = store.recorded_state().deployments[("web", "nginx")]
    assert dep.fingerprint is None and dep.version is None and dep.attempts == 1


def test_remove_deployment(store: Store) -> None:
    store.record_deployment("web", "nginx", fingerprint="aa" * 32, version=1, at=NOW)
    store.record_deployment("web", "haproxy", fingerprint="aa" * 32, version=1, at=NOW)
    store.remove_deployment("web", "nginx")
    assert set(store.recorded_state().deployments) == {("web", "haproxy")}


def test_naive_timestamp_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone"):
        store.record_deployment("web", "n", fingerprint=None, version=None,
                                at=datetime(2026, 1, 1))  # fmt: skip


# ----------------------------------------------------------------- holds


def test_holds_specific_and_whole_target(store: Store) -> None:
    store.add_hold("nginx", "web", "aa" * 32, "rollback: v2 broke TLS", "alice", NOW)
    store.add_hold("nginx", "api", "bb" * 32, "rollback", "alice", NOW)
    store.add_hold("nginx", None, None, "maintenance", "bob", NOW)
    store.add_hold("haproxy", None, None, "maintenance", "bob", NOW)
    # Same binding again replaces the pin instead of adding a second row.
    store.add_hold("nginx", "web", "cc" * 32, "rollback to v1", "carol", NOW)
    store.add_hold("nginx", None, None, "maintenance again", "bob", NOW)
    state = store.recorded_state()
    assert len(state.holds) == 4
    web = next(h for h in state.holds if h.certificate == "web")
    assert (web.fingerprint, web.created_by, web.reason) == ("cc" * 32, "carol", "rollback to v1")
    assert state.hold_for("other", "haproxy") is not None

    assert store.release_hold("nginx", "web") == 1
    assert store.release_hold("nginx", "web") == 0
    assert store.release_hold("nginx") == 2  # api + whole-target hold
    remaining = store.recorded_state().holds
    assert [(h.target, h.certificate) for h in remaining] == [("haproxy", None)]


# ----------------------------------------------------------------- plans and outbox


def _actions() -> list[dict[str, object]]:
    return [
        {"id": "a1", "kind": "issue", "certificate": "web", "target": None,
         "fingerprint": None, "drift": "missing", "reason": "not issued yet", "gated": False},
        {"id": "a2", "kind": "deploy", "certificate": "web", "target": "nginx",
         "fingerprint": "aa" * 32, "drift": "missing", "reason": "never deployed",
         "gated": False},
        {"id": "a3", "kind": "deploy", "certificate": "web", "target": "prod-lb",
         "fingerprint": "aa" * 32, "drift": "missing", "reason": "never deployed",
         "gated": True},
    ]  # fmt: skip


def test_save_plan_idempotent(store: Store) -> None:
    first = store.save_plan("h1", "c1", _actions(), NOW)
    again = store.save_plan("h1", "c1", _actions(), NOW + timedelta(hours=1))
    assert first == again
    plan = store.get_plan("h1")
    assert plan is not None
    assert plan["id"] == first and plan["commit"] == "c1" and plan["created_at"] == NOW
    assert plan["actions"] == _actions()
    assert store.connection.execute("SELECT COUNT(*) FROM plans").fetchone() == (1,)
    rows = store.connection.execute(
        "SELECT action_id, position, gated FROM plan_actions ORDER BY position"
    ).fetchall()
    assert rows == [("a1", 0, 0), ("a2", 1, 0), ("a3", 2, 1)]
    assert store.outbox_rows() == []  # not enqueued without enqueue=True
    assert store.get_plan("nope") is None
    store.save_plan("h2", "c2", [], NOW)
    latest = store.latest_plan()
    assert latest is not None and latest["hash"] == "h2"


def test_save_plan_enqueues_non_gated_in_same_transaction(store: Store) -> None:
    store.save_plan("h1", "c1", _actions(), NOW, enqueue=True)
    rows = store.outbox_rows("h1")
    assert [(r["action_id"], r["state"], r["target"]) for r in rows] == [
        ("a1", "PENDING", None),
        ("a2", "PENDING", "nginx"),
    ]
    assert rows[1]["payload"]["fingerprint"] == "aa" * 32
    # Saving (and enqueueing) again adds nothing.
    store.save_plan("h1", "c1", _actions(), NOW, enqueue=True)
    assert len(store.outbox_rows()) == 2
    # The gated action is enqueued explicitly once approved.
    store.add_approval("h1", "a3", decision="approve", actor="alice", reason="ok", at=NOW)
    assert store.enqueue_actions("h1", ["a3"], NOW) == 1
    assert [r["action_id"] for r in store.outbox_rows("h1")] == ["a1", "a2", "a3"]
    with pytest.raises(StoreError, match="no action 'zz'"):
        store.enqueue_actions("h1", ["zz"], NOW)


def test_enqueue_is_atomic_with_plan(store: Store) -> None:
    bad = [*_actions(), {"id": "a1", "kind": "deploy", "certificate": "x", "gated": False}]
    with pytest.raises(StoreError, match="refused the change"):
        store.save_plan("h-bad", None, bad, NOW, enqueue=True)  # duplicate action id
    assert store.get_plan("h-bad") is None
    assert store.outbox_rows() == []
    assert store.connection.execute("SELECT COUNT(*) FROM plan_actions").fetchone() == (0,)
    assert not store.connection.in_transaction


def test_approvals(store: Store) -> None:
    with pytest.raises(StoreError, match="certgit plan"):
        store.add_approval("unknown", None, decision="approve", actor="a", reason="r", at=NOW)
    store.save_plan("h1", "c1", _actions(), NOW)
    store.add_approval("h1", None, decision="approve", actor="alice", reason="cab-12", at=NOW)
    store.add_approval("h1", "a3", decision="reject", actor="bob", reason="not now", at=NOW)
    with pytest.raises(ValueError, match="decision"):
        store.add_approval("h1", None, decision="maybe", actor="c", reason="r", at=NOW)
    assert store.approvals("h1") == [
        {"plan_hash": "h1", "action_id": None, "decision": "approve", "actor": "alice",
         "reason": "cab-12", "created_at": NOW},
        {"plan_hash": "h1", "action_id": "a3", "decision": "reject", "actor": "bob",
         "reason": "not now", "created_at": NOW},
    ]  # fmt: skip
    assert store.approvals("other") == []


# ----------------------------------------------------------------- source state, read model


def test_source_state(store: Store) -> None:
    assert store.get_source_state("last_seen_commit") is None
    assert store.last_applied_commit is None
    store.set_source_state("last_seen_commit", "c1")
    store.set_source_state("last_seen_commit", "c2")
    store.set_source_state("last_applied_commit", "c1")
    assert store.get_source_state("last_seen_commit") == "c2"
    assert store.last_applied_commit == "c1"
    assert store.recorded_state().last_applied_commit == "c1"


def test_recorded_state_at_scale(store: Store) -> None:
    # 10,000 certificates x 3 deployments, inserted directly (issuing is not under test).
    later = (NOW + timedelta(days=90)).isoformat(timespec="microseconds")
    stamp = NOW.isoformat(timespec="microseconds")
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO certificate_versions (certificate, version, fingerprint, serial, "
            "not_before, not_after, spec_hash, issued_at, cert_pem, chain_pem, key_sealed) "
            "VALUES (?, 1, ?, '01', ?, ?, 's', ?, x'00', x'00', x'00')",
            [(f"c{i:05d}", f"{i:064x}", stamp, later, stamp) for i in range(10_000)],
        )
        conn.executemany(
            "INSERT INTO deployments (certificate, target, fingerprint, version, updated_at) "
            "VALUES (?, ?, ?, 1, ?)",
            [(f"c{i:05d}", f"t{t}", f"{i:064x}", stamp) for i in range(10_000) for t in range(3)],
        )
    state = store.recorded_state()
    assert isinstance(state, RecordedState)
    assert len(state.versions) == 10_000
    assert len(state.deployments) == 30_000
    latest = state.latest("c00042")
    assert latest is not None and latest.fingerprint == f"{42:064x}"
    assert state.deployments[("c09999", "t2")].updated_at == NOW


def test_integrity_check_after_use(store: Store) -> None:
    cert_pem, chain_pem, key_pem, _ = make_cert()
    store.add_version("web", cert_pem=cert_pem, chain_pem=chain_pem, key_pem=key_pem,
                      spec_hash="s", issued_at=NOW)  # fmt: skip
    store.save_plan("h1", "c1", _actions(), NOW, enqueue=True)
    store.add_hold("nginx", None, None, "r", "a", NOW)
    store.audit("alice", "approve", "plan h1", {"n": 1}, NOW)
    assert store.connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert store.connection.execute("PRAGMA foreign_key_check").fetchall() == []


def test_concurrent_first_open_migrates_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    state = tmp_path / "state"

    def open_and_close(_: int) -> str:
        with Store.open(state, env={}) as s:
            return s.key_id

    with ThreadPoolExecutor(max_workers=4) as pool:
        key_ids = list(pool.map(open_and_close, range(8)))
    assert len(set(key_ids)) == 1
    with Store.open(state, env={}) as s:
        rows = s.connection.execute("SELECT version FROM schema_migrations").fetchall()
        assert [v for (v,) in rows] == list(range(1, latest_version() + 1))


def test_missing_generated_key_not_silently_replaced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store.open(state, env={}).close()
    (state / "master.key").unlink()
    with pytest.raises(StoreError, match=r"master key .* is missing"):
        Store.open(state, env={})
    assert not (state / "master.key").exists()


# ----------------------------------------------------------------- first contact, state-dir safety


def _tree(root: Path) -> dict[str, int]:
    """Every path under root (root itself included) with its size: 'nothing was created'."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root.parent)): p.stat().st_size
            for p in [root, *sorted(root.rglob("*"))]}  # fmt: skip


def test_open_without_create_on_missing_dir_creates_nothing(tmp_path: Path) -> None:
    from certgit.reconciler.errors import StateMissing

    state = tmp_path / "typo" / "state"
    with pytest.raises(StateMissing, match=r"no certgit state in .*typo/state.*certgit init"):
        Store.open(state, create=False, env={})
    assert not (tmp_path / "typo").exists()


def test_open_without_create_on_empty_dir_creates_nothing(tmp_path: Path) -> None:
    from certgit.reconciler.errors import StateMissing

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with pytest.raises(StateMissing, match=r"state\.db is missing"):
        Store.open(state, create=False, env={})
    assert list(state.iterdir()) == []
    (state / "state.db").touch(mode=0o600)
    with pytest.raises(StateMissing, match=r"state\.db is empty"):
        Store.open(state, create=False, env={})
    assert [p.name for p in state.iterdir()] == ["state.db"]
    assert (state / "state.db").stat().st_size == 0


def test_open_without_create_on_existing_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Store.open(state, env={}) as s:
        assert s.created
        key_id = s.key_id
    with Store.open(state, create=False, env={}) as s:
        assert not s.created
        assert s.key_id == key_id


@pytest.mark.parametrize("db", ["missing", "empty"])
@pytest.mark.parametrize("create", [True, False])
def test_master_key_without_store_refused(tmp_path: Path, db: str, create: bool) -> None:
    from certgit.reconciler.errors import StateIncomplete

    state = tmp_path / "state"
    Store.open(state, env={}).close()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (state / name).unlink(missing_ok=True)
    if db == "empty":
        (state / "state.db").touch(mode=0o600)
    before = _tree(state)
    with pytest.raises(StateIncomplete, match=rf"master.key but its state store .* is {db}") as e:
        Store.open(state, create=create, env={})
    assert "from a backup" in str(e.value) and "mv " in str(e.value)
    assert _tree(state) == before


def test_ca_dir_without_store_refused_even_with_key_from_env(tmp_path: Path) -> None:
    from certgit.reconciler.errors import StateIncomplete

    state = tmp_path / "state"
    (state / "ca" / "internal-ca").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    before = _tree(state)
    with pytest.raises(StateIncomplete, match="holds ca/ but its state store"):
        Store.open(state, env={ENV_KEY: KEY_A.hex()})
    assert _tree(state) == before


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_writable_state_dir_refused(tmp_path: Path, mode: int) -> None:
    from certgit.reconciler.errors import UnsafeStateDir

    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    with pytest.raises(UnsafeStateDir, match=rf"{state} is unsafe: mode {mode:04o} .*chmod go-w"):
        Store.open(state, env={})
    assert list(state.iterdir()) == []


def test_writable_existing_store_refused(tmp_path: Path) -> None:
    from certgit.reconciler.errors import UnsafeStateDir

    state = tmp_path / "state"
    Store.open(state, env={}).close()
    state.chmod(0o777)
    with pytest.raises(UnsafeStateDir, match="mode 0777 is group and other-writable"):
        Store.open(state, create=False, env={})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_state_dir_of_another_user_refused(tmp_path: Path) -> None:
    from certgit.reconciler.errors import UnsafeStateDir

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    with pytest.raises(UnsafeStateDir, match=r"owned by .*\(uid 65534\).*`chown "):
        Store.open(state, env={})
    assert list(state.iterdir()) == []


def test_work_dir_writable_by_others_refused(tmp_path: Path) -> None:
    from certgit.reconciler.errors import UnsafeStateDir
    from certgit.reconciler.targets import ensure_work_dir, work_dir

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path = ensure_work_dir(work_dir(state, "web-1"))
    assert _mode(path.parent) == _mode(path) == 0o700
    assert ensure_work_dir(path) == path  # ours and private: fine again
    path.parent.chmod(0o777)
    with pytest.raises(UnsafeStateDir, match=r"work directory .*/work is unsafe.*chmod go-w"):
        ensure_work_dir(work_dir(state, "web-2"))
    assert not (state / "work" / "web-2").exists()
    path.parent.chmod(0o700)
    path.chmod(0o720)
    with pytest.raises(UnsafeStateDir, match=r"target work directory .*/work/web-1 is unsafe"):
        ensure_work_dir(path)


def test_locked_store_raises_store_locked_temporary(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", master_key=KEY_A) as first, Store.open(
        tmp_path / "s", master_key=KEY_A
    ) as second:
        second.connection.execute("PRAGMA busy_timeout = 0")
        with first.transaction():
            with pytest.raises(StoreLocked, match="locked by another certgit process") as info:
                second.set_source_state("k", "v")
        assert info.value.temporary is True
        assert isinstance(info.value, StoreError)
        second.set_source_state("k", "v")  # free again once the writer committed
        assert first.get_source_state("k") == "v"


def test_repositories_share_one_connection(store: Store) -> None:
    """Plans enqueue through the Outbox inside the plan's own transaction, on one connection."""
    conns = {id(repo._db) for repo in (store.versions_repo, store.deployments, store.plans,
                                       store.outbox, store.audit_log, store.source_state)}
    assert len(conns) == 1
    store.save_plan("h9", None, _actions(), NOW, enqueue=True)
    assert [(r["action_id"], r["state"]) for r in store.outbox_rows("h9")] == [
        ("a1", JobState.PENDING), ("a2", JobState.PENDING)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="decision"):
        store.add_approval("h9", None, decision="maybe", actor="a", reason="r", at=NOW)
    store.add_approval("h9", "a3", decision=Decision.APPROVE, actor="a", reason="r", at=NOW)
    assert store.approvals("h9")[0]["decision"] == "approve"


def test_state_dir_names_every_path(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    assert state.db == tmp_path / "s" / "state.db"
    assert state.master_key == tmp_path / "s" / "master.key"
    assert state.ca("lab") == tmp_path / "s" / "ca" / "lab"
    assert state.mirror("ab12") == tmp_path / "s" / "git" / "ab12.git"
    assert state.documents_db == tmp_path / "s" / "cache" / "documents.db"
    assert state.work_dir("web") == tmp_path / "s" / "work" / "web"
    with Store.open(state.root, master_key=KEY_A) as s:
        assert s.path == state.db


def test_private_dir_and_file_helpers_ignore_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert make_private_dir(tmp_path / "a" / "b", parents=True) is True
        assert _mode(tmp_path / "a" / "b") == 0o700
        assert make_private_dir(tmp_path / "a" / "b") is False  # already there
        os.umask(0o277)
        path = tmp_path / "a" / "b" / "secret"
        publish_private_file(path, b"key", 0o600)
        assert path.read_bytes() == b"key" and _mode(path) == 0o600
        with pytest.raises(FileExistsError):
            publish_private_file(path, b"other")
        assert path.read_bytes() == b"key"  # never clobbered
        assert sorted(p.name for p in path.parent.iterdir()) == ["secret"]  # no temp left
    finally:
        os.umask(old)


def test_add_issued_records_what_the_issuer_computed_without_parsing(tmp_path: Path) -> None:
    """The issuer's IssuedCertificate goes in as is: its fingerprint, serial and dates."""
    from datetime import UTC, datetime, timedelta

    from certgit.reconciler.issuers.local_ca import IssuedCertificate

    store = Store.open(tmp_path / "state", master_key=b"k" * 32)
    try:
        now = datetime(2026, 12, 2, tzinfo=UTC)
        issued = IssuedCertificate(
            cert_pem=b"not parsed", chain_pem=b"", key_pem=b"secret key bytes",
            fingerprint="ab" * 32, serial="1f", not_before=now, not_after=now + timedelta(days=9),
        )
        v = store.add_issued("www", issued, spec_hash="s", issued_at=now)
        assert (v.version, v.fingerprint, v.serial, v.not_after) == (
            1, "ab" * 32, "1f", now + timedelta(days=9)
        )
        assert store.version_material("www", 1)[2] == b"secret key bytes"  # sealed, opened
    finally:
        store.close()
