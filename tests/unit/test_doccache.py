"""Parsed documents survive a restart: a second process re-reads no unchanged blob."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from certgit.reconciler.desired import DesiredLoader, directory_entries
from certgit.reconciler.model import FileEntry
from certgit.reconciler.store import doccache
from certgit.reconciler.store.doccache import DocumentCache

SAMPLE = Path(__file__).resolve().parents[2] / "sample-repo"


def counted(entries: list[FileEntry]) -> tuple[list[FileEntry], list[str]]:
    reads: list[str] = []

    def reader(entry: FileEntry):
        def read() -> bytes:
            reads.append(entry.path)
            return entry.read()

        return read

    return [FileEntry(e.path, e.key, reader(e)) for e in entries], reads


def test_second_process_reads_no_unchanged_blob(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "documents.db"
    entries, reads = counted(directory_entries(SAMPLE))
    first = DocumentCache(path)
    desired = DesiredLoader(cache=first).load(entries, "c1")
    first.flush()
    first.close()
    assert len(reads) == len(entries)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    reads.clear()
    second = DocumentCache(path)  # a new process: empty memory, same file
    again = DesiredLoader(cache=second).load(entries, "c1")
    assert reads == []
    assert again == desired


def test_other_code_namespace_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "documents.db"
    entries, reads = counted(directory_entries(SAMPLE))
    cache = DocumentCache(path)
    DesiredLoader(cache=cache).load(entries, None)
    cache.flush()
    cache.close()
    monkeypatch.setattr(doccache, "code_namespace", lambda: "other-code:")
    reads.clear()
    DesiredLoader(cache=DocumentCache(path)).load(entries, None)
    assert len(reads) == len(entries)


def test_damaged_row_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "documents.db"
    entries, reads = counted(directory_entries(SAMPLE))
    cache = DocumentCache(path)
    DesiredLoader(cache=cache).load(entries, None)
    cache.flush()
    cache.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE documents SET value = x'00ff'")
    db.commit()
    db.close()
    reads.clear()
    desired = DesiredLoader(cache=DocumentCache(path)).load(entries, None)
    assert len(reads) == len(entries) and len(desired.certificates) == 6
