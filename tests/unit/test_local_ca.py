"""The local CA: creation on first use, loading, CA from secretRefs, and leaf properties."""

from __future__ import annotations

import ipaddress
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgit.reconciler.errors import IssuanceError
from certgit.reconciler.issuers.keys import (
    fingerprint_sha256,
    key_matches_certificate,
    private_key_to_pem,
)
from certgit.reconciler.issuers.local_ca import IssuedCertificate, LocalCA
from certgit.reconciler.model import (
    Certificate,
    Issuer,
    KeyAlgorithm,
    KeyRotation,
    KeySpec,
    SecretRef,
)
from certgit.reconciler.sitepolicy import SecretsPolicy

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PASS = b"correct horse battery staple"
ISSUER = Issuer(name="internal", type="local-ca")


def _ca(tmp_path: Path, backdate: timedelta = timedelta(hours=1)) -> LocalCA:
    return LocalCA.load_or_create(
        tmp_path / "ca", issuer=ISSUER, passphrase=PASS, now=NOW, env={}, backdate=backdate
    )


def _leaf(issued: IssuedCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert_pem)


def _ext(cert: x509.Certificate, cls: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


WEB = Certificate(
    name="web",
    issuer_ref="internal",
    common_name="www.example.com",
    dns_names=("www.example.com", "api.example.com"),
    ip_addresses=("10.1.2.3", "2001:db8::1"),
    duration=timedelta(days=90),
)


# --------------------------------------------------------------------------- CA creation


def test_ca_is_created_on_first_use_with_modes_and_extensions(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    directory = tmp_path / "ca"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "ca.crt").stat().st_mode) == 0o644
    assert (directory / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY")
    assert not list(directory.glob("*.tmp"))  # temp files are cleaned up

    cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    assert cert == ca.certificate
    assert ca.certificate_pem == (directory / "ca.crt").read_bytes()
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "certgit internal CA"
    assert cert.issuer == cert.subject
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.not_valid_before_utc == NOW - timedelta(hours=1)
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)

    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    assert not ku.value.key_encipherment
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    cert.verify_directly_issued_by(cert)  # self-signed


def test_ca_common_name_from_issuer(tmp_path: Path) -> None:
    issuer = Issuer(name="internal", type="local-ca", ca_common_name="Acme Internal Root")
    ca = LocalCA.load_or_create(tmp_path / "ca", issuer=issuer, passphrase=PASS, now=NOW)
    cn = ca.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "Acme Internal Root"


def test_second_load_reuses_the_ca(tmp_path: Path) -> None:
    first = _ca(tmp_path)
    second = LocalCA.load_or_create(
        tmp_path / "ca", issuer=ISSUER, passphrase=PASS, now=NOW + timedelta(days=5)
    )
    assert second.fingerprint == first.fingerprint
    leaf = _leaf(second.issue(WEB, now=NOW))
    leaf.verify_directly_issued_by(first.certificate)


def test_concurrent_creators_end_with_one_ca(tmp_path: Path) -> None:
    barrier = threading.Barrier(4)
    fingerprints: list[str] = []
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait(timeout=10)
        try:
            fingerprints.append(_ca(tmp_path).fingerprint)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(fingerprints) == 4
    assert len(set(fingerprints)) == 1
    on_disk = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    assert fingerprint_sha256(on_disk) == fingerprints[0]


def test_wrong_passphrase_is_an_issuance_error(tmp_path: Path) -> None:
    _ca(tmp_path)
    with pytest.raises(IssuanceError, match=r"cannot decrypt .*ca\.key.*passphrase"):
        LocalCA.load_or_create(tmp_path / "ca", issuer=ISSUER, passphrase=b"wrong", now=NOW)


def test_corrupt_ca_certificate_names_the_file(tmp_path: Path) -> None:
    _ca(tmp_path)
    (tmp_path / "ca" / "ca.crt").write_bytes(b"not a certificate")
    with pytest.raises(IssuanceError, match=r"ca\.crt is not a valid PEM certificate; restore"):
        _ca(tmp_path)


def test_key_without_certificate_is_refused_not_overwritten(tmp_path: Path) -> None:
    _ca(tmp_path)
    key_before = (tmp_path / "ca" / "ca.key").read_bytes()
    (tmp_path / "ca" / "ca.crt").unlink()
    with pytest.raises(IssuanceError, match=r"ca\.crt is missing"):
        _ca(tmp_path)
    assert (tmp_path / "ca" / "ca.key").read_bytes() == key_before


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IssuanceError, match="passphrase"):
        LocalCA.load_or_create(tmp_path / "ca", issuer=ISSUER, passphrase=b"", now=NOW)
    assert not (tmp_path / "ca").exists()


def test_naive_now_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        LocalCA.load_or_create(
            tmp_path / "ca", issuer=ISSUER, passphrase=PASS, now=datetime(2026, 1, 1)
        )


# --------------------------------------------------------------------------- CA from Git


