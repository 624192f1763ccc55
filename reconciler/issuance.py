"""Issue and renew actions: a new certificate version from the Certificate's issuer.

Only `local-ca` issuers exist so far (ACME arrives with its own issue). The
local CA lives in `<state-dir>/ca/<issuer>/`, its key encrypted with a
passphrase derived from certgit's master key, so no extra secret is needed.

Idempotent: an issue/renew whose certificate already has a current version
(spec unchanged, not inside renewBefore) records nothing, so an action that
runs twice after a crash never issues twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certgit.reconciler.durations import format_duration
from certgit.reconciler.errors import CertgitError, IssuanceError
from certgit.reconciler.issuers.keys import load_private_key
from certgit.reconciler.issuers.local_ca import CA_CERT_FILE, LocalCA
from certgit.reconciler.model import (
    Certificate,
    CertificateVersion,
    DesiredState,
    Issuer,
    KeyAlgorithm,
    KeyRotation,
)
from certgit.reconciler.renewal import renew_before_for
from certgit.reconciler.sealing import load_master_key
from certgit.reconciler.secretref import resolve_secret
from certgit.reconciler.statedir import StateDir
from certgit.reconciler.store import Store
from certgit.reconciler.yamlsafe import PositionIndex

if TYPE_CHECKING:
    from certgit.reconciler.sitepolicy import SitePolicy

_PASSPHRASE_LABEL = b"certgit local-ca passphrase v1\x00"
_MINUTE = timedelta(minutes=1)


def ca_passphrase(master_key: bytes) -> bytes:
    """The local CA key's passphrase: a one-way derivation of the master key."""
    return hashlib.sha256(_PASSPHRASE_LABEL + master_key).hexdigest().encode()


def needs_new_version(cert: Certificate, latest: CertificateVersion | None, now: datetime) -> bool:
    """True when no version exists, the spec changed, or the latest is inside its renewal window.

    The window comes from the latest version's real lifetime (`renew_before_for`),
    so a leaf cut short by its CA is not due again the moment it is issued.
    """
    if latest is None or latest.spec_hash != cert.spec_hash():
        return True
    return latest.not_after - now <= renew_before_for(cert, latest)


@dataclass(frozen=True)
class IssueOutcome:
    """What an issue/renew action did. `version` is None when nothing was needed."""

    certificate: str
    version: CertificateVersion | None
    key_reused: bool = False


def secret_deny(state_dir: Path, site: SitePolicy) -> tuple[str, ...]:
    """Paths no secretRef may read: the state directory and certgit's own configuration files."""
    return (str(Path(state_dir).absolute()), *site.protected)


class Issuance:
    """Issues certificate versions into the store for one state directory.

    `site`: the operator's site policy, whose `[secrets]` bounds what an
    Issuer's secretRefs may read (None: the built-in default, which reads none).
    """

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        site: SitePolicy | None = None,
    ) -> None:
        from certgit.reconciler.sitepolicy import SitePolicy

        self.store = store
        self.state_dir = Path(state_dir)
        self.env: Mapping[str, str] = {} if env is None else env
        self.site = site if site is not None else SitePolicy()
        self._cas: dict[str, LocalCA] = {}

    def _ca(self, desired: DesiredState, issuer_name: str, now: datetime) -> LocalCA:
        cached = self._cas.get(issuer_name)
        if cached is not None:
            return cached
        issuer = desired.issuers.get(issuer_name)
        if issuer is None:
            raise IssuanceError(
                f"issuer {issuer_name!r} is not defined in the desired state; add the Issuer "
                "or fix the Certificate's issuerRef"
            )
        if issuer.type != "local-ca":
            raise IssuanceError(
                f"issuer {issuer_name}: type {issuer.type!r} cannot issue yet (only local-ca "
                "does); use a local-ca issuer until that issuer type lands"
            )
        passphrase = ca_passphrase(load_master_key(self.state_dir, self.env))
        ca = LocalCA.load_or_create(
            StateDir(self.state_dir).ca(issuer_name),
            issuer=issuer,
            passphrase=passphrase,
            now=now,
            env=self.env,
            secrets_policy=self.site.secrets,
            deny=secret_deny(self.state_dir, self.site),
        )
        self._cas[issuer_name] = ca
        return ca

    def _reusable_key(self, cert: Certificate, latest: CertificateVersion | None) -> bytes | None:
        """Under rotation Never: the latest version's key, if it still fits the key spec."""
        if cert.key.rotation != KeyRotation.NEVER or latest is None:
            return None
        key_pem = self.store.version_material(cert.name, latest.version)[2]
        key = load_private_key(key_pem, trusted=True)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            have: tuple[KeyAlgorithm, int | None] = (KeyAlgorithm.ECDSA, key.curve.key_size)
        elif isinstance(key, rsa.RSAPrivateKey):
            have = (KeyAlgorithm.RSA, key.key_size)
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            have = (KeyAlgorithm.ED25519, None)
        else:
            return None
        if have != (cert.key.algorithm, cert.key.size):
            return None  # the key spec changed in Git: only a new key honours it
        return key_pem

    def issue(self, desired: DesiredState, name: str, now: datetime) -> IssueOutcome:
        """Issue the next version of certificate `name` if one is needed; record it."""
        cert = desired.certificates.get(name)
        if cert is None:
            raise IssuanceError(
                f"certificate {name!r} is no longer in the desired state; nothing to issue"
            )
        versions = self.store.versions(name)
        latest = versions[-1] if versions else None
        if not needs_new_version(cert, latest, now):
            return IssueOutcome(name, None)
        ca = self._ca(desired, cert.issuer_ref, now)
        reuse = self._reusable_key(cert, latest)
        issued = ca.issue(cert, now=now, key_pem=reuse)
        version = self.store.add_issued(
            name,
            issued,
            spec_hash=cert.spec_hash(),
            issued_at=now,
            spec=cert.issued_spec(),
        )
        return IssueOutcome(name, version, key_reused=reuse is not None)


