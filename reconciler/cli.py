"""`certgit` command line.

Exit codes: 0 success (for `plan`: nothing to do), 1 error (bad input, source
unreachable, audit chain broken), 2 `plan` found changes pending.
Heavy modules (pygit2, the store) are imported only by the commands that use them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from certgit.reconciler.errors import CertgitError, ConfigErrors

if TYPE_CHECKING:
    from certgit.reconciler.engine import Engine
    from certgit.reconciler.planner import Plan

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def _source_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("source and state (flags > CERTGIT_* env > certgit.toml)")
    g.add_argument("--repo", help="Git repository: local path or file:// URL [CERTGIT_REPO]")
    g.add_argument("--ref", help="branch, tag or commit (default: the remote's HEAD) [CERTGIT_REF]")
    g.add_argument("--path", help="subdirectory holding the YAML [CERTGIT_PATH]")
    g.add_argument("--state-dir", help="state directory [CERTGIT_STATE_DIR]")
    g.add_argument("--config", help="certgit.toml to read [CERTGIT_CONFIG]")
    g.add_argument(
        "--allow-history-rewrite",
        action="store_const",
        const=True,
        default=None,
        help="accept a new head that does not descend from the last applied commit",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _source_flags()
    parser = argparse.ArgumentParser(
        prog="certgit", description="Declarative GitOps reconciler for TLS certificates."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "validate",
        parents=[common],
        help="check YAML and schemas; print every problem as FILE:LINE:COL",
    )
    p.add_argument(
        "target_path",
        nargs="?",
        metavar="PATH",
        help="a directory to validate (default: the configured repository at --ref)",
    )

    p = sub.add_parser("plan", parents=[common], help="show what apply would change")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--as", dest="actor", help="identity recorded in the audit log")

    p = sub.add_parser("status", parents=[common], help="every binding and its drift")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("audit", parents=[common], help="the hash-chained audit log")
    audit_sub = p.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    audit_sub.add_parser("verify", parents=[common], help="check the hash chain")
    show = audit_sub.add_parser("show", parents=[common], help="print audit entries")
    show.add_argument("--json", action="store_true")
    show.add_argument("--limit", type=int, default=50, help="last N entries (0 = all)")
    return parser


def _engine(args: argparse.Namespace) -> Engine:
    from certgit.reconciler.config import resolve_settings
    from certgit.reconciler.engine import Engine

    settings = resolve_settings(
        {
            "repo": args.repo,
            "ref": args.ref,
            "path": args.path,
            "state_dir": args.state_dir,
            "config": args.config,
            "allow_history_rewrite": args.allow_history_rewrite,
        }
    )
    return Engine(settings)


def _print_problems(exc: ConfigErrors, out: TextIO, err: TextIO, last_good: str | None) -> None:
    for problem in exc.problems:
        print(problem, file=out)
    n = len(exc.problems)
    tail = ""
    if last_good:
        tail = f"; the last good commit {last_good[:12]} stays in force"
    print(f"{n} problem{'s' if n != 1 else ''} found: nothing was changed{tail}", file=err)


def cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.desired import load_directory

    if args.target_path:
        root = Path(args.target_path)
        if not root.is_dir():
            print(f"error: {root} is not a directory", file=err)
            return EXIT_ERROR
        try:
            desired = load_directory(root)
        except ConfigErrors as exc:
            _print_problems(exc, out, err, None)
            return EXIT_ERROR
    else:
        engine = _engine(args)
        try:
            desired = engine.desired()
        except ConfigErrors as exc:
            _print_problems(exc, out, err, engine.last_good_commit())
            return EXIT_ERROR
        finally:
            engine.close()
    print(
        f"valid: {len(desired.issuers)} issuers, {len(desired.certificates)} certificates, "
        f"{len(desired.targets)} targets, {len(desired.policies)} policies",
        file=out,
    )
    return EXIT_OK


_SYMBOL = {"issue": "+", "renew": "~", "deploy": "~", "remove": "-", "rollback": "<"}


def render_plan(plan: Plan) -> str:
    """Terraform-style text: one line per action, a summary, the plan hash."""
    commit = (plan.commit or "working tree")[:12]
    lines = [f"certgit plan for commit {commit}", ""]
    if plan.empty:
        lines.append("No changes. Every binding is in sync.")
        return "\n".join(lines)
    for a in plan.actions:
        symbol = "+" if a.kind == "deploy" and a.drift == "missing" else _SYMBOL[str(a.kind)]
        subject = a.certificate if a.target is None else f"{a.certificate} -> {a.target}"
        lines.append(f"  {symbol} {a.kind:<8} {subject}")
        lines.append(f"      {a.drift}: {a.reason}")
        if a.gated:
            lines.append(f"      needs approval ({', '.join(a.gated_by)})  id {a.id}")
    counts: dict[str, int] = {}
    for a in plan.actions:
        counts[str(a.kind)] = counts.get(str(a.kind), 0) + 1
    summary = ", ".join(f"{n} to {kind}" for kind, n in sorted(counts.items()))
    gated = len(plan.gated)
    lines += [
        "",
        f"Plan: {summary}; {gated} need{'s' if gated == 1 else ''} approval.",
        f"Plan hash: {plan.hash}",
    ]
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.engine import operator_identity

    engine = _engine(args)
    try:
        try:
            plan = engine.plan()
        except ConfigErrors as exc:
            _print_problems(exc, out, err, engine.last_good_commit())
            return EXIT_ERROR
        engine.record_plan(plan, operator_identity(args.actor))
    finally:
        engine.close()
    if args.json:
        json.dump(plan.to_dict(), out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        print(render_plan(plan), file=out)
    return EXIT_OK if plan.empty else EXIT_CHANGES


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    engine = _engine(args)
    try:
        try:
            plan = engine.plan()
        except ConfigErrors as exc:
            _print_problems(exc, out, err, engine.last_good_commit())
            return EXIT_ERROR
    finally:
        engine.close()
    rows = [b.to_dict() for b in plan.bindings]
    if args.json:
        json.dump({"commit": plan.commit, "bindings": rows}, out, indent=2, sort_keys=True)
        out.write("\n")
        return EXIT_OK
    headers = ["CERTIFICATE", "TARGET", "FINGERPRINT", "NOT AFTER", "DRIFT", "REASON"]
    table = [
        [
            r["certificate"],
            r["target"],
            (r["deployed_fingerprint"] or "-")[:16],
            (r["not_after"] or "-")[:10],
            r["drift"],
            r["reason"],
        ]
        for r in rows
    ]
    _print_table(headers, table, out)
    return EXIT_OK


def _print_table(headers: list[str], rows: list[list[str]], out: TextIO) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, row, strict=True)]
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip(), file=out)


def cmd_audit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.errors import AuditChainBroken

    engine = _engine(args)
    try:
        if args.audit_command == "verify":
            try:
                count = engine.store.verify_audit()
            except AuditChainBroken as exc:
                print(f"audit log TAMPERED: {exc}", file=err)
                return EXIT_ERROR
            noun = "entry" if count == 1 else "entries"
            print(f"audit log intact: {count} {noun} verified", file=out)
            return EXIT_OK
        rows: list[dict[str, Any]] = engine.store.audit_rows()
        if args.limit:
            rows = rows[-args.limit :]
        if args.json:
            json.dump(rows, out, indent=2, sort_keys=True, default=str)
            out.write("\n")
        else:
            for r in rows:
                line = f"{r['seq']:>6}  {r['at']}  {r['actor']:<12}  {r['action']:<16}"
                print(f"{line}  {r['subject']}", file=out)
        return EXIT_OK
    finally:
        engine.close()


COMMANDS = {
    "validate": cmd_validate,
    "plan": cmd_plan,
    "status": cmd_status,
    "audit": cmd_audit,
}


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run one certgit command; returns the process exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, out, err)
    except ConfigErrors as exc:
        _print_problems(exc, out, err, None)
        return EXIT_ERROR
    except CertgitError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130