def _external_ca(
    key: ec.EllipticCurvePrivateKey, *, ca: bool = True
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ops Root")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )


def _write_external(
    tmp_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issuer:
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca-key.pem").write_bytes(private_key_to_pem(key))
    return Issuer(
        name="ops",
        type="local-ca",
        ca_certificate=SecretRef(file=str(tmp_path / "ca.pem")),
        ca_key=SecretRef(file=str(tmp_path / "ca-key.pem")),
    )


def _files_under(tmp_path: Path) -> SecretsPolicy:
    """A site [secrets] policy letting secretRefs read files under tmp_path."""
    return SecretsPolicy(files=(str(tmp_path),))


def test_ca_from_secret_refs_issues_leaves(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _external_ca(key)
    issuer = _write_external(tmp_path, cert, key)
    ca = LocalCA.load_or_create(
        tmp_path / "state-ca",
        issuer=issuer,
        passphrase=PASS,
        now=NOW,
        secrets_policy=_files_under(tmp_path),
    )
    assert ca.certificate == cert
    assert not (tmp_path / "state-ca").exists()  # nothing created when the CA is given
    issued = ca.issue(WEB, now=NOW)
    leaf = _leaf(issued)
    leaf.verify_directly_issued_by(cert)
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA384)  # P-384 CA signs SHA-384
    # the given CA has no SKI: the AKI is derived from its public key
    aki = _ext(leaf, x509.AuthorityKeyIdentifier).value
    expected = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    assert aki.key_identifier == expected.key_identifier


def test_ca_key_from_env(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _external_ca(key)
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issuer = Issuer(
        name="ops",
        type="local-ca",
        ca_certificate=SecretRef(file=str(tmp_path / "ca.pem")),
        ca_key=SecretRef(env="OPS_CA_KEY"),
    )
    env = {"OPS_CA_KEY": private_key_to_pem(key).decode()}
    policy = SecretsPolicy(env=("OPS_CA_*",), files=(str(tmp_path),))
    ca = LocalCA.load_or_create(
        tmp_path / "x", issuer=issuer, passphrase=PASS, now=NOW, env=env, secrets_policy=policy
    )
    assert ca.fingerprint == fingerprint_sha256(cert)


def test_secret_refs_outside_the_site_policy_are_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = _write_external(tmp_path, _external_ca(key), key)
    # the default site policy lets secretRefs read nothing
    with pytest.raises(IssuanceError, match=r"outside the site policy's \[secrets\] files"):
        LocalCA.load_or_create(tmp_path / "x", issuer=issuer, passphrase=PASS, now=NOW)


def test_mismatched_ca_key_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = _write_external(tmp_path, _external_ca(key), ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(IssuanceError, match=r"issuer ops: .*does not match its private key"):
        LocalCA.load_or_create(
            tmp_path / "x",
            issuer=issuer,
            passphrase=PASS,
            now=NOW,
            secrets_policy=_files_under(tmp_path),
        )


def test_non_ca_certificate_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = _write_external(tmp_path, _external_ca(key, ca=False), key)
    with pytest.raises(IssuanceError, match="not a CA certificate"):
        LocalCA.load_or_create(
            tmp_path / "x",
            issuer=issuer,
            passphrase=PASS,
            now=NOW,
            secrets_policy=_files_under(tmp_path),
        )


def test_only_one_of_ca_certificate_and_key_is_refused(tmp_path: Path) -> None:
    issuer = Issuer(name="ops", type="local-ca", ca_certificate=SecretRef(file="/ca.pem"))
    with pytest.raises(IssuanceError, match="set both caCertificate and caKey"):
        LocalCA.load_or_create(tmp_path / "x", issuer=issuer, passphrase=PASS, now=NOW)


# --------------------------------------------------------------------------- leaves


def test_leaf_properties(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    issued = ca.issue(WEB, now=NOW)
    leaf = _leaf(issued)

    leaf.verify_directly_issued_by(ca.certificate)
    assert issued.chain_pem == ca.certificate_pem
    assert key_matches_certificate(issued.key_pem, issued.cert_pem)
    assert issued.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert issued.fingerprint == fingerprint_sha256(leaf)
    assert issued.serial == format(leaf.serial_number, "x")
    assert issued.serial == issued.serial.lower()
    assert 64 <= leaf.serial_number.bit_length() <= 127  # positive, >= 64 random bits
    assert issued.not_before == leaf.not_valid_before_utc == NOW - timedelta(hours=1)
    assert issued.not_after == leaf.not_valid_after_utc == NOW + timedelta(days=90)
    assert issued.not_before.tzinfo is not None

    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "www.example.com"
    san = _ext(leaf, x509.SubjectAlternativeName)
    assert not san.critical  # subject is not empty
    assert san.value.get_values_for_type(x509.DNSName) == ["www.example.com", "api.example.com"]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("2001:db8::1"),
    ]

    bc = _ext(leaf, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = _ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not ku.value.key_encipherment  # ECDSA key
    assert not ku.value.key_cert_sign
    eku = _ext(leaf, x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ca_ski = _ext(ca.certificate, x509.SubjectKeyIdentifier).value
    assert _ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski.digest
    leaf_ski = _ext(leaf, x509.SubjectKeyIdentifier).value
    expected_ski = x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())  # type: ignore[arg-type]
    assert leaf_ski == expected_ski
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)


def test_repr_hides_the_key(tmp_path: Path) -> None:
    issued = _ca(tmp_path).issue(WEB, now=NOW)
    assert "PRIVATE" not in repr(issued)
    assert issued.fingerprint in repr(issued)
    assert "PRIVATE" not in repr(_ca(tmp_path))


def test_rsa_leaf_has_key_encipherment(tmp_path: Path) -> None:
    cert = Certificate(
        name="rsa", issuer_ref="internal", dns_names=("rsa.example.com",),
        key=KeySpec(KeyAlgorithm.RSA, 2048),
    )
    issued = _ca(tmp_path).issue(cert, now=NOW)
    leaf = _leaf(issued)
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey)
    ku = _ext(leaf, x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment


def test_ed25519_leaf_under_ecdsa_ca(tmp_path: Path) -> None:
    cert = Certificate(
        name="ed", issuer_ref="internal", dns_names=("ed.example.com",),
        key=KeySpec(KeyAlgorithm.ED25519, None),
    )
    ca = _ca(tmp_path)
    issued = ca.issue(cert, now=NOW)
    leaf = _leaf(issued)
    assert isinstance(leaf.public_key(), ed25519.Ed25519PublicKey)
    leaf.verify_directly_issued_by(ca.certificate)
    assert not _ext(leaf, x509.KeyUsage).value.key_encipherment
    assert key_matches_certificate(issued.key_pem, issued.cert_pem)


def test_empty_subject_makes_san_critical(tmp_path: Path) -> None:
    cert = Certificate(name="nocn", issuer_ref="internal", dns_names=("a.example.com",))
    leaf = _leaf(_ca(tmp_path).issue(cert, now=NOW))
    assert len(leaf.subject) == 0
    assert _ext(leaf, x509.SubjectAlternativeName).critical


def test_common_name_is_repeated_in_san(tmp_path: Path) -> None:
    cert = Certificate(name="cn", issuer_ref="internal", common_name="only.example.com")
    leaf = _leaf(_ca(tmp_path).issue(cert, now=NOW))
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["only.example.com"]


@pytest.mark.parametrize(
    ("cert", "message"),
    [
        (Certificate(name="empty", issuer_ref="internal"), "names no host"),
        (
            Certificate(name="badip", issuer_ref="internal", ip_addresses=("10.0.0.300",)),
            "not an IPv4 or IPv6 address",
        ),
        (
            Certificate(name="idn", issuer_ref="internal", dns_names=("bücher.example",)),
            "punycode",
        ),
        (
            Certificate(name="neg", issuer_ref="internal", dns_names=("a.example.com",),
                        duration=timedelta(0)),
            "duration must be positive",
        ),
    ],
    ids=["no-names", "bad-ip", "non-ascii", "zero-duration"],
)
def test_bad_requests_raise(tmp_path: Path, cert: Certificate, message: str) -> None:
    with pytest.raises(IssuanceError, match=message):
        _ca(tmp_path).issue(cert, now=NOW)


def test_not_after_is_clamped_to_the_ca(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    late = ca.certificate.not_valid_after_utc - timedelta(days=10)
    issued = ca.issue(WEB, now=late)
    assert issued.not_after == ca.certificate.not_valid_after_utc
    assert issued.not_before == late - timedelta(hours=1)


def test_expired_ca_refuses_to_issue(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    with pytest.raises(IssuanceError, match="expired"):
        ca.issue(WEB, now=ca.certificate.not_valid_after_utc + timedelta(seconds=1))


def test_custom_backdate(tmp_path: Path) -> None:
    ca = _ca(tmp_path, backdate=timedelta(minutes=5))
    assert ca.issue(WEB, now=NOW).not_before == NOW - timedelta(minutes=5)


def test_two_issues_differ_in_serial_and_key(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    a, b = ca.issue(WEB, now=NOW), ca.issue(WEB, now=NOW)
    assert a.serial != b.serial
    assert a.fingerprint != b.fingerprint
    assert _spki(_leaf(a)) != _spki(_leaf(b))


def test_key_reuse_keeps_the_public_key(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    never = Certificate(
        name="web", issuer_ref="internal", dns_names=("www.example.com",),
        key=KeySpec(KeyAlgorithm.ECDSA, 256, KeyRotation.NEVER),
    )
    first = ca.issue(never, now=NOW)
    second = ca.issue(never, now=NOW + timedelta(days=60), key_pem=first.key_pem)
    assert second.key_pem == first.key_pem
    assert _spki(_leaf(first)) == _spki(_leaf(second))
    assert second.serial != first.serial


def test_key_reuse_with_changed_spec_is_refused(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    first = ca.issue(WEB, now=NOW)  # ECDSA P-256
    p384 = Certificate(
        name="web", issuer_ref="internal", dns_names=("www.example.com",),
        key=KeySpec(KeyAlgorithm.ECDSA, 384, KeyRotation.NEVER),
    )
    with pytest.raises(IssuanceError, match="does not match the key spec"):
        ca.issue(p384, now=NOW, key_pem=first.key_pem)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
