"""Preflight: refuse an unusable certificate bundle before anything is written.

Checks, in process with `cryptography` only: the leaf parses; the key parses
and matches the leaf's public key; every certificate in cert_pem + chain_pem is
signed by the next one; `now` lies within the leaf's validity; the recorded
fingerprint is the leaf's; a key type only where the target accepts it
(`accepted_keys`: the connector's measured set, names as `key_type` gives them).
Messages never contain key material.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Collection
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certgit.connectors.errors import PreflightFailed
from certgit.connectors.model import Deployment

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_certs(data: bytes, what: str, name: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PreflightFailed(
            f"certificate {name}: the {what} does not parse as PEM certificates ({exc}); "
            "re-issue the certificate or fix the recorded version"
        ) from None


def key_type(public_key: object) -> str:
    """"ECDSA-256", "ECDSA-384", "RSA-2048", "Ed25519"...: the names of `base.KEY_TYPES`."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ECDSA-{public_key.curve.key_size}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(public_key).__name__


def preflight(
    deployment: Deployment,
    *,
    now: datetime | None = None,
    accepts_ed25519: bool = False,
    accepted_keys: Collection[str] | None = None,
) -> None:
    """Raise PreflightFailed unless the bundle is safe to put on a server.

    `now` defaults to the current UTC time; a naive datetime is taken as UTC.
    `accepted_keys` (KEY_TYPES names) refuses the listed types the target does
    not serve; a type outside KEY_TYPES (RSA-8192, ECDSA-521) was never measured
    and is let through. Without it, only `accepts_ed25519` is checked.
    """
    name = deployment.certificate
    when = now or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)

    certs = _load_certs(deployment.cert_pem, "certificate", name)
    leaf = certs[0]
    chain = _load_certs(deployment.chain_pem, "chain", name) if deployment.chain_pem.strip() else []

    fingerprint = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    recorded = deployment.fingerprint.replace(":", "").lower()
    if recorded and recorded != fingerprint:
        raise PreflightFailed(
            f"certificate {name} v{deployment.version}: the leaf's SHA-256 is {fingerprint} but "
            f"the recorded fingerprint is {recorded}; the state store and the PEM disagree, "
            "re-issue the certificate"
        )

    if accepted_keys is None:
        if isinstance(leaf.public_key(), ed25519.Ed25519PublicKey) and not accepts_ed25519:
            raise PreflightFailed(
                f"certificate {name}: this target does not accept Ed25519 keys; "
                "use an ECDSA or RSA key for certificates deployed here"
            )
    else:
        from certgit.connectors.sdk.base import KEY_TYPES

        kind = key_type(leaf.public_key())
        if kind in KEY_TYPES and kind not in accepted_keys:
            accepted = ", ".join(k for k in KEY_TYPES if k in accepted_keys) or "none"
            raise PreflightFailed(
                f"certificate {name}: this target does not accept {kind} keys "
                f"(it accepts {accepted}); reissue the certificate with one of those "
                "(spec.key) or deploy it to another target"
            )

    try:
        key = serialization.load_pem_private_key(deployment.key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The exception text is not echoed: it could quote key material.
        raise PreflightFailed(
            f"certificate {name}: the private key does not parse (not PEM, encrypted, "
            "or an unsupported algorithm); re-issue the certificate"
        ) from None
    if key.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise PreflightFailed(
            f"certificate {name}: the private key does not match the certificate's public key; "
            "deploying it would break TLS, re-issue the certificate"
        )

    path = [*certs, *chain]
    for child, parent in itertools.pairwise(path):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise PreflightFailed(
                f"certificate {name}: the chain does not link: {child.subject.rfc4514_string()!r} "
                f"is not signed by the next certificate {parent.subject.rfc4514_string()!r}; "
                "fix the issuer's chain (order: leaf, intermediate..., root optional)"
            ) from None

    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if when < not_before:
        raise PreflightFailed(
            f"certificate {name} is not valid before {not_before.isoformat()} "
            f"(now {when.isoformat()}); check the controller's clock or the issuer's"
        )
    if when > not_after:
        raise PreflightFailed(
            f"certificate {name} expired at {not_after.isoformat()} (now {when.isoformat()}); "
            "renew it before deploying"
        )
