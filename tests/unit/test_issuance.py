"""Issue/renew actions: local CA in the state dir, idempotence, key rotation Always/Never."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgit.reconciler.desired import load_directory
from certgit.reconciler.errors import IssuanceError
from certgit.reconciler.issuance import Issuance, ca_passphrase, needs_new_version
from certgit.reconciler.model import DesiredState, KeyRotation
from certgit.reconciler.store import Store

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = bytes(range(32))


def _desired(root: Path, rotation: str = "Always", names: str = "a.example.com") -> DesiredState:
    root.mkdir(parents=True, exist_ok=True)
    (root / "all.yaml").write_text(
        "apiVersion: certgit.dev/v1\nkind: Issuer\nmetadata: {name: ca}\n"
        "spec: {type: local-ca, localCA: {commonName: unit CA}}\n---\n"
        "apiVersion: certgit.dev/v1\nkind: Certificate\nmetadata: {name: web}\n"
        f"spec: {{dnsNames: [{names}], issuerRef: {{name: ca}}, duration: 30d, "
        f"renewBefore: 10d, key: {{algorithm: RSA, size: 2048, rotation: {rotation}}}}}\n"
    )
    return load_directory(root)


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(tmp_path / "state", master_key=KEY)
    yield s
    s.close()


def _spki(cert_pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(cert_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _issuance(store: Store, tmp_path: Path) -> Issuance:
    return Issuance(store, tmp_path / "state", env={"CERTGIT_MASTER_KEY": KEY.hex()})


def test_issue_records_a_version_and_is_idempotent(store: Store, tmp_path: Path) -> None:
    desired = _desired(tmp_path / "repo")
    issuance = _issuance(store, tmp_path)
    first = issuance.issue(desired, "web", NOW)
    assert first.version is not None and first.version.version == 1
    cert_pem, chain_pem, _key_pem = store.version_material("web", 1)
    leaf = x509.load_pem_x509_certificate(cert_pem)
    assert leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == ["a.example.com"]
    assert b"BEGIN CERTIFICATE" in chain_pem
    # Same spec, not due: a re-run (e.g. after a crash) issues nothing.
    again = issuance.issue(desired, "web", NOW + timedelta(minutes=1))
    assert again.version is None
    assert [v.version for v in store.versions("web")] == [1]


def test_local_ca_lives_in_the_state_dir_with_an_encrypted_key(
    store: Store, tmp_path: Path
) -> None:
    _issuance(store, tmp_path).issue(_desired(tmp_path / "repo"), "web", NOW)
    ca_dir = tmp_path / "state" / "ca" / "ca"
    key_pem = (ca_dir / "ca.key").read_bytes()
    assert b"ENCRYPTED" in key_pem
    serialization.load_pem_private_key(key_pem, password=ca_passphrase(KEY))
    with pytest.raises((ValueError, TypeError)):
        serialization.load_pem_private_key(key_pem, password=ca_passphrase(bytes(32)))
    # A second Issuance (another process) loads the same CA instead of creating one.
    fresh = _issuance(store, tmp_path)
    fresh.issue(_desired(tmp_path / "repo2", names="b.example.com"), "web", NOW)
    assert (ca_dir / "ca.key").read_bytes() == key_pem
    chains = {store.version_material("web", v)[1] for v in (1, 2)}
    assert len(chains) == 1


def test_spec_change_issues_a_new_version(store: Store, tmp_path: Path) -> None:
    issuance = _issuance(store, tmp_path)
    issuance.issue(_desired(tmp_path / "r1"), "web", NOW)
    changed = _desired(tmp_path / "r2", names="a.example.com, b.example.com")
    out = issuance.issue(changed, "web", NOW)
    assert out.version is not None and out.version.version == 2
    # Both versions keep their keys: any can be redeployed.
    for v in (1, 2):
        _cert_pem, _, key_pem = store.version_material("web", v)
        assert key_pem.startswith(b"-----BEGIN PRIVATE KEY")


@pytest.mark.parametrize(("rotation", "same_key"), [("Always", False), ("Never", True)])
def test_renewal_key_rotation(
    store: Store, tmp_path: Path, rotation: str, same_key: bool
) -> None:
    desired = _desired(tmp_path / "repo", rotation=rotation)
    issuance = _issuance(store, tmp_path)
    issuance.issue(desired, "web", NOW)
    due = NOW + timedelta(days=25)  # inside renewBefore 10d of a 30d certificate
    cert = desired.certificates["web"]
    assert needs_new_version(cert, store.versions("web")[-1], due)
    out = issuance.issue(desired, "web", due)
    assert out.version is not None and out.version.version == 2
    assert out.key_reused is same_key
    first, second = (store.version_material("web", v)[0] for v in (1, 2))
    assert (_spki(first) == _spki(second)) is same_key


def test_rotation_never_gets_a_new_key_when_the_key_spec_changes(
    store: Store, tmp_path: Path
) -> None:
    desired = _desired(tmp_path / "repo", rotation="Never")
    issuance = _issuance(store, tmp_path)
    issuance.issue(desired, "web", NOW)
    cert = desired.certificates["web"]
    ecdsa = replace(cert, key=replace(cert.key, algorithm="ECDSA", size=256,
                                      rotation=KeyRotation.NEVER))
    changed = replace(desired, certificates={"web": ecdsa})
    out = issuance.issue(changed, "web", NOW)
    assert out.version is not None and not out.key_reused


def test_unknown_issuer_type_says_what_to_do(store: Store, tmp_path: Path) -> None:
    desired = _desired(tmp_path / "repo")
    acme = replace(desired.issuers["ca"], type="acme")
    with pytest.raises(IssuanceError, match="only local-ca"):
        _issuance(store, tmp_path).issue(replace(desired, issuers={"ca": acme}), "web", NOW)
