"""Private key generation, (de)serialisation and key/certificate matching.

Private keys travel as PKCS#8 PEM `bytes`, unencrypted: the state store
encrypts them at rest. They are never logged and never put in an exception
message.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)

from certgit.reconciler.errors import IssuanceError
from certgit.reconciler.model import KeyAlgorithm, KeySpec

# The private key types certgit generates and signs with.
PrivateKey = CertificateIssuerPrivateKeyTypes

_EC_CURVES: dict[int, type[ec.EllipticCurve]] = {256: ec.SECP256R1, 384: ec.SECP384R1}
_RSA_SIZES = (2048, 3072, 4096)
_RSA_PUBLIC_EXPONENT = 65537


def generate_private_key(spec: KeySpec) -> PrivateKey:
    """Generate a fresh private key for `spec`.

    ECDSA size 256|384 (P-256/P-384), RSA 2048|3072|4096 (e=65537), Ed25519
    (size None). Any other combination raises IssuanceError.
    """
    algorithm = spec.algorithm
    if algorithm == KeyAlgorithm.ECDSA:
        curve = _EC_CURVES.get(spec.size) if spec.size is not None else None
        if curve is None:
            raise IssuanceError(
                f"ECDSA key size {spec.size} is not supported; use size 256 (P-256) or 384 (P-384)"
            )
        return ec.generate_private_key(curve())
    if algorithm == KeyAlgorithm.RSA:
        if spec.size not in _RSA_SIZES:
            raise IssuanceError(
                f"RSA key size {spec.size} is not supported; use 2048, 3072 or 4096"
            )
        return rsa.generate_private_key(public_exponent=_RSA_PUBLIC_EXPONENT, key_size=spec.size)
    if algorithm == KeyAlgorithm.ED25519:
        if spec.size is not None:
            raise IssuanceError(
                f"Ed25519 keys have a fixed size; remove size {spec.size} from the key spec"
            )
        return ed25519.Ed25519PrivateKey.generate()
    raise IssuanceError(f"key algorithm {algorithm!r} is not supported; use ECDSA, RSA or Ed25519")


def private_key_to_pem(key: PrivateKeyTypes) -> bytes:
    """Serialise a private key as unencrypted PKCS#8 PEM (the store encrypts it at rest)."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def load_private_key(pem: bytes, *, trusted: bool = False) -> PrivateKey:
    """Load an unencrypted PEM private key of a type certgit can sign with.

    `trusted=True` skips RSA key validation (`unsafe_skip_rsa_key_validation`;
    ~40 ms per RSA-2048 key, see FACTS.md). Only pass it for keys certgit generated itself and kept
    encrypted in its store; keys from outside are always validated.
    """
    try:
        if trusted:
            key = serialization.load_pem_private_key(
                pem, password=None, unsafe_skip_rsa_key_validation=True
            )
        else:
            key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise IssuanceError(
            "the private key PEM is encrypted; provide it unencrypted (certgit encrypts at rest)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # never chain the original: its message may quote parts of the input
        raise IssuanceError(
            "the private key could not be parsed; provide a PEM (PKCS#8 or traditional) key"
        ) from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise IssuanceError(
            f"{type(key).__name__} keys are not supported; use an ECDSA, RSA or Ed25519 key"
        )
    return key


def _spki_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        encoding=serialization.Encoding.DER,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def key_matches_certificate(key_pem: bytes, cert_pem: bytes, *, trusted: bool = False) -> bool:
    """True when the private key's public half is the certificate's public key.

    Compares SubjectPublicKeyInfo DER. Unparseable input raises IssuanceError.
    `trusted` is passed to `load_private_key` (skip RSA validation for keys
    certgit generated itself).
    """
    key = load_private_key(key_pem, trusted=trusted)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise IssuanceError("the certificate PEM could not be parsed; check the file") from None
    return _spki_der(key.public_key()) == _spki_der(cert.public_key())


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex (the fingerprint certgit records)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
