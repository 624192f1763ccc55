"""What the executor hands a target, and the plumbing around a target call.

Bundles built from the store (the version a message converges to, with its
key), the paths a removal deletes (recorded, key first) and a moved binding's
stale files, the one-writer-per-target lock, and the default connector,
sandbox and crash-recovery hooks. The executor and the read-only paths
(observation, dry run) share these, so they cannot drift apart.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certgit.connectors.model import Deployment as Bundle
from certgit.connectors.model import Removal, TargetSpec
from certgit.reconciler.errors import CertgitError
from certgit.reconciler.model import DesiredState
from certgit.reconciler.store import Store
from certgit.reconciler.targets import binding_overrides

if TYPE_CHECKING:
    from certgit.reconciler.jobs import TargetJob

LOCK_FILE = "executor.lock"

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def build_bundle(
    store: Store, desired: DesiredState, payload: Mapping[str, Any], target: str
) -> Bundle:
    """The certificate version a deploy/rollback message converges to, with its material."""
    cert_name = str(payload.get("certificate"))
    version = payload.get("version")
    if version is None:
        spec_hash = payload.get("spec_hash")
        matching = [v for v in store.versions(cert_name) if v.spec_hash == spec_hash]
        if not matching:
            error = CertgitError(
                f"certificate {cert_name} has no issued version for this spec yet; "
                "the issue action runs first: run `certgit apply` again"
            )
            error.temporary = True
            raise error
        chosen = matching[-1]
    else:
        found = [
            v
            for v in store.versions(cert_name, include_retired=True)
            if v.version == int(version)
        ]
        if not found:
            raise CertgitError(
                f"certificate {cert_name} has no version {version}: run "
                f"`certgit history {cert_name}` to list the recorded versions"
            )
        chosen = found[0]
    expected = payload.get("fingerprint")
    if expected is not None and expected != chosen.fingerprint:
        raise CertgitError(
            f"certificate {cert_name} v{chosen.version} is {chosen.fingerprint[:16]}, "
            f"the plan expected {str(expected)[:16]}: run `certgit plan` again"
        )
    cert_pem, chain_pem, key_pem = store.version_material(cert_name, chosen.version)
    desired_cert = desired.certificates.get(cert_name)
    overrides = binding_overrides(desired_cert, target)
    verify = overrides.get("verify")
    tgt = desired.targets.get(target)
    return Bundle(
        certificate=cert_name,
        version=chosen.version,
        fingerprint=chosen.fingerprint,
        cert_pem=cert_pem,
        chain_pem=chain_pem,
        key_pem=key_pem,
        overrides=overrides,
        dns_names=tuple(desired_cert.dns_names) if desired_cert else (),
        server_name=verify.get("serverName") if isinstance(verify, Mapping) else None,
        verify=verify is not False,
        adopt=bool(overrides.get("adopt")) or bool(tgt is not None and tgt.adopt),
    )


_KEY_ROLES = ("key", "combined")


def key_first(files: Sequence[tuple[str, str, str]]) -> tuple[str, ...]:
    """Recorded paths with the private key files first: a half-done removal leaves no key."""
    ordered = sorted(files, key=lambda f: (f[1] not in _KEY_ROLES, f[0]))
    return tuple(path for path, _role, _sha in ordered)


def relocations(connector: Any, job: TargetJob) -> tuple[Removal, ...]:
    """Files a moved binding wrote at its old location (another directory, other names)."""
    file_specs = getattr(connector, "file_specs", None)
    if file_specs is None or not job.recorded_paths:
        return ()
    stale: list[Removal] = []
    for bundle in job.deployments:
        old = job.recorded_paths.get(bundle.certificate)
        if not old:
            continue
        try:
            new = {spec.path for spec in file_specs(job.spec, bundle)}
        except CertgitError:
            continue  # the deploy itself reports the bad settings
        gone = tuple(p for p in old if p not in new)
        if gone:
            stale.append(Removal(bundle.certificate, paths=gone, relocation=True))
    return tuple(stale)


def grant_cleanup(sandbox: Any, paths: Sequence[str]) -> Any:
    """The sandbox, also allowed to read and delete exactly these recorded files.

    A removal or a move deletes the files the binding's last deploy wrote (the
    store's record). When the Target's directory changed in Git, those lie
    outside what the connector now declares, so the sandbox would deny their
    cleanup. Each path is granted alone (no directory, no prefix), and checked
    resolved as ever: a symlink swapped in since does not widen the grant.
    """
    from certgit.connectors.sdk.grants import Grants
    from certgit.connectors.sdk.sandbox import Sandbox

    grants = getattr(sandbox, "grants", None)
    if not isinstance(sandbox, Sandbox) or not isinstance(grants, Grants):
        return sandbox  # an injected test double keeps its own rules
    extra = tuple(dict.fromkeys(p for p in paths if not grants.allows_write(p)))
    if not extra:
        return sandbox
    widened = replace(
        grants, fs_read=(*grants.fs_read, *extra), fs_write=(*grants.fs_write, *extra)
    )
    return Sandbox(widened, sandbox.transport, target=sandbox.target)


@contextmanager
def target_lock(name: str, work_dir: Path) -> Iterator[None]:
    """One mutex per target: an in-process lock, then an flock other processes respect."""
    with _process_locks_guard:
        lock = _process_locks.setdefault(name, threading.Lock())
    with lock:
        fd = os.open(work_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def default_loader(name: str) -> Any:
    from certgit.connectors.sdk.registry import load_connector

    return load_connector(name)


def default_sandbox(connector: Any, spec: TargetSpec) -> Any:
    from certgit.connectors.sdk.registry import sandbox_for

    return sandbox_for(connector, spec)


def default_recover(
    transport: Any,
    work_dir: Path,
    backup_key: bytes | None = None,
    *,
    allowed_exec: Callable[[Sequence[str]], object] | None = None,
    allowed_write: Callable[[str], object] | None = None,
) -> list[str]:
    """atomic.recover: `backup_key` (TargetSpec.backup_key) opens sealed backups; the
    checks (a Sandbox's check_exec / check_write) keep an edited journal from running
    or writing anything ungranted."""
    from certgit.connectors.sdk.atomic import recover

    return recover(
        transport,
        work_dir,
        backup_key,
        allowed_exec=allowed_exec,
        allowed_write=allowed_write,
    )
