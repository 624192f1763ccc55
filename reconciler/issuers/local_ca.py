"""The `local-ca` issuer: a private CA that signs leaves in process with `cryptography`.

The CA is either given in Git by reference (`caCertificate` / `caKey`
secretRefs, the key as unencrypted PEM) or created on first use in the state
directory: `ca.crt` (0644) and `ca.key` (0600, encrypted with the passphrase
the caller supplies). Creation is safe against concurrent daemons: an flock
serialises creators, and files are published with `link(2)`, which never
replaces an existing file, so the loser of a race loads the winner's CA.

Leaves follow RFC 5280 and the CA/Browser Forum baseline profile where it
applies to a private CA (see tests/unit/test_pkilint.py for the lints run).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgit.reconciler.errors import IssuanceError
from certgit.reconciler.issuers.keys import (
    PrivateKey,
    fingerprint_sha256,
    generate_private_key,
    load_private_key,
    private_key_to_pem,
)
from certgit.reconciler.model import Certificate, Issuer, KeyAlgorithm, KeySpec
from certgit.reconciler.secretref import resolve_secret
from certgit.reconciler.sitepolicy import SecretsPolicy
from certgit.reconciler.statedir import make_private_dir, publish_private_file

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
_LOCK_FILE = ".ca.lock"

DEFAULT_BACKDATE = timedelta(hours=1)
CA_VALIDITY = timedelta(days=3650)

# CA/Browser Forum reserved policy OID for domain-validated certificates. The
# CABF profile requires a reserved policy OID in every subscriber certificate;
# DV is the one that asserts nothing about the subject's organisation.
CABF_DOMAIN_VALIDATED = x509.ObjectIdentifier("2.23.140.1.2.1")

_SERIAL_MASK = (1 << 127) - 1  # 16 bytes with the top bit cleared: positive, fits 20 octets


@dataclass(frozen=True)
class IssuedCertificate:
    """One leaf issued by a CA. `key_pem` is secret: it is left out of repr."""

    cert_pem: bytes
    chain_pem: bytes  # the CA certificate(s) above the leaf, PEM, issuing CA first
    key_pem: bytes = field(repr=False)  # PKCS#8, unencrypted: the store encrypts it
    fingerprint: str  # SHA-256 of the leaf DER, lowercase hex
    serial: str  # lowercase hex
    not_before: datetime  # aware UTC
    not_after: datetime  # aware UTC


def _require_aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime (UTC)")
    return now.astimezone(UTC)


def _signature_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    """The digest to sign with for this CA key (None for Ed25519, which hashes itself)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # CABF BR 7.1.3.2: P-384 signs with SHA-384, P-256 with SHA-256
        if key.curve.key_size >= 521:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    return hashes.SHA256()


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_spec_of(key: PrivateKey) -> KeySpec | None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return KeySpec(KeyAlgorithm.ECDSA, key.curve.key_size)
    if isinstance(key, rsa.RSAPrivateKey):
        return KeySpec(KeyAlgorithm.RSA, key.key_size)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return KeySpec(KeyAlgorithm.ED25519, None)
    return None


def _new_serial() -> int:
    # 127 random bits (CABF asks for >= 64); bounded retry on the 2**-127 zero case
    for _ in range(8):
        serial = int.from_bytes(secrets.token_bytes(16), "big") & _SERIAL_MASK
        if serial:
            return serial
    raise IssuanceError("the random source returned only zeros; check the system's entropy")


