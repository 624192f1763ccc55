"""Certificate versions: every certificate certgit issued, its private key sealed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certgit.reconciler.errors import StoreError
from certgit.reconciler.model import CertificateVersion, canonical_json
from certgit.reconciler.sealing import Sealer
from certgit.reconciler.store.connection import Database, db_timestamp, parse_time

__all__ = ["VERSION_COLUMNS", "VERSION_COLUMNS_SPEC", "Versions", "version_from_row"]

VERSION_COLUMNS = (
    "certificate, version, fingerprint, serial, not_before, not_after, spec_hash, issued_at"
)
VERSION_COLUMNS_SPEC = VERSION_COLUMNS + ", spec_json"


def version_from_row(row: Sequence[Any]) -> CertificateVersion:
    """A `CertificateVersion` from the columns `VERSION_COLUMNS_SPEC`, in that order."""
    return CertificateVersion(
        certificate=row[0],
        version=row[1],
        fingerprint=row[2],
        serial=row[3],
        not_before=parse_time(row[4]),
        not_after=parse_time(row[5]),
        spec_hash=row[6],
        issued_at=parse_time(row[7]),
        spec_json=row[8] if len(row) > 8 else None,
    )


def _key_aad(certificate: str, fingerprint: str) -> bytes:
    return f"{certificate}:{fingerprint}".encode()


def _check_key_pair(certificate: str, leaf: x509.Certificate, key_pem: bytes) -> None:
    try:
        # Keys come from our own issuers: skip RSA's slow consistency check.
        key = serialization.load_pem_private_key(
            key_pem, password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError):
        raise StoreError(
            f"certificate {certificate!r}: key_pem is not an unencrypted PEM private "
            "key; the issuer returned something unexpected"
        ) from None
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise StoreError(
            f"certificate {certificate!r}: the private key does not match the "
            "certificate's public key; it was not stored, re-issue the certificate"
        )


class Issued(Protocol):
    """What an issuer returns (issuers/local_ca.py IssuedCertificate has this shape)."""

    @property
    def cert_pem(self) -> bytes: ...
    @property
    def chain_pem(self) -> bytes: ...
    @property
    def key_pem(self) -> bytes: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def serial(self) -> str: ...
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...


class Versions:
    """The certificate_versions table. Keys are sealed with the store's master key."""

    def __init__(self, db: Database, sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer

    def add(
        self,
        certificate: str,
        *,
        cert_pem: bytes,
        chain_pem: bytes,
        key_pem: bytes,
        spec_hash: str,
        issued_at: datetime,
        spec: Mapping[str, Any] | None = None,
    ) -> CertificateVersion:
        """Record a newly issued certificate as the next version; the key is sealed.

        `spec` is what it was issued from (Certificate.issued_spec()), kept for field diffs.
        """
        try:
            leaf = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise StoreError(
                f"certificate {certificate!r}: cert_pem is not a PEM X.509 certificate; "
                "the issuer returned something unexpected"
            ) from None
        _check_key_pair(certificate, leaf, key_pem)
        return self._insert(
            certificate,
            fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
            serial=format(leaf.serial_number, "x"),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            cert_pem=cert_pem,
            chain_pem=chain_pem,
            key_pem=key_pem,
            spec_hash=spec_hash,
            issued_at=issued_at,
            spec=spec,
        )

    def add_issued(
        self,
        certificate: str,
        issued: Issued,
        *,
        spec_hash: str,
        issued_at: datetime,
        spec: Mapping[str, Any] | None = None,
    ) -> CertificateVersion:
        """Record what an issuer returned (its fingerprint, serial and dates as it computed
        them): no certificate parsing here. The issuer answers for the key matching the
        leaf (the local CA builds the leaf from that key)."""
        return self._insert(
            certificate,
            fingerprint=issued.fingerprint,
            serial=issued.serial,
            not_before=issued.not_before,
            not_after=issued.not_after,
            cert_pem=issued.cert_pem,
            chain_pem=issued.chain_pem,
            key_pem=issued.key_pem,
            spec_hash=spec_hash,
            issued_at=issued_at,
            spec=spec,
        )

    def _insert(
        self,
        certificate: str,
        *,
        fingerprint: str,
        serial: str,
        not_before: datetime,
        not_after: datetime,
        cert_pem: bytes,
        chain_pem: bytes,
        key_pem: bytes,
        spec_hash: str,
        issued_at: datetime,
        spec: Mapping[str, Any] | None,
    ) -> CertificateVersion:
        sealed = self._sealer.seal(key_pem, _key_aad(certificate, fingerprint))
        with self._db.transaction() as conn:
            existing = conn.execute(
                "SELECT certificate, version FROM certificate_versions WHERE fingerprint = ?",
                (fingerprint,),
            ).fetchone()
            if existing is not None:
                raise StoreError(
                    f"certificate {fingerprint} is already recorded as {existing[0]} "
                    f"version {existing[1]}: issue a new certificate instead of re-adding it"
                )
            (version,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM certificate_versions "
                "WHERE certificate = ?",
                (certificate,),
            ).fetchone()
            row = (
                certificate,
                version,
                fingerprint,
                serial,
                db_timestamp(not_before),
                db_timestamp(not_after),
                spec_hash,
                db_timestamp(issued_at),
            )
            spec_json = None if spec is None else canonical_json(dict(spec))
            conn.execute(
                f"INSERT INTO certificate_versions ({VERSION_COLUMNS}, spec_json, cert_pem, "
                "chain_pem, key_sealed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, spec_json, cert_pem, chain_pem, sealed),
            )
        return version_from_row((*row, spec_json))

    def material(self, certificate: str, version: int) -> tuple[bytes, bytes, bytes]:
        """(cert_pem, chain_pem, key_pem) of one version, the key decrypted."""
        row = self._db.conn.execute(
            "SELECT fingerprint, cert_pem, chain_pem, key_sealed FROM certificate_versions "
            "WHERE certificate = ? AND version = ?",
            (certificate, version),
        ).fetchone()
        if row is None:
            raise StoreError(
                f"certificate {certificate!r} has no version {version}: run "
                f"`certgit history {certificate}` to list the recorded versions"
            )
        fingerprint, cert_pem, chain_pem, sealed = row
        key_pem = self._sealer.unseal(sealed, _key_aad(certificate, fingerprint))
        return bytes(cert_pem), bytes(chain_pem), key_pem

    def certificate(self, certificate: str, version: int) -> bytes | None:
        """The leaf PEM of one version (public; the key stays sealed), or None."""
        row = self._db.conn.execute(
            "SELECT cert_pem FROM certificate_versions WHERE certificate = ? AND version = ?",
            (certificate, version),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def of(self, certificate: str, *, include_retired: bool = False) -> list[CertificateVersion]:
        """Every recorded version of one certificate, oldest first."""
        sql = f"SELECT {VERSION_COLUMNS_SPEC} FROM certificate_versions WHERE certificate = ?"
        if not include_retired:
            sql += " AND retired_at IS NULL"
        rows = self._db.conn.execute(sql + " ORDER BY version", (certificate,)).fetchall()
        return [version_from_row(r) for r in rows]

    def retire(self, certificate: str, version: int, at: datetime) -> bool:
        """Mark a version retired (kept, but no longer offered); False if unknown."""
        with self._db.transaction() as conn:
            cur = conn.execute(
                "UPDATE certificate_versions SET retired_at = ? "
                "WHERE certificate = ? AND version = ? AND retired_at IS NULL",
                (db_timestamp(at), certificate, version),
            )
        return cur.rowcount > 0
