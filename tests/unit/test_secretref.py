"""resolve_secret: env and file references, and errors that never leak the secret."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from certgit.reconciler.errors import IssuanceError
from certgit.reconciler.model import SecretRef
from certgit.reconciler.secretref import resolve_secret


def test_env_ref_reads_the_variable() -> None:
    assert resolve_secret(SecretRef(env="TOKEN"), env={"TOKEN": "s3cret"}) == b"s3cret"


def test_missing_env_var_names_the_variable_and_the_fix() -> None:
    with pytest.raises(IssuanceError) as info:
        resolve_secret(SecretRef(env="CERTGIT_NOPE"), env={})
    assert str(info.value) == (
        "secret env var CERTGIT_NOPE is not set; export it or use secretRef.file"
    )


def test_file_ref_reads_bytes(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(b"\x00binary\xff")
    ref = SecretRef(file=str(tmp_path / "key.pem"))
    assert resolve_secret(ref) == b"\x00binary\xff"


def test_relative_file_is_resolved_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_bytes(b"abc")
    assert resolve_secret(SecretRef(file="secrets/token"), base_dir=tmp_path) == b"abc"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(IssuanceError, match=r"missing\.pem does not exist"):
        resolve_secret(SecretRef(file="missing.pem"), base_dir=tmp_path)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IssuanceError, match="is a directory"):
        resolve_secret(SecretRef(file=str(tmp_path)))


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "not readable by this user"),
        (OSError(errno.EIO, "Input/output error"), "Input/output error"),
    ],
    ids=["permission", "io-error"],
)
def test_unreadable_file_error_has_path_but_not_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, hint: str
) -> None:
    path = tmp_path / "locked"
    path.write_bytes(b"TOPSECRET")

    # file modes do not stop root (the CI user here), so the OS error is injected
    def fail(self: Path) -> bytes:
        raise error

    monkeypatch.setattr(Path, "read_bytes", fail)
    with pytest.raises(IssuanceError) as info:
        resolve_secret(SecretRef(file=str(path)))
    assert str(path) in str(info.value)
    assert hint in str(info.value)
    assert "TOPSECRET" not in str(info.value)


@pytest.mark.parametrize(
    "ref", [SecretRef(), SecretRef(env="A", file="b")], ids=["neither", "both"]
)
def test_exactly_one_of_env_or_file(ref: SecretRef) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        resolve_secret(ref, env={"A": "x"})
