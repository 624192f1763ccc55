"""The plan's value types: Action, BindingStatus and Plan, with the one identity formula.

Pure data (no I/O): the planner builds them, the store saves them as dicts
(`to_dict` / `Action.from_dict`), the executor and the CLI read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from certgit.reconciler.model import (
    DRIFT_URGENCY,
    ActionKind,
    Drift,
    canonical_json,
    sha256_hex,
)

# Within one certificate: issue/renew before deploys before removes.
_KIND_ORDER = {
    ActionKind.ISSUE: 0,
    ActionKind.RENEW: 0,
    ActionKind.ROLLBACK: 1,
    ActionKind.DEPLOY: 1,
    ActionKind.REMOVE: 2,
    ActionKind.GATES: 0,
}


@dataclass(frozen=True)
class Action:
    """One step of a plan.

    `fingerprint` is the leaf SHA-256 the binding converges to; it is None for
    an issue/renew and for the deploys that follow it, because the new
    certificate does not exist until the plan runs (`spec_hash` pins what it
    will contain). `version` names the recorded version a deploy converges to;
    `pinned` says that version is the point (repair, rollback, remove) rather
    than "the newest version of this spec". `replaces` is the version deployed
    now. `changes` are field-level lines for people (`~ key: RSA 2048 → ECDSA
    P-256`); like `reason` and `drift` they describe, they are not identity.
    """

    kind: ActionKind
    certificate: str
    target: str | None
    drift: Drift
    reason: str
    spec_hash: str | None = None
    fingerprint: str | None = None
    version: int | None = None
    gated_by: tuple[str, ...] = ()
    replaces: int | None = None
    pinned: bool = False
    config_hash: str | None = None
    changes: tuple[str, ...] = ()

    @property
    def gated(self) -> bool:
        return bool(self.gated_by)

    def identity(self) -> list[Any]:
        """What the action does: the same before and after an issuance, whatever the reason.

        A deploy that converges to "the newest version of spec S, replacing v1"
        keeps its identity when the issue action before it ran (its version
        becomes known) and when an attempt failed (its reason changes), so an
        approval and a retry schedule survive both. A pinned version (repair,
        rollback, remove) is part of the identity.
        """
        return [
            str(self.kind),
            self.certificate,
            self.target,
            self.spec_hash,
            self.replaces,
            self.version if self.pinned else None,
            self.config_hash,
        ]

    @cached_property
    def id(self) -> str:
        """Stable identity: what the action does, not why (reasons may reword)."""
        return sha256_hex(canonical_json(self.identity()))[:12]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "certificate": self.certificate,
            "target": self.target,
            "drift": str(self.drift),
            "reason": self.reason,
            "spec_hash": self.spec_hash,
            "fingerprint": self.fingerprint,
            "version": self.version,
            "gated": self.gated,
            "gated_by": list(self.gated_by),
            "replaces": self.replaces,
            "pinned": self.pinned,
            "config_hash": self.config_hash,
            "changes": list(self.changes),
        }

    def sort_key(self) -> tuple[str, int, str]:
        return (self.certificate, _KIND_ORDER[self.kind], self.target or "")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Action:
        """The inverse of `to_dict` (saved plans, outbox payloads): the same id comes back."""
        return cls(
            kind=ActionKind(str(data["kind"])),
            certificate=str(data["certificate"]),
            target=data.get("target"),
            drift=Drift(str(data.get("drift") or Drift.NONE)),
            reason=str(data.get("reason") or ""),
            spec_hash=data.get("spec_hash"),
            fingerprint=data.get("fingerprint"),
            version=data.get("version"),
            gated_by=tuple(data.get("gated_by") or ()),
            replaces=data.get("replaces"),
            pinned=bool(data.get("pinned", False)),
            config_hash=data.get("config_hash"),
            changes=tuple(data.get("changes") or ()),
        )


@dataclass(frozen=True)
class BindingStatus:
    """One (certificate, target) binding as `certgit status` shows it."""

    certificate: str
    target: str
    drift: Drift
    reason: str
    deployed_fingerprint: str | None = None
    deployed_version: int | None = None
    not_after: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "certificate": self.certificate,
            "target": self.target,
            "drift": str(self.drift),
            "reason": self.reason,
            "deployed_fingerprint": self.deployed_fingerprint,
            "deployed_version": self.deployed_version,
            "not_after": self.not_after.isoformat() if self.not_after else None,
        }


@dataclass(frozen=True)
class Plan:
    commit: str | None
    actions: tuple[Action, ...]
    bindings: tuple[BindingStatus, ...] = field(default=())
    # Until this instant the same desired, recorded and live state give this
    # same plan: the next renewal threshold (or `now` when a reason is time-relative).
    stable_until: datetime | None = field(default=None, compare=False)
    # The hash of the saved plan this one continues (its actions are a subset of
    # that plan's): set by the engine, so an approval survives partial progress.
    lineage: str | None = field(default=None, compare=False)

    @cached_property
    def own_hash(self) -> str:
        """Over the actions' identities and gating only: never reasons, errors or times.

        The commit id is left out on purpose: a commit that changes nothing
        certgit acts on must not void an approval.
        """
        return sha256_hex(canonical_json([[*a.identity(), a.gated] for a in self.actions]))

    @property
    def hash(self) -> str:
        return self.lineage or self.own_hash

    @cached_property
    def action_ids(self) -> frozenset[str]:
        return frozenset(a.id for a in self.actions)

    @property
    def empty(self) -> bool:
        return not self.actions

    @property
    def gated(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.gated)

    def attention(self) -> tuple[BindingStatus, ...]:
        """Bindings that are not in sync, most urgent first (expired, failing, ...)."""
        rows = [b for b in self.bindings if b.drift != Drift.NONE]
        return tuple(sorted(rows, key=lambda b: (DRIFT_URGENCY[b.drift], b.certificate, b.target)))

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for a in self.actions:
            counts[str(a.kind)] = counts.get(str(a.kind), 0) + 1
        return {
            "commit": self.commit,
            "hash": self.hash,
            "summary": {"actions": len(self.actions), "gated": len(self.gated), **counts},
            "actions": [a.to_dict() for a in self.actions],
            "bindings": [b.to_dict() for b in self.bindings],
        }
