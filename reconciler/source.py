"""The Git source: a bare mirror in the state directory, fetched and resolved to a Snapshot.

    GitSource(config, state_dir)
    ├── fetch()    clone once (into a temp dir, then rename), later fetch + prune
    ├── resolve()  ref -> commit -> tree of `path` -> YAML FileEntry list (blobs read lazily),
    │              plus every other file (scanned for committed keys, SOPS files)
    └── poll()     fetch(), then resolve()

The mirror is bare: nothing is ever checked out (a 10k-file checkout costs
seconds, a no-op fetch plus tree walk a few milliseconds; shared/FACTS.md).
Branches and tags are mirrored one-to-one (`refs/heads/*`, `refs/tags/*`) and
deleted remote refs are pruned, so a vanished branch is reported, never read
as an old commit. The mirror's HEAD follows the remote's default branch.

Every pygit2 / OS failure is translated to `SourceError` in one place
(`_translate`); the caller keeps its last good Snapshot.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path, PurePosixPath
from typing import cast
from urllib.parse import unquote, urlsplit, urlunsplit

import pygit2
from pygit2.enums import FetchPrune, FileMode

from certgit.reconciler.errors import SourceError
from certgit.reconciler.model import FileEntry
from certgit.reconciler.statedir import StateDir, make_private_dir

MIRROR_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
YAML_SUFFIXES = (".yaml", ".yml")
_REMOTE = "origin"
_KEEP = "the last good commit stays in force"
_HEX = re.compile(r"[0-9a-fA-F]{4,40}")
# Plain and executable files only; symlinks (a blob with mode 0o120000) and
# submodules (a commit, mode 0o160000) are never desired state.
_FILE_MODES = frozenset({FileMode.BLOB, FileMode.BLOB_EXECUTABLE})


@dataclass(frozen=True)
class SourceConfig:
    """Where desired state lives.

    `url`: a local path or `file://` URL (ssh/https later). `ref`: a branch,
    tag, full ref (`refs/...`) or commit sha; None follows the remote's default
    branch. `path`: a POSIX subdirectory of the repo, "" for the root.
    `allow_history_rewrite`: accept a commit that does not descend from the
    last applied one (a force-push).
    """

    url: str
    ref: str | None = None
    path: str = ""
    allow_history_rewrite: bool = False


@dataclass(frozen=True)
class Snapshot:
    """One resolved commit: its id, the tree id of the source path, and its files.

    `files` are the desired-state YAML files; `others` every other file of the
    tree (non-YAML, dot-files and dot-directories too), read lazily by blob id:
    the loader scans them for committed private keys and reads SOPS files.
    """

    commit: str
    tree: str
    files: tuple[FileEntry, ...]
    others: tuple[FileEntry, ...] = ()


def normalise_url(url: str) -> str:
    """The canonical form of a source URL: local paths made absolute, trailing slashes dropped."""
    if "://" in url or re.match(r"^[^/]+@[^/:]+:", url):
        return url.rstrip("/") or url
    return str(Path(url).expanduser().resolve())


def display_url(url: str) -> str:
    """The URL without any password, fit for messages and logs."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else host
    return urlunsplit(parts._replace(netloc=netloc))


def _clean_path(path: str) -> str:
    """Validate the configured subdirectory; "" means the repo root."""
    stripped = path.strip("/")
    if stripped in ("", "."):
        return ""
    parts = PurePosixPath(stripped).parts
    if any(part in ("..", ".") for part in parts) or "\\" in stripped:
        raise SourceError(
            f"source path {path!r} is not a plain subdirectory of the repository; "
            "use a POSIX path such as 'desired/prod' without '..'"
        )
    return "/".join(parts)


