"""Field-level changes for people: `+ dnsNames: a`, `~ key: RSA 2048 → ECDSA P-256`,
`~ directory: /a → /b`. Pure; the planner attaches them to actions (not identity)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any


def spec_lines(before_json: str | None, after: Mapping[str, Any]) -> Iterator[str]:
    """Field-level lines: `+ dnsNames: a`, `- dnsNames: b`, `~ key: RSA 2048 → ECDSA P-256`."""
    before: Mapping[str, Any] = json.loads(before_json) if before_json else {}
    for key, new in after.items():
        old = before.get(key)
        if isinstance(new, list) or isinstance(old, list):
            old_set, new_set = set(old or ()), set(new or ())
            for item in sorted(new_set - old_set):
                yield f"+ {key}: {item}"
            for item in sorted(old_set - new_set):
                yield f"- {key}: {item}"
        elif before and old != new:
            yield f"~ {key}: {_show(old)} → {_show(new)}"
        elif not before and new is not None:
            yield f"+ {key}: {new}"


def config_lines(before_json: str | None, after_json: str) -> Iterator[str]:
    """`~ directory: /a → /b`, `~ files.key: x → y` between two binding configs."""
    if not before_json:
        yield "~ target settings changed"
        return
    before = _flatten(json.loads(before_json))
    after = _flatten(json.loads(after_json))
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            label = key.removeprefix("settings.")
            yield f"~ {label}: {_show(before.get(key))} → {_show(after.get(key))}"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)
