"""The `certgit` argument parser: commands, flags, exit codes (shown by every `--help`).

Common flags live on the top-level parser (real defaults) and on every subparser
(`argparse.SUPPRESS` defaults), so they work before or after the subcommand.
A usage error raises UsageError (exit 64), never argparse's exit 2.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from certgit.reconciler.cli_output import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED

EXIT_OK, EXIT_CHANGES = 0, 2
EXIT_USAGE = 64  # BSD sysexits EX_USAGE: 2 already means "changes pending"
__all__ = ["EXIT_BROKEN_PIPE", "EXIT_CHANGES", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK",
           "EXIT_USAGE", "CertgitArgumentParser", "UsageError", "build_parser"]

EXIT_CODES_HELP = """\
exit codes:
  0    success (plan: also with changes pending, unless --detailed-exitcode)
  1    error: bad input, source unreachable, audit chain broken, an action failed
  2    plan --detailed-exitcode: changes pending; apply/rollback: actions wait
       for an approval or a retry
  64   usage error (unknown command or flag, bad argument)
  130  interrupted (Ctrl-C)
  141  stdout was closed early (e.g. `certgit status --json | head -1`); quiet
"""


class UsageError(Exception):
    """A command line argparse rejects; main() reports it and exits EXIT_USAGE."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class CertgitArgumentParser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error, which means "changes pending" here: raise instead."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


def _global_flags(suppress: bool) -> CertgitArgumentParser:
    """Flags every command takes, before or after the subcommand.

    The top-level parser holds the real defaults; each subparser's copy uses
    `argparse.SUPPRESS`, so a subcommand that was not given the flag never
    overwrites the value given before it (`certgit --state-dir X audit verify`
    and `certgit audit verify --state-dir X` both honour X).
    """

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    common = CertgitArgumentParser(add_help=False)
    g = common.add_argument_group("source and state (flags > CERTGIT_* env > certgit.toml)")
    g.add_argument("--repo", default=d(None),
                   help="Git repository: local path or file:// URL [CERTGIT_REPO]")
    g.add_argument("--ref", default=d(None),
                   help="branch, tag or commit (default: the remote's HEAD) [CERTGIT_REF]")
    g.add_argument("--path", default=d(None), help="subdirectory holding the YAML [CERTGIT_PATH]")
    g.add_argument("--state-dir", default=d(None), help="state directory [CERTGIT_STATE_DIR]")
    g.add_argument("--config", default=d(None), help="certgit.toml to read [CERTGIT_CONFIG]")
    g.add_argument(
        "--site-policy",
        default=d(None),
        help="the operator's site policy TOML (default: certgit.toml [site], else "
        "/etc/certgit/site.toml, else safe built-in defaults) [CERTGIT_SITE_POLICY]",
    )
    g.add_argument(
        "--allow-history-rewrite",
        action="store_const",
        const=True,
        default=d(None),
        help="accept a new head that does not descend from the last applied commit",
    )
    o = common.add_argument_group("output")
    o.add_argument("--json", action="store_true", default=d(False),
                   help="machine-readable output on stdout (errors too), with format_version")
    o.add_argument("-v", "--verbose", action="count", default=d(0),
                   help="more log output on stderr (-vv: debug)")
    o.add_argument("-q", "--quiet", action="count", default=d(0),
                   help="less log output on stderr (errors only)")
    o.add_argument("--debug", action="store_true", default=d(False),
                   help="show the Python traceback of an unexpected error")
    return common


def _source_flags() -> CertgitArgumentParser:
    return _global_flags(suppress=True)


COMPLETION_SHELLS = ("bash", "zsh", "fish")


def _status_filters(p: argparse.ArgumentParser) -> None:
    from certgit.reconciler.cli_status import add_status_flags

    add_status_flags(p)


def _version_number(text: str) -> int:
    """`2` or `v2` (how history prints versions)."""
    digits = text.strip().removeprefix("v").removeprefix("V")
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version: write e.g. 2 or v2")
    return int(digits)


