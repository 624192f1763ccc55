"""The outbox, whole: enqueue with a plan, claim with a lease, then complete, retry or fail.

Rows are written by `Outbox.enqueue` inside `Plans.save`'s transaction (the
outbox pattern: `Store.save_plan(enqueue=True)`). A worker claims runnable
rows in one short write transaction (state RUNNING, lease_owner, lease_until,
attempts + 1) and commits before it calls any target; it records the outcome
in another short transaction, fenced on its lease_owner so a worker whose
lease was taken over cannot overwrite the new owner's result.

The worker's verbs are methods of `Outbox` (one per store, `store.outbox`);
the module-level functions taking a `Store` are the same verbs for callers
that hold a store.

A RUNNING row is claimable again when its lease has expired, or at once when
its owner was a process on this host that no longer exists (a crashed
`certgit apply`), so a restart converges without waiting out the lease.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from certgit.reconciler.model import canonical_json
from certgit.reconciler.store.connection import Database, db_timestamp, dict_rows

if TYPE_CHECKING:
    from certgit.reconciler.store.sqlite import Store


class JobState(StrEnum):
    """The state of one outbox message (the `outbox.state` column)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRY_WAIT = "RETRY_WAIT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ABANDONED = "ABANDONED"
    CANCELLED = "CANCELLED"


RUNNABLE = (JobState.PENDING, JobState.RETRY_WAIT, JobState.RUNNING)
TERMINAL = (JobState.COMPLETED, JobState.FAILED, JobState.ABANDONED, JobState.CANCELLED)
# Messages of operator plans (rollback) are not superseded by Git plans.
OPERATOR_KINDS = ("rollback",)


