"""Per-target deploy history as data, and the rules rollback reads from it (pure).

`store/history.py` reads and writes the rows; these functions decide what was
served before what, with no I/O, so the rollback plan stays as pure as the planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class HistoryEntry:
    """One change of what a target serves for one certificate."""

    id: int
    certificate: str
    target: str
    version: int
    fingerprint: str
    replaced_version: int | None
    replaced_fingerprint: str | None
    kind: str
    actor: str
    commit: str | None
    plan_hash: str | None
    action_id: str | None
    deployed_at: datetime


def previous_served(entries: list[HistoryEntry], current: int | None) -> int | None:
    """The version a binding served before `current`, from its history (oldest first).

    The newest row that put `current` live names what it replaced; a row that
    replaced nothing (first deploy) means there is nothing to go back to.
    """
    for entry in reversed(entries):
        if entry.kind == "remove":
            continue
        if entry.version == current:
            if entry.replaced_version is not None and entry.replaced_version != current:
                return entry.replaced_version
            if entry.kind in ("repair",):
                continue  # a repair re-served the same version: look further back
            return None
    return None


def served_versions(entries: list[HistoryEntry]) -> set[int]:
    """Every version that went live (or was replaced, so was live) on the binding."""
    served: set[int] = set()
    for entry in entries:
        if entry.kind != "remove":
            served.add(entry.version)
        if entry.replaced_version is not None:
            served.add(entry.replaced_version)
    return served
