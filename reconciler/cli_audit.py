"""`certgit audit verify | anchor | show`: the audit log's commands.

Each parses nothing (cli_parser.py does), calls the store, and renders the
outcome as text or JSON; the exit codes are cli.py's. What is checked, and
why a head file beside state.db, is in store/audit.py.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any, TextIO

EXIT_OK, EXIT_ERROR = 0, 1  # cli.py's codes


def _engine(args: argparse.Namespace, *, create: bool = True) -> Any:
    from certgit.reconciler.cli import _engine as engine

    return engine(args, create=create)


def _emit_json(data: Any, out: TextIO) -> None:
    from certgit.reconciler.cli import _emit_json as emit

    emit(data, out)


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def cmd_audit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    engine = _engine(args, create=False)
    try:
        if args.audit_command == "verify":
            return _verify(engine.store, args, out, err)
        if args.audit_command == "anchor":
            return _anchor(engine.store, args, out, err)
        return _show(engine.store, args, out)
    finally:
        engine.close()


def _verify(store: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.errors import AuditChainBroken

    try:
        report = store.check_audit()
    except AuditChainBroken as exc:
        if args.json:
            raise  # main writes the JSON error object (type AuditChainBroken)
        print(f"audit log TAMPERED: {exc}", file=err)
        return EXIT_ERROR
    if args.json:
        _emit_json({"intact": True, "entries": report.entries}, out)
        return EXIT_OK
    print(f"audit log intact: {_entries(report.entries)} verified", file=out)
    if report.anchor_seq is not None:
        print(f"  anchored by {store.audit_head_file} at seq {report.anchor_seq}", file=out)
    if report.legacy:
        print(
            f"  {_entries(report.legacy)} written before the chain was keyed: plain SHA-256, "
            "covered by the keyed entries and the head file since the upgrade",
            file=out,
        )
    if report.behind:
        # Not an error: certgit stopped between a commit and the head-file write.
        print(
            f"note: the head file is {_entries(report.behind)} behind state.db (certgit "
            "stopped between a commit and the head-file write); the entries after seq "
            f"{report.anchor_seq} are keyed and chain from it, and the next entry brings "
            "it up to date",
            file=err,
        )
    return EXIT_OK


def _anchor(store: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.engine import operator_identity
    from certgit.reconciler.errors import AuditChainBroken

    try:
        report = store.anchor_audit(operator_identity(args.actor), args.reason, datetime.now(UTC))
    except AuditChainBroken as exc:
        if args.json:
            raise
        print(f"audit log TAMPERED, not re-anchored: {exc}", file=err)
        return EXIT_ERROR
    if args.json:
        _emit_json({"anchored": True, "entries": report.entries, "seq": report.anchor_seq}, out)
        return EXIT_OK
    print(
        f"audit log re-anchored: {_entries(report.entries)} verified with the key; "
        f"{store.audit_head_file} now records seq {report.anchor_seq}, the audit.anchored "
        "entry (its details keep what the head file said before)",
        file=out,
    )
    return EXIT_OK


def _show(store: Any, args: argparse.Namespace, out: TextIO) -> int:
    import json

    rows: list[dict[str, Any]] = store.audit_rows()
    if args.limit:
        rows = rows[-args.limit :]
    if args.json:
        json.dump({"entries": rows}, out, indent=2, sort_keys=True, default=str)
        out.write("\n")
        return EXIT_OK
    for r in rows:
        line = f"{r['seq']:>6}  {r['at']}  {r['actor']:<12}  {r['action']:<16}"
        details = r["details"] if isinstance(r["details"], dict) else {}
        why = f"  ({details['reason']})" if details.get("reason") else ""
        print(f"{line}  {r['subject']}{why}", file=out)
    return EXIT_OK
