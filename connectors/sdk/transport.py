"""Transports: the primitive file and process operations an atomic apply needs.

`Transport` is the protocol; `LocalTransport` implements it with os/fcntl/
subprocess. The SSH transport (issue 6, paramiko SFTP) implements the same
methods, so a file-based connector runs unchanged on either.

Every file operation walks the path from `/` one component at a time with
`O_DIRECTORY|O_NOFOLLOW` directory descriptors and opens the final component
with `O_NOFOLLOW`: a symlink swapped in at the destination or in any parent
after the sandbox checked the resolved path is refused (DeniedError), never
followed.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import grp
import os
import pwd
import re
import secrets
import shutil
import signal
import stat as stat_mod
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from certgit.connectors.errors import DeniedError, PreflightFailed
from certgit.connectors.sdk.grants import normalize_path

# A PEM block in a command's output: BEGIN line to END line; an unterminated BEGIN runs on.
_PEM_BLOCK = re.compile(r"-----BEGIN [^\r\n]*?-----.*?(?:-----END [^\r\n]*?-----|\Z)", re.DOTALL)
REDACTED_PEM = "[redacted PEM block]"

# What a child process (validate/reload) sees of certgit's environment by default:
# the site policy's `[env] passthrough` replaces it (fnmatch patterns, case-sensitive).
DEFAULT_PASSTHROUGH: tuple[str, ...] = ("PATH", "LANG", "LANGUAGE", "LC_*", "TZ")
# certgit's own variables (CERTGIT_MASTER_KEY above all) never reach a child.
_OWN_PREFIX = "CERTGIT_"


def scrub_env(environ: Mapping[str, str], passthrough: Iterable[str]) -> dict[str, str]:
    """The variables of `environ` whose names match a `passthrough` pattern, never CERTGIT_*."""
    patterns = tuple(passthrough)
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith(_OWN_PREFIX)
        and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    }


@dataclass(frozen=True)
class FileStat:
    """What `stat` reports about a path (never following a final symlink)."""

    mode: int  # permission bits only (stat.S_IMODE), e.g. 0o640
    uid: int
    gid: int
    size: int
    kind: str = "file"  # file | dir | symlink | other


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a command; a nonzero exit is data, not an exception."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.returncode == 0

    def summary(self, limit: int = 2000) -> str:
        """Exit code plus the tail of stderr/stdout, for error messages.

        PEM blocks are cut out (before the tail is taken, so no fragment of one
        survives): a server that echoes the file it choked on must not put a
        private key into the terminal, the state store or the audit log.
        """
        text = self.stderr.strip() or self.stdout.strip()
        text = _PEM_BLOCK.sub(REDACTED_PEM, text)[-limit:]
        return f"exit {self.returncode}" + (f": {text}" if text else "")


@runtime_checkable
class Transport(Protocol):
    """Primitive operations on one target. Paths are absolute."""

    def realpath(self, path: str) -> str:
        """Resolve `..` and symlinks of the existing part of `path`."""
        ...

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None if absent. A symlink at `path` is refused."""
        ...

    def stat(self, path: str) -> FileStat | None:
        """Metadata without following a final symlink, or None if absent."""
        ...

    def write_temp(
        self, directory: str, prefix: str, data: bytes, mode: int, uid: int, gid: int
    ) -> str:
        """Create a new temp file in `directory` (exclusive), owner/mode set, fsync'd; its path.

        uid/gid -1 leave that id as the process's.
        """
        ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically rename within one directory (replacing `dst`, never following it)."""
        ...

    def unlink(self, path: str) -> None:
        """Remove a file; absent is fine."""
        ...

    def fsync_dir(self, directory: str) -> None:
        """Make renames/unlinks in `directory` durable."""
        ...

    def makedirs(self, path: str, mode: int) -> None:
        """Create missing directories of `path` (no symlinked components)."""
        ...

    def listdir(self, directory: str) -> list[str]:
        """Names in `directory`; empty if absent."""
        ...

    def lock(self, path: str) -> AbstractContextManager[None]:
        """An exclusive advisory lock on the lock file `path` (created if needed)."""
        ...

    def which(self, name: str, env: Mapping[str, str] | None = None) -> str | None:
        """The absolute path `name` would execute as (PATH lookup), or None if not found."""
        ...

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None) -> ExecResult:
        """Run a command; never raises on a nonzero exit or a timeout (exit 124)."""
        ...

    def lookup_user(self, name: str) -> int:
        """uid of a user name (or a numeric string)."""
        ...

    def lookup_group(self, name: str) -> int:
        """gid of a group name (or a numeric string)."""
        ...


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = ((stat_mod.S_ISREG, "file"), (stat_mod.S_ISDIR, "dir"), (stat_mod.S_ISLNK, "symlink"))


def _symlink_denied(path: str, component: str) -> DeniedError:
    return DeniedError(
        "fs.open",
        path,
        f"a path without symlinks ({component!r} is a symlink now; "
        "it changed after the sandbox check or must be replaced by its resolved location)",
    )


def _split(path: str) -> tuple[str, str]:
    normal = normalize_path(path)
    parent, _, name = normal.rpartition("/")
    if not name:
        raise ValueError(f"{path!r} names a directory, not a file")
    return parent or "/", name


def _open_dir(path: str, *, create_mode: int | None = None) -> int:
    """A directory fd for `path`, refusing any symlinked component."""
    fd = os.open("/", _DIR_FLAGS)
    try:
        for component in [c for c in normalize_path(path).split("/") if c]:
            try:
                next_fd = os.open(component, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create_mode is None:
                    raise
                try:
                    os.mkdir(component, create_mode, dir_fd=fd)
                except FileExistsError:
                    pass
                next_fd = os.open(component, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                # Linux reports a symlink opened O_DIRECTORY|O_NOFOLLOW as ENOTDIR, not ELOOP.
                if exc.errno == errno.ELOOP or (
                    exc.errno == errno.ENOTDIR
                    and stat_mod.S_ISLNK(
                        os.stat(component, dir_fd=fd, follow_symlinks=False).st_mode
                    )
                ):
                    raise _symlink_denied(path, component) from None
                raise
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


class LocalTransport:
    """The controller's own filesystem and processes.

    A child process gets a scrubbed environment: only the variables matching
    `passthrough` (default `DEFAULT_PASSTHROUGH`: PATH, locale, TZ), plus the
    caller's overlay, and never a `CERTGIT_*` variable (the master key) whatever
    either says.
    """

    def __init__(self, passthrough: Iterable[str] = DEFAULT_PASSTHROUGH) -> None:
        self.passthrough: tuple[str, ...] = tuple(passthrough)

    def realpath(self, path: str) -> str:
        """Resolve `..` and symlinks of the existing part of `path`."""
        return os.path.realpath(normalize_path(path))

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None if absent (or its directory is). Refuses symlinks."""
        parent, name = _split(path)
        try:
            dir_fd = _open_dir(parent)
        except FileNotFoundError:
            return None
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _symlink_denied(path, name) from None
                raise
            with os.fdopen(fd, "rb") as handle:
                return handle.read()
        finally:
            os.close(dir_fd)

    def stat(self, path: str) -> FileStat | None:
        """Metadata without following a final symlink, or None if absent."""
        parent, name = _split(path)
        try:
            dir_fd = _open_dir(parent)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(dir_fd)
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "other")
        return FileStat(stat_mod.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, kind)

    def write_temp(
        self, directory: str, prefix: str, data: bytes, mode: int, uid: int, gid: int
    ) -> str:
        """Exclusive-create `prefix<random>.tmp` in `directory`; chown/chmod/fsync before return."""
        if "/" in prefix:
            raise ValueError("temp prefix must be a plain file name")
        dir_fd = _open_dir(directory)
        try:
            for _ in range(16):  # a collision of 12 random hex digits is not going to repeat
                name = f"{prefix}{secrets.token_hex(6)}.tmp"
                try:
                    fd = os.open(
                        name,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o600,
                        dir_fd=dir_fd,
                    )
                    break
                except FileExistsError:
                    continue
            else:
                raise FileExistsError(f"could not create a temp file in {directory}")
            try:
                with os.fdopen(fd, "wb", closefd=False) as handle:
                    handle.write(data)
                    handle.flush()
                # Owner and mode are final before the rename makes the file visible:
                # a key never appears world-readable, not even for an instant.
                # Our own ids need no chown (and a non-root process may not call it).
                uid = -1 if uid == os.geteuid() else uid
                gid = -1 if gid == os.getegid() else gid
                if uid != -1 or gid != -1:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                os.unlink(name, dir_fd=dir_fd)
                raise
            os.close(fd)
            return f"{normalize_path(directory).rstrip('/')}/{name}"
        finally:
            os.close(dir_fd)

    def rename(self, src: str, dst: str) -> None:
        """Rename within one directory via its fd (a symlink at `dst` is replaced, not followed)."""
        src_parent, src_name = _split(src)
        dst_parent, dst_name = _split(dst)
        if src_parent != dst_parent:
            raise ValueError(f"rename {src} -> {dst} crosses directories; it would not be atomic")
        dir_fd = _open_dir(dst_parent)
        try:
            os.rename(src_name, dst_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def unlink(self, path: str) -> None:
        """Remove a file (a symlink itself, never its target); absent is fine."""
        parent, name = _split(path)
        try:
            dir_fd = _open_dir(parent)
        except FileNotFoundError:
            return
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dir_fd)

    def fsync_dir(self, directory: str) -> None:
        """fsync the directory so renames in it survive a power cut."""
        dir_fd = _open_dir(directory)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def makedirs(self, path: str, mode: int) -> None:
        """Create missing directories of `path`; a symlinked component is refused."""
        os.close(_open_dir(path, create_mode=mode))

    def listdir(self, directory: str) -> list[str]:
        """Names in `directory`; empty if it does not exist."""
        try:
            dir_fd = _open_dir(directory)
        except FileNotFoundError:
            return []
        try:
            return sorted(os.listdir(dir_fd))
        finally:
            os.close(dir_fd)

    def lock(self, path: str) -> AbstractContextManager[None]:
        """Exclusive flock on `path` for the duration of the `with` block."""
        return _flock(path)

    def which(self, name: str, env: Mapping[str, str] | None = None) -> str | None:
        """Absolute path of `name`: PATH lookup for a bare name, cwd-relative for `./x`."""
        if "/" in name:
            candidate = os.path.abspath(name)
            return candidate if os.path.exists(candidate) else None
        search = (env or {}).get("PATH") or os.environ.get("PATH") or os.defpath
        found = shutil.which(name, path=search)
        return os.path.abspath(found) if found else None

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None) -> ExecResult:
        """Run argv in its own session with the scrubbed environment plus the `env` overlay."""
        full_env = scrub_env(os.environ, self.passthrough)
        if env:
            full_env.update((k, v) for k, v in env.items() if not k.startswith(_OWN_PREFIX))
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                start_new_session=True,  # a timeout kills the whole group, grandchildren too
            )
        except FileNotFoundError:
            return ExecResult(127, "", f"{argv[0]}: command not found")
        except PermissionError:
            return ExecResult(126, "", f"{argv[0]}: permission denied")
        try:
            out, err = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = b"", b""
            code = 124
            err = (err or b"") + f"\ntimed out after {timeout:g}s".encode()
        return ExecResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def lookup_user(self, name: str) -> int:
        """uid for a user name or number; PreflightFailed if the user does not exist."""
        if name.isdigit():
            return int(name)
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            raise PreflightFailed(
                f"user {name!r} does not exist on this host; create it or fix the owner setting"
            ) from None

    def lookup_group(self, name: str) -> int:
        """gid for a group name or number; PreflightFailed if the group does not exist."""
        if name.isdigit():
            return int(name)
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            raise PreflightFailed(
                f"group {name!r} does not exist on this host; create it or fix the group setting"
            ) from None


@contextmanager
def _flock(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
