"""Gates that follow files: a target writing where a gated target's files are is gated too.

A Policy gates `env: production`; a commit adds an unlabelled target with the
production target's directory and moves a certificate to it (`adopt: true`
takes over the files). No rule matches the new target, yet it overwrites what
production serves. So every recorded deployment whose deploy is gated marks
its directories, and a desired target whose directory meets one of them is
gated as well, by name, until those recorded files are gone.

Loads connectors to learn each target's directory (not pure: the planner
receives the result as `DesiredState.held_gates`).
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from certgit.connectors.sdk.grants import path_within
from certgit.reconciler.gates import HeldRule
from certgit.reconciler.model import ActionKind, ApprovalRule, DesiredState, RecordedState


def inherited_gates(
    desired: DesiredState, recorded: RecordedState, state_dir: Path
) -> tuple[HeldRule, ...]:
    """Held rules gating targets that write into directories of gated deployments.

    `desired` must already carry the site's and the held-over gates (the
    engine's `gated`), so a deleted production target still counts as gated.
    """
    from certgit.reconciler.planner import _Gate

    gate = _Gate(desired)
    gated_dirs: dict[str, str] = {}  # directory -> the gated target whose files are there
    checked: dict[tuple[str, str], bool] = {}
    for (cert, target), dep in recorded.deployments.items():
        if not dep.files:
            continue
        key = (cert, target)
        if key not in checked:
            checked[key] = bool(gate(ActionKind.DEPLOY, cert, target))
        if not checked[key]:
            continue
        for path, _role, _sha in dep.files:
            gated_dirs.setdefault(posixpath.dirname(posixpath.normpath(path)), target)
    if not gated_dirs:
        return ()
    out: list[HeldRule] = []
    for name in sorted(desired.targets):
        roots = _write_roots(desired.targets[name], state_dir)
        for directory, owner in sorted(gated_dirs.items()):
            if owner == name:
                continue
            if any(path_within(directory, r) or path_within(r, directory) for r in roots):
                out.append(
                    HeldRule(
                        label=f"target {owner}'s gates (target {name} writes into "
                        f"{directory}, where {owner}'s gated deployment is)",
                        rule=ApprovalRule(name=f"files of {owner}", targets=(name,)),
                    )
                )
                break
    return tuple(out)


def _write_roots(target: Any, state_dir: Path) -> tuple[str, ...]:
    """The directories the target's connector would write under (none if it cannot say)."""
    from certgit.connectors.model import TargetSpec
    from certgit.connectors.sdk.registry import load_connector

    try:
        connector = load_connector(target.type)
        spec = TargetSpec(
            name=target.name,
            type=target.type,
            settings=dict(target.settings),
            work_dir=Path(state_dir) / "work" / target.name,
            base_dir=Path(state_dir),
            transport=dict(target.transport),
        )
        grants = connector.grants(spec)
    except Exception:  # a connector that cannot say writes nothing we can compare
        return ()
    return tuple(posixpath.normpath(str(r)) for r in grants.fs_write)
