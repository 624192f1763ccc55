"""Saved plans, their actions, and the operators' approve / reject decisions."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from certgit.reconciler.errors import StoreError
from certgit.reconciler.model import canonical_json
from certgit.reconciler.store.connection import Database, db_timestamp, dict_rows, parse_time
from certgit.reconciler.store.outbox import Outbox

__all__ = ["Decision", "PlanOrigin", "Plans"]


class Decision(StrEnum):
    """An operator's decision on a plan or one of its actions (`approvals.decision`)."""

    APPROVE = "approve"
    REJECT = "reject"


class PlanOrigin(StrEnum):
    """Where a plan came from (`plans.origin`)."""

    GIT = "git"  # the desired state
    OPERATOR = "operator"  # a rollback


class Plans:
    """The plans, plan_actions and approvals tables; enqueueing goes through `Outbox`."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self._db = db
        self._outbox = outbox

    def save(
        self,
        plan_hash: str,
        commit: str | None,
        actions: Sequence[Mapping[str, Any]],
        at: datetime,
        *,
        enqueue: bool = False,
        origin: str = PlanOrigin.GIT,
    ) -> int:
        """Persist a plan (idempotent on its hash) and return its id.

        With ``enqueue`` the plan's non-gated actions become PENDING outbox rows in
        the same transaction (the outbox pattern, `Outbox.enqueue`); re-enqueueing
        is a no-op. An action that is ABANDONED under another plan stays abandoned
        (until `certgit retry`): a re-plan must not reset its attempts. `origin` is
        'git' for plans of the desired state, 'operator' for rollbacks.
        """
        stamp = db_timestamp(at)
        with self._db.transaction() as conn:
            row = conn.execute("SELECT id FROM plans WHERE hash = ?", (plan_hash,)).fetchone()
            if row is not None:
                plan_id = int(row[0])
            else:
                cur = conn.execute(
                    "INSERT INTO plans (hash, commit_id, created_at, actions_json, origin) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (plan_hash, commit, stamp, canonical_json([dict(a) for a in actions]),
                     str(PlanOrigin(origin))),
                )
                plan_id = int(cur.lastrowid or 0)
                conn.executemany(
                    "INSERT INTO plan_actions (plan_id, action_id, position, kind, "
                    "certificate, target, fingerprint, drift, reason, gated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            plan_id,
                            str(a["id"]),
                            position,
                            str(a["kind"]),
                            a.get("certificate"),
                            a.get("target"),
                            a.get("fingerprint"),
                            None if a.get("drift") is None else str(a["drift"]),
                            a.get("reason") or "",
                            1 if a.get("gated") else 0,
                        )
                        for position, a in enumerate(actions)
                    ],
                )
            if enqueue:
                self._outbox.enqueue(
                    conn, plan_hash, [a for a in actions if not a.get("gated")], stamp
                )
        return plan_id

    def enqueue_actions(self, plan_hash: str, action_ids: Sequence[str], at: datetime) -> int:
        """Enqueue saved actions of a plan (e.g. gated ones once approved); return rows added."""
        with self._db.transaction() as conn:
            plan = self._get(conn, plan_hash)
            if plan is None:
                raise StoreError(f"no saved plan {plan_hash}: run `certgit plan` first")
            wanted = set(action_ids)
            chosen = [a for a in plan["actions"] if str(a["id"]) in wanted]
            unknown = wanted - {str(a["id"]) for a in chosen}
            if unknown:
                raise StoreError(
                    f"plan {plan_hash} has no action {sorted(unknown)[0]!r}: the plan may "
                    "have changed, run `certgit plan` again"
                )
            return self._outbox.enqueue(conn, plan_hash, chosen, db_timestamp(at))

    def get(self, plan_hash: str) -> dict[str, Any] | None:
        """The saved plan: id, hash, commit, created_at, actions (as saved); None if unknown."""
        return self._get(self._db.conn, plan_hash)

    def latest(self, origin: str | None = None) -> dict[str, Any] | None:
        """The most recently saved plan (of one origin: 'git' or 'operator'), or None."""
        conn = self._db.conn
        if origin is None:
            row = conn.execute("SELECT hash FROM plans ORDER BY id DESC LIMIT 1").fetchone()
        else:
            row = conn.execute(
                "SELECT hash FROM plans WHERE origin = ? ORDER BY id DESC LIMIT 1", (origin,)
            ).fetchone()
        return None if row is None else self._get(conn, row[0])

    def hashes(self, prefix: str) -> list[str]:
        """Saved plan hashes starting with `prefix`, newest first."""
        rows = self._db.conn.execute(
            "SELECT hash FROM plans WHERE substr(hash, 1, ?) = ? ORDER BY id DESC",
            (len(prefix), prefix),
        ).fetchall()
        return [str(r[0]) for r in rows]

    @staticmethod
    def _get(conn: sqlite3.Connection, plan_hash: str) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT id, hash, commit_id, created_at, actions_json, origin FROM plans "
            "WHERE hash = ?",
            (plan_hash,),
        ).fetchone()
        if row is None:
            return None
        return {
            "id": row[0],
            "hash": row[1],
            "commit": row[2],
            "created_at": parse_time(row[3]),
            "actions": json.loads(row[4]),
            "origin": row[5],
        }

    # ------------------------------------------------------------------ approvals

    def add_approval(
        self,
        plan_hash: str,
        action_id: str | None,
        *,
        decision: str,
        actor: str,
        reason: str,
        at: datetime,
    ) -> None:
        """Record an approve/reject of a whole plan (action_id None) or one action."""
        if decision not in tuple(Decision):
            raise ValueError(f"decision must be 'approve' or 'reject', not {decision!r}")
        with self._db.transaction() as conn:
            if conn.execute("SELECT 1 FROM plans WHERE hash = ?", (plan_hash,)).fetchone() is None:
                raise StoreError(
                    f"no saved plan {plan_hash}: run `certgit plan` and approve the hash "
                    "it prints"
                )
            conn.execute(
                "INSERT INTO approvals (plan_hash, action_id, decision, actor, reason, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (plan_hash, action_id, str(Decision(decision)), actor, reason, db_timestamp(at)),
            )

    def approvals(self, plan_hash: str) -> list[dict[str, Any]]:
        """Every decision on one plan, oldest first."""
        cursor = self._db.conn.execute(
            "SELECT plan_hash, action_id, decision, actor, reason, created_at FROM approvals "
            "WHERE plan_hash = ? ORDER BY id",
            (plan_hash,),
        )
        return dict_rows(cursor)
