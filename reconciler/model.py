"""The desired, recorded and live state as frozen dataclasses.

Desired state comes from a Git commit (see `certgit.reconciler.desired`),
recorded state from the state store (`certgit.reconciler.store`), live state
from connectors (issue 9). The planner (`certgit.reconciler.planner`) is a pure
function of the three plus `now`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from certgit.reconciler.errors import Problem

API_VERSION = "certgit.dev/v1"
KINDS = ("Issuer", "Certificate", "Target", "Policy")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the input of every stable hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sha256_hex(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- desired


@dataclass(frozen=True)
class FileEntry:
    """One YAML file of a desired-state snapshot.

    `key` is content-addressed (the Git blob id, or a SHA-256 of the bytes for a
    plain directory): parsed documents are cached by it, and `read` is only
    called on a cache miss.
    """

    path: str  # relative to the repo root, POSIX separators
    key: str
    read: Callable[[], bytes] = field(compare=False, repr=False)


@dataclass(frozen=True)
class SourceRef:
    """Where a document came from: repo-relative path and index in a multi-doc file."""

    path: str
    index: int = 0

    def __str__(self) -> str:
        return self.path if self.index == 0 else f"{self.path}#{self.index}"


class KeyAlgorithm(StrEnum):
    ECDSA = "ECDSA"
    RSA = "RSA"
    ED25519 = "Ed25519"


class KeyRotation(StrEnum):
    ALWAYS = "Always"
    NEVER = "Never"


@dataclass(frozen=True)
class KeySpec:
    """Key parameters. `size`: ECDSA 256|384 (curve bits), RSA 2048..4096, Ed25519 None."""

    algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA
    size: int | None = 256
    rotation: KeyRotation = KeyRotation.ALWAYS


class SecretBytes:
    """A decrypted secret held in memory only: no repr, no str, never pickled.

    `reveal()` gives the bytes to the one caller that needs them. Pickling
    raises, so a model holding one can never reach the document cache, the
    state store or any other file by accident; repr/str/JSON show a placeholder.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a decrypted secret is never pickled or persisted")

    def __copy__(self) -> SecretBytes:
        return self

    def __deepcopy__(self, memo: Any) -> SecretBytes:
        return self


@dataclass(frozen=True)
class SopsRef:
    """One top-level `key` of a SOPS-encrypted `file` of the same commit.

    `file` is relative to the desired-state root (the source path), like every
    path the loader reports.
    """

    file: str
    key: str


@dataclass(frozen=True)
class SecretRef:
    """A secret referenced from Git, never stored there: exactly one of env, file or sops.

    `value` is set by the loader for a `sops` ref (decrypted at load time, in
    memory only); it takes no part in equality, hashing or repr.
    """

    env: str | None = None
    file: str | None = None
    sops: SopsRef | None = None
    value: SecretBytes | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """Where the secret comes from, for messages (never its value)."""
        if self.sops is not None:
            return f"sops {self.sops.file} key {self.sops.key}"
        if self.env is not None:
            return f"env {self.env}"
        return f"file {self.file}"


@dataclass(frozen=True)
class Issuer:
    name: str
    type: str  # "local-ca" (now), "acme" (issue 7)
    labels: Mapping[str, str] = field(default_factory=dict)
    # local-ca: optional CA material; when both are None the CA is created in the state dir
    ca_certificate: SecretRef | None = None
    ca_key: SecretRef | None = None
    ca_common_name: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # the raw spec, for later types
    source: SourceRef | None = None


@dataclass(frozen=True)
class Binding:
    """One entry of a Certificate's deployTo: the target and per-binding overrides."""

    target: str
    overrides: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"files": {...}}