@dataclass(frozen=True)
class Message:
    """One claimed outbox row."""

    id: int
    plan_hash: str
    action_id: str
    target: str | None
    payload: Mapping[str, Any] = field(hash=False)
    state: str
    attempts: int
    lease_owner: str | None = None

    @property
    def kind(self) -> str:
        return str(self.payload.get("kind", ""))

    @property
    def action(self) -> Any:
        """The planner's Action this message carries (typed; same id as `action_id`)."""
        from certgit.reconciler.planner import Action

        return Action.from_dict(self.payload)

    @property
    def certificate(self) -> str:
        return str(self.payload.get("certificate", ""))


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: base·2^(n-1) capped at `maximum`, times U(0.5, 1)."""

    base: float = 30.0
    maximum: float = 1800.0
    max_attempts: int = 5

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        raw = min(self.maximum, self.base * (2 ** max(attempts - 1, 0)))
        return raw * (rng or random).uniform(0.5, 1.0)


def new_owner() -> str:
    """A lease owner id: host, pid and a random token."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str | None) -> bool:
    """True when `owner` names a process on this host that no longer exists."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another host's lease: only expiry frees it
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    return False


def _message(row: Sequence[Any]) -> Message:
    """A `Message` from (id, plan_hash, action_id, target, payload_json, state, attempts,
    lease_owner)."""
    i, plan, action, target, payload, state, attempts, owner = row
    return Message(int(i), str(plan), str(action), target, json.loads(payload), str(state),
                   int(attempts), owner)  # fmt: skip


_ABANDONED, _PENDING, _RETRY_WAIT, _RUNNING = (
    JobState.ABANDONED, JobState.PENDING, JobState.RETRY_WAIT, JobState.RUNNING
)


class Outbox:
    """The outbox table: every write to it goes through here."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # ------------------------------------------------------------------ enqueue

    @staticmethod
    def enqueue(
        conn: sqlite3.Connection,
        plan_hash: str,
        actions: Sequence[Mapping[str, Any]],
        stamp: str,
    ) -> int:
        """Add a plan's actions as PENDING rows inside the caller's write transaction.

        Re-enqueueing is a no-op. An action that is ABANDONED under another plan
        stays abandoned (until `certgit retry`): a re-plan must not reset its attempts.
        """
        ids = [str(a["id"]) for a in actions]
        abandoned: dict[str, tuple[int, str | None]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for action_id, attempts, error in conn.execute(
                "SELECT action_id, attempts, last_error FROM outbox WHERE state = ? "
                f"AND plan_hash != ? AND action_id IN ({marks})",
                (_ABANDONED, plan_hash, *chunk),
            ):
                abandoned[str(action_id)] = (int(attempts), error)
        if abandoned:
            conn.executemany(
                "INSERT OR IGNORE INTO outbox (plan_hash, action_id, target, payload_json, "
                "state, attempts, last_error, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'ABANDONED', ?, ?, ?, ?)",
                [
                    (plan_hash, str(a["id"]), a.get("target"), canonical_json(dict(a)),
                     abandoned[str(a["id"])][0], abandoned[str(a["id"])][1], stamp, stamp)
                    for a in actions
                    if str(a["id"]) in abandoned
                ],
            )
            actions = [a for a in actions if str(a["id"]) not in abandoned]
        # An action the current plan still needs runs again even if an earlier run of
        # the same plan finished it (files changed behind certgit's back since) or a
        # hold cancelled it; its payload follows the plan (the version may be known now).
        cur = conn.executemany(
            "INSERT INTO outbox (plan_hash, action_id, target, payload_json, "
            "state, created_at, updated_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, 'PENDING', ?, ?, ?) "
            "ON CONFLICT (plan_hash, action_id) DO UPDATE SET "
            "payload_json = excluded.payload_json, "
            "attempts = CASE WHEN outbox.state = 'COMPLETED' THEN 0 ELSE outbox.attempts END, "
            "state = CASE WHEN outbox.state IN ('COMPLETED', 'CANCELLED') THEN 'PENDING' "
            "ELSE outbox.state END, "
            "next_attempt_at = CASE WHEN outbox.state IN ('COMPLETED', 'CANCELLED') "
            "THEN excluded.next_attempt_at ELSE outbox.next_attempt_at END, "
            "updated_at = excluded.updated_at",
            [
                (plan_hash, str(a["id"]), a.get("target"), canonical_json(dict(a)), stamp, stamp,
                 stamp)
                for a in actions
            ],
        )
        return cur.rowcount

    # ------------------------------------------------------------------ worker

    def claim(
        self,
        owner: str,
        now: datetime,
        *,
        lease: timedelta = timedelta(minutes=10),
        plan_hash: str | None = None,
        retry_now: bool = False,
    ) -> list[Message]:
        """Claim every runnable message (optionally of one plan) for `owner`; commit; return them.

        Runnable: PENDING; RETRY_WAIT whose next attempt is due (any, with
        `retry_now`: an operator ran apply by hand); RUNNING whose lease expired or
        whose owner process died.
        """
        stamp = db_timestamp(now)
        with self._db.transaction() as conn:
            sql = (
                "SELECT id, lease_owner, state, lease_until, next_attempt_at FROM outbox "
                "WHERE state IN (?, ?, ?)"
            )
            params: tuple[str, ...] = RUNNABLE
            if plan_hash is not None:
                sql += " AND plan_hash = ?"
                params = (*params, plan_hash)
            ids: list[int] = []
            for row_id, lease_owner, state, lease_until, next_at in conn.execute(sql, params):
                if state == _PENDING:
                    ids.append(row_id)
                elif state == _RETRY_WAIT:
                    if retry_now or next_at is None or next_at <= stamp:
                        ids.append(row_id)
                elif lease_until is None or lease_until < stamp or owner_is_dead(lease_owner):
                    ids.append(row_id)
            if not ids:
                return []
            until = db_timestamp(now + lease)
            conn.executemany(
                "UPDATE outbox SET state = ?, lease_owner = ?, lease_until = ?, "
                "attempts = attempts + 1, updated_at = ? WHERE id = ?",
                [(_RUNNING, owner, until, stamp, i) for i in ids],
            )
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                "SELECT id, plan_hash, action_id, target, payload_json, state, attempts, "
                f"lease_owner FROM outbox WHERE id IN ({marks}) ORDER BY id",
                ids,
            ).fetchall()
        return [_message(r) for r in rows]

    def complete(self, messages: Sequence[Message], owner: str, now: datetime) -> int:
        """Mark messages COMPLETED (only those still leased by `owner`); return rows changed."""
        return self._finish(messages, owner, now, JobState.COMPLETED, None, None)

    def fail(
        self,
        messages: Sequence[Message],
        owner: str,
        now: datetime,
        error: str,
        *,
        backoff: Backoff = Backoff(),
        rng: random.Random | None = None,
    ) -> dict[int, JobState]:
        """Record a failed attempt: RETRY_WAIT with backoff, ABANDONED at max attempts.

        Returns message id -> the state it was moved to.
        """
        states: dict[int, JobState] = {}
        for m in messages:
            if m.attempts >= backoff.max_attempts:
                state, next_at = JobState.ABANDONED, None
            else:
                state = JobState.RETRY_WAIT
                next_at = now + timedelta(seconds=backoff.delay(m.attempts, rng))
            if self._finish([m], owner, now, state, error, next_at):
                states[m.id] = state
        return states

    def cancel(
        self, messages: Sequence[Message], owner: str, now: datetime, reason: str
    ) -> int:
        """Mark claimed messages CANCELLED (e.g. the binding is held now); return rows changed."""
        return self._finish(messages, owner, now, JobState.CANCELLED, reason, None)

    def _finish(
        self,
        messages: Sequence[Message],
        owner: str,
        now: datetime,
        state: JobState,
        error: str | None,
        next_at: datetime | None,
    ) -> int:
        if not messages:
            return 0
        stamp = db_timestamp(now)
        next_stamp = None if next_at is None else db_timestamp(next_at)
        with self._db.transaction() as conn:
            cur = conn.executemany(
                "UPDATE outbox SET state = ?, lease_owner = NULL, lease_until = NULL, "
                "last_error = ?, next_attempt_at = ?, updated_at = ? "
                "WHERE id = ? AND state = ? AND lease_owner = ?",
                [(state, error, next_stamp, stamp, m.id, _RUNNING, owner) for m in messages],
            )
        return cur.rowcount

    # ------------------------------------------------------------------ planner / operator

    def supersede(self, plan_hash: str, now: datetime) -> int:
        """Cancel the queued messages of older Git plans; return how many were cancelled.

        A message of the current plan with the same action id inherits the old
        one's attempts and backoff, so a re-plan (whose reasons count failures)
        does not reset the retry schedule. Leased messages of live workers and
        operator (rollback) messages are left alone.
        """
        stamp = db_timestamp(now)
        with self._db.transaction() as conn:
            old = conn.execute(
                "SELECT id, action_id, state, attempts, next_attempt_at, last_error, "
                "lease_owner, lease_until, payload_json FROM outbox "
                "WHERE plan_hash != ? AND state IN (?, ?, ?)",
                (plan_hash, *RUNNABLE),
            ).fetchall()
            cancelled = 0
            for row_id, action_id, state, attempts, next_at, error, lease_owner, until, payload in (
                old
            ):
                if json.loads(payload).get("kind") in OPERATOR_KINDS:
                    continue
                if state == _RUNNING and until is not None and until >= stamp:
                    if not owner_is_dead(lease_owner):
                        continue
                if state == _RETRY_WAIT:
                    conn.execute(
                        "UPDATE outbox SET state = ?, attempts = ?, next_attempt_at = ?, "
                        "last_error = ?, updated_at = ? "
                        "WHERE plan_hash = ? AND action_id = ? AND state = ?",
                        (_RETRY_WAIT, attempts, next_at, error, stamp, plan_hash, action_id,
                         _PENDING),
                    )
                conn.execute(
                    "UPDATE outbox SET state = ?, lease_owner = NULL, lease_until = NULL, "
                    "updated_at = ?, "
                    "last_error = COALESCE(last_error, 'superseded by plan ' || ?) WHERE id = ?",
                    (JobState.CANCELLED, stamp, plan_hash[:12], row_id),
                )
                cancelled += 1
        return cancelled

    def rearm(self, now: datetime, target: str | None, certificate: str | None = None) -> int:
        """`certgit retry`: ABANDONED, FAILED and waiting messages run again now, attempts reset.

        Only the newest row per action is re-armed; older plans' copies are cancelled
        so one action never runs twice.
        """
        stamp = db_timestamp(now)
        with self._db.transaction() as conn:
            rows = conn.execute(
                "SELECT id, action_id, target, payload_json FROM outbox "
                "WHERE state IN (?, ?, ?) ORDER BY id DESC",
                (_ABANDONED, JobState.FAILED, _RETRY_WAIT),
            ).fetchall()
            seen: set[str] = set()
            count = 0
            for row_id, action_id, row_target, payload in rows:
                if target is not None and row_target != target:
                    continue
                if certificate is not None and (
                    json.loads(payload).get("certificate") != certificate
                ):
                    continue
                if action_id in seen:
                    conn.execute(
                        "UPDATE outbox SET state = ?, updated_at = ? WHERE id = ?",
                        (JobState.CANCELLED, stamp, row_id),
                    )
                    continue
                seen.add(action_id)
                conn.execute(
                    "UPDATE outbox SET state = ?, attempts = 0, next_attempt_at = ?, "
                    "lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
                    (_PENDING, stamp, stamp, row_id),
                )
                count += 1
        return count

    def cancel_binding_work(
        self,
        now: datetime,
        target: str,
        certificate: str | None,
        *,
        kinds: Sequence[str] | None = None,
        states: Sequence[str] = (_PENDING, _RETRY_WAIT, _ABANDONED),
        reason: str,
    ) -> int:
        """Cancel queued (PENDING / RETRY_WAIT / ABANDONED) messages of a binding or target.

        `certgit release` cancels the rollback work it releases, so a retry never
        outlives its hold; a successful deploy clears older abandoned copies.
        """
        stamp = db_timestamp(now)
        with self._db.transaction() as conn:
            marks = ",".join("?" * len(states))
            rows = conn.execute(
                f"SELECT id, payload_json FROM outbox WHERE target = ? AND state IN ({marks})",
                (target, *states),
            ).fetchall()
            chosen = []
            for row_id, payload in rows:
                data = json.loads(payload)
                if certificate is not None and data.get("certificate") != certificate:
                    continue
                if kinds is not None and data.get("kind") not in kinds:
                    continue
                chosen.append(row_id)
            conn.executemany(
                "UPDATE outbox SET state = ?, updated_at = ?, "
                "last_error = COALESCE(last_error || '; ', '') || ? WHERE id = ?",
                [(JobState.CANCELLED, stamp, reason, i) for i in chosen],
            )
        return len(chosen)

    # ------------------------------------------------------------------ reads

    def counts(self, plan_hash: str | None = None) -> dict[str, int]:
        """Messages per state (of one plan, or all)."""
        sql = "SELECT state, COUNT(*) FROM outbox"
        params: tuple[str, ...] = ()
        if plan_hash is not None:
            sql += " WHERE plan_hash = ?"
            params = (plan_hash,)
        rows = self._db.conn.execute(sql + " GROUP BY state", params).fetchall()
        return {str(state): int(n) for state, n in rows}

    def rows(self, plan_hash: str | None = None) -> list[dict[str, Any]]:
        """Outbox messages (all, or one plan's), oldest first; a read-model for status views."""
        sql = (
            "SELECT id, plan_hash, action_id, target, payload_json, state, attempts, "
            "lease_owner, lease_until, next_attempt_at, last_error, created_at, updated_at "
            "FROM outbox"
        )
        params: tuple[str, ...] = ()
        if plan_hash is not None:
            sql += " WHERE plan_hash = ?"
            params = (plan_hash,)
        return dict_rows(self._db.conn.execute(sql + " ORDER BY id", params))


