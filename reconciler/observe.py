"""Live observation: what each target really holds for the bindings certgit deployed.

certgit's records are a claim; the target is the truth. Before `plan`,
`status` and `apply` decide anything, every recorded binding is observed
through its connector's read-only `observe` (files: SHA-256 of each file the
binding owns; API targets: what the API reports), under the target's lock,
targets in parallel, each bounded by a timeout. A target that cannot be
observed yields observations with `error` set: the planner shows those
bindings as `unknown`, never as drift and never as in sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from certgit.reconciler.model import DesiredState, LiveObservation, RecordedState, Target

DEFAULT_TIMEOUT = 30.0  # seconds per target (the whole wait scales with the targets)
DEFAULT_PARALLELISM = 4

Key = tuple[str, str]


@dataclass(frozen=True)
class _Job:
    target: Target
    bindings: tuple[tuple[str, Mapping[str, Any], tuple[str, ...]], ...]  # cert, overrides, paths
    dns_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # cert -> SANs
    recorded: Mapping[str, str | None] = field(default_factory=dict)  # cert -> deployed leaf


def observe(
    desired: DesiredState,
    recorded: RecordedState,
    state_dir: Path,
    now: datetime,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    parallelism: int = DEFAULT_PARALLELISM,
    loader: Callable[[str], Any] | None = None,
    sandbox_factory: Callable[[Any, Any], Any] | None = None,
) -> dict[Key, LiveObservation]:
    """Observe every desired binding that has a deployment on record (or a failed attempt)."""
    jobs: dict[str, list[tuple[str, Mapping[str, Any], tuple[str, ...]]]] = {}
    for cert, binding in desired.bindings():
        dep = recorded.deployments.get((cert.name, binding.target))
        if dep is None or binding.target not in desired.targets:
            continue
        if dep.fingerprint is None and dep.last_error is None:
            continue
        if recorded.hold_for(cert.name, binding.target) is not None:
            continue
        paths = tuple(path for path, _role, _sha in dep.files)
        jobs.setdefault(binding.target, []).append((cert.name, binding.overrides, paths))
    if not jobs:
        return {}
    work = [
        _Job(
            desired.targets[name],
            tuple(items),
            {cert: desired.certificates[cert].dns_names for cert, _o, _p in items},
            {
                cert: recorded.deployments[(cert, name)].fingerprint
                for cert, _o, _p in items
            },
        )
        for name, items in sorted(jobs.items())
    ]
    if loader is None:
        from certgit.reconciler.targetwork import default_loader

        # One connector per type for the whole observation: loading one scans the
        # installed entry points (~10 ms), far more than observing a target.
        loaded: dict[str, Any] = {}

        def loader(kind: str) -> Any:
            if kind not in loaded:
                loaded[kind] = default_loader(kind)
            return loaded[kind]

    out: dict[Key, LiveObservation] = {}
    # Local targets are read by syscalls that are fast and hold the GIL between them:
    # measured, one thread beats four (208 vs 330 us per binding). Threads pay off only
    # for targets behind a network (waiting, not computing).
    remote = any(
        dict(job.target.transport).get("type", "local") != "local" for job in work
    )
    workers = max(1, min(parallelism, len(work))) if remote else 1
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="certgit-observe")
    try:
        futures = {
            pool.submit(_observe_target, job, state_dir, now, loader, sandbox_factory): job
            for job in work
        }
        # `timeout` bounds each target: the whole wait allows it per round of workers.
        rounds = -(-len(work) // workers)
        done, _pending = wait(futures, timeout=timeout * rounds)
        for future, job in futures.items():
            if future in done:
                error = future.exception()
                if error is None:
                    out.update(future.result())
                    continue
                why = f"{type(error).__name__}: {error}"
            else:
                why = f"observation timed out after {timeout:g}s"
            for cert_name, _overrides, _paths in job.bindings:
                out[(cert_name, job.target.name)] = LiveObservation(
                    cert_name, job.target.name, None, now, error=why
                )
    finally:
        # A hung target must not hold the command: its thread is left to finish alone.
        pool.shutdown(wait=False, cancel_futures=True)
    return out


def _observe_target(
    job: _Job,
    state_dir: Path,
    now: datetime,
    loader: Callable[[str], Any] | None,
    sandbox_factory: Callable[[Any, Any], Any] | None,
) -> dict[Key, LiveObservation]:
    from certgit.reconciler.targets import target_spec
    from certgit.reconciler.targetwork import default_loader, default_sandbox

    name = job.target.name
    spec = target_spec(job.target, state_dir)
    connector = (loader or default_loader)(job.target.type)
    sandbox = (sandbox_factory or default_sandbox)(connector, spec)
    out: dict[Key, LiveObservation] = {}
    with _lock(name, spec.work_dir):
        for cert, overrides, recorded_paths in job.bindings:
            seen = connector.observe(sandbox, spec, cert, overrides)
            files: dict[str, str | None] = dict(seen.files)
            error = seen.error
            if error is None:
                # Paths the last deploy wrote that the current spec no longer names
                # (companion files, a moved directory) are observed too.
                for path in recorded_paths:
                    if path not in files:
                        try:
                            files[path] = sandbox.file_sha256(path)
                        except Exception as exc:  # an unreadable file proves nothing
                            error = f"cannot read {path}: {exc}"
                            break
            served = _probe(
                sandbox, spec, cert, overrides, job.dns_names.get(cert, ()),
                job.recorded.get(cert),
            )
            out[(cert, name)] = LiveObservation(
                cert, name, seen.fingerprint, now, error=error, files=files,
                served=served[0], server_name=served[1], served_error=served[2],
            )
    return out


def _probe(
    sandbox: Any,
    spec: Any,
    cert: str,
    overrides: Mapping[str, Any],
    dns_names: tuple[str, ...],
    expected: str | None = None,
) -> tuple[str | None, str | None, str | None]:
    """(served fingerprint, SNI, error) on the target's verify endpoint for one binding.

    The same SNI the post-deploy check uses. Files can be exactly as certgit wrote
    them while the server serves something else (its config points elsewhere, it
    was never reloaded): only a handshake sees that. Skipped without an endpoint.
    """
    config = spec.verify
    verify = overrides.get("verify")
    if config is None or verify is False:
        return None, None, None
    from certgit.connectors.model import Deployment as Bundle
    from certgit.connectors.sdk.base import expected_pairs

    stand_in = Bundle(
        certificate=cert, version=0, fingerprint="", cert_pem=b"", chain_pem=b"", key_pem=b"",
        dns_names=dns_names,
        server_name=verify.get("serverName") if isinstance(verify, Mapping) else None,
    )
    pairs = expected_pairs(config, [stand_in])
    if not pairs:
        return None, None, None
    name = pairs[0][0]
    served: str | None = None
    # Right after a reload the server's old workers answer for a moment: a leaf other
    # than the deployed one is asked for again before it counts (3 tries, 0.1 s, 0.3 s).
    for pause in (0.1, 0.3, None):
        try:
            served = sandbox.tls_leaf_fingerprint(
                config.host, config.port, name, timeout=min(config.timeout, 5.0)
            )
        except Exception as exc:  # a failed probe proves nothing about the files
            return None, name, f"{type(exc).__name__}: {exc}"
        if expected is None or served == expected or pause is None:
            break
        time.sleep(pause)
    return served, name, None


@contextmanager
def _lock(name: str, work_dir: Path) -> Iterator[None]:
    """The executor's per-target lock, when the target has a work dir (else nothing ran there)."""
    if not work_dir.is_dir():
        with nullcontext():
            yield
        return
    from certgit.reconciler.targetwork import target_lock

    with target_lock(name, work_dir):
        yield
