"""Read-side views for the CLI (and later the TUI): frozen dataclasses, no SQL here.

Each function takes the store and returns what a screen or command shows;
the store's repositories run the queries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from certgit.reconciler.model import key_label

if TYPE_CHECKING:
    from certgit.reconciler.store import Store
    from certgit.reconciler.store.history import HistoryEntry


@dataclass(frozen=True)
class VersionView:
    """One issued version with what an operator checks: SANs, key type, notAfter."""

    certificate: str
    version: int
    fingerprint: str
    not_after: datetime
    issued_at: datetime
    sans: tuple[str, ...]
    key: str
    deployed_on: tuple[str, ...]  # targets recorded as serving it now


@dataclass(frozen=True)
class HistoryView:
    versions: tuple[VersionView, ...]
    deploys: tuple[HistoryEntry, ...]  # per-target deploy history, oldest first
    events: tuple[dict[str, Any], ...]  # audit rows about the subject

    def to_dict(self) -> dict[str, Any]:
        return {
            "versions": [asdict(v) for v in self.versions],
            "deploys": [asdict(d) for d in self.deploys],
            "events": list(self.events),
        }


def _describe(pem: bytes | None) -> tuple[tuple[str, ...], str]:
    """(SANs, key type) of a leaf PEM."""
    if not pem:
        return (), "?"
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    leaf = x509.load_pem_x509_certificate(pem)
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(
            [str(n) for n in ext.get_values_for_type(x509.DNSName)]
            + [str(n) for n in ext.get_values_for_type(x509.IPAddress)]
        )
    except x509.ExtensionNotFound:
        sans = ()
    key = leaf.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        label = key_label("ECDSA", key.curve.key_size)
    elif isinstance(key, rsa.RSAPublicKey):
        label = key_label("RSA", key.key_size)
    elif isinstance(key, ed25519.Ed25519PublicKey):
        label = "Ed25519"
    else:
        label = type(key).__name__
    return sans, label


def history(store: Store, name: str | None) -> HistoryView:
    """Versions (SANs, key, notAfter), per-target deploy history and events of a target,
    a certificate, or everything."""
    recorded = store.recorded_state()
    certs = sorted(set(recorded.versions) | {c for (c, _t) in recorded.deployments})
    targets = {t for (_c, t) in recorded.deployments}
    deploys = store.deploy_history()
    targets |= {d.target for d in deploys}
    is_target = name is not None and name in targets and name not in certs
    if name is not None:
        if is_target:
            certs = sorted(
                {c for (c, t) in recorded.deployments if t == name}
                | {d.certificate for d in deploys if d.target == name}
            )
            deploys = [d for d in deploys if d.target == name]
        else:
            certs = [name] if name in certs else []
            deploys = [d for d in deploys if d.certificate == name]
    versions = []
    for cert in certs:
        for v in store.versions(cert, include_retired=True):
            sans, key = _describe(store.version_certificate(cert, v.version))
            versions.append(
                VersionView(
                    certificate=cert,
                    version=v.version,
                    fingerprint=v.fingerprint,
                    not_after=v.not_after,
                    issued_at=v.issued_at,
                    sans=sans,
                    key=key,
                    deployed_on=tuple(sorted(
                        t for (c, t), d in recorded.deployments.items()
                        if c == cert and d.version == v.version
                        and (not is_target or t == name)
                    )),
                )
            )
    events = tuple(
        r for r in store.audit_rows()
        if name is None or r["subject"] == name or name in r["subject"].split(" -> ")
        or r["subject"].startswith(f"{name} ")
    )
    return HistoryView(tuple(versions), tuple(deploys), events)