# ---------------------------------------------------------------------- on a Store
# The worker's verbs as functions of a store, for callers holding one: each is
# its `Outbox` method on `store.outbox` (same arguments after the store).


def claim(store: Store, owner: str, now: datetime, **options: Any) -> list[Message]:
    """`Outbox.claim` (options: lease, plan_hash, retry_now)."""
    return store.outbox.claim(owner, now, **options)


def complete(store: Store, messages: Sequence[Message], owner: str, now: datetime) -> int:
    return store.outbox.complete(messages, owner, now)


def fail(
    store: Store, messages: Sequence[Message], owner: str, now: datetime, error: str, *,
    temporary: bool, backoff: Backoff = Backoff(), rng: random.Random | None = None,
) -> dict[int, JobState]:
    """`Outbox.fail`. A permanent error is retried too: what makes it fail (a broken
    server config, a refused file) is usually fixed by the operator, and the next
    attempt must not need a new plan; `temporary` is kept for the callers' wording
    and the attempt budget bounds both kinds."""
    del temporary
    return store.outbox.fail(messages, owner, now, error, backoff=backoff, rng=rng)


def cancel(
    store: Store, messages: Sequence[Message], owner: str, now: datetime, reason: str
) -> int:
    return store.outbox.cancel(messages, owner, now, reason)


def supersede(store: Store, plan_hash: str, now: datetime) -> int:
    return store.outbox.supersede(plan_hash, now)


def pending_retries(store: Store) -> list[dict[str, Any]]:
    """RETRY_WAIT messages with when they run next and why they failed."""
    return [r for r in store.outbox.rows() if r["state"] == _RETRY_WAIT]


def rearm(store: Store, now: datetime, target: str | None, certificate: str | None = None) -> int:
    return store.outbox.rearm(now, target, certificate)


def cancel_binding_work(
    store: Store, now: datetime, target: str, certificate: str | None, **options: Any
) -> int:
    """`Outbox.cancel_binding_work` (options: kinds, states, reason)."""
    return store.outbox.cancel_binding_work(now, target, certificate, **options)
