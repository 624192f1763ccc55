"""The operator's commands on plans and targets: approve/reject, rollback, retry, release.

Each parses nothing (cli_parser.py does), calls `commands`, and renders the
outcome as text or JSON; the exit codes are cli.py's.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2  # cli.py's codes


def _engine(args: argparse.Namespace, *, create: bool = True) -> Any:
    from certgit.reconciler.cli import _engine as engine

    return engine(args, create=create)


def _warn_degraded(engine: Any, err: TextIO) -> None:
    from certgit.reconciler.cli import _warn_degraded as warn

    warn(engine, err)


def _emit_json(data: Any, out: TextIO) -> None:
    from certgit.reconciler.cli import _emit_json as emit

    emit(data, out)


def cmd_decide(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.commands import decide
    from certgit.reconciler.engine import operator_identity

    engine = _engine(args, create=False)  # acts on existing state: a typo creates nothing
    try:
        plan_hash, action = decide(
            engine, args.plan_ref, args.command, operator_identity(args.actor), args.reason
        )
    finally:
        _warn_degraded(engine, err)
        engine.close()
    what = f"action {action} of plan {plan_hash[:12]}" if action else f"plan {plan_hash}"
    verb = "approved" if args.command == "approve" else "rejected"
    if args.json:
        _emit_json({"decision": verb, "plan_hash": plan_hash, "action_id": action}, out)
        return EXIT_OK
    print(f"{verb} {what}", file=out)
    if args.command == "approve":
        print("`certgit apply` runs it while the plan stays the same; a changed plan needs a "
              "new approval", file=out)
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.commands import rollback
    from certgit.reconciler.engine import operator_identity

    engine = _engine(args, create=False)  # acts on existing state: a typo creates nothing
    try:
        outcome = rollback(
            engine,
            args.target,
            certificate=args.certificate,
            to_version=args.to_version,
            actor=operator_identity(args.actor),
            reason=args.reason or "rollback",
        )
    finally:
        _warn_degraded(engine, err)
        engine.close()
    if args.json:
        return _rollback_json(args, outcome, out)
    for why in outcome.skipped:
        print(f"left alone: {why}", file=out)
    for a in outcome.waiting:
        print(
            f"waiting for approval: roll {a.certificate} on {args.target} back to "
            f"v{a.version}, a version never served there ({', '.join(a.gated_by)})",
            file=out,
        )
    if outcome.waiting:
        print(
            f"approve it with `certgit approve {outcome.plan_hash} --reason TEXT`, then run "
            "the same rollback command again",
            file=out,
        )
        return EXIT_CHANGES
    failed = [t for t in outcome.run.targets if t.error or t.failed]
    if failed or not outcome.run.targets:
        for cert, version in sorted(outcome.versions.items()):
            print(f"rollback of {cert} on {args.target} to v{version} FAILED", file=err)
        for t in failed:
            print(f"  ! {t.target}: {t.error or t.failed}", file=err)
        print(f"the hold stays and a retry is queued: fix the cause and run `certgit retry "
              f"{args.target}` then `certgit apply`, or `certgit release {args.target}` to "
              "give up the rollback (cancels the retry)", file=err)
        return EXIT_ERROR
    for cert, version in sorted(outcome.versions.items()):
        print(f"rolled back {cert} on {args.target} to v{version} (held)", file=out)
    print(f"done; reconciliation leaves these bindings alone until "
          f"`certgit release {args.target}`", file=out)
    return EXIT_OK


def _rollback_json(args: argparse.Namespace, outcome: Any, out: TextIO) -> int:
    """`rollback --json`: 2 waiting for an approval, 1 failed (an error object), 0 done."""
    from certgit.reconciler.cli_output import dump, error_object

    failed = [t for t in outcome.run.targets if t.error or t.failed]
    data = {
        "target": args.target,
        "plan_hash": outcome.plan_hash,
        "versions": dict(outcome.versions),
        "skipped": list(outcome.skipped),
        "waiting": [a.to_dict() for a in outcome.waiting],
        "failed": {t.target: t.error or dict(t.failed) for t in failed},
    }
    if outcome.waiting:
        _emit_json({**data, "exit_code": EXIT_CHANGES}, out)
        return EXIT_CHANGES
    if failed or not outcome.run.targets:
        dump(error_object("RollbackFailed", f"rollback on {args.target} failed; the hold "
                          "stays and a retry is queued", exit_code=EXIT_ERROR, **data), out)
        return EXIT_ERROR
    _emit_json({**data, "exit_code": EXIT_OK, "held": True}, out)
    return EXIT_OK


def _on_target(args: argparse.Namespace, name: str) -> int:
    """Run `commands.retry` or `commands.release` on TARGET (and --certificate) as the
    operator, with --reason (default: the command's name); returns how many it touched."""
    from certgit.reconciler import commands
    from certgit.reconciler.engine import operator_identity

    engine = _engine(args, create=False)  # acts on existing state: a typo creates nothing
    try:
        count: int = getattr(commands, name)(
            engine, args.target, certificate=args.certificate,
            actor=operator_identity(args.actor), reason=args.reason or name,
        )
    finally:
        engine.close()
    return count


def cmd_retry(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    count = _on_target(args, "retry")
    if args.json:
        _emit_json({"rearmed": count, "target": args.target, "certificate": args.certificate}, out)
        return EXIT_OK
    where = f" on {args.target}" if args.target else ""
    if not count:
        print(f"nothing to retry{where}: no abandoned or waiting action", file=out)
        return EXIT_OK
    noun = "action" if count == 1 else "actions"
    print(f"re-armed {count} {noun}{where}; `certgit apply` runs them now", file=out)
    return EXIT_OK


def cmd_release(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    count = _on_target(args, "release")
    if args.json:
        _emit_json({"released": count, "target": args.target, "certificate": args.certificate},
                   out)
        return EXIT_OK
    noun = "hold" if count == 1 else "holds"
    print(f"released {count} {noun} on {args.target}; the next apply converges to Git", file=out)
    return EXIT_OK
