"""The data that crosses the reconciler → connector boundary.

Certificate, chain and key travel as `bytes`, never `str`; a key never appears
in a repr. The reconciler builds these from its own model; connectors never
import the reconciler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Capability(StrEnum):
    FILES = "files"  # writes certificate files on the target
    VALIDATE = "validate"  # checks the server config with the new files in place
    RELOAD = "reload"  # tells the server to pick up new files
    OBSERVE = "observe"  # reports what is live for drift detection
    API = "api"  # deploys through a management API instead of files
    ED25519 = "ed25519"  # the server accepts Ed25519 keys


@dataclass(frozen=True)
class VerifyConfig:
    """Post-deploy TLS check: handshake to host:port with SNI, compare the leaf SHA-256."""

    host: str
    port: int
    server_name: str | None = None
    initial_delay: float = 1.0  # seconds before the first retry
    max_delay: float = 16.0
    attempts: int = 3
    timeout: float = 5.0  # per handshake


@dataclass(frozen=True)
class TargetSpec:
    """One Target as a connector sees it.

    `settings` is the Target's type-specific `spec.settings` mapping as written
    in Git; `work_dir` is a private directory in the state dir for this target
    (journal, backups, locks); relative paths in settings resolve against
    `base_dir` (the state directory). `backup_key` (32 bytes, never in a repr)
    seals the SDK's backup copies of the previous files; None leaves them plain
    for the length of one apply only.
    """

    name: str
    type: str
    settings: Mapping[str, Any]
    work_dir: Path
    base_dir: Path
    transport: Mapping[str, Any] = field(default_factory=lambda: {"type": "local"})
    verify: VerifyConfig | None = None
    backup_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Deployment:
    """One certificate version to put on a target."""

    certificate: str  # the Certificate's metadata.name
    version: int
    fingerprint: str  # SHA-256 of the leaf DER, lowercase hex
    cert_pem: bytes  # the leaf
    chain_pem: bytes  # the issuing chain, leaf excluded
    key_pem: bytes = field(repr=False)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # the binding's deployTo entry
    dns_names: tuple[str, ...] = ()
    # SNI the post-deploy check uses for THIS binding (its own verify.serverName, the
    # target's serverName when the certificate carries it, else its first DNS name);
    # None with `verify` True: only decidable when it is the change's sole deployment.
    server_name: str | None = None
    verify: bool = True  # False: the binding opted out of the post-deploy TLS check
    adopt: bool = False  # may overwrite files certgit did not write (they are backed up)

    @property
    def fullchain_pem(self) -> bytes:
        leaf = self.cert_pem if self.cert_pem.endswith(b"\n") else self.cert_pem + b"\n"
        return leaf + self.chain_pem


@dataclass(frozen=True)
class Removal:
    """A binding to take off a target (orphan pruning)."""

    certificate: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # The files the binding's deploy recorded: exactly these are deleted (key first).
    # Empty: computed from the overrides (no record, e.g. a third-party caller).
    paths: tuple[str, ...] = ()
    # True: only stale files of a binding that moved (the binding itself stays).
    relocation: bool = False


@dataclass(frozen=True)
class ChangeSet:
    """Everything one cycle changes on one target: one transaction, one validate, one reload."""

    target: TargetSpec
    deployments: tuple[Deployment, ...] = ()
    removals: tuple[Removal, ...] = ()
    # Paths certgit is recorded as having written on this target. A file outside this
    # set whose content differs is not overwritten unless the deployment adopts it.
    # None: no ownership check (callers without a state store).
    owned: frozenset[str] | None = None


@dataclass(frozen=True)
class DeployReport:
    """What a deploy really did."""

    target: str
    changed: bool  # False: every file already matched (SHA-256 short-circuit), nothing ran
    validated: bool = False
    reloaded: bool = False
    verified: bool = False
    files: Mapping[str, str] = field(default_factory=dict)  # path -> SHA-256 now on disk
    fingerprints: Mapping[str, str] = field(default_factory=dict)  # certificate -> fingerprint
    # certificate -> ((path, role, SHA-256), ...) it wrote: what a removal deletes later
    written: Mapping[str, tuple[tuple[str, str, str], ...]] = field(default_factory=dict)
    # certificate -> why it was left out of this change set (the rest went ahead)
    failed: Mapping[str, str] = field(default_factory=dict)
    # files certgit had not written that an `adopt: true` binding took over (backed up)
    adopted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Observation:
    """What is live for one binding."""

    certificate: str
    target: str
    fingerprint: str | None  # leaf found/served; None when absent
    files: Mapping[str, str | None] = field(default_factory=dict)  # path -> SHA-256 or None
    error: str | None = None  # could not observe: no conclusion about drift