def _count(text: str) -> int:
    """A whole number >= 0 (a negative --limit would silently drop entries)."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: write 0 or more")
    return int(text)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("certgit")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    common = _source_flags()
    parser = CertgitArgumentParser(
        prog="certgit",
        description="Declarative GitOps reconciler for TLS certificates.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_flags(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init",
        parents=[common],
        help="create the state directory, master key and store (apply does it on first use)",
    )
    p.add_argument("--as", dest="actor", help="identity recorded in the audit log")
    p.add_argument(
        "directory", nargs="?", metavar="DIR",
        help="scaffold a starter desired-state repository in DIR instead (issuer, "
             "certificate, files target, policy) that `certgit validate DIR` accepts",
    )

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

    refresh = CertgitArgumentParser(add_help=False)
    refresh.add_argument(
        "--refresh",
        choices=("true", "false"),
        default="true",
        help="observe every target live first (default true); false trusts the records",
    )

    p = sub.add_parser("plan", parents=[common, refresh], help="show what apply would change")
    p.add_argument(
        "--detailed-exitcode", action="store_true",
        help="exit 0 when nothing would change, 2 when changes are pending, 1 on error",
    )
    p.add_argument("--as", dest="actor", help="identity recorded in the audit log")

    p = sub.add_parser(
        "apply",
        parents=[common, refresh],
        help="execute the plan: issue, deploy, record (gated actions wait for approval)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run the preflight and sandbox checks and show what would change; write nothing",
    )
    p.add_argument("--as", dest="actor", help="identity recorded in the audit log")

    for name, verb in (("approve", "approve"), ("reject", "reject")):
        p = sub.add_parser(
            name, parents=[common], help=f"{verb} a plan (by hash) or one action (by id)"
        )
        p.add_argument(
            "plan_ref", metavar="ACTION|PLAN",
            help="plan hash (or >= 8 of its first hex digits) or action id from `certgit plan`",
        )
        p.add_argument("--reason", required=True, help="why; written to the audit log")
        p.add_argument("--as", dest="actor", help="identity recorded in the audit log")

    p = sub.add_parser(
        "rollback",
        parents=[common],
        help="deploy a previously recorded version to a target and hold it there",
    )
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--certificate", help="only this certificate (default: every one on TARGET)")
    p.add_argument("--to", dest="to_version", type=_version_number, metavar="VERSION",
                   help="version to deploy, e.g. 2 or v2 (default: the version TARGET served "
                        "before the current one)")
    p.add_argument("--reason", default="", help="why; written to the audit log")
    p.add_argument("--as", dest="actor", help="identity recorded in the audit log")

    p = sub.add_parser("release", parents=[common], help="lift a hold: Git wins again")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--certificate", help="only this certificate's hold")
    p.add_argument("--reason", default="", help="why; written to the audit log")
    p.add_argument("--as", dest="actor", help="identity recorded in the audit log")

    p = sub.add_parser(
        "history", parents=[common], help="versions, deployments and events of a target or cert"
    )
    p.add_argument("name", nargs="?", metavar="TARGET|CERTIFICATE")

    p = sub.add_parser(
        "retry",
        parents=[common],
        help="re-arm abandoned or waiting actions (of TARGET, or all): the next apply runs them",
    )
    p.add_argument("target", nargs="?", metavar="TARGET")
    p.add_argument("--certificate", help="only this certificate's actions")
    p.add_argument("--reason", default="", help="why; written to the audit log")
    p.add_argument("--as", dest="actor", help="identity recorded in the audit log")

    p = sub.add_parser(
        "status", parents=[common, refresh], help="every binding and its drift, most urgent first"
    )
    _status_filters(p)

    p = sub.add_parser("audit", parents=[common], help="the keyed, hash-chained audit log")
    audit_sub = p.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    audit_sub.add_parser(
        "verify", parents=[common], help="check the keyed chain and the head file beside state.db"
    )
    anchor = audit_sub.add_parser(
        "anchor",
        parents=[common],
        help="accept state.db as it is after a verify failure you have investigated "
        "(rows are still checked with the key); recorded in the log",
    )
    anchor.add_argument("--reason", required=True, help="why; written to the audit log")
    anchor.add_argument("--as", dest="actor", help="identity recorded in the audit log")
    show = audit_sub.add_parser("show", parents=[common], help="print audit entries")
    show.add_argument("--limit", type=_count, default=50, help="last N entries (0 = all)")

    p = sub.add_parser("site", parents=[common], help="the operator's site policy")
    site_sub = p.add_subparsers(dest="site_command", required=True, metavar="SUBCOMMAND")
    show = site_sub.add_parser(
        "show", parents=[common], help="the site policy in force: where it is, what it allows"
    )
    show.add_argument("--example", action="store_true",
                      help="print a commented example policy to start from instead")

    p = sub.add_parser("completion", parents=[common], help="print the shell completion script")
    p.add_argument("shell", choices=COMPLETION_SHELLS, metavar="SHELL",
                   help="one of: " + ", ".join(COMPLETION_SHELLS))
    p = sub.add_parser(
        "schema", parents=[common],
        help="write one self-contained JSON Schema of every kind (for yaml-language-server)",
    )
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    for name, choice in sub.choices.items():
        if name == "audit":
            for nested in audit_sub.choices.values():
                nested.epilog = EXIT_CODES_HELP
                nested.formatter_class = argparse.RawDescriptionHelpFormatter
        choice.epilog = EXIT_CODES_HELP
        choice.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser
