"""Preflight refuses unusable bundles before anything is written."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from certgit.connectors.errors import PreflightFailed
from certgit.connectors.model import Deployment
from certgit.connectors.sdk.preflight import preflight

NOW = datetime(2030, 6, 1, tzinfo=UTC)
Key = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def make_cert(
    name: str,
    key: Key,
    issuer: tuple[str, Key] | None = None,
    *,
    ca: bool = False,
    not_before: datetime = NOW - timedelta(days=1),
    days: int = 30,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def fp(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class Pki:
    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = make_cert("Root", self.root_key, ca=True, days=3650)
        self.int_key = ec.generate_private_key(ec.SECP256R1())
        self.inter = make_cert("Int", self.int_key, ("Root", self.root_key), ca=True, days=3650)
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = make_cert("www", self.leaf_key, ("Int", self.int_key))

    def deployment(self, **changes: object) -> Deployment:
        values: dict[str, object] = {
            "certificate": "www",
            "version": 1,
            "fingerprint": fp(self.leaf),
            "cert_pem": pem(self.leaf),
            "chain_pem": pem(self.inter, self.root),
            "key_pem": key_pem(self.leaf_key),
        }
        values.update(changes)
        return Deployment(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def test_good_bundle_passes(pki: Pki) -> None:
    preflight(pki.deployment(), now=NOW, accepts_ed25519=False)
    preflight(pki.deployment(chain_pem=pem(pki.inter)), now=NOW, accepts_ed25519=False)
    preflight(pki.deployment(chain_pem=b""), now=NOW, accepts_ed25519=False)


def test_key_that_does_not_match_is_refused(pki: Pki) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(PreflightFailed) as caught:
        preflight(pki.deployment(key_pem=key_pem(other)), now=NOW, accepts_ed25519=False)
    assert "does not match" in str(caught.value)
    assert "PRIVATE" not in str(caught.value)


def test_unparseable_key_message_has_no_key_material(pki: Pki) -> None:
    broken = key_pem(pki.leaf_key)[:-60] + b"-----END PRIVATE KEY-----\n"
    with pytest.raises(PreflightFailed) as caught:
        preflight(pki.deployment(key_pem=broken), now=NOW, accepts_ed25519=False)
    assert "does not parse" in str(caught.value)
    body = key_pem(pki.leaf_key).splitlines()[1].decode()
    assert body not in str(caught.value)


def test_chain_that_does_not_link_is_refused(pki: Pki) -> None:
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = make_cert("Int", stranger_key, ("Root", pki.root_key), ca=True)
    with pytest.raises(PreflightFailed) as caught:
        preflight(pki.deployment(chain_pem=pem(stranger)), now=NOW, accepts_ed25519=False)
    assert "does not link" in str(caught.value)
    # Wrong order (root before intermediate) does not link either.
    with pytest.raises(PreflightFailed):
        preflight(
            pki.deployment(chain_pem=pem(pki.root, pki.inter)), now=NOW, accepts_ed25519=False
        )


def test_dates_outside_validity_are_refused(pki: Pki) -> None:
    with pytest.raises(PreflightFailed) as early:
        preflight(pki.deployment(), now=NOW - timedelta(days=2), accepts_ed25519=False)
    assert "not valid before" in str(early.value)
    with pytest.raises(PreflightFailed) as late:
        preflight(pki.deployment(), now=NOW + timedelta(days=40), accepts_ed25519=False)
    assert "expired" in str(late.value)
    # A naive datetime is taken as UTC.
    preflight(pki.deployment(), now=NOW.replace(tzinfo=None), accepts_ed25519=False)


def test_ed25519_only_where_accepted(pki: Pki) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    leaf = make_cert("ed", key, ("Int", pki.int_key))
    deployment = pki.deployment(fingerprint=fp(leaf), cert_pem=pem(leaf), key_pem=key_pem(key))
    with pytest.raises(PreflightFailed) as caught:
        preflight(deployment, now=NOW, accepts_ed25519=False)
    assert "Ed25519" in str(caught.value)
    preflight(deployment, now=NOW, accepts_ed25519=True)


def test_cert_that_does_not_parse_is_refused(pki: Pki) -> None:
    with pytest.raises(PreflightFailed) as caught:
        preflight(pki.deployment(cert_pem=b"not a certificate"), now=NOW, accepts_ed25519=False)
    assert "does not parse" in str(caught.value)
    with pytest.raises(PreflightFailed):
        preflight(pki.deployment(chain_pem=b"garbage\n"), now=NOW, accepts_ed25519=False)


def test_recorded_fingerprint_must_be_the_leafs(pki: Pki) -> None:
    with pytest.raises(PreflightFailed) as caught:
        preflight(pki.deployment(fingerprint="ab" * 32), now=NOW, accepts_ed25519=False)
    assert "recorded fingerprint" in str(caught.value)
    upper = ":".join(fp(pki.leaf)[i : i + 2] for i in range(0, 64, 2)).upper()
    preflight(pki.deployment(fingerprint=upper), now=NOW, accepts_ed25519=False)
