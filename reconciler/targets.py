"""Reconciler Targets → the connector layer's TargetSpec, VerifyConfig and per-binding overrides.

The connector layer never imports the reconciler, so this is the one place
that translates: Git's `spec.verify.endpoint` ("host:port", "[::1]:443")
becomes a VerifyConfig, and every target gets a private work directory under
the state directory for the SDK's journal, backups and locks, and the key that
seals those backups (derived from the master key, DESIGN §5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certgit.connectors.model import TargetSpec, VerifyConfig
from certgit.reconciler.errors import CertgitError
from certgit.reconciler.model import Certificate, DesiredState, Target, VerifySpec
from certgit.reconciler.sealing import load_master_key
from certgit.reconciler.statedir import StateDir, check_private_dir, make_private_dir

WORK_DIR_NAME = StateDir.WORK_DIR_NAME
BACKUP_KEY_INFO = b"certgit backups v1"


class TargetConfigError(CertgitError):
    """A Target's settings cannot be turned into something a connector can use."""


def work_dir(state_dir: Path, target: str) -> Path:
    """`<state-dir>/work/<target>`: journal, backups and locks of one target (mode 0700)."""
    if not target or "/" in target or target in (".", ".."):
        raise TargetConfigError(
            f"target name {target!r} cannot name a directory; rename the Target"
        )
    return StateDir(Path(state_dir)).work_dir(target)


def ensure_work_dir(path: Path) -> Path:
    """Create a work directory (and its parent) with mode 0700 if missing; return it.

    An existing `work/` or `work/<target>` that group/other can write, or that
    another user owns, raises `UnsafeStateDir`: its journal and backups are what
    a rollback restores, so nobody else may be able to swap them.
    """
    for directory, what in ((path.parent, "work directory"), (path, "target work directory")):
        if not make_private_dir(directory):
            check_private_dir(directory, what)
    return path


def parse_endpoint(endpoint: str, target: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port). TargetConfigError says how to fix it."""
    host, sep, port_text = endpoint.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise TargetConfigError(
            f"target {target}: verify.endpoint {endpoint!r} is not host:port "
            "(IPv6 as [::1]:443); fix spec.verify.endpoint"
        )
    return host, int(port_text)


def verify_config(spec: VerifySpec | None, target: str) -> VerifyConfig | None:
    """The post-deploy TLS check for a target, or None when it has no verify endpoint."""
    if spec is None:
        return None
    host, port = parse_endpoint(spec.endpoint, target)
    return VerifyConfig(host=host, port=port, server_name=spec.server_name)


def backup_key(master_key: bytes) -> bytes:
    """The key sealing the SDK's backups: HKDF-SHA256(master key, info b"certgit backups v1").

    A key of its own rather than the master key, so backup copies and the state
    store's sealed keys never share one; atomic.SEALED_FORMAT tells operators.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=BACKUP_KEY_INFO)
    return hkdf.derive(master_key)


def target_spec(
    target: Target, state_dir: Path, *, env: Mapping[str, str] | None = None
) -> TargetSpec:
    """What a connector sees of `target`; relative paths resolve against the state dir.

    `backup_key` is derived from the master key (`sealing.load_master_key(state_dir,
    env or os.environ)`); a missing or unsafe master key raises StoreError with the fix.
    """
    master = load_master_key(Path(state_dir), os.environ if env is None else env)
    return TargetSpec(
        name=target.name,
        type=target.type,
        settings=dict(target.settings),
        work_dir=work_dir(state_dir, target.name),
        base_dir=Path(state_dir),
        transport=dict(target.transport),
        verify=verify_config(target.verify, target.name),
        backup_key=backup_key(master),
    )


def binding_overrides(cert: Certificate | None, target: str) -> Mapping[str, Any]:
    """The deployTo entry's overrides (files, directory) for (cert, target); {} if unbound."""
    if cert is None:
        return {}
    for binding in cert.deploy_to:
        if binding.target == target:
            return dict(binding.overrides)
    return {}


def bound_certificates(desired: DesiredState, target: str) -> list[str]:
    """Names of the certificates bound to `target`, sorted."""
    return sorted(
        name
        for name, cert in desired.certificates.items()
        if any(b.target == target for b in cert.deploy_to)
    )
