"""The outbox worker's side of the store: claim with a lease, then complete, retry or fail.

Rows are written by `Store.save_plan(enqueue=True)` in the plan's own
transaction. A worker claims runnable rows in one short write transaction
(state RUNNING, lease_owner, lease_until, attempts + 1) and commits before it
calls any target; it records the outcome in another short transaction, fenced
on its lease_owner so a worker whose lease was taken over cannot overwrite the
new owner's result.

A RUNNING row is claimable again when its lease has expired, or at once when
its owner was a process on this host that no longer exists (a crashed
`certgit apply`), so a restart converges without waiting out the lease.
"""

from __future__ import annotations

import json
import os
import random
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from certgit.reconciler.store.sqlite import Store, db_timestamp

RUNNABLE = ("PENDING", "RETRY_WAIT", "RUNNING")
TERMINAL = ("COMPLETED", "FAILED", "ABANDONED", "CANCELLED")
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
        return False
    return False


def _message(row: Sequence[Any]) -> Message:
    return Message(
        id=int(row[0]),
        plan_hash=str(row[1]),
        action_id=str(row[2]),
        target=row[3],
        payload=json.loads(row[4]),
        state=str(row[5]),
        attempts=int(row[6]),
        lease_owner=row[7],
    )


def claim(
    store: Store,
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
    with store.transaction() as conn:
        sql = (
            "SELECT id, lease_owner, state, lease_until, next_attempt_at FROM outbox "
            "WHERE state IN ('PENDING', 'RETRY_WAIT', 'RUNNING')"
        )
        params: tuple[str, ...] = ()
        if plan_hash is not None:
            sql += " AND plan_hash = ?"
            params = (plan_hash,)
        ids: list[int] = []
        for row_id, lease_owner, state, lease_until, next_at in conn.execute(sql, params):
            if state == "PENDING":
                ids.append(row_id)
            elif state == "RETRY_WAIT":
                if retry_now or next_at is None or next_at <= stamp:
                    ids.append(row_id)
            elif lease_until is None or lease_until < stamp or owner_is_dead(lease_owner):
                ids.append(row_id)
        if not ids:
            return []
        until = db_timestamp(now + lease)
        conn.executemany(
            "UPDATE outbox SET state = 'RUNNING', lease_owner = ?, lease_until = ?, "
            "attempts = attempts + 1, updated_at = ? WHERE id = ?",
            [(owner, until, stamp, i) for i in ids],
        )
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            "SELECT id, plan_hash, action_id, target, payload_json, state, attempts, "
            f"lease_owner FROM outbox WHERE id IN ({marks}) ORDER BY id",
            ids,
        ).fetchall()
    return [_message(r) for r in rows]


def complete(store: Store, messages: Sequence[Message], owner: str, now: datetime) -> int:
    """Mark messages COMPLETED (only those still leased by `owner`); return rows changed."""
    return _finish(store, messages, owner, now, "COMPLETED", None, None)


def fail(
    store: Store,
    messages: Sequence[Message],
    owner: str,
    now: datetime,
    error: str,
    *,
    temporary: bool,
    backoff: Backoff = Backoff(),
    rng: random.Random | None = None,
) -> dict[int, str]:
    """Record a failed attempt: RETRY_WAIT with backoff, ABANDONED at max attempts.

    A permanent error is retried too: what makes it fail (a broken server
    config, a refused file) is usually fixed by the operator, and the next
    attempt must not need a new plan. `temporary` is kept for the callers'
    wording; the attempt budget bounds both kinds.
    Returns message id -> the state it was moved to.
    """
    del temporary
    states: dict[int, str] = {}
    for m in messages:
        if m.attempts >= backoff.max_attempts:
            state, next_at = "ABANDONED", None
        else:
            state = "RETRY_WAIT"
            next_at = now + timedelta(seconds=backoff.delay(m.attempts, rng))
        if _finish(store, [m], owner, now, state, error, next_at):
            states[m.id] = state
    return states


def cancel(
    store: Store, messages: Sequence[Message], owner: str, now: datetime, reason: str
) -> int:
    """Mark claimed messages CANCELLED (e.g. the binding is held now); return rows changed."""
    return _finish(store, messages, owner, now, "CANCELLED", reason, None)


def _finish(
    store: Store,
    messages: Sequence[Message],
    owner: str,
    now: datetime,
    state: str,
    error: str | None,
    next_at: datetime | None,
) -> int:
    if not messages:
        return 0
    stamp = db_timestamp(now)
    with store.transaction() as conn:
        cur = conn.executemany(
            "UPDATE outbox SET state = ?, lease_owner = NULL, lease_until = NULL, "
            "last_error = ?, next_attempt_at = ?, updated_at = ? "
            "WHERE id = ? AND state = 'RUNNING' AND lease_owner = ?",
            [
                (
                    state,
                    error,
                    None if next_at is None else db_timestamp(next_at),
                    stamp,
                    m.id,
                    owner,
                )
                for m in messages
            ],
        )
    return cur.rowcount


