"""The state directory: every path inside it, and how private files are made there.

    <state>/state.db              the state store (store/connection.py)
    <state>/audit.head            the audit chain's keyed head, outside state.db (store/audit.py)
    <state>/master.key            the master key, unless given by env (sealing.py)
    <state>/ca/<issuer>/          a local CA's key and certificate (issuers/local_ca.py)
    <state>/git/<digest>.git      the bare mirror of the desired-state repo (source.py)
    <state>/cache/documents.db    parsed documents by blob id, deletable (store/doccache.py)
    <state>/work/<target>/        a target's journal, backups and locks (targets.py)

`StateDir` names those paths; nothing else joins names onto the state
directory. The state directory holds the master key, the sealed private keys
and, under `work/`, the journals and backups connectors restore from. A
directory another user can write to (or owns) lets that user swap those files,
so certgit refuses it and says which `chmod` / `chown` fixes it. Private
directories are made with `make_private_dir` (exactly 0700, whatever the
umask) and private files published with `publish_private_file` (temp file,
fsync, link(2) so an existing file is never clobbered, fsync of the directory)
or replaced with `replace_private_file` (the same with rename(2), for a file
that is rewritten in place such as the audit head).
"""

from __future__ import annotations

import errno
import os
import pwd
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from certgit.reconciler.errors import StoreError, UnsafeStateDir

__all__ = [
    "CA_DIR_NAME",
    "StateDir",
    "check_private_dir",
    "fsync_dir",
    "make_private_dir",
    "publish_private_file",
    "replace_private_file",
]


@dataclass(frozen=True)
class StateDir:
    """The paths under one state directory (see the module docstring for the layout)."""

    root: Path

    DB_FILE_NAME = "state.db"
    AUDIT_HEAD_FILE_NAME = "audit.head"
    KEY_FILE_NAME = "master.key"
    CA_DIR_NAME = "ca"
    GIT_DIR_NAME = "git"
    CACHE_DIR_NAME = "cache"
    WORK_DIR_NAME = "work"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def db(self) -> Path:
        return self.root / self.DB_FILE_NAME

    @property
    def audit_head(self) -> Path:
        """`<state>/audit.head`: the keyed audit head, beside state.db but outside it."""
        return self.root / self.AUDIT_HEAD_FILE_NAME

    @property
    def master_key(self) -> Path:
        return self.root / self.KEY_FILE_NAME

    @property
    def ca_root(self) -> Path:
        return self.root / self.CA_DIR_NAME

    def ca(self, issuer: str) -> Path:
        """`<state>/ca/<issuer>`: one local CA's directory."""
        return self.ca_root / issuer

    @property
    def git(self) -> Path:
        return self.root / self.GIT_DIR_NAME

    def mirror(self, digest: str) -> Path:
        """`<state>/git/<digest>.git`: the bare mirror of one repository URL."""
        return self.git / f"{digest}.git"

    @property
    def cache(self) -> Path:
        return self.root / self.CACHE_DIR_NAME

    @property
    def documents_db(self) -> Path:
        return self.cache / "documents.db"

    @property
    def work(self) -> Path:
        return self.root / self.WORK_DIR_NAME

    def work_dir(self, target: str) -> Path:
        """`<state>/work/<target>`; the caller checks the target name (targets.work_dir)."""
        return self.work / target


CA_DIR_NAME = StateDir.CA_DIR_NAME  # <state>/ca/<issuer>: the local CAs (see issuance.py)


def make_private_dir(path: Path, *, parents: bool = False) -> bool:
    """Create `path` with mode exactly 0700; True when made now, False when it existed.

    mkdir's mode is filtered by the umask, so the mode is set again after it.
    Parents made on the way get the default mode, as with `Path.mkdir`. Other
    `OSError`s reach the caller, which words them for its directory.
    """
    try:
        path.mkdir(mode=0o700, parents=parents)
    except FileExistsError:
        return False
    os.chmod(path, 0o700)
    return True


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries durable; filesystems that refuse it are tolerated."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError as exc:  # some filesystems refuse fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(dfd)


def publish_private_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to a new file `path` durably: temp file, fsync, link(2), fsync dir.

    link(2) fails with `FileExistsError` if `path` exists, so unlike rename it
    never clobbers a file a concurrent creator published, and a reader never
    sees a half-written file. The mode is forced (the umask may narrow it).
    Other `OSError`s reach the caller.
    """
    tmp = _durable_temp(path, data, mode)
    try:
        os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)


def replace_private_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` durably: temp file, fsync, rename(2), fsync dir.

    A reader sees the old content or the new, never a mix, and after a crash
    the file holds one of the two. The mode is forced (the umask may narrow
    it). `OSError`s reach the caller; the temp file is removed on failure.
    """
    tmp = _durable_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_private_dir(path: Path, what: str = "state directory") -> None:
    """Refuse an existing `path` that is not a directory we own and only we can write.

    Raises `UnsafeStateDir` naming the path, its mode and owner and the command
    that fixes it; `StoreError` when it cannot be read or is not a directory.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise StoreError(
            f"cannot read {what} {path} ({exc.strerror}): check its owner and permissions"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(
            f"{what} {path} is not a directory: remove it or choose another --state-dir"
        )
    euid = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    problems: list[str] = []
    fixes: list[str] = []
    quoted = shlex.quote(str(path))
    if st.st_uid != euid:
        problems.append(
            f"owned by {_user(st.st_uid)} (uid {st.st_uid}), not by {_user(euid)} "
            f"(uid {euid}) that certgit runs as"
        )
        fixes.append(f"`chown {_user(euid)} {quoted}` (or run certgit as {_user(st.st_uid)})")
    if mode & 0o022:
        who = " and ".join(w for w, bit in (("group", 0o020), ("other", 0o002)) if mode & bit)
        problems.append(f"mode {mode:04o} is {who}-writable")
        fixes.append(f"`chmod go-w {quoted}` (certgit creates it 0700)")
    if problems:
        raise UnsafeStateDir(
            f"{what} {path} is unsafe: {'; '.join(problems)}; another user could replace "
            f"the keys and files certgit keeps there. Fix: {' and '.join(fixes)}"
        )


def _durable_temp(path: Path, data: bytes, mode: int) -> str:
    """A fsynced temp file beside `path` holding `data` with `mode`; removed on failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp
