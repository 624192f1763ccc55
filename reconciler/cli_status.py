"""`certgit status`: filters (--target, --certificate, --drift, --label) and the
extra columns (days left, SANs, key type; file paths per binding with --wide)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from certgit.reconciler.model import Drift, key_label

if TYPE_CHECKING:
    from certgit.reconciler.model import DesiredState, RecordedState
    from certgit.reconciler.planner import BindingStatus, Plan


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not a label: write KEY=VALUE")
    return key, value


def add_status_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (repeat a flag for OR; different flags AND)")
    g.add_argument("--target", action="append", metavar="NAME", help="only bindings to NAME")
    g.add_argument("--certificate", action="append", metavar="NAME",
                   help="only bindings of certificate NAME")
    g.add_argument("--drift", action="append", metavar="KIND",
                   choices=[str(d) for d in Drift],
                   help="only this drift kind: " + ", ".join(str(d) for d in Drift))
    g.add_argument("--label", action="append", type=_label, metavar="KEY=VALUE",
                   help="only bindings whose certificate or target carries this label")
    p.add_argument("--wide", action="store_true",
                   help="also show the files each binding's last deploy wrote")


DRIFT_STYLE = {
    "expired": "bold red", "failing": "red", "abandoned": "red", "modified": "yellow",
    "missing": "yellow", "unknown": "magenta", "expiring": "yellow", "outdated": "cyan",
    "held": "blue", "orphaned": "dim", "in-sync": "green",
}


@dataclass(frozen=True)
class StatusRow:
    """One binding as `certgit status` shows it: the planner's BindingStatus plus what
    the desired Certificate says (SANs, key type, labels) and the recorded files."""

    binding: BindingStatus
    days_left: int | None
    sans: tuple[str, ...]
    key: str
    files: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.binding.to_dict(), "days_left": self.days_left, "sans": list(self.sans),
                "key": self.key, "files": list(self.files)}


def _matches(args: Any, b: BindingStatus, desired: DesiredState) -> bool:
    if args.target and b.target not in args.target:
        return False
    if args.certificate and b.certificate not in args.certificate:
        return False
    if args.drift and str(b.drift) not in args.drift:
        return False
    cert = desired.certificates.get(b.certificate)
    target = desired.targets.get(b.target)
    labels = [dict(cert.labels) if cert else {}, dict(target.labels) if target else {}]
    return all(any(ls.get(k) == v for ls in labels) for k, v in args.label or ())


def status_rows(
    args: Any, plan: Plan, desired: DesiredState, recorded: RecordedState | None, now: datetime
) -> list[StatusRow]:
    from certgit.reconciler.render import status_rows as by_urgency

    rows = []
    for b in by_urgency(plan.bindings):
        if not _matches(args, b, desired):
            continue
        cert = desired.certificates.get(b.certificate)
        days = None if b.not_after is None else math.floor(
            (b.not_after - now).total_seconds() / 86400)
        sans = (*cert.dns_names, *cert.ip_addresses) if cert else ()
        deployment = recorded.deployments.get((b.certificate, b.target)) if recorded else None
        files = tuple(f[0] for f in deployment.files) if deployment else ()
        key = key_label(cert.key.algorithm, cert.key.size) if cert else "-"
        rows.append(StatusRow(b, days, sans, key, files))
    return rows


def _cells(row: StatusRow, wide: bool) -> list[str]:
    from certgit.reconciler.render import one_line, when

    b = row.binding
    cells = [
        b.certificate, b.target,
        f"v{b.deployed_version}" if b.deployed_version else "-",
        (b.deployed_fingerprint or "-")[:16],
        when(b.not_after),
        "-" if row.days_left is None else str(row.days_left),
        row.key,
        ",".join(row.sans) or "-",
        str(b.drift),
        one_line(b.reason, 160),
    ]
    if wide:
        cells.append(",".join(row.files) or "-")
    return cells


HEADERS = ["CERTIFICATE", "TARGET", "VERSION", "FINGERPRINT", "NOT AFTER", "DAYS LEFT", "KEY",
           "SANS", "DRIFT", "REASON"]


def render_status_text(rows: list[StatusRow], wide: bool) -> str:
    from certgit.reconciler.render import table

    headers = [*HEADERS, "FILES"] if wide else HEADERS
    return table(headers, [_cells(r, wide) for r in rows])


def print_status_rich(rows: list[StatusRow], wide: bool, console: Any) -> None:
    """The plain table, coloured: a bold header, each drift kind in its colour, days
    left yellow under 14 and red when past. Same columns and alignment as without a
    terminal (no column is dropped or folded on a narrow one: lines run long, as
    `kubectl get -o wide` does)."""
    from rich.text import Text

    lines = render_status_text(rows, wide).splitlines()
    if not lines:
        return
    header = lines[0]
    drift_at, days_at = header.index("DRIFT"), header.index("DAYS LEFT")
    console.print(Text(header, style="bold"), crop=False, soft_wrap=True)
    for row, line in zip(rows, lines[1:], strict=True):
        text = Text(line)
        drift = str(row.binding.drift)
        text.stylize(DRIFT_STYLE.get(drift, ""), drift_at, drift_at + len(drift))
        if row.days_left is not None and row.days_left < 14:
            style = "bold red" if row.days_left < 0 else "yellow"
            text.stylize(style, days_at, days_at + len(str(row.days_left)))
        console.print(text, crop=False, soft_wrap=True)


def _check_names(args: Any, plan: Plan) -> None:
    """A --target or --certificate that names nothing is a typo, not "all clear"."""
    from certgit.reconciler.errors import CertgitError

    for flag, names, known in (
        ("--target", args.target, {b.target for b in plan.bindings}),
        ("--certificate", args.certificate, {b.certificate for b in plan.bindings}),
    ):
        unknown = sorted(set(names or ()) - known)
        if unknown:
            raise CertgitError(
                f"{flag} {', '.join(unknown)}: no binding has that name "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )


def cmd_status(args: Any, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.cli import _engine, _print_problems, _warn_degraded
    from certgit.reconciler.errors import ConfigErrors

    engine = _engine(args, create=False)
    try:
        try:
            desired = engine.desired(fallback=True)
            plan = engine.plan(desired, refresh=args.refresh == "true")
        except ConfigErrors as exc:
            # With --json, stdout is for JSON only.
            _print_problems(exc, err if args.json else out, err, engine.last_good_commit())
            return 1
        degraded = engine.degraded.to_dict() if engine.degraded is not None else None
        _check_names(args, plan)
        recorded = engine.store.recorded_state() if args.wide or args.json else None
        rows = status_rows(args, plan, desired, recorded, engine.clock())
    finally:
        _warn_degraded(engine, err)
        engine.close()
    if args.json:
        data = {"commit": plan.commit, "bindings": [r.to_dict() for r in rows],
                "degraded": degraded}
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
    elif getattr(args, "console", None) is not None:
        print_status_rich(rows, args.wide, args.console)
    else:
        print(render_status_text(rows, args.wide), file=out)
    return 0