def _general_names(cert: Certificate) -> list[x509.GeneralName]:
    """SAN entries: dnsNames, then ipAddresses, plus commonName if it is in neither.

    The commonName is added because browsers ignore it and CABF requires it to
    repeat a SAN value.
    """
    names: list[x509.GeneralName] = []
    seen: set[x509.GeneralName] = set()

    def add(name: x509.GeneralName) -> None:
        if name not in seen:
            seen.add(name)
            names.append(name)

    for dns in cert.dns_names:
        if not dns.isascii():
            raise IssuanceError(
                f"certificate {cert.name}: dnsName {dns!r} is not ASCII; "
                "write internationalised names in their punycode (xn--) form"
            )
        add(x509.DNSName(dns))
    for ip in cert.ip_addresses:
        try:
            add(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise IssuanceError(
                f"certificate {cert.name}: ipAddress {ip!r} is not an IPv4 or IPv6 address"
            ) from None
    if cert.common_name:
        try:
            add(x509.IPAddress(ipaddress.ip_address(cert.common_name)))
        except ValueError:
            if not cert.common_name.isascii():
                raise IssuanceError(
                    f"certificate {cert.name}: commonName {cert.common_name!r} is not ASCII; "
                    "use its punycode (xn--) form"
                ) from None
            add(x509.DNSName(cert.common_name))
    if not names:
        raise IssuanceError(
            f"certificate {cert.name} names no host; set commonName, dnsNames or ipAddresses"
        )
    return names


class LocalCA:
    """A CA certificate and its key, able to issue server leaves."""

    def __init__(
        self,
        certificate: x509.Certificate,
        private_key: PrivateKey,
        *,
        chain: tuple[x509.Certificate, ...] = (),
        backdate: timedelta = DEFAULT_BACKDATE,
    ) -> None:
        """Wrap a CA certificate and its key. `chain` holds certificates above the CA.

        Raises IssuanceError when the key does not match the certificate or the
        certificate is not a CA allowed to sign certificates.
        """
        if backdate < timedelta(0):
            raise ValueError("backdate must not be negative")
        _check_ca(certificate, private_key, "the CA certificate")
        self._cert = certificate
        self._key = private_key
        self._chain = chain
        self._backdate = backdate
        self._hash = _signature_hash(private_key)
        try:
            ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(
                private_key.public_key()
            )

    # ----------------------------------------------------------------- loading

    @classmethod
    def load_or_create(
        cls,
        directory: Path,
        *,
        issuer: Issuer,
        passphrase: bytes,
        now: datetime,
        env: Mapping[str, str] = os.environ,
        secrets_policy: SecretsPolicy | None = None,
        deny: Sequence[str | os.PathLike[str]] = (),
        backdate: timedelta = DEFAULT_BACKDATE,
    ) -> LocalCA:
        """The CA of `issuer`: from its secretRefs if given, else from/into `directory`.

        Given CA material (`issuer.ca_certificate` + `issuer.ca_key`) is read
        with `resolve_secret` within `secrets_policy` (the site policy's
        `[secrets]`; None: the default, which reads no env var and no file)
        and never from `deny` (the state dir, certgit's own files); the key
        must be unencrypted PEM. The certificate file may carry the CA's own chain
        after it. Otherwise the CA lives in `directory` as `ca.crt` and `ca.key`
        (encrypted with `passphrase`) and is created there on first use.
        """
        now = _require_aware(now)
        if (issuer.ca_certificate is None) != (issuer.ca_key is None):
            raise IssuanceError(
                f"issuer {issuer.name}: set both caCertificate and caKey, or neither "
                "to let certgit create a CA"
            )
        if issuer.ca_certificate is not None and issuer.ca_key is not None:
            secrets_policy = secrets_policy or SecretsPolicy()
            cert_pem = resolve_secret(issuer.ca_certificate, secrets_policy, env=env, deny=deny)
            key_pem = resolve_secret(issuer.ca_key, secrets_policy, env=env, deny=deny)
            return cls.from_pem(
                cert_pem, key_pem, label=f"issuer {issuer.name}", backdate=backdate
            )
        if not passphrase:
            raise IssuanceError(
                f"issuer {issuer.name}: no passphrase to encrypt the CA key; "
                "configure certgit's master key"
            )
        common_name = issuer.ca_common_name or f"certgit {issuer.name} CA"
        cert, key = _load_or_create_files(directory, common_name, passphrase, now)
        return cls(cert, key, backdate=backdate)

    @classmethod
    def from_pem(
        cls,
        cert_pem: bytes,
        key_pem: bytes,
        *,
        label: str = "CA",
        backdate: timedelta = DEFAULT_BACKDATE,
    ) -> LocalCA:
        """A CA from PEM bytes: certificate (then optional chain) and an unencrypted key."""
        try:
            certs = x509.load_pem_x509_certificates(cert_pem)
        except ValueError:
            raise IssuanceError(
                f"{label}: the CA certificate is not a PEM certificate; check caCertificate"
            ) from None
        try:
            key = load_private_key(key_pem)
        except IssuanceError as exc:
            raise IssuanceError(f"{label}: caKey: {exc}") from None
        try:
            return cls(certs[0], key, chain=tuple(certs[1:]), backdate=backdate)
        except IssuanceError as exc:
            raise IssuanceError(f"{label}: {exc}") from None

    # ----------------------------------------------------------------- properties

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return self._cert

    @property
    def certificate_pem(self) -> bytes:
        """The CA certificate as PEM."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate's DER, lowercase hex."""
        return fingerprint_sha256(self._cert)

    @property
    def chain_pem(self) -> bytes:
        """What goes above a leaf: the CA certificate, then any certificates above it."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self._cert, *self._chain)
        )

    # ----------------------------------------------------------------- issuing

    def issue(
        self, cert: Certificate, *, now: datetime, key_pem: bytes | None = None
    ) -> IssuedCertificate:
        """Issue a server leaf for `cert`, valid from now - backdate for cert.duration.

        A fresh key is generated from `cert.key` unless `key_pem` (a key certgit
        generated and stored itself, reused under rotation Never) is given; it
        must match `cert.key`. notAfter never passes the CA's notAfter.
        """
        now = _require_aware(now)
        ca_not_after = self._cert.not_valid_after_utc
        if ca_not_after <= now:
            raise IssuanceError(
                f"the CA certificate {self._subject()} expired at {ca_not_after:%Y-%m-%d %H:%M}Z;"
                " renew the CA (or remove ca.crt and ca.key to create a new one)"
            )
        if cert.duration <= timedelta(0):
            raise IssuanceError(f"certificate {cert.name}: duration must be positive")

        if key_pem is None:
            key = generate_private_key(cert.key)
            key_pem = private_key_to_pem(key)
        else:
            key = load_private_key(key_pem, trusted=True)
            have = _key_spec_of(key)
            want = (cert.key.algorithm, cert.key.size)
            if have is None or (have.algorithm, have.size) != want:
                raise IssuanceError(
                    f"certificate {cert.name}: the stored key to reuse does not match the key "
                    f"spec ({cert.key.algorithm} {cert.key.size}); set key rotation to Always "
                    "once to issue with a new key"
                )

        not_before = now - self._backdate
        not_after = min(now + cert.duration, ca_not_after)
        sans = _general_names(cert)
        subject = (
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cert.common_name)])
            if cert.common_name
            else x509.Name([])
        )
        public_key = key.public_key()
        is_rsa = isinstance(key, rsa.RSAPrivateKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(_new_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # RSA key transport (TLS 1.2 RSA kx) only; EC/Ed25519 keys cannot encipher
            .add_extension(_key_usage(ca=False, key_encipherment=is_rsa), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            # RFC 5280 4.2.1.6: SAN must be critical when the subject is empty
            .add_extension(x509.SubjectAlternativeName(sans), critical=not cert.common_name)
            .add_extension(
                x509.CertificatePolicies([x509.PolicyInformation(CABF_DOMAIN_VALIDATED, None)]),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public_key),
                critical=False,
            )
            .add_extension(self._aki, critical=False)
        )
        leaf = builder.sign(self._key, self._hash)  # type: ignore[arg-type]
        return IssuedCertificate(
            cert_pem=leaf.public_bytes(serialization.Encoding.PEM),
            chain_pem=self.chain_pem,
            key_pem=key_pem,
            fingerprint=fingerprint_sha256(leaf),
            serial=format(leaf.serial_number, "x"),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )

    def _subject(self) -> str:
        return self._cert.subject.rfc4514_string() or "(empty subject)"

    def __repr__(self) -> str:
        return f"LocalCA(subject={self._subject()!r}, fingerprint={self.fingerprint[:16]}...)"


# --------------------------------------------------------------------------- checks


def _check_ca(cert: x509.Certificate, key: PrivateKey, what: str) -> None:
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise IssuanceError(
            f"{what} does not match its private key; provide the key that belongs to it"
        )
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise IssuanceError(
            f"{what} is not a CA certificate (basicConstraints CA:TRUE missing); "
            "provide a CA certificate"
        )
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    # RFC 5280 4.2.1.3: without keyUsage any use is allowed; with it, keyCertSign is required
    if ku is not None and not ku.key_cert_sign:
        raise IssuanceError(
            f"{what} may not sign certificates (keyUsage lacks keyCertSign); "
            "provide a CA certificate with keyCertSign"
        )


# --------------------------------------------------------------------------- files


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Exclusive flock on the CA directory's lock file; the kernel drops it if we die."""
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_directory(directory: Path) -> None:
    try:
        created = make_private_dir(directory, parents=True)
    except OSError as exc:
        raise IssuanceError(
            f"cannot create the CA directory {directory} ({exc.strerror}); "
            "check the state directory's permissions"
        ) from None
    if not created and not directory.is_dir():
        raise IssuanceError(
            f"{directory} exists and is not a directory; move it away so certgit "
            "can keep its CA there"
        )


def _load_or_create_files(
    directory: Path, common_name: str, passphrase: bytes, now: datetime
) -> tuple[x509.Certificate, PrivateKey]:
    _ensure_directory(directory)
    cert_path = directory / CA_CERT_FILE
    key_path = directory / CA_KEY_FILE
    with _locked(directory):
        cert_exists, key_exists = cert_path.exists(), key_path.exists()
        if cert_exists and key_exists:
            return _read_files(cert_path, key_path, passphrase)
        if cert_exists or key_exists:
            present, missing = (cert_path, key_path) if cert_exists else (key_path, cert_path)
            raise IssuanceError(
                f"{present} exists but {missing} is missing; restore {missing.name} from a "
                f"backup, or remove {present.name} to create a new CA (certificates issued "
                "by the old CA must then be reissued)"
            )
        cert, key = _new_ca(common_name, now)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        # key first, certificate last: a published ca.crt means the pair is complete
        _publish(key_path, key_pem, 0o600)
        _publish(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert, key


def _publish(path: Path, data: bytes, mode: int) -> None:
    """Write `data` durably to the new file `path` (`publish_private_file`).

    link(2) fails if `path` exists, so unlike rename it never clobbers a file a
    concurrent creator published (the flock makes that a second line of defence).
    """
    try:
        publish_private_file(path, data, mode)
    except FileExistsError:
        raise IssuanceError(
            f"{path} was created by another process meanwhile; retry to load it"
        ) from None
    except OSError as exc:
        raise IssuanceError(
            f"cannot write {path} ({exc.strerror}); check the state directory's free space "
            "and permissions"
        ) from None


def _read_files(
    cert_path: Path, key_path: Path, passphrase: bytes
) -> tuple[x509.Certificate, PrivateKey]:
    remedy = (
        "restore it from a backup, or remove ca.crt and ca.key to create a new CA "
        "(certificates issued by the old CA must then be reissued)"
    )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except OSError as exc:
        raise IssuanceError(f"cannot read {cert_path} ({exc.strerror}); {remedy}") from None
    except ValueError:
        raise IssuanceError(f"{cert_path} is not a valid PEM certificate; {remedy}") from None
    try:
        key_data = key_path.read_bytes()
    except OSError as exc:
        raise IssuanceError(f"cannot read {key_path} ({exc.strerror}); {remedy}") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=passphrase)
    except (ValueError, TypeError):
        raise IssuanceError(
            f"cannot decrypt {key_path}: the passphrase is wrong or the file is corrupt; "
            f"use the master key the CA was created with, or {remedy}"
        ) from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise IssuanceError(f"{key_path} holds an unsupported key type; {remedy}")
    _check_ca(cert, key, str(cert_path))
    return cert, key


def _key_usage(*, ca: bool, key_encipherment: bool) -> x509.KeyUsage:
    """Digital signature always; certificate and CRL signing for a CA only."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _new_ca(common_name: str, now: datetime) -> tuple[x509.Certificate, PrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(_new_serial())
        .not_valid_before(now - DEFAULT_BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True, key_encipherment=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key
