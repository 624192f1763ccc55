"""Master key sources and AES-256-GCM sealing."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from certgit.reconciler.errors import StoreError
from certgit.reconciler.sealing import (
    ENV_KEY,
    ENV_KEY_FILE,
    Sealer,
    key_id,
    load_master_key,
)

KEY = bytes(range(32))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_key_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    "content",
    [KEY, KEY.hex().encode(), base64.b64encode(KEY), b"  " + KEY.hex().encode() + b"\n"],
    ids=["raw", "hex", "base64", "hex-with-whitespace"],
)
def test_key_file_formats(tmp_path: Path, content: bytes) -> None:
    path = _write_key_file(tmp_path / "k", content)
    assert load_master_key(tmp_path / "state", {ENV_KEY_FILE: str(path)}) == KEY
    # The key file wins: no key is generated in the state dir.
    assert not (tmp_path / "state" / "master.key").exists()


def test_group_readable_key_file_refused(tmp_path: Path) -> None:
    path = _write_key_file(tmp_path / "k", KEY, mode=0o640)
    with pytest.raises(StoreError, match=f"chmod 600 {path}"):
        load_master_key(tmp_path, {ENV_KEY_FILE: str(path)})


@pytest.mark.parametrize("content", [b"short", b"z" * 64, base64.b64encode(b"x" * 16)])
def test_bad_key_file_content(tmp_path: Path, content: bytes) -> None:
    path = _write_key_file(tmp_path / "k", content)
    with pytest.raises(StoreError, match="32-byte key"):
        load_master_key(tmp_path, {ENV_KEY_FILE: str(path)})


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=ENV_KEY_FILE):
        load_master_key(tmp_path, {ENV_KEY_FILE: str(tmp_path / "absent")})


@pytest.mark.parametrize("encoded", [base64.b64encode(KEY).decode(), KEY.hex()])
def test_key_from_env(tmp_path: Path, encoded: str) -> None:
    assert load_master_key(tmp_path, {ENV_KEY: encoded}) == KEY
    assert not (tmp_path / "master.key").exists()


def test_bad_env_key(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=ENV_KEY) as info:
        load_master_key(tmp_path, {ENV_KEY: base64.b64encode(b"k" * 31).decode()})
    assert "kkkk" not in str(info.value)


def test_generated_key_is_0600_and_stable(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the widest umask: the file must still be 0600
    try:
        first = load_master_key(tmp_path / "state", {})
    finally:
        os.umask(old_umask)
    path = tmp_path / "state" / "master.key"
    assert len(first) == 32
    assert _mode(path) == 0o600
    assert path.read_bytes() == first
    assert load_master_key(tmp_path / "state", {}) == first


def test_generated_keys_differ_between_state_dirs(tmp_path: Path) -> None:
    assert load_master_key(tmp_path / "a", {}) != load_master_key(tmp_path / "b", {})


def test_seal_round_trip() -> None:
    sealer = Sealer(KEY)
    blob = sealer.seal(b"secret key bytes", b"web:abc")
    assert blob[0] == 1
    assert b"secret key bytes" not in blob
    assert sealer.unseal(blob, b"web:abc") == b"secret key bytes"
    # A fresh nonce per seal: the same plaintext never gives the same blob.
    assert sealer.seal(b"secret key bytes", b"web:abc") != blob


def test_tampered_blob_fails() -> None:
    sealer = Sealer(KEY)
    blob = bytearray(sealer.seal(b"secret key bytes", b"aad"))
    blob[-1] ^= 0x01
    with pytest.raises(StoreError, match="wrong master key") as info:
        sealer.unseal(bytes(blob), b"aad")
    assert "secret" not in str(info.value)


def test_wrong_aad_fails() -> None:
    sealer = Sealer(KEY)
    blob = sealer.seal(b"secret key bytes", b"web:aaa")
    with pytest.raises(StoreError, match="cannot decrypt"):
        sealer.unseal(blob, b"web:bbb")


def test_wrong_key_fails() -> None:
    blob = Sealer(KEY).seal(b"secret key bytes", b"aad")
    other = Sealer(bytes(32))
    with pytest.raises(StoreError, match=other.key_id):
        other.unseal(blob, b"aad")


def test_truncated_blob_fails() -> None:
    with pytest.raises(StoreError, match="truncated"):
        Sealer(KEY).unseal(b"\x01short", b"aad")


def test_key_id_is_short_and_not_the_key() -> None:
    assert len(key_id(KEY)) == 8
    assert Sealer(KEY).key_id == key_id(KEY)
    assert key_id(KEY) != key_id(bytes(32))
    assert KEY.hex()[:8] != key_id(KEY)
    assert KEY.hex() not in repr(Sealer(KEY))


def test_wrong_key_length_refused() -> None:
    with pytest.raises(StoreError, match="32 bytes"):
        Sealer(b"k" * 16)


def test_concurrent_first_runs_agree_on_one_key(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    state = tmp_path / "state"
    state.mkdir()
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = list(pool.map(lambda _: load_master_key(state, {}), range(16)))
    assert len(set(keys)) == 1
    assert sorted(p.name for p in state.iterdir()) == ["master.key"]  # no temp files left