def supersede(store: Store, plan_hash: str, now: datetime) -> int:
    """Cancel the queued messages of older Git plans; return how many were cancelled.

    A message of the current plan with the same action id inherits the old
    one's attempts and backoff, so a re-plan (whose reasons count failures)
    does not reset the retry schedule. Leased messages of live workers and
    operator (rollback) messages are left alone.
    """
    stamp = db_timestamp(now)
    with store.transaction() as conn:
        old = conn.execute(
            "SELECT id, action_id, state, attempts, next_attempt_at, last_error, lease_owner, "
            "lease_until, payload_json FROM outbox "
            "WHERE plan_hash != ? AND state IN ('PENDING', 'RETRY_WAIT', 'RUNNING')",
            (plan_hash,),
        ).fetchall()
        cancelled = 0
        for row_id, action_id, state, attempts, next_at, error, lease_owner, until, payload in old:
            if json.loads(payload).get("kind") in OPERATOR_KINDS:
                continue
            if state == "RUNNING" and until is not None and until >= stamp:
                if not owner_is_dead(lease_owner):
                    continue
            if state == "RETRY_WAIT":
                conn.execute(
                    "UPDATE outbox SET state = 'RETRY_WAIT', attempts = ?, next_attempt_at = ?, "
                    "last_error = ?, updated_at = ? "
                    "WHERE plan_hash = ? AND action_id = ? AND state = 'PENDING'",
                    (attempts, next_at, error, stamp, plan_hash, action_id),
                )
            conn.execute(
                "UPDATE outbox SET state = 'CANCELLED', lease_owner = NULL, lease_until = NULL, "
                "updated_at = ?, last_error = COALESCE(last_error, 'superseded by plan ' || ?) "
                "WHERE id = ?",
                (stamp, plan_hash[:12], row_id),
            )
            cancelled += 1
    return cancelled


def counts(store: Store, plan_hash: str | None = None) -> dict[str, int]:
    """Messages per state (of one plan, or all)."""
    sql = "SELECT state, COUNT(*) FROM outbox"
    params: tuple[str, ...] = ()
    if plan_hash is not None:
        sql += " WHERE plan_hash = ?"
        params = (plan_hash,)
    rows = store.connection.execute(sql + " GROUP BY state", params).fetchall()
    return {str(state): int(n) for state, n in rows}


def pending_retries(store: Store) -> list[dict[str, Any]]:
    """RETRY_WAIT messages with when they run next and why they failed."""
    return [r for r in store.outbox_rows() if r["state"] == "RETRY_WAIT"]


def rearm(store: Store, now: datetime, target: str | None, certificate: str | None = None) -> int:
    """`certgit retry`: ABANDONED, FAILED and waiting messages run again at once, attempts reset.

    Only the newest row per action is re-armed; older plans' copies are cancelled
    so one action never runs twice.
    """
    stamp = db_timestamp(now)
    with store.transaction() as conn:
        rows = conn.execute(
            "SELECT id, action_id, target, payload_json FROM outbox "
            "WHERE state IN ('ABANDONED', 'FAILED', 'RETRY_WAIT') ORDER BY id DESC"
        ).fetchall()
        seen: set[str] = set()
        count = 0
        for row_id, action_id, row_target, payload in rows:
            if target is not None and row_target != target:
                continue
            if certificate is not None and json.loads(payload).get("certificate") != certificate:
                continue
            if action_id in seen:
                conn.execute(
                    "UPDATE outbox SET state = 'CANCELLED', updated_at = ? WHERE id = ?",
                    (stamp, row_id),
                )
                continue
            seen.add(action_id)
            conn.execute(
                "UPDATE outbox SET state = 'PENDING', attempts = 0, next_attempt_at = ?, "
                "lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
                (stamp, stamp, row_id),
            )
            count += 1
    return count


def cancel_binding_work(
    store: Store,
    now: datetime,
    target: str,
    certificate: str | None,
    *,
    kinds: Sequence[str] | None = None,
    states: Sequence[str] = ("PENDING", "RETRY_WAIT", "ABANDONED"),
    reason: str,
) -> int:
    """Cancel queued (PENDING / RETRY_WAIT / ABANDONED) messages of a binding or target.

    `certgit release` cancels the rollback work it releases, so a retry never
    outlives its hold; a successful deploy clears older abandoned copies.
    """
    stamp = db_timestamp(now)
    with store.transaction() as conn:
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
            "UPDATE outbox SET state = 'CANCELLED', updated_at = ?, "
            "last_error = COALESCE(last_error || '; ', '') || ? WHERE id = ?",
            [(stamp, reason, i) for i in chosen],
        )
    return len(chosen)
