"""What was deployed where, the operator's holds, the source bookkeeping, and the
read model the planner works from (`recorded_state`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from certgit.reconciler.model import (
    CertificateVersion,
    Deployment,
    Hold,
    RecordedState,
    canonical_json,
)
from certgit.reconciler.store import history as _history
from certgit.reconciler.store.connection import Database, db_timestamp, parse_time
from certgit.reconciler.store.outbox import JobState
from certgit.reconciler.store.versions import VERSION_COLUMNS_SPEC, version_from_row

__all__ = ["LAST_APPLIED_COMMIT", "LAST_SEEN_COMMIT", "Deployments", "SourceState"]

LAST_APPLIED_COMMIT = "last_applied_commit"
LAST_SEEN_COMMIT = "last_seen_commit"


def _files(text: str | None) -> tuple[tuple[str, str, str], ...]:
    if not text:
        return ()
    return tuple((str(p), str(r), str(h)) for p, r, h in json.loads(text))


class SourceState:
    """Key/value bookkeeping of the Git source (last applied / seen / good commit)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, key: str) -> str | None:
        row = self._db.conn.execute(
            "SELECT value FROM source_state WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO source_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


class Deployments:
    """The deployments, deploy_history and holds tables, and the recorded-state read model."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self,
        certificate: str,
        target: str,
        *,
        fingerprint: str | None,
        version: int | None,
        at: datetime,
        error: str | None = None,
        files: Sequence[tuple[str, str, str]] | None = None,
        config: tuple[str, str] | None = None,
        history: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a deploy attempt. A failure keeps the last successful fingerprint/version.

        On success `files` ((path, role, sha256) written) and `config` ((hash, json) of
        the binding config) replace the recorded ones, and `history` (kind, actor,
        commit, plan_hash, action_id) appends a deploy_history row when the version
        served on the target changed (or the files were repaired).
        """
        stamp = db_timestamp(at)
        with self._db.transaction() as conn:
            if error is not None:
                conn.execute(
                    "INSERT INTO deployments (certificate, target, fingerprint, version, "
                    "updated_at, last_error, attempts, last_attempt_fingerprint) "
                    "VALUES (?, ?, NULL, NULL, ?, ?, 1, ?) "
                    "ON CONFLICT (certificate, target) DO UPDATE SET "
                    "updated_at = excluded.updated_at, last_error = excluded.last_error, "
                    "attempts = deployments.attempts + 1, "
                    "last_attempt_fingerprint = excluded.last_attempt_fingerprint",
                    (certificate, target, stamp, error, fingerprint),
                )
                return
            before = conn.execute(
                "SELECT fingerprint, version FROM deployments "
                "WHERE certificate = ? AND target = ?",
                (certificate, target),
            ).fetchone()
            files_json = None if files is None else canonical_json([list(f) for f in files])
            config_hash, config_json = config if config is not None else (None, None)
            conn.execute(
                "INSERT INTO deployments (certificate, target, fingerprint, version, "
                "updated_at, last_error, attempts, last_attempt_fingerprint, files_json, "
                "config_hash, config_json) "
                "VALUES (?, ?, ?, ?, ?, NULL, 0, ?, ?, ?, ?) "
                "ON CONFLICT (certificate, target) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, version = excluded.version, "
                "updated_at = excluded.updated_at, last_error = NULL, attempts = 0, "
                "last_attempt_fingerprint = excluded.last_attempt_fingerprint, "
                "files_json = COALESCE(excluded.files_json, deployments.files_json), "
                "config_hash = COALESCE(excluded.config_hash, deployments.config_hash), "
                "config_json = COALESCE(excluded.config_json, deployments.config_json)",
                (certificate, target, fingerprint, version, stamp, fingerprint,
                 files_json, config_hash, config_json),
            )
            if history is not None and fingerprint is not None and version is not None:
                changed = before is None or before[0] != fingerprint
                if changed or history.get("kind") in ("repair", "rollback"):
                    _history.append(
                        conn, certificate, target, version, fingerprint,
                        before[1] if before else None, before[0] if before else None,
                        history, stamp,
                    )

    def remove(
        self,
        certificate: str,
        target: str,
        *,
        at: datetime | None = None,
        history: Mapping[str, Any] | None = None,
    ) -> None:
        """Forget a binding's deployment (after a successful remove action)."""
        with self._db.transaction() as conn:
            before = conn.execute(
                "SELECT fingerprint, version FROM deployments WHERE certificate = ? AND target = ?",
                (certificate, target),
            ).fetchone()
            conn.execute(
                "DELETE FROM deployments WHERE certificate = ? AND target = ?",
                (certificate, target),
            )
            if history is not None and at is not None and before and before[0] is not None:
                _history.append(
                    conn, certificate, target, int(before[1] or 0), str(before[0]),
                    before[1], before[0], {**history, "kind": "remove"}, db_timestamp(at),
                )

    def history(
        self, target: str | None = None, certificate: str | None = None
    ) -> list[_history.HistoryEntry]:
        """Versions that went live per (certificate, target), oldest first."""
        return _history.read(self._db.conn, target=target, certificate=certificate)

    # ------------------------------------------------------------------ holds

    def add_hold(
        self,
        target: str,
        certificate: str | None,
        fingerprint: str | None,
        reason: str,
        created_by: str,
        at: datetime,
    ) -> None:
        """Pin a binding (or a whole target when certificate is None); replaces an older pin."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO holds (target, certificate, fingerprint, reason, created_by, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (target, COALESCE(certificate, '')) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, reason = excluded.reason, "
                "created_by = excluded.created_by, created_at = excluded.created_at",
                (target, certificate, fingerprint, reason, created_by, db_timestamp(at)),
            )

    def release_hold(self, target: str, certificate: str | None = None) -> int:
        """Release one binding's hold, or every hold of the target; return how many."""
        with self._db.transaction() as conn:
            if certificate is None:
                cur = conn.execute("DELETE FROM holds WHERE target = ?", (target,))
            else:
                cur = conn.execute(
                    "DELETE FROM holds WHERE target = ? AND certificate = ?",
                    (target, certificate),
                )
        return cur.rowcount

    # ------------------------------------------------------------------ read model

    def recorded_state(self) -> RecordedState:
        """Everything the planner needs, from one snapshot; one query per table, no blobs."""
        with self._db.transaction(write=False) as conn:
            version_rows = conn.execute(
                f"SELECT {VERSION_COLUMNS_SPEC} FROM certificate_versions "
                "WHERE retired_at IS NULL ORDER BY certificate, version"
            ).fetchall()
            deployment_rows = conn.execute(
                "SELECT certificate, target, fingerprint, version, updated_at, last_error, "
                "attempts, last_attempt_fingerprint, files_json, config_hash, config_json "
                "FROM deployments"
            ).fetchall()
            abandoned_rows = conn.execute(
                "SELECT action_id, attempts, COALESCE(last_error, '') FROM outbox "
                "WHERE state = ? ORDER BY id",
                (JobState.ABANDONED,),
            ).fetchall()
            hold_rows = conn.execute(
                "SELECT target, certificate, fingerprint, reason, created_by, created_at "
                "FROM holds ORDER BY id"
            ).fetchall()
            commit_row = conn.execute(
                "SELECT value FROM source_state WHERE key = ?", (LAST_APPLIED_COMMIT,)
            ).fetchone()
        grouped: dict[str, list[CertificateVersion]] = {}
        for row in version_rows:
            grouped.setdefault(row[0], []).append(version_from_row(row))
        deployments = {
            (r[0], r[1]): Deployment(
                certificate=r[0],
                target=r[1],
                fingerprint=r[2],
                version=r[3],
                updated_at=parse_time(r[4]),
                last_error=r[5],
                attempts=r[6],
                last_attempt_fingerprint=r[7],
                files=_files(r[8]),
                config_hash=r[9],
                config_json=r[10],
            )
            for r in deployment_rows
        }
        holds = tuple(
            Hold(
                target=r[0], certificate=r[1], fingerprint=r[2], reason=r[3], created_by=r[4],
                created_at=parse_time(r[5]),
            )
            for r in hold_rows
        )
        return RecordedState(
            versions={name: tuple(vs) for name, vs in grouped.items()},
            deployments=deployments,
            holds=holds,
            last_applied_commit=None if commit_row is None else str(commit_row[0]),
            abandoned={str(a): (int(n), str(e)) for a, n, e in abandoned_rows},
        )
