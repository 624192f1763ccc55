"""Output plumbing of the `certgit` CLI: JSON envelopes, error objects, rich on a TTY,
logging, and the exit paths (usage error, unexpected exception, broken pipe).

Commands write plain text (or one JSON document with `--json`) to the `out` they
are given; `run()` decides what reaches the real stdout:

- `--json`: the command's JSON gets a top-level `format_version`; text output or
  a failure becomes a JSON object too (`{"format_version": 1, "error": {...}}` on
  stdout, with the same exit code). Timestamps are ISO 8601 UTC.
- stdout a TTY (and not `--json`): the text goes through `rich` (colour by line
  kind, `NO_COLOR` honoured); otherwise the text is written byte for byte.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import traceback
from collections.abc import Callable
from datetime import UTC
from typing import Any, TextIO

FORMAT_VERSION = 1
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`

Command = Callable[[Any, TextIO, TextIO], int]

# ---------------------------------------------------------------- logging

_HANDLER: logging.StreamHandler[TextIO] | None = None


def configure_logging(verbosity: int, err: TextIO) -> None:
    """Configure the `certgit` loggers once per process: stderr, WARNING by default,
    -v INFO, -vv DEBUG, -q ERROR. A second call (tests run main() many times) only
    points the one handler at the new stream and level."""
    global _HANDLER
    logger = logging.getLogger("certgit")
    if _HANDLER is None:
        _HANDLER = logging.StreamHandler(err)
        _HANDLER.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(_HANDLER)
        logger.propagate = False
    else:
        _HANDLER.setStream(err)
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}
    logger.setLevel(level.get(max(-1, min(verbosity, 2)), logging.DEBUG))


# ---------------------------------------------------------------- JSON

_SPACED_UTC = re.compile(r"^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)\+00:00$")


def iso_utc(value: Any) -> Any:
    """`default=` for json.dump: datetimes as ISO 8601 (UTC stays `+00:00`)."""
    from datetime import date, datetime

    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _normalise(value: Any) -> Any:
    """`str(datetime)` (`2026-12-02 10:48:00+00:00`, from `default=str`) becomes ISO 8601."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, str):
        m = _SPACED_UTC.match(value)
        if m:
            return f"{m.group(1)}T{m.group(2)}+00:00"
    return value


def dump(data: dict[str, Any], out: TextIO) -> None:
    """One JSON document with `format_version` first, sorted keys, ISO 8601 times."""
    body = _normalise(json.loads(json.dumps(data, default=iso_utc)))
    body.pop("format_version", None)
    json.dump({"format_version": FORMAT_VERSION, **body}, out, indent=2, sort_keys=False,
              default=iso_utc)
    out.write("\n")


def error_object(type_: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "error": {"type": type_, "message": message,
                                                        **extra}}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


_PROBLEM = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?P<column>\d+): (?P<message>.*)$")