@dataclass(frozen=True)
class Certificate:
    name: str
    issuer_ref: str
    common_name: str | None = None
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    key: KeySpec = KeySpec()
    duration: timedelta = timedelta(days=90)
    renew_before: timedelta | None = None
    renew_before_percentage: int | None = None
    deploy_to: tuple[Binding, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    source: SourceRef | None = None

    def effective_renew_before(self) -> timedelta:
        """renewBefore, else renewBeforePercentage of duration, else a third of duration."""
        if self.renew_before is not None:
            return self.renew_before
        pct = self.renew_before_percentage if self.renew_before_percentage is not None else 33
        return self.duration * pct / 100

    def spec_hash(self) -> str:
        """Hash of what needs a new certificate when it changes: SANs, key, issuer, duration."""
        return self._spec_hash

    @cached_property
    def _spec_hash(self) -> str:
        # Cached on the instance: the loader reuses Certificate objects across
        # polls by blob id, so an unchanged certificate is hashed once.
        return sha256_hex(
            canonical_json(
                {
                    "cn": self.common_name,
                    "dns": sorted(self.dns_names),
                    "ip": sorted(self.ip_addresses),
                    "alg": str(self.key.algorithm),
                    "size": self.key.size,
                    "issuer": self.issuer_ref,
                    # a new lifetime needs a new certificate too (`~ duration: 90d → 30d`)
                    "duration": int(self.duration.total_seconds()),
                }
            )
        )

    def issued_spec(self) -> dict[str, Any]:
        """The fields a version is issued from, as recorded with it: the input of field diffs."""
        return {
            "commonName": self.common_name,
            "dnsNames": sorted(self.dns_names),
            "ipAddresses": sorted(self.ip_addresses),
            "key": key_label(self.key.algorithm, self.key.size),
            "issuer": self.issuer_ref,
            "duration": _format_span(self.duration),
        }


def key_label(algorithm: str, size: int | None) -> str:
    """`ECDSA P-256`, `RSA 2048`, `Ed25519`: how operators name key types."""
    if str(algorithm) == "ECDSA":
        return f"ECDSA P-{size}"
    if str(algorithm) == "RSA":
        return f"RSA {size}"
    return str(algorithm)


def _format_span(value: timedelta) -> str:
    from certgit.reconciler.durations import format_duration

    return format_duration(value)


@dataclass(frozen=True)
class VerifySpec:
    endpoint: str  # host:port
    server_name: str | None = None


@dataclass(frozen=True)
class ApprovalHook:
    """A Target's own approval requirement, on top of Policy rules."""

    required: bool = True
    actions: tuple[str, ...] = ()  # empty: every action kind


@dataclass(frozen=True)
class Target:
    name: str
    type: str  # "files" now; web servers, ssh, keystores, clouds later
    labels: Mapping[str, str] = field(default_factory=dict)
    transport: Mapping[str, Any] = field(default_factory=lambda: {"type": "local"})
    settings: Mapping[str, Any] = field(default_factory=dict)
    verify: VerifySpec | None = None
    approval: ApprovalHook | None = None
    source: SourceRef | None = None
    adopt: bool = False  # may overwrite files certgit did not write (backed up, audited)


@dataclass(frozen=True)
class ApprovalRule:
    """Actions matching every given selector need an approval. Empty selector = any."""

    name: str
    target_labels: Mapping[str, str] = field(default_factory=dict)
    certificate_labels: Mapping[str, str] = field(default_factory=dict)
    targets: tuple[str, ...] = ()
    certificates: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    name: str
    approvals: tuple[ApprovalRule, ...] = ()
    prune_orphans: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    source: SourceRef | None = None


@dataclass(frozen=True)
class DesiredState:
    """One commit's validated documents, by kind and name."""

    commit: str | None
    issuers: Mapping[str, Issuer] = field(default_factory=dict)
    certificates: Mapping[str, Certificate] = field(default_factory=dict)
    targets: Mapping[str, Target] = field(default_factory=dict)
    policies: Mapping[str, Policy] = field(default_factory=dict)
    # Positioned problems that do not reject the commit (a key type a bound Target
    # does not accept); `certgit validate` prints them as "FILE:LINE:COL: warning: ...".
    warnings: tuple[Problem, ...] = ()
    # Set by the engine, not by the loader (gates.py): the site policy's approval rules,
    # Git gates in force that this commit removes (HeldRule), and the weakening itself.
    site_approvals: tuple[ApprovalRule, ...] = ()
    held_gates: tuple[Any, ...] = ()
    gate_change: Any = None

    def bindings(self) -> Iterator[tuple[Certificate, Binding]]:
        """Every (certificate, binding) pair, in name order."""
        for name in sorted(self.certificates):
            cert = self.certificates[name]
            for binding in cert.deploy_to:
                yield cert, binding


# --------------------------------------------------------------------------- recorded


@dataclass(frozen=True)
class CertificateVersion:
    """One issued certificate. The (encrypted) key stays in the store, not here."""

    certificate: str
    version: int  # 1, 2, 3 ... per certificate
    fingerprint: str  # SHA-256 of the leaf DER, lowercase hex
    serial: str  # hex
    not_before: datetime
    not_after: datetime
    spec_hash: str  # Certificate.spec_hash() it was issued for
    issued_at: datetime
    # Certificate.issued_spec() as JSON text, parsed only for field diffs (None: older store)
    spec_json: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Deployment:
    """What certgit recorded for one (certificate, target) binding."""

    certificate: str
    target: str
    fingerprint: str | None  # what is deployed; None if no deploy ever succeeded
    version: int | None
    updated_at: datetime
    last_error: str | None = None  # set when the last attempt failed
    attempts: int = 0  # consecutive failed attempts
    last_attempt_fingerprint: str | None = None
    # What the last successful deploy wrote: (path, role, SHA-256) per file. Empty for
    # connectors that deploy through an API, and for rows older than this field.
    files: tuple[tuple[str, str, str], ...] = ()
    # binding_config_hash() of the target settings and overrides it was deployed with
    config_hash: str | None = None
    config_json: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Hold:
    """An operator pin (rollback): reconciliation leaves the binding alone until released.

    `certificate` None holds every binding of the target.
    """

    target: str
    certificate: str | None
    fingerprint: str | None
    reason: str
    created_by: str
    created_at: datetime

    def covers(self, certificate: str, target: str) -> bool:
        return self.target == target and self.certificate in (None, certificate)


@dataclass(frozen=True)
class RecordedState:
    versions: Mapping[str, tuple[CertificateVersion, ...]] = field(default_factory=dict)
    deployments: Mapping[tuple[str, str], Deployment] = field(default_factory=dict)
    holds: tuple[Hold, ...] = ()
    last_applied_commit: str | None = None
    # action id -> (attempts, last error) of actions out of retries (ABANDONED outbox rows)
    abandoned: Mapping[str, tuple[int, str]] = field(default_factory=dict)

    def latest(self, certificate: str) -> CertificateVersion | None:
        versions = self.versions.get(certificate, ())
        return versions[-1] if versions else None

    def version(self, certificate: str, number: int | None) -> CertificateVersion | None:
        if number is None:
            return None
        for v in self.versions.get(certificate, ()):
            if v.version == number:
                return v
        return None

    def hold_for(self, certificate: str, target: str) -> Hold | None:
        for hold in self.holds:
            if hold.covers(certificate, target):
                return hold
        return None


# --------------------------------------------------------------------------- live


@dataclass(frozen=True)
class LiveObservation:
    """What a connector saw on a target for one binding."""

    certificate: str
    target: str
    fingerprint: str | None  # leaf served / found; None if absent
    observed_at: datetime
    error: str | None = None  # observation failed: no conclusion about drift
    files: Mapping[str, str | None] = field(default_factory=dict)  # path -> SHA-256 or None
    # What the target's verify endpoint serves for this binding's SNI (None: not probed)
    served: str | None = None
    server_name: str | None = None
    served_error: str | None = None


# --------------------------------------------------------------------------- plan


class ActionKind(StrEnum):
    ISSUE = "issue"
    RENEW = "renew"
    DEPLOY = "deploy"
    REMOVE = "remove"
    ROLLBACK = "rollback"
    GATES = "gates"  # the commit weakens approval gates in force (gates.py)


class Drift(StrEnum):
    NONE = "in-sync"
    MISSING = "missing"
    OUTDATED = "outdated"
    MODIFIED = "modified"
    EXPIRING = "expiring"
    ORPHANED = "orphaned"
    HELD = "held"
    FAILING = "failing"
    ABANDONED = "abandoned"  # out of retries: `certgit retry` re-arms
    EXPIRED = "expired"  # the deployed version is past notAfter
    UNKNOWN = "unknown"  # the observation failed: neither drift nor in sync


# Most urgent first: how status and the TUI order bindings.
DRIFT_URGENCY = {
    Drift.EXPIRED: 0,
    Drift.FAILING: 1,
    Drift.ABANDONED: 2,
    Drift.MODIFIED: 3,
    Drift.MISSING: 4,
    Drift.UNKNOWN: 5,
    Drift.EXPIRING: 6,
    Drift.OUTDATED: 7,
    Drift.HELD: 8,
    Drift.ORPHANED: 9,
    Drift.NONE: 10,
}


def binding_config_hash(target: Target, overrides: Mapping[str, Any]) -> str:
    """What a binding is deployed *with*: target type, transport, settings and overrides.

    A change here (another directory, other file names, modes) redeploys the
    binding even when the certificate did not change. Verify settings are left
    out: they change how a deploy is checked, not what is written.
    """
    return sha256_hex(binding_config_json(target, overrides))


def binding_config_json(target: Target, overrides: Mapping[str, Any]) -> str:
    config: dict[str, Any] = {
        "type": target.type,
        "transport": dict(target.transport),
        "settings": dict(target.settings),
        "files": overrides.get("files"),
        "directory": overrides.get("directory"),
    }
    if overrides.get("adopt") or target.adopt:
        # Saying `adopt: true` after a refusal is a new intent: a fresh attempt at once.
        config["adopt"] = True
    return canonical_json(config)
