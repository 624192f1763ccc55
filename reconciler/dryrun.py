"""`apply --dry-run`: what an apply would do, with each target's config tested on the new
files, and nothing written (no version issued, no plan queued, no live file touched).

Deploys group by target exactly as the executor groups them (one change set per
target); a deploy whose certificate the apply has yet to issue is tested with the
files in place, and says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from certgit.reconciler.errors import CertgitError

if TYPE_CHECKING:
    from certgit.reconciler.engine import Engine
    from certgit.reconciler.model import DesiredState
    from certgit.reconciler.planner import Action, Plan


def dry_run_lines(engine: Engine, desired: DesiredState, plan: Plan) -> list[str]:
    """What apply would do: preflight, grant and config checks per target; nothing is written."""
    from certgit.connectors.model import ChangeSet
    from certgit.reconciler.targets import target_spec
    from certgit.reconciler.targetwork import build_bundle, default_loader

    sandboxes = engine.sandboxes(desired)
    lines: list[str] = []
    by_target: dict[str, list[Action]] = {}
    from certgit.reconciler.commands import gated_split

    approved = {a.id for a in gated_split(engine.store, plan)[0]}
    for action in plan.actions:
        if action.target is None:
            lines.append(f"would {action.kind} {action.certificate}: {action.reason}")
        elif action.gated and action.id not in approved:
            lines.append(
                f"would wait for approval: {action.kind} {action.certificate} -> "
                f"{action.target} (certgit approve {action.id})"
            )
        else:
            by_target.setdefault(action.target, []).append(action)
    recorded = engine.store.recorded_state() if by_target else None
    for name, actions in sorted(by_target.items()):
        target = desired.targets[name]
        bundles = []
        stand_in = False
        for action in actions:
            if action.kind == "remove":
                lines.append(f"{name}: would remove {action.certificate}")
                continue
            payload = action.to_dict()
            if action.version is None:
                lines.append(f"{name}: would deploy {action.certificate} as issued by this plan")
                dep = recorded.deployments.get((action.certificate, name)) if recorded else None
                if dep is None or dep.version is None:
                    continue
                # Not issued yet: the server's config is still tested, with the files in place.
                payload = {**payload, "version": dep.version, "fingerprint": dep.fingerprint}
                stand_in = True
            try:
                bundles.append(build_bundle(engine.store, desired, payload, name))
            except CertgitError as exc:
                lines.append(f"{name}: would fail: {exc}")
        if not bundles:
            continue
        try:
            spec = target_spec(target, engine.settings.state_dir, env=engine.env)
            connector = default_loader(target.type)
            sandbox = sandboxes(connector, spec)
            check = getattr(connector, "validate_only", None)
            change = ChangeSet(spec, tuple(bundles))
            if check is None:
                lines.append(f"{name}: connector {target.type} has no dry run; would deploy")
                continue
            if stand_in:
                lines.append(
                    f"{name}: note    the new certificate is issued by the apply: the config "
                    "test runs with the files in place"
                )
                found = check(sandbox, change, always_test=True)
            else:
                found = check(sandbox, change)
            lines += [f"{name}: {line}" for line in found]
        except CertgitError as exc:
            lines += [f"{name}: {line}" for line in getattr(exc, "lines", ())]
            lines.append(f"{name}: would fail: {exc}")
            detail = str(getattr(exc, "detail", "") or "").strip()
            lines += [f"{name}:     {row}" for row in detail.splitlines()[:20]]
    return lines