class GitSource:
    """A Git repository mirrored into `state_dir/git/` and read without a work tree."""

    def __init__(self, config: SourceConfig, state_dir: Path) -> None:
        self.config = config
        self.url = normalise_url(config.url)
        self._shown_url = display_url(self.url)
        self._path = _clean_path(config.path)
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.mirror_path = StateDir(Path(state_dir)).mirror(digest)
        self._repo: pygit2.Repository | None = None
        # Memo of the last walk: the same tree id gives the same files without walking again.
        self._last_tree: str | None = None
        self._last_files: tuple[FileEntry, ...] = ()
        self._last_others: tuple[FileEntry, ...] = ()
        self._subtrees: dict[tuple[str, str], _Found] = {}
        self._last_snapshot: Snapshot | None = None

    # ------------------------------------------------------------------ errors

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """Turn every pygit2 / OS failure of `action` into a SourceError, in one place."""
        try:
            yield
        except SourceError:
            raise
        except (pygit2.GitError, OSError, KeyError, ValueError) as exc:
            missing = self._missing_local_path()
            if missing is not None:
                # libgit2 says "unsupported URL protocol" for a path that is not there.
                raise SourceError(
                    f"repository path {missing} does not exist (moved or deleted?); restore "
                    "it, or point --repo (CERTGIT_REPO, [repository] url) at its new place; "
                    f"{_KEEP}"
                ) from exc
            detail = str(exc).replace(self.url, self._shown_url) or type(exc).__name__
            raise SourceError(
                f"could not {action} {self._shown_url}: {detail}; check that the repository "
                f"exists and is readable (URL, credentials, network); {_KEEP}"
            ) from exc

    def _missing_local_path(self) -> str | None:
        """The source's local path (plain path or file:// URL) when it does not exist, else None."""
        if "://" in self.url:
            parts = urlsplit(self.url)
            if parts.scheme != "file":
                return None
            local = unquote(parts.path)
        elif re.match(r"^[^/]+@[^/:]+:", self.url):
            return None  # scp-like ssh address
        else:
            local = self.url
        return None if os.path.exists(local) else local

    # ------------------------------------------------------------------ fetch

    def fetch(self) -> None:
        """Bring the mirror up to date with the remote (cloning it the first time).

        Raises SourceError when the remote cannot be read; the mirror keeps
        what it had, and a failed first clone leaves no directory behind.
        """
        if self._repo is None and not self.mirror_path.exists():
            self._clone()
        repo = self._open()
        with self._translate("fetch from"):
            remote = repo.remotes[_REMOTE]
            remote.fetch(list(MIRROR_REFSPECS), prune=FetchPrune.PRUNE)
            # The advertisement of the fetch just made is still available: no second connection.
            heads = remote.list_heads(connect=False)
        self._follow_default_branch(repo, heads)

    def _clone(self) -> None:
        parent = self.mirror_path.parent
        with self._translate("clone"):
            if not parent.exists():
                make_private_dir(parent, parents=True)  # the state dir's business only
            staging = Path(tempfile.mkdtemp(prefix=".clone-", dir=parent))
        try:
            with self._translate("clone"):
                pygit2.clone_repository(
                    self.url, str(staging / "mirror.git"), bare=True, remote=_create_mirror_remote
                )
                try:
                    os.rename(staging / "mirror.git", self.mirror_path)
                except OSError:
                    # Another process won the race: its mirror is as good as ours.
                    if not self.mirror_path.exists():
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _open(self) -> pygit2.Repository:
        if self._repo is None:
            if not self.mirror_path.exists():
                raise SourceError(
                    f"no mirror of {self._shown_url} yet: fetch (poll) before resolving; {_KEEP}"
                )
            try:
                self._repo = pygit2.Repository(str(self.mirror_path))
            except (pygit2.GitError, OSError) as exc:
                raise SourceError(
                    f"the mirror {self.mirror_path} of {self._shown_url} is unreadable ({exc}); "
                    f"delete that directory so the next poll clones again; {_KEEP}"
                ) from exc
        return self._repo

    def _follow_default_branch(self, repo: pygit2.Repository, heads: list) -> None:
        """Point the mirror's HEAD where the remote's HEAD points (its default branch)."""
        for head in heads:
            if head.name == "HEAD" and head.symref_target:
                target = head.symref_target
                current = repo.references.get("HEAD")
                if current is None or current.target != target:
                    with self._translate("record the default branch of"):
                        repo.references.create("HEAD", target, force=True)
                return

    # ------------------------------------------------------------------ resolve

    def resolve(self, *, last_applied: str | None = None) -> Snapshot:
        """Resolve the configured ref in the mirror to a Snapshot of its YAML files.

        Refuses (SourceError) a missing ref or path, a path without YAML files
        (never read as "delete everything") and, unless `allow_history_rewrite`,
        a commit that does not descend from `last_applied`.
        """
        repo = self._open()
        commit = self._resolve_commit(repo)
        commit_id = str(commit.id)
        if last_applied is not None and not self.config.allow_history_rewrite:
            self._guard_history(repo, commit_id, last_applied)
        return self._snapshot(repo, commit)

    def snapshot_of(self, commit: str) -> Snapshot:
        """The Snapshot of one given commit, read from the local mirror without fetching.

        For the last good commit while the remote is unreachable or its head is
        invalid. Raises SourceError when the mirror does not hold that commit.
        """
        repo = self._open()
        try:
            found = repo[commit].peel(pygit2.Commit)
        except (pygit2.GitError, KeyError, ValueError, TypeError) as exc:
            raise SourceError(
                f"commit {commit[:12]} is not in the mirror {self.mirror_path} of "
                f"{self._shown_url} ({str(exc) or type(exc).__name__})"
            ) from exc
        return self._snapshot(repo, found)

    def _snapshot(self, repo: pygit2.Repository, commit: pygit2.Commit) -> Snapshot:
        commit_id = str(commit.id)
        snapshot = self._last_snapshot
        if snapshot is not None and snapshot.commit == commit_id:
            return snapshot
        tree = self._source_tree(commit)
        tree_id = str(tree.id)
        if tree_id != self._last_tree:
            prefix = f"{self._path}/" if self._path else ""
            walker = _Walker(repo, self._subtrees)
            with self._translate("read the tree of"):
                # Git orders tree entries so that this is already path order; sort to be sure.
                found = walker.walk(tree, prefix)
                files = tuple(sorted(found.yaml, key=attrgetter("path")))
                others = tuple(sorted(found.others, key=attrgetter("path")))
            if not files:
                where = f"path '{self._path}'" if self._path else "the repository root"
                raise SourceError(
                    f"{where} in commit {commit_id[:12]} of {self._shown_url} holds no .yaml or "
                    ".yml file; an empty desired state is refused rather than read as 'delete "
                    f"everything'; restore the files or fix the source path; {_KEEP}",
                    temporary=False,
                )
            self._last_tree, self._last_files, self._last_others = tree_id, files, others
            self._subtrees = walker.seen
        snapshot = Snapshot(
            commit=commit_id, tree=tree_id, files=self._last_files, others=self._last_others
        )
        self._last_snapshot = snapshot
        return snapshot

    def poll(self, *, last_applied: str | None = None) -> Snapshot:
        """Fetch, then resolve. On SourceError the caller keeps its last good Snapshot."""
        self.fetch()
        return self.resolve(last_applied=last_applied)

    def _resolve_commit(self, repo: pygit2.Repository) -> pygit2.Commit:
        ref = self.config.ref
        shown = ref if ref is not None else "HEAD (the remote's default branch)"
        with self._translate(f"resolve ref {shown!r} in"):
            target = self._lookup(repo, ref)
            if target is None:
                raise SourceError(
                    f"ref {shown!r} not found in {self._shown_url} (it may have been deleted); "
                    f"{_KEEP}; restore the ref or point the source at an existing one"
                )
            commit = target.peel(pygit2.Commit)
        return commit

    def _lookup(self, repo: pygit2.Repository, ref: str | None) -> pygit2.Object | None:
        refs = repo.references
        if ref is None:
            head = refs.get("HEAD")
            if head is None or repo.head_is_unborn:
                return None
            return repo[head.resolve().target]
        names = [ref] if ref.startswith("refs/") else []
        names += [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        for name in names:
            found = refs.get(name)
            if found is not None:
                return repo[found.resolve().target]
        if _HEX.fullmatch(ref):
            try:
                return repo.revparse_single(ref)
            except KeyError:
                return None
            except ValueError as exc:  # an ambiguous prefix
                raise SourceError(
                    f"commit prefix {ref!r} is ambiguous in {self._shown_url}; "
                    f"give more hex digits; {_KEEP}"
                ) from exc
        return None

    def _source_tree(self, commit: pygit2.Commit) -> pygit2.Tree:
        if not self._path:
            return commit.tree
        commit_id = str(commit.id)[:12]
        try:
            entry = commit.tree[self._path]
        except KeyError:
            raise SourceError(
                f"path '{self._path}' does not exist in commit {commit_id} of "
                f"{self._shown_url}; fix the source path or restore the directory; {_KEEP}",
                temporary=False,
            ) from None
        if not isinstance(entry, pygit2.Tree):
            raise SourceError(
                f"path '{self._path}' in commit {commit_id} of {self._shown_url} is not a "
                f"directory; point the source path at a directory; {_KEEP}",
                temporary=False,
            )
        return entry

    def _guard_history(self, repo: pygit2.Repository, commit_id: str, last_applied: str) -> None:
        if commit_id == last_applied:
            return
        try:
            descends = repo.descendant_of(commit_id, last_applied)
        except (pygit2.GitError, KeyError, ValueError):
            descends = False  # last_applied is not even in the mirror
        if descends:
            return
        raise SourceError(
            f"history was rewritten in {self._shown_url} (force-push?): commit {commit_id} of "
            f"ref {self.config.ref or 'HEAD'!r} does not descend from the last applied commit "
            f"{last_applied}; nothing is applied and {_KEEP}. If the rewrite is intended, set "
            "`allowHistoryRewrite: true` for this source (or pass --allow-history-rewrite) "
            "and poll again",
            temporary=False,
        )


def _create_mirror_remote(repo: pygit2.Repository, name: str, url: str) -> pygit2.Remote:
    """Clone callback: an origin whose refspecs mirror branches and tags one-to-one."""
    repo.remotes.create(name, url, MIRROR_REFSPECS[0])
    for spec in MIRROR_REFSPECS[1:]:
        repo.remotes.add_fetch(name, spec)
    return repo.remotes[name]


@dataclass
class _Found:
    """The files of one subtree: desired-state YAML, and everything else."""

    yaml: list[FileEntry]
    others: list[FileEntry]


class _Walker:
    """Collects the FileEntries of a tree, reusing the entries of unchanged subtrees.

    `previous` maps (prefix, subtree id) to the entries found there by the last
    walk, so a commit that changes one file re-walks only the directories on
    that file's path. Only the latest walk's subtrees are kept (bounded memory).
    """

    def __init__(self, repo: pygit2.Repository, previous: dict[tuple[str, str], _Found]):
        self.repo = repo
        self.previous = previous
        self.seen: dict[tuple[str, str], _Found] = {}

    def walk(self, tree: pygit2.Tree, prefix: str, hidden: bool = False) -> _Found:
        """Every blob under `tree`: YAML desired state, and the rest in `others`.

        Dot-files, dot-directories and non-YAML files are `others` (never desired
        state, still scanned for keys); symlinks and submodules are skipped.
        """
        memo_key = (prefix, str(tree.id))
        found = self.previous.get(memo_key)
        if found is None:
            found = _Found([], [])
            repo = self.repo
            for entry in tree:
                name = entry.name
                if name is None:
                    continue
                if entry.type_str == "tree":
                    # Iterating a tree yields its subtrees as Tree objects: no lookup by id.
                    sub = self.walk(
                        cast(pygit2.Tree, entry), f"{prefix}{name}/", hidden or name[0] == "."
                    )
                    found.yaml.extend(sub.yaml)
                    found.others.extend(sub.others)
                    continue
                # The name test first: reading filemode builds an enum, slow over 10k entries.
                yaml = not hidden and name[0] != "." and name.endswith(YAML_SUFFIXES)
                if (yaml or entry.type_str == "blob") and entry.filemode in _FILE_MODES:
                    oid = entry.id
                    path = prefix + name
                    read = functools.partial(_read_blob, repo, oid, path)
                    (found.yaml if yaml else found.others).append(
                        FileEntry(path=path, key=str(oid), read=read)
                    )
        self.seen[memo_key] = found
        return found


def _read_blob(repo: pygit2.Repository, oid: pygit2.Oid, path: str) -> bytes:
    """The bytes of one blob, read from the mirror by id (only on a parse-cache miss)."""
    try:
        return cast(pygit2.Blob, repo[oid]).data  # a YAML entry's id names a blob
    except (pygit2.GitError, KeyError, OSError) as exc:
        raise SourceError(
            f"blob {oid} of {path} is missing from the Git mirror ({exc}); "
            f"poll again to refetch; {_KEEP}"
        ) from exc
