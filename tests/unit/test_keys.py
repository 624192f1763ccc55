"""Key generation, PEM round trips and key/certificate matching."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from certgit.reconciler.errors import IssuanceError
from certgit.reconciler.issuers.keys import (
    fingerprint_sha256,
    generate_private_key,
    key_matches_certificate,
    load_private_key,
    private_key_to_pem,
)
from certgit.reconciler.model import KeyAlgorithm, KeySpec

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("size", "curve"), [(256, ec.SECP256R1), (384, ec.SECP384R1)]
)
def test_ecdsa_curves(size: int, curve: type[ec.EllipticCurve]) -> None:
    key = generate_private_key(KeySpec(KeyAlgorithm.ECDSA, size))
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, curve)


@pytest.mark.parametrize("size", [2048, 3072, 4096])
def test_rsa_sizes(size: int) -> None:
    key = generate_private_key(KeySpec(KeyAlgorithm.RSA, size))
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == size
    assert key.public_key().public_numbers().e == 65537


def test_ed25519() -> None:
    key = generate_private_key(KeySpec(KeyAlgorithm.ED25519, None))
    assert isinstance(key, ed25519.Ed25519PrivateKey)


@pytest.mark.parametrize(
    "spec",
    [
        KeySpec(KeyAlgorithm.ECDSA, 521),
        KeySpec(KeyAlgorithm.ECDSA, None),
        KeySpec(KeyAlgorithm.RSA, 1024),
        KeySpec(KeyAlgorithm.RSA, 2500),
        KeySpec(KeyAlgorithm.RSA, None),
        KeySpec(KeyAlgorithm.ED25519, 256),
    ],
    ids=str,
)
def test_bad_combinations_raise(spec: KeySpec) -> None:
    with pytest.raises(IssuanceError, match=r"not supported|fixed size"):
        generate_private_key(spec)


def test_pem_is_unencrypted_pkcs8_and_round_trips() -> None:
    key = generate_private_key(KeySpec(KeyAlgorithm.ECDSA, 256))
    pem = private_key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_private_key(pem)
    assert loaded.private_numbers() == key.private_numbers()  # type: ignore[union-attr]


def test_trusted_load_of_rsa_key_gives_same_key() -> None:
    key = generate_private_key(KeySpec(KeyAlgorithm.RSA, 2048))
    pem = private_key_to_pem(key)
    loaded = load_private_key(pem, trusted=True)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert loaded.private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    # the loaded key must still sign
    signature = loaded.sign(b"x", padding.PKCS1v15(), hashes.SHA256())
    key.public_key().verify(signature, b"x", padding.PKCS1v15(), hashes.SHA256())


def test_encrypted_or_garbage_pem_is_refused_without_content_in_message() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(IssuanceError, match="encrypted"):
        load_private_key(encrypted)
    garbage = b"-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n"
    with pytest.raises(IssuanceError) as info:
        load_private_key(garbage)
    assert "U0VDUkVU" not in str(info.value)


def test_key_matches_certificate() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    cert_pem = _self_signed(key).public_bytes(serialization.Encoding.PEM)
    assert key_matches_certificate(private_key_to_pem(key), cert_pem) is True
    assert key_matches_certificate(private_key_to_pem(other), cert_pem) is False


def test_key_of_other_algorithm_does_not_match() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert_pem = _self_signed(key).public_bytes(serialization.Encoding.PEM)
    rsa_pem = private_key_to_pem(generate_private_key(KeySpec(KeyAlgorithm.RSA, 2048)))
    assert key_matches_certificate(rsa_pem, cert_pem, trusted=True) is False


def test_fingerprint_is_lowercase_sha256_of_der() -> None:
    cert = _self_signed(ec.generate_private_key(ec.SECP256R1()))
    expected = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert fingerprint_sha256(cert) == expected
    assert fingerprint_sha256(cert) == fingerprint_sha256(cert).lower()
    assert len(fingerprint_sha256(cert)) == 64
