"""Parsed documents by Git blob id, kept across restarts.

Parsing and validating a document is the expensive part of a cold load
(shared/FACTS.md: libyaml ~0.12 ms, ruamel round-trip ~2 ms per document); a
blob id never changes its content, so the result can be kept. The cache is a
plain SQLite file beside the state store (`StateDir.documents_db`,
`<state>/cache/documents.db`, mode 0600) that may be deleted at any time: it
only ever saves work. It lives in the store package because all SQL does.

Entries are namespaced by a digest of the code and schemas that produce them,
so an upgrade never reads a result built by other code; rows not used for
`RETAIN` are pruned on flush.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import time
from collections.abc import Iterator, MutableMapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from certgit.reconciler.statedir import make_private_dir

RETAIN_SECONDS = 7 * 24 * 3600
# The modules whose code shapes a cached value: change any, and old entries are ignored.
_PRODUCERS = ("model.py", "desired.py", "yamlsafe.py", "durations.py")


@cache
def code_namespace() -> str:
    """A digest of the loader's code and the shipped schemas."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent.parent  # reconciler/, where the producers live
    for name in _PRODUCERS:
        digest.update((here / name).read_bytes())
    schemas = resources.files("certgit.schemas")
    for entry in sorted(schemas.iterdir(), key=lambda p: p.name):
        if entry.name.endswith((".json", ".py")):
            digest.update(entry.read_bytes())
    return digest.hexdigest()[:16] + ":"


class DocumentCache(MutableMapping[str, Any]):
    """A write-behind, two-level (memory, then SQLite) mapping for DesiredLoader.

    Reads fall through to the file; writes stay in memory until `flush()`, which
    writes them in one transaction, so a cold load of 10,000 files costs one
    commit, not 10,000.
    """

    def __init__(self, path: Path) -> None:
        make_private_dir(path.parent, parents=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS documents "
            "(key TEXT PRIMARY KEY, value BLOB NOT NULL, used_at REAL NOT NULL)"
        )
        self._ns = code_namespace()
        self._mem: dict[str, Any] = {}
        self._dirty: dict[str, Any] = {}
        self._used: set[str] = set()
        self._touched_at: dict[str, float] = {}  # when this process last marked a row used

    def __getitem__(self, key: str) -> Any:
        self._used.add(key)
        if key in self._mem:
            return self._mem[key]
        row = self._conn.execute(
            "SELECT value FROM documents WHERE key = ?", (self._ns + key,)
        ).fetchone()
        if row is None:
            raise KeyError(key)
        try:
            value = pickle.loads(row[0])
        except Exception as exc:  # a damaged row is a miss, never a crash
            raise KeyError(key) from exc
        self._mem[key] = value
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._used.add(key)
        self._mem[key] = value
        self._dirty[key] = value

    def __delitem__(self, key: str) -> None:
        self._mem.pop(key, None)
        self._dirty.pop(key, None)
        self._conn.execute("DELETE FROM documents WHERE key = ?", (self._ns + key,))

    def __iter__(self) -> Iterator[str]:
        return iter(self._mem)

    def __len__(self) -> int:
        return len(self._mem)

    def flush(self) -> None:
        """Write new entries, mark used ones, prune the long unused; one transaction."""
        now = time.time()
        rows = [
            (self._ns + k, pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL), now)
            for k, v in self._dirty.items()
        ]
        # Marking rows used is only for pruning: once an hour per row is plenty.
        stale = [
            k
            for k in self._used
            if k not in self._dirty and now - self._touched_at.get(k, 0.0) > 3600
        ]
        touched = [(now, self._ns + k) for k in stale]
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR REPLACE INTO documents VALUES (?, ?, ?)", rows)
            self._conn.executemany("UPDATE documents SET used_at = ? WHERE key = ?", touched)
            self._conn.execute(
                "DELETE FROM documents WHERE used_at < ?", (now - RETAIN_SECONDS,)
            )
        # Memory keeps only what the latest load used: a daemon's cache tracks its repo.
        self._mem = {k: self._mem[k] for k in self._used if k in self._mem}
        for key in (*stale, *self._dirty):
            self._touched_at[key] = now
        self._touched_at = {k: self._touched_at[k] for k in self._used}
        self._dirty.clear()
        self._used.clear()

    def close(self) -> None:
        self._conn.close()
