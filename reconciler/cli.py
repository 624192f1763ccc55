"""`certgit` command line.

Exit codes (EXIT_CODES_HELP, shown by `--help`): 0 success (`plan` too, unless
`--detailed-exitcode`), 1 error, 2 `plan --detailed-exitcode` found changes
pending / `apply` or `rollback` left actions waiting for an approval or a retry,
64 usage error, 130 interrupted, 141 stdout closed early.
Output conventions (`--json`, rich on a TTY, errors, broken pipe): cli_output.py.
Heavy modules (pygit2, the store) are imported only by the commands that use them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from certgit.reconciler.cli_parser import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    build_parser,
)
from certgit.reconciler.errors import CertgitError, ConfigErrors
from certgit.reconciler.render import apply_json, render_apply, render_plan

if TYPE_CHECKING:
    from certgit.reconciler.engine import Engine
    from certgit.reconciler.planner import Plan


def _emit_json(data: dict[str, Any], out: TextIO) -> None:
    """A command's one JSON document (main adds format_version, times become ISO 8601)."""
    from certgit.reconciler.cli_output import iso_utc

    json.dump(data, out, indent=2, sort_keys=True, default=iso_utc)
    out.write("\n")


def _engine(args: argparse.Namespace, *, create: bool = True) -> Engine:
    """The engine for `args`. ``create=False`` (read-only commands): a missing state
    directory or store is an error (`StateMissing`), and nothing is created."""
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
            "site_policy": getattr(args, "site_policy", None),
        }
    )
    return Engine(settings, create_state=create)


def _master_key_location(env: Any, state_dir: Path) -> str:
    from certgit.reconciler.sealing import ENV_KEY, ENV_KEY_FILE, KEY_FILE_NAME

    if env.get(ENV_KEY_FILE):
        return f"{env[ENV_KEY_FILE]} (from {ENV_KEY_FILE})"
    if env.get(ENV_KEY):
        return f"the {ENV_KEY} environment variable"
    return str(state_dir / KEY_FILE_NAME)


