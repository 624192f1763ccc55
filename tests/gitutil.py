"""Test helpers: real Git repositories made with pygit2, independent of the machine's git config.

init_repo(path, initial_branch="main") -> pygit2.Repository
commit_files(repo, {"a.yaml": b"...", "old.yaml": None}, "message") -> commit sha
isolated_git_config(directory)  context manager: libgit2 ignores ~/.gitconfig and /etc/gitconfig
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pygit2
from pygit2.enums import ConfigLevel

AUTHOR_NAME = "certgit-test"
AUTHOR_EMAIL = "test@example.invalid"
_FILE_MODE = pygit2.enums.FileMode.BLOB


def init_repo(path: Path | str, initial_branch: str = "main") -> pygit2.Repository:
    """A new non-bare repository at `path` whose HEAD is `initial_branch` (unborn)."""
    return pygit2.init_repository(str(path), bare=False, initial_head=initial_branch)


def commit_files(
    repo: pygit2.Repository,
    files: Mapping[str, bytes | None],
    message: str,
    branch: str = "main",
    parents: Sequence[str | pygit2.Oid] | None = None,
) -> str:
    """Commit `files` (POSIX path -> bytes, None deletes) on `branch`; return the commit sha.

    The new tree is the first parent's tree plus `files`. `parents` None means
    the branch's current tip (none for a new branch); an explicit list lets a
    test rewrite history: the branch is moved to the new commit regardless.
    When `branch` is the checked-out branch, the work tree and index are
    updated too, so the repository looks like a normal clone.
    """
    ref_name = f"refs/heads/{branch}"
    if parents is None:
        tip = repo.references.get(ref_name)
        parent_ids = [tip.resolve().target] if tip is not None else []
    else:
        parent_ids = [repo[str(p)].id for p in parents]

    index = pygit2.Index()
    if parent_ids:
        index.read_tree(repo[parent_ids[0]].peel(pygit2.Commit).tree)
    for path, data in files.items():
        if data is None:
            if path in index:
                index.remove(path)
        else:
            index.add(pygit2.IndexEntry(path, repo.create_blob(data), _FILE_MODE))
    tree_id = index.write_tree(repo)

    signature = pygit2.Signature(AUTHOR_NAME, AUTHOR_EMAIL)
    commit_id = repo.create_commit(None, signature, signature, message, tree_id, parent_ids)
    repo.references.create(ref_name, commit_id, force=True)

    head = repo.references.get("HEAD")
    if not repo.is_bare and head is not None and head.target == ref_name:
        _sync_work_tree(repo, files, tree_id)
    return str(commit_id)


def _sync_work_tree(
    repo: pygit2.Repository, files: Mapping[str, bytes | None], tree_id: pygit2.Oid
) -> None:
    workdir = Path(repo.workdir)
    for path, data in files.items():
        target = workdir / path
        if data is None:
            target.unlink(missing_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    repo.index.read_tree(repo[tree_id])
    repo.index.write()


@contextmanager
def isolated_git_config(directory: Path | str) -> Iterator[None]:
    """Point libgit2's system/XDG/global config search paths at an empty `directory`."""
    levels = (ConfigLevel.SYSTEM, ConfigLevel.XDG, ConfigLevel.GLOBAL)
    saved = {level: pygit2.settings.search_path[level] for level in levels}
    Path(directory).mkdir(parents=True, exist_ok=True)
    try:
        for level in levels:
            pygit2.settings.search_path[level] = str(directory)
        yield
    finally:
        for level, value in saved.items():
            pygit2.settings.search_path[level] = value
