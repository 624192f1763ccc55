"""Per-target deploy history: every version that went live on a target, and what it replaced.

Rollback walks this table, not version numbers: "the version served before the
current one" is the `replaced_version` of the row that put the current version
there. A version number that never appears here for a target was never served
there, so deploying it goes through the same approval gate as any deploy.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from certgit.reconciler.deployhistory import (  # noqa: F401 - re-exported
    HistoryEntry,
    previous_served,
    served_versions,
)

KINDS = ("deploy", "repair", "rollback", "remove", "adopt")


def append(
    conn: sqlite3.Connection,
    certificate: str,
    target: str,
    version: int,
    fingerprint: str,
    replaced_version: int | None,
    replaced_fingerprint: str | None,
    info: Mapping[str, Any],
    stamp: str,
) -> None:
    """Add one row inside the caller's transaction."""
    kind = str(info.get("kind") or "deploy")
    if kind not in KINDS:
        raise ValueError(f"deploy history kind {kind!r} is not one of {KINDS}")
    conn.execute(
        "INSERT INTO deploy_history (certificate, target, version, fingerprint, "
        "replaced_version, replaced_fingerprint, kind, actor, commit_id, plan_hash, action_id, "
        "deployed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            certificate,
            target,
            version,
            fingerprint,
            replaced_version,
            replaced_fingerprint,
            kind,
            str(info.get("actor") or "certgit"),
            info.get("commit"),
            info.get("plan_hash"),
            info.get("action_id"),
            stamp,
        ),
    )


def read(
    conn: sqlite3.Connection, *, target: str | None = None, certificate: str | None = None
) -> list[HistoryEntry]:
    sql = (
        "SELECT id, certificate, target, version, fingerprint, replaced_version, "
        "replaced_fingerprint, kind, actor, commit_id, plan_hash, action_id, deployed_at "
        "FROM deploy_history"
    )
    where: list[str] = []
    params: list[str] = []
    if target is not None:
        where.append("target = ?")
        params.append(target)
    if certificate is not None:
        where.append("certificate = ?")
        params.append(certificate)
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(sql + " ORDER BY id", params).fetchall()
    return [
        HistoryEntry(
            id=r[0], certificate=r[1], target=r[2], version=r[3], fingerprint=r[4],
            replaced_version=r[5], replaced_fingerprint=r[6], kind=r[7], actor=r[8],
            commit=r[9], plan_hash=r[10], action_id=r[11],
            deployed_at=datetime.fromisoformat(r[12]),
        )
        for r in rows
    ]
