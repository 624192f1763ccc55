"""Read-side views for the CLI (and later the TUI): frozen dataclasses, no SQL here.

Each function takes the store and returns what a screen or command shows;
the store's repositories run the queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from certgit.reconciler.model import Deployment, Drift, Hold, key_label
from certgit.reconciler.planner import Action, BindingStatus

if TYPE_CHECKING:
    from certgit.reconciler.engine import Engine
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


# --------------------------------------------------------------------------- status and drift


@dataclass(frozen=True)
class StatusView:
    """Every binding, most urgent first, and what the view is based on."""

    commit: str | None
    bindings: tuple[BindingStatus, ...]
    degraded: str | None = None  # why the last good commit is in force, if it is

    def attention(self) -> tuple[BindingStatus, ...]:
        return tuple(b for b in self.bindings if b.drift != Drift.NONE)


def status(
    engine: Engine,
    *,
    refresh: bool = True,
    target: str | None = None,
    certificate: str | None = None,
    drift: str | None = None,
) -> StatusView:
    """Bindings with their drift (observed live unless `refresh` is False), filtered."""
    from certgit.reconciler.render import status_rows

    plan = engine.plan(refresh=refresh, fallback=True)
    rows = [
        b
        for b in status_rows(plan.bindings)
        if (target is None or b.target == target)
        and (certificate is None or b.certificate == certificate)
        and (drift is None or str(b.drift) == drift)
    ]
    why = engine.degraded.warning() if engine.degraded is not None else None
    return StatusView(plan.commit, tuple(rows), why)


@dataclass(frozen=True)
class PendingApproval:
    """A gated action of the current plan: what it changes, field by field, and its decision."""

    plan_hash: str
    action: Action
    approved_by: str | None


def pending_approvals(engine: Engine, *, refresh: bool = True) -> tuple[PendingApproval, ...]:
    """Gated actions of the current plan with their field-level changes (`Action.changes`)."""
    from certgit.reconciler.commands import approved_by

    plan = engine.plan(refresh=refresh, fallback=True)
    if not plan.gated:
        return ()
    engine.record_plan(plan, "certgit")  # approvals bind to a saved plan
    approved = approved_by(engine.store, plan)
    return tuple(PendingApproval(plan.hash, a, approved.get(a.id)) for a in plan.gated)


# --------------------------------------------------------------------------- store views


@dataclass(frozen=True)
class CertificateDetail:
    name: str
    versions: tuple[VersionView, ...]
    deployments: tuple[Deployment, ...]
    holds: tuple[Hold, ...]


def certificate_detail(store: Store, name: str) -> CertificateDetail:
    recorded = store.recorded_state()
    view = history(store, name)
    return CertificateDetail(
        name,
        tuple(v for v in view.versions if v.certificate == name),
        tuple(d for (c, _t), d in sorted(recorded.deployments.items()) if c == name),
        tuple(h for h in recorded.holds if h.certificate in (None, name)),
    )


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: Mapping[str, Any]


def audit_page(store: Store, *, since_seq: int = 0, limit: int = 50) -> tuple[AuditEntry, ...]:
    """Audit entries after `since_seq`, oldest first, at most `limit`."""
    return tuple(
        AuditEntry(int(r["seq"]), r["at"], str(r["actor"]), str(r["action"]),
                   str(r["subject"]), dict(r["details"]))
        for r in store.audit_rows(since_seq=since_seq, limit=limit)
    )


@dataclass(frozen=True)
class QueueItem:
    """One outbox message: the typed action and where it stands."""

    id: int
    plan_hash: str
    action: Action
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None


def queue(store: Store, *, active_only: bool = True) -> tuple[QueueItem, ...]:
    """Outbox messages (by default the ones not finished), oldest first."""
    from certgit.reconciler.planner import Action

    finished = ("COMPLETED", "CANCELLED")
    return tuple(
        QueueItem(int(r["id"]), str(r["plan_hash"]), Action.from_dict(r["payload"]),
                  str(r["state"]), int(r["attempts"]), r["next_attempt_at"], r["last_error"])
        for r in store.outbox_rows()
        if not active_only or r["state"] not in finished
    )


def holds(store: Store) -> tuple[Hold, ...]:
    return tuple(store.recorded_state().holds)


@dataclass(frozen=True)
class LastSync:
    last_good_commit: str | None  # the newest valid commit seen
    last_applied_commit: str | None  # the newest commit applied in full


def last_sync(store: Store) -> LastSync:
    from certgit.reconciler.engine import LAST_APPLIED_COMMIT, LAST_GOOD_COMMIT

    return LastSync(store.get_source_state(LAST_GOOD_COMMIT),
                    store.get_source_state(LAST_APPLIED_COMMIT))
