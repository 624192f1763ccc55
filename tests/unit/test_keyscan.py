"""Committed private keys: found in any file of the commit, positioned, verdicts cached."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certgit.reconciler.desired import DesiredLoader, load_directory
from certgit.reconciler.errors import ConfigErrors
from certgit.reconciler.keyscan import AGE_MESSAGE, MESSAGE, find_private_keys
from certgit.reconciler.model import FileEntry

ISSUER = b"""\
apiVersion: certgit.dev/v1
kind: Issuer
metadata: {name: ca}
spec: {type: local-ca}
"""

_EC = ec.generate_private_key(ec.SECP256R1())


def _pem(fmt: serialization.PrivateFormat, password: bytes | None = None, key=_EC) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


@pytest.mark.parametrize(
    "pem",
    [
        _pem(serialization.PrivateFormat.PKCS8),
        _pem(serialization.PrivateFormat.TraditionalOpenSSL),  # BEGIN EC PRIVATE KEY
        _pem(serialization.PrivateFormat.PKCS8, b"passphrase"),  # ENCRYPTED PRIVATE KEY
        _pem(serialization.PrivateFormat.TraditionalOpenSSL, b"pw"),  # Proc-Type: 4,ENCRYPTED
        _pem(serialization.PrivateFormat.OpenSSH, key=ed25519.Ed25519PrivateKey.generate()),
        b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF...\n",
    ],
    ids=["pkcs8", "sec1", "encrypted-pkcs8", "encrypted-pkcs1", "openssh", "pgp"],
)
def test_every_kind_of_pem_private_key_is_found(pem: bytes) -> None:
    data = b"# notes\nkey: |\n  " + pem.replace(b"\n", b"\n  ")
    assert find_private_keys(data) == ((3, 3, MESSAGE),)


def test_rsa_pkcs1_key_is_found() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = _pem(serialization.PrivateFormat.TraditionalOpenSSL, key=key)
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert find_private_keys(pem) == ((1, 1, MESSAGE),)


def test_base64_encoded_key_as_in_a_kubernetes_secret_is_found() -> None:
    encoded = base64.b64encode(_pem(serialization.PrivateFormat.PKCS8))
    data = b"kind: Secret\ndata:\n  tls.key: " + encoded + b"\n"
    assert find_private_keys(data) == ((3, 12, MESSAGE),)


def test_age_identity_is_found() -> None:
    data = b"# created: 2026-01-01\nAGE-SECRET-KEY-1" + b"Q" * 58 + b"\n"
    assert find_private_keys(data) == ((2, 1, AGE_MESSAGE),)


@pytest.mark.parametrize(
    "data",
    [
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n-----END AGE ENCRYPTED FILE-----\n",
        b"keyRef: {env: CA_KEY_PEM}  # the PRIVATE KEY lives in the environment\n",
        base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIBxzCCAW2gAwIBAgIU\n"),
        b"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n",  # a public key
    ],
    ids=["certificate", "public-key", "age-encrypted", "prose", "b64-certificate", "age-public"],
)
def test_public_material_is_not_a_key(data: bytes) -> None:
    assert find_private_keys(data) == ()


def test_columns_count_characters_not_bytes() -> None:
    data = "é: -----BEGIN PRIVATE KEY-----\n".encode()
    assert find_private_keys(data) == ((1, 4, MESSAGE),)


# --------------------------------------------------------------------------- the loader


def _entry(path: str, data: bytes, reads: list[str] | None = None) -> FileEntry:
    def read() -> bytes:
        if reads is not None:
            reads.append(path)
        return data

    return FileEntry(path=path, key=f"blob-{hash(data)}", read=read)


def _problems(loader: DesiredLoader, files, others) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        loader.load(files, "c0ffee", others)
    return [str(p) for p in info.value.problems]


def test_a_key_in_a_yaml_file_is_a_positioned_problem() -> None:
    pem = _pem(serialization.PrivateFormat.PKCS8)
    issuer = ISSUER + b"# ca key, for now:\n# " + pem.replace(b"\n", b"\n# ")
    loader = DesiredLoader(connector_types=["files"])
    assert _problems(loader, [_entry("issuers/ca.yaml", issuer)], []) == [
        f"issuers/ca.yaml:6:3: {MESSAGE}"
    ]


def test_a_key_in_any_other_file_is_a_positioned_problem() -> None:
    pem = _pem(serialization.PrivateFormat.TraditionalOpenSSL)
    others = [
        _entry("ca/ca.key", pem),
        _entry(".secrets/old.pem", b"\n\n" + pem),
        _entry("README.md", b"# nothing secret\n"),
    ]
    loader = DesiredLoader(connector_types=["files"])
    assert _problems(loader, [_entry("issuers/ca.yaml", ISSUER)], others) == [
        f".secrets/old.pem:3:1: {MESSAGE}",
        f"ca/ca.key:1:1: {MESSAGE}",
    ]


def test_other_files_are_scanned_once_per_content_key() -> None:
    reads: list[str] = []
    others = [_entry("notes.txt", b"plain\n", reads), _entry("ca.key", b"x", reads)]
    loader = DesiredLoader(connector_types=["files"])
    for _ in range(3):
        loader.load([_entry("issuers/ca.yaml", ISSUER)], "c0ffee", others)
    assert sorted(reads) == ["ca.key", "notes.txt"]


def test_a_bad_verdict_stays_cached_and_keeps_rejecting() -> None:
    reads: list[str] = []
    pem = _pem(serialization.PrivateFormat.PKCS8)
    others = [_entry("ca.key", pem, reads)]
    loader = DesiredLoader(connector_types=["files"])
    for _ in range(2):
        assert _problems(loader, [_entry("issuers/ca.yaml", ISSUER)], others) == [
            f"ca.key:1:1: {MESSAGE}"
        ]
    assert reads == ["ca.key"]


def test_load_directory_scans_non_yaml_and_dot_files(tmp_path: Path) -> None:
    (tmp_path / "issuers").mkdir()
    (tmp_path / "issuers" / "ca.yaml").write_bytes(ISSUER)
    (tmp_path / ".old").mkdir()
    (tmp_path / ".old" / "ca.key").write_bytes(_pem(serialization.PrivateFormat.PKCS8))
    (tmp_path / "keys.txt").write_bytes(b"AGE-SECRET-KEY-1" + b"Z" * 58 + b"\n")
    (tmp_path / ".git").mkdir()  # never scanned: Git's own objects are not the tree
    (tmp_path / ".git" / "x.key").write_bytes(_pem(serialization.PrivateFormat.PKCS8))
    with pytest.raises(ConfigErrors) as info:
        load_directory(tmp_path)
    assert [str(p) for p in info.value.problems] == [
        f".old/ca.key:1:1: {MESSAGE}",
        f"keys.txt:1:1: {AGE_MESSAGE}",
    ]


def test_a_sops_yaml_document_is_data_not_desired_state() -> None:
    sops_file = (
        b"caKey: ENC[AES256_GCM,data:abc=,iv:x,tag:y,type:str]\n"
        b"sops:\n  mac: ENC[AES256_GCM,data:m,iv:i,tag:t,type:str]\n  version: 3.11.0\n"
    )
    loader = DesiredLoader(connector_types=["files"])
    desired = loader.load(
        [_entry("issuers/ca.yaml", ISSUER), _entry("secrets/ca.sops.yaml", sops_file)], None
    )
    assert list(desired.issuers) == ["ca"]