def cmd_init(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Create the state directory, master key and store; say where the key is."""
    from certgit.reconciler.engine import operator_identity

    engine = _engine(args)
    state_dir = engine.settings.state_dir
    try:
        store = engine.store
        key_at = _master_key_location(engine.env, state_dir)
        if args.json:
            _emit_json({"state_dir": str(state_dir), "created": bool(store.created),
                        "state_store": str(store.path), "master_key": key_at,
                        "key_id": store.key_id}, out)
        if not store.created:
            if args.json:
                return EXIT_OK
            print(f"certgit state already exists in {state_dir}: nothing changed", file=out)
            print(f"  state store  {store.path}", file=out)
            print(f"  master key   {key_at} (key id {store.key_id})", file=out)
            return EXIT_OK
        details = {"state_dir": str(state_dir), "master_key": key_at, "key_id": store.key_id}
        store.audit(
            operator_identity(args.actor), "state.init", str(state_dir), details, engine.clock()
        )
    finally:
        engine.close()
    if args.json:
        return EXIT_OK
    print(f"created certgit state in {state_dir} (mode 0700)", file=out)
    print(f"  state store  {store.path}", file=out)
    print(f"  master key   {key_at} (key id {store.key_id})", file=out)
    print("  back the master key up apart from state.db: without it the sealed private keys "
          "cannot be read", file=out)
    print("next: `certgit plan` (with --repo or CERTGIT_REPO), then `certgit apply`", file=out)
    return EXIT_OK


def _print_problems(exc: ConfigErrors, out: TextIO, err: TextIO, last_good: str | None) -> None:
    for problem in exc.problems:
        print(problem, file=out)
    n = len(exc.problems)
    tail = ""
    if last_good:
        tail = f"; the last good commit {last_good[:12]} stays in force"
    print(f"{n} problem{'s' if n != 1 else ''} found: nothing was changed{tail}", file=err)


def _warn_degraded(engine: Engine, err: TextIO) -> None:
    """One line on stderr when the last good commit stands in for an invalid or unreadable
    head (DESIGN §8); stdout stays what the command prints (pure JSON with --json)."""
    degraded = getattr(engine, "degraded", None)
    if degraded is not None:
        print(degraded.warning(), file=err)


def cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.desired import load_directory

    if args.target_path:
        root = Path(args.target_path)
        if not root.is_dir():
            print(f"error: {root} is not a directory", file=err)
            return EXIT_ERROR
        try:
            # the same site policy as a commit from the repository would meet
            site = _engine(args, create=False)
            try:
                checks, sops = [site.site_check], site.sops
            finally:
                site.close()
            desired = load_directory(root, checks, sops)
        except ConfigErrors as exc:
            _print_problems(exc, out, err, None)
            return EXIT_ERROR
    else:
        engine = _engine(args, create=False)
        try:
            desired = engine.desired()
        except ConfigErrors as exc:
            _print_problems(exc, out, err, engine.last_good_commit())
            return EXIT_ERROR
        finally:
            engine.close()
    # Warnings do not reject the commit (e.g. a key type a bound Target does not accept).
    for w in () if args.json else desired.warnings:
        print(f"{w.path}:{w.line}:{w.column}: warning: {w.message}", file=out)
    if not args.json:
        print(
            f"valid: {len(desired.issuers)} issuers, {len(desired.certificates)} certificates, "
            f"{len(desired.targets)} targets, {len(desired.policies)} policies",
            file=out,
        )
    # Durations that outlive an existing local CA: reads CA certificates only, creates nothing.
    from certgit.reconciler.issuance import lifetime_warnings

    try:
        source = _engine(args) if args.target_path else engine
        warnings = lifetime_warnings(
            desired,
            source.settings.state_dir,
            source.env,
            source.clock(),
            read_file=(lambda p: (root / p).read_bytes()) if args.target_path else None,
            site=source.site,
        )
    except CertgitError:
        warnings = []  # no usable settings, so no state directory to look in
    for warning in warnings:
        print(warning, file=err)
    if args.json:
        _emit_json({
            "valid": True,
            "commit": desired.commit,
            "counts": {"issuers": len(desired.issuers),
                       "certificates": len(desired.certificates),
                       "targets": len(desired.targets), "policies": len(desired.policies)},
            "warnings": [{"file": w.path, "line": w.line, "column": w.column,
                          "message": w.message} for w in desired.warnings]
                        + [{"message": str(w)} for w in warnings],
        }, out)
    return EXIT_OK


def _current_plan(
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    *,
    record_as: str | None = None,
    approvals: dict[str, str] | None = None,
    degraded: dict[str, Any] | None = None,
) -> Plan | None:
    """Poll and plan; print the commit's problems and return None when it is invalid.

    An invalid or unreadable head with a last good commit on record plans that
    commit instead, with one warning on stderr (and `degraded` filled with why).
    With `record_as`, the plan is also persisted (and audited the first time);
    `approvals` is filled with the gated actions already approved for it.
    """
    from certgit.reconciler.commands import approved_by

    engine = _engine(args, create=False)
    try:
        try:
            plan = engine.plan(refresh=args.refresh == "true", fallback=True)
        except ConfigErrors as exc:
            # With --json, stdout is for JSON only.
            _print_problems(exc, err if args.json else out, err, engine.last_good_commit())
            return None
        if degraded is not None and engine.degraded is not None:
            degraded.update(engine.degraded.to_dict())
        if record_as is not None:
            engine.record_plan(plan, record_as)
        if approvals is not None and plan.gated:
            approvals.update(approved_by(engine.store, plan))
        return plan
    finally:
        _warn_degraded(engine, err)
        engine.close()


def cmd_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.engine import operator_identity

    approvals: dict[str, str] = {}
    degraded: dict[str, Any] = {}
    plan = _current_plan(
        args, out, err, record_as=operator_identity(args.actor), approvals=approvals,
        degraded=degraded,
    )
    if plan is None:
        return EXIT_ERROR
    if args.json:
        data = {**plan.to_dict(), "degraded": degraded or None}
        for action in data["actions"]:
            action["approved_by"] = approvals.get(action["id"])
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        print(render_plan(plan, approvals), file=out)
    if args.detailed_exitcode and not plan.empty:
        return EXIT_CHANGES
    return EXIT_OK


def cmd_apply(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.cli_output import progress_listener
    from certgit.reconciler.commands import apply
    from certgit.reconciler.engine import operator_identity
    from certgit.reconciler.executor import ExecutorConfig

    engine = _engine(args)
    try:
        try:
            outcome = apply(
                engine,
                operator_identity(args.actor),
                dry_run=args.dry_run,
                refresh=args.refresh == "true",
                config=ExecutorConfig(retry_now=True),
                on_event=progress_listener(args, err),
            )
        except ConfigErrors as exc:
            _print_problems(exc, out, err, engine.last_good_commit())
            return EXIT_ERROR
    finally:
        _warn_degraded(engine, err)
        degraded = engine.degraded.to_dict() if engine.degraded is not None else None
        engine.close()
    # The commit asked for was not applied (the last good one was): a script must see it,
    # even when the last good commit's actions also wait for approval (exit 2 < exit 1).
    code = outcome.exit_code
    if degraded is not None and code in (EXIT_OK, EXIT_CHANGES):
        code = EXIT_ERROR
    if args.json:
        _emit_json({**apply_json(outcome), "degraded": degraded, "exit_code": code}, out)
        return code
    if args.dry_run:
        head = f"certgit apply --dry-run (plan {outcome.plan.hash[:12]}): nothing is written"
        print(head, file=out)
        for line in outcome.dry_run or ("No changes. Every binding is in sync.",):
            print(f"  {line}", file=out)
        return code
    print(render_apply(outcome), file=out)
    if degraded is not None:
        print(f"HEAD was not applied: the last good commit {str(degraded.get('commit'))[:12]} "
              "was (exit 1); fix the repository (`certgit validate`) or its remote", file=out)
    return code


def cmd_history(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.queries import history

    engine = _engine(args, create=False)
    try:
        view = history(engine.store, args.name)
    finally:
        engine.close()
    if args.name is not None and not view.versions and not view.deploys and not view.events:
        print(f"error: no certificate or target named {args.name!r} on record: "
              "`certgit status` lists them", file=err)
        return EXIT_ERROR
    if args.json:
        json.dump(view.to_dict(), out, indent=2, sort_keys=True, default=str)
        out.write("\n")
        return EXIT_OK
    from certgit.reconciler.render import table, when

    print(table(
        ["CERTIFICATE", "VERSION", "KEY", "NOT AFTER", "SANS", "FINGERPRINT", "LIVE ON NOW"],
        [[v.certificate, f"v{v.version}", v.key, when(v.not_after), " ".join(v.sans) or "-",
          v.fingerprint[:16], ", ".join(v.deployed_on) or "-"] for v in view.versions],
    ), file=out)
    if view.deploys:
        print("", file=out)
        print(table(
            ["WHEN", "TARGET", "CERTIFICATE", "KIND", "VERSION", "REPLACED", "BY", "COMMIT"],
            [[when(d.deployed_at), d.target, d.certificate, d.kind, f"v{d.version}",
              f"v{d.replaced_version}" if d.replaced_version else "-", d.actor,
              (d.commit or "-")[:12]] for d in view.deploys],
        ), file=out)
    if view.events:
        print("", file=out)
        for r in view.events[-50:]:
            why = r["details"].get("reason") if isinstance(r["details"], dict) else None
            tail = f"  ({why})" if why else ""
            print(f"{r['at']:%Y-%m-%d %H:%M:%S}  {r['actor']:<12}  {r['action']:<20}  "
                  f"{r['subject']}{tail}", file=out)
    return EXIT_OK


def _cmd_init_any(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`init` creates the state directory; `init DIR` scaffolds a desired-state repo."""
    if args.directory:
        from certgit.reconciler.scaffold import cmd_init_repo

        return cmd_init_repo(args, out, err)
    return cmd_init(args, out, err)


def _cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Filters, days left, SANs, key type, files: cli_status.py."""
    from certgit.reconciler.cli_status import cmd_status as status

    return status(args, out, err)


def _cmd_schema(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.cli_schema import cmd_schema

    return cmd_schema(args, out, err)


def _cmd_completion(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.cli_schema import cmd_completion

    return cmd_completion(args, out, err)


from certgit.reconciler.cli_audit import cmd_audit  # noqa: E402 - after the helpers it uses
from certgit.reconciler.cli_operator import (  # noqa: E402 - after the helpers it uses
    cmd_decide,
    cmd_release,
    cmd_retry,
    cmd_rollback,
)
from certgit.reconciler.cli_site import cmd_site  # noqa: E402 - after the helpers it uses

COMMANDS = {
    "init": _cmd_init_any,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "approve": cmd_decide,
    "reject": cmd_decide,
    "rollback": cmd_rollback,
    "release": cmd_release,
    "retry": cmd_retry,
    "history": cmd_history,
    "status": _cmd_status,
    "audit": cmd_audit,
    "site": cmd_site,
    "schema": _cmd_schema,
    "completion": _cmd_completion,
}


def _print_any_problems(exc: ConfigErrors, out: TextIO, err: TextIO) -> None:
    _print_problems(exc, out, err, None)


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run one certgit command; returns the process exit code (see EXIT_CODES_HELP)."""
    from certgit.reconciler import cli_output

    out = out or sys.stdout
    err = err or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell is asking for completions
        import argcomplete

        argcomplete.autocomplete(parser)
    try:
        with contextlib.redirect_stdout(out):  # --help and --version print to `out`
            args = parser.parse_args(argv)
    except UsageError as exc:
        if "--json" in argv:
            cli_output.dump(cli_output.error_object(
                "UsageError", str(exc), usage=exc.usage.strip(), exit_code=EXIT_USAGE), out)
        err.write(exc.usage)
        print(f"certgit: error: {exc}", file=err)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    cli_output.configure_logging(args.verbose - args.quiet, err)
    return cli_output.run(COMMANDS[args.command], args, out, err, _print_any_problems)