def _positioned(lines: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`FILE:LINE:COL: message` lines (validate's format) as problems and warnings."""
    problems, warnings = [], []
    for line in lines:
        m = _PROBLEM.match(line)
        if not m:
            continue
        item: dict[str, Any] = {**m.groupdict(), "line": int(m["line"]),
                                "column": int(m["column"])}
        if item["message"].startswith("warning: "):
            item["message"] = item["message"].removeprefix("warning: ")
            warnings.append(item)
        else:
            problems.append(item)
    return problems, warnings


def _as_json(command: str, code: int, text: str, err_text: str) -> dict[str, Any]:
    """What a command printed, as the JSON document `--json` promises."""
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return dict(sorted(parsed.items()))
        if isinstance(parsed, list):
            return {"items": parsed}
    problems, warnings = _positioned(_lines(text) + _lines(err_text))
    if code == EXIT_ERROR:
        messages = [m for m in _lines(err_text) if not _PROBLEM.match(m)]
        message = messages[-1] if messages else "command failed"
        message = message.removeprefix("error: ")
        extra: dict[str, Any] = {"problems": problems} if problems else {}
        return error_object("ConfigErrors" if problems else "CommandFailed", message,
                            exit_code=code, output=_lines(text), messages=messages, **extra)
    data: dict[str, Any] = {"command": command, "exit_code": code, "output": _lines(text)}
    if warnings:
        data["warnings"] = warnings
    return data


class _Tee(io.StringIO):
    """Captures stderr for the JSON error object and still shows it."""

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self._target = target

    def write(self, s: str) -> int:
        self._target.write(s)
        return super().write(s)


# ---------------------------------------------------------------- rich on a TTY


def wants_rich(out: TextIO, json_mode: bool) -> bool:
    if json_mode:
        return False
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False


def console_for(out: TextIO) -> Any:
    """A rich Console on `out`. NO_COLOR (set to anything non-empty, no-color.org) turns
    every ANSI style off: tables keep their layout, no escape sequence is written."""
    from rich.console import Console

    no_color = bool(os.environ.get("NO_COLOR"))
    return Console(
        file=out,
        force_terminal=not no_color,
        color_system=None if no_color else "auto",
        no_color=no_color,
        highlight=False,
        soft_wrap=True,
    )


_STYLES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^\s*(!|x |error|FAILED|audit log TAMPERED)"), "bold red"),
    (re.compile(r"^\s*(\+ )"), "green"),
    (re.compile(r"^\s*(~ )"), "yellow"),
    (re.compile(r"^\s*(- )"), "red"),
    (re.compile(r"^\s*(\? |waiting for approval|needs approval)"), "magenta"),
    (re.compile(r"^\s*(Plan:|Plan hash:|Apply complete|No changes|valid:|certgit plan)"),
     "bold"),
    (re.compile(r"^[A-Z][A-Z ]+(\s{2,}[A-Z][A-Z ]+)+$"), "bold underline"),
)


def print_rich(text: str, console: Any) -> None:
    """Plain command text, styled by line kind (additions green, changes yellow, ...)."""
    from rich.text import Text

    for line in text.splitlines():
        style = next((s for pattern, s in _STYLES if pattern.search(line)), "")
        console.print(Text(line, style=style))


# ---------------------------------------------------------------- running a command


def _failure(
    exc: BaseException, args: Any, out: TextIO, err: TextIO,
    print_problems: Callable[[Any, TextIO, TextIO], None],
) -> int:
    """Report what a command raised: one line (or a JSON error object), never a
    traceback unless --debug."""
    from certgit.reconciler.errors import CertgitError, ConfigErrors

    json_mode = getattr(args, "json", False)
    if isinstance(exc, KeyboardInterrupt):
        if json_mode:
            dump(error_object("Interrupted", "interrupted", exit_code=EXIT_INTERRUPTED), out)
        print("interrupted", file=err)
        return EXIT_INTERRUPTED
    if isinstance(exc, ConfigErrors):
        if json_mode:
            problems = [{"file": p.path, "line": p.line, "column": p.column,
                         "message": p.message} for p in exc.problems]
            n = len(problems)
            dump(error_object("ConfigErrors", f"{n} problem{'s' if n != 1 else ''} found",
                              problems=problems, exit_code=EXIT_ERROR), out)
        else:
            print_problems(exc, out, err)
        return EXIT_ERROR
    if isinstance(exc, CertgitError):
        if json_mode:
            dump(error_object(type(exc).__name__, str(exc), exit_code=EXIT_ERROR), out)
        print(f"error: {exc}", file=err)
        return EXIT_ERROR
    if isinstance(exc, OSError) and exc.filename is not None:
        # A path the operator named cannot be used: their mistake, not certgit's.
        why = f"{exc.filename}: {exc.strerror or exc}"
        if getattr(args, "debug", False):
            traceback.print_exception(exc, file=err)
        if json_mode:
            dump(error_object(type(exc).__name__, why, exit_code=EXIT_ERROR), out)
        print(f"error: {why}", file=err)
        return EXIT_ERROR
    if getattr(args, "debug", False):
        traceback.print_exception(exc, file=err)
    if json_mode:
        dump(error_object(type(exc).__name__, str(exc), exit_code=EXIT_ERROR,
                          unexpected=True), out)
    hint = "" if getattr(args, "debug", False) else " (run with --debug for the traceback)"
    print(f"error: unexpected {type(exc).__name__}: {exc}{hint}", file=err)
    return EXIT_ERROR


def _silence_stdout(out: TextIO) -> None:
    """Point the closed stdout at /dev/null so the interpreter's last flush is quiet."""
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def run(
    command: Command, args: Any, out: TextIO, err: TextIO,
    print_problems: Callable[[Any, TextIO, TextIO], None],
) -> int:
    """Run one parsed command with the output conventions above; returns the exit code."""
    json_mode = bool(getattr(args, "json", False))
    console = console_for(out) if wants_rich(out, json_mode) else None
    args.console = console
    buf = io.StringIO() if json_mode or console is not None else None
    tee = _Tee(err) if json_mode else None
    try:
        try:
            code = command(args, buf or out, tee or err)
        except BrokenPipeError:
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if console is not None and buf is not None:
                print_rich(buf.getvalue(), console)
            return _failure(exc, args, out, err, print_problems)
        if json_mode and buf is not None and tee is not None:
            dump(_as_json(args.command, code, buf.getvalue(), tee.getvalue()), out)
        elif console is not None and buf is not None:
            print_rich(buf.getvalue(), console)
        out.flush()
        return code
    except BrokenPipeError:
        # `certgit status --json | head -1`: the reader left; say nothing more.
        _silence_stdout(out)
        return EXIT_BROKEN_PIPE


# ---------------------------------------------------------------- apply progress


def progress_listener(args: Any, err: TextIO) -> Callable[[Any], None] | None:
    """Live progress of `apply` on stderr (stdout keeps the final report): when stderr is
    a terminal or with -v. Issuance is one self-updating line on a terminal; each target
    gets a line as its outcome is recorded. Thread-safe (executor threads call it)."""
    import threading

    try:
        tty = bool(err.isatty())
    except (AttributeError, ValueError):
        tty = False
    if not (tty or getattr(args, "verbose", 0) > 0) or getattr(args, "quiet", 0) > 0:
        return None
    lock = threading.Lock()
    issued = [0]
    open_line = [False]

    def listener(event: Any) -> None:
        kind, subject, detail = str(event.kind), event.subject, dict(event.detail)
        with lock:
            if kind == "planned":
                n = detail.get("actions", 0)
                err.write(f"planned {n} action{'s' if n != 1 else ''} (plan {subject[:12]})\n")
            elif kind == "issued":
                issued[0] += 1
                text = f"issued {issued[0]} (last: {subject} v{detail.get('version')})"
                if tty:
                    err.write(f"\r\x1b[2K{text}")
                    open_line[0] = True
                else:
                    err.write(f"issued {subject} v{detail.get('version')}\n")
            elif kind == "target.finished":
                if open_line[0]:
                    err.write("\n")
                    open_line[0] = False
                certs = ", ".join(f"{c} v{v}" for c, v in sorted(
                    (detail.get("certificates") or {}).items()))
                why = f": {detail['error']}" if detail.get("error") else ""
                err.write(f"{detail.get('status')} {subject}: {certs or 'nothing'}{why}\n")
            elif kind == "gates.changed":
                changes = "; ".join(detail.get("changes") or ())
                err.write(f"approval gates changed: {changes}\n")
            elif kind == "done" and open_line[0]:
                err.write("\n")
                open_line[0] = False
            err.flush()

    return listener
