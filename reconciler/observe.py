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

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from certgit.reconciler.model import DesiredState, LiveObservation, RecordedState, Target

DEFAULT_TIMEOUT = 30.0  # seconds per target
DEFAULT_PARALLELISM = 4

Key = tuple[str, str]


@dataclass(frozen=True)
class _Job:
    target: Target
    bindings: tuple[tuple[str, Mapping[str, Any], tuple[str, ...]], ...]  # cert, overrides, paths


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
    work = [_Job(desired.targets[name], tuple(items)) for name, items in sorted(jobs.items())]
    if loader is None:
        from certgit.reconciler.executor import default_loader

        # One connector per type for the whole observation: loading one scans the
        # installed entry points (~10 ms), far more than observing a target.
        loaded: dict[str, Any] = {}

        def loader(kind: str) -> Any:
            if kind not in loaded:
                loaded[kind] = default_loader(kind)
            return loaded[kind]

    out: dict[Key, LiveObservation] = {}
    pool = ThreadPoolExecutor(
        max_workers=max(1, min(parallelism, len(work))), thread_name_prefix="certgit-observe"
    )
    try:
        futures = {
            pool.submit(_observe_target, job, state_dir, now, loader, sandbox_factory): job
            for job in work
        }
        done, _pending = wait(futures, timeout=timeout)
        for future, job in futures.items():
            if future in done:
                error = future.exception()
                if error is None:
                    out.update(future.result())
                    continue
                why = f"{type(error).__name__}: {error}"
            else:
                why = f"observation timed out after {timeout:g}s"
            for cert, _overrides, _paths in job.bindings:
                out[(cert, job.target.name)] = LiveObservation(
                    cert, job.target.name, None, now, error=why
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
    from certgit.reconciler.executor import default_loader, default_sandbox
    from certgit.reconciler.targets import target_spec

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
            out[(cert, name)] = LiveObservation(
                cert, name, seen.fingerprint, now, error=error, files=files
            )
    return out


@contextmanager
def _lock(name: str, work_dir: Path) -> Iterator[None]:
    """The executor's per-target lock, when the target has a work dir (else nothing ran there)."""
    if not work_dir.is_dir():
        with nullcontext():
            yield
        return
    from certgit.reconciler.executor import _target_lock

    with _target_lock(name, work_dir):
        yield