def renewal_horizon(cert: Certificate, version: CertificateVersion) -> datetime:
    """When `version` of `cert` becomes due for renewal."""
    return version.not_after - max(renew_before_for(cert, version), timedelta(0))


def _ca_not_after(
    issuer: Issuer, state_dir: Path, env: Mapping[str, str], site: SitePolicy | None
) -> datetime | None:
    """notAfter of a local-ca issuer's CA if it already exists, read without creating anything.

    Only the public certificate is read (no master key): the one given by
    certificateRef, else `<state-dir>/ca/<issuer>/ca.crt`. None when there is
    no CA yet or it cannot be read (apply reports that with its remedy).
    """
    if issuer.type != "local-ca":
        return None
    try:
        if issuer.ca_certificate is not None:
            from certgit.reconciler.sitepolicy import SitePolicy

            site = site if site is not None else SitePolicy()
            deny = secret_deny(state_dir, site)
            pem = resolve_secret(issuer.ca_certificate, site.secrets, env=env, deny=deny)
        else:
            path = StateDir(state_dir).ca(issuer.name) / CA_CERT_FILE
            if not path.is_file():
                return None
            pem = path.read_bytes()
        return x509.load_pem_x509_certificates(pem)[0].not_valid_after_utc
    except (CertgitError, OSError, ValueError, IndexError):
        return None


def lifetime_warnings(
    desired: DesiredState,
    state_dir: Path,
    env: Mapping[str, str],
    now: datetime,
    *,
    read_file: Callable[[str], bytes] | None = None,
    site: SitePolicy | None = None,
) -> list[str]:
    """One `warning:` line per Certificate whose duration outlives its existing local CA.

    Such a certificate still works: each version's notAfter is cut to the
    CA's and it renews from that real lifetime. But it renews ever more often
    as the CA nears its end, so the operator should know. Reads only existing
    CA certificates (never creates the CA or the state directory).
    `read_file(path)` returns a desired-state file's bytes, to add the
    `file:line:col` of the duration; without it the warning names the file.
    `site`: the site policy bounding a certificateRef (None: the default, reads none).
    """
    ends: dict[str, datetime | None] = {}
    positions: dict[str, PositionIndex] = {}
    warnings: list[str] = []
    for name, cert in desired.certificates.items():
        issuer = desired.issuers.get(cert.issuer_ref)
        if issuer is None:
            continue
        if issuer.name not in ends:
            ends[issuer.name] = _ca_not_after(issuer, state_dir, env, site)
        ca_end = ends[issuer.name]
        if ca_end is None:
            continue
        left = max(ca_end - now, timedelta(0))
        if cert.duration <= left:
            continue
        # whole days (or minutes under a day): a warning needs no second-level precision
        shown = timedelta(days=left.days) if left.days else timedelta(minutes=left // _MINUTE)
        where = ""
        if cert.source is not None:
            where = f"{cert.source}: "
            if read_file is not None:
                try:
                    if cert.source.path not in positions:
                        positions[cert.source.path] = PositionIndex(read_file(cert.source.path))
                    line, column = positions[cert.source.path].position(
                        cert.source.index, ("spec", "duration"), False
                    )
                    where = f"{cert.source.path}:{line}:{column}: "
                except OSError:
                    pass
        warnings.append(
            f'warning: {where}Certificate "{name}": duration {format_duration(cert.duration)} '
            f'outlives the CA of issuer "{issuer.name}" ({format_duration(shown)} left, '
            f"until {ca_end:%Y-%m-%d %H:%M}Z): each version is cut to the CA's remaining life, "
            "so it renews more and more often; renew the CA or shorten the duration"
        )
    return warnings
