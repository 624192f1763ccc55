"""Human-readable text for the CLI: plans, apply reports, status and history tables.

Pure functions of the engine's results: no I/O, no store. The CLI parses,
calls the engine and prints what these return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from certgit.reconciler.model import DRIFT_URGENCY, Drift

if TYPE_CHECKING:
    from certgit.reconciler.commands import ApplyOutcome
    from certgit.reconciler.planner import BindingStatus, Plan

_SYMBOL = {"issue": "+", "renew": "~", "deploy": "~", "remove": "-", "rollback": "<", "gates": "!"}
IN_SYNC = "No changes. Every binding is in sync."


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def one_line(text: str, limit: int = 300) -> str:
    """Server output folded onto one line (tables and plans stay aligned), cut at `limit`."""
    flat = " | ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def when(at: datetime | None) -> str:
    """A UTC instant to the minute: `2026-12-02 10:48Z`."""
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%MZ")


def attention_lines(
    plan: Plan, *, skip: set[tuple[str, str | None]] | None = None
) -> list[str]:
    """One line per binding that is not in sync (and has no action listed), most urgent first."""
    skip = skip or set()
    lines = []
    for b in plan.attention():
        if (b.certificate, b.target) in skip:
            continue
        lines.append(f"  ! {b.drift:<9} {b.certificate} -> {b.target}: {one_line(b.reason)}")
    return lines


def render_plan(plan: Plan, approved: Mapping[str, str] | None = None) -> str:
    """Terraform-style text: one line per action with its field changes, then bindings that
    need attention without an action (held, orphaned, unknown, expiring), the summary, the
    plan hash. `approved` maps action ids to who approved them for this plan."""
    approved = approved or {}
    commit = (plan.commit or "working tree")[:12]
    lines = [f"certgit plan for commit {commit}", ""]
    acted = {(a.certificate, a.target) for a in plan.actions}
    others = attention_lines(plan, skip=acted)
    if plan.empty and not others:
        lines.append(IN_SYNC)
        return "\n".join(lines)
    for a in plan.actions:
        symbol = "+" if a.kind == "deploy" and a.drift == "missing" else _SYMBOL[str(a.kind)]
        subject = a.certificate if a.target is None else f"{a.certificate} -> {a.target}"
        lines.append(f"  {symbol} {a.kind:<8} {subject}")
        lines.append(f"      {a.drift}: {one_line(a.reason)}")
        for change in a.changes:
            lines.append(f"        {change}")
        if a.gated and a.id in approved:
            lines.append(f"      approved by {approved[a.id]} ({', '.join(a.gated_by)})  id {a.id}")
        elif a.gated:
            lines.append(f"      needs approval ({', '.join(a.gated_by)})  id {a.id}")
    if others:
        if plan.actions:
            lines.append("")
        lines.append("Bindings that need attention but have no action:")
        lines += others
    if plan.empty:
        lines += ["", "No changes to apply."]
        return "\n".join(lines)
    counts: dict[str, int] = {}
    for a in plan.actions:
        counts[str(a.kind)] = counts.get(str(a.kind), 0) + 1
    summary = ", ".join(
        "1 gate change" if kind == "gates" else f"{n} to {kind}"
        for kind, n in sorted(counts.items())
    )
    abandoned = sum(1 for a in plan.actions if a.drift == Drift.ABANDONED)
    if abandoned:
        summary += f" ({abandoned} abandoned: `certgit retry` re-arms)"
    waiting = sum(1 for a in plan.gated if a.id not in approved)
    lines += [
        "",
        f"Plan: {summary}; {waiting} need{'s' if waiting == 1 else ''} approval.",
        f"Plan hash: {plan.hash}",
    ]
    return "\n".join(lines)


def render_apply(outcome: ApplyOutcome) -> str:
    """Apply's report: issued versions, one line per target, then everything still waiting."""
    run = outcome.run
    lines: list[str] = []
    if (outcome.plan.empty and not run.claimed and outcome.final.empty
            and not outcome.retrying and not outcome.final.attention()):
        lines.append(IN_SYNC)
    for issued in run.issued:
        v = issued.version
        if v is None:  # nothing was needed: not listed as issued
            continue
        reused = " (key reused)" if issued.key_reused else ""
        lines.append(f"  + issued   {issued.certificate} v{v.version} {v.fingerprint[:16]}{reused}")
    for cert, error in sorted(run.issue_errors.items()):
        lines.append(f"  ! issue    {cert} FAILED: {error}")
    for t in run.targets:
        certs = ", ".join(f"{c} v{v}" for c, v in sorted(t.certificates.items()))
        if t.removed:
            certs = ", ".join(filter(None, [certs, "removed " + ", ".join(t.removed)]))
        if t.error:
            lines.append(f"  ! {t.status + ' ':<9}{t.target}: {certs}: {one_line(t.error)}")
            continue
        steps = [s for s, done in (("validated", t.validated), ("reloaded", t.reloaded),
                                   ("verified", t.verified)) if done]
        how = f" ({', '.join(steps)})" if steps else ""
        if certs or not t.failed:
            lines.append(f"  ~ {t.status + ' ':<9}{t.target}: {certs or 'nothing'}{how}")
        for cert, why in sorted(t.failed.items()):
            lines.append(f"  ! failed   {cert} -> {t.target}: {one_line(why)}")
    reported = {t.target for t in run.targets if t.error or t.failed}
    for row in outcome.retrying:
        head = (
            f"  ? retrying {row['payload'].get('certificate')} -> {row['target']}: attempt "
            f"{row['attempts']} failed; the next `certgit apply` tries again (a scheduler "
            f"after {when(row['next_attempt_at'])})"
        )
        # The error was printed on the target's line above when it failed in this run.
        tail = "" if row["target"] in reported else f": {one_line(str(row['last_error']))}"
        lines.append(head + tail)
    for a in outcome.abandoned:
        subject = a.certificate if a.target is None else f"{a.certificate} -> {a.target}"
        lines.append(f"  x abandoned {a.kind} {subject}: {one_line(a.reason)}")
    for a in outcome.rejected:
        subject = a.certificate if a.target is None else f"{a.certificate} -> {a.target}"
        lines.append(f"  x rejected {a.kind} {subject}  id {a.id}")
    for a in outcome.waiting:
        subject = a.certificate if a.target is None else f"{a.certificate} -> {a.target}"
        lines.append(
            f"  waiting for approval: {a.kind} {subject} "
            f"({', '.join(a.gated_by)}): certgit approve {a.id} --reason TEXT"
        )
    if outcome.waiting:
        lines.append(
            f"  or approve the whole plan: certgit approve {outcome.final.hash} --reason TEXT"
        )
    for a in outcome.pending:
        subject = a.certificate if a.target is None else f"{a.certificate} -> {a.target}"
        lines.append(f"  ? pending  {a.kind} {subject}: {one_line(a.reason)}")
    acted = {(a.certificate, a.target) for a in outcome.final.actions}
    lines += attention_lines(outcome.final, skip=acted)
    verdict = {0: "Apply complete: every binding is in sync.",
               1: "Apply finished with failures (exit 1).",
               2: "Apply finished; actions are waiting (exit 2)."}[outcome.exit_code]
    if outcome.exit_code == 0 and outcome.final.attention():
        verdict = "Apply complete: nothing left to do; see the bindings above."
    lines.append(verdict)
    return "\n".join(lines)


def status_rows(bindings: Iterable[BindingStatus]) -> list[BindingStatus]:
    """Most urgent first: expired, failing, abandoned, modified, missing, unknown, expiring..."""
    return sorted(
        bindings, key=lambda b: (DRIFT_URGENCY[Drift(b.drift)], b.certificate, b.target)
    )


def apply_json(outcome: ApplyOutcome) -> dict[str, Any]:
    """`certgit apply --json`: what ran, per target, and what is left (same facts as
    render_apply). Times stay datetimes: the CLI writes them as ISO 8601 UTC."""
    run = outcome.run
    return {
        "plan_hash": outcome.plan.hash,
        "commit": outcome.plan.commit,
        "exit_code": outcome.exit_code,
        "dry_run": list(outcome.dry_run) or None,
        "issued": [
            {"certificate": i.certificate, "version": i.version.version,
             "fingerprint": i.version.fingerprint, "key_reused": i.key_reused}
            for i in run.issued if i.version is not None
        ],
        "issue_errors": dict(run.issue_errors),
        "targets": [
            {"target": t.target, "status": t.status, "certificates": dict(t.certificates),
             "removed": list(t.removed), "validated": t.validated, "reloaded": t.reloaded,
             "verified": t.verified, "error": t.error, "failed": dict(t.failed)}
            for t in run.targets
        ],
        "waiting": [a.to_dict() for a in outcome.waiting],
        "rejected": [a.to_dict() for a in outcome.rejected],
        "abandoned": [a.to_dict() for a in outcome.abandoned],
        "pending": [a.to_dict() for a in outcome.pending],
        "retrying": [
            {"action_id": r.get("action_id"), "target": r.get("target"),
             "certificate": (r.get("payload") or {}).get("certificate"),
             "attempts": r.get("attempts"), "next_attempt_at": r.get("next_attempt_at"),
             "last_error": r.get("last_error")}
            for r in outcome.retrying
        ],
        "attention": [b.to_dict() for b in outcome.final.attention()],
    }
