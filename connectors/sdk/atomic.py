"""The atomic apply for file targets (DESIGN §4) and its crash recovery.

Sequence: per-file locks → SHA-256 short-circuit → backups → temp files in each
destination directory (owner/mode set and fsync'd before any rename) → journal
"prepared" → rename all → fsync dirs → journal "swapped" → validate with the new
files in place → journal "reloading" → reload → journal "reloaded" → verify →
delete the journal. Any failure after the first rename restores every file to
its backup state; a failed reload or verify reloads again on the old files.

The journal (`work_dir/journal.json`, replaced atomically) is written before
any destination changes, so `recover()` after a crash at any instant puts every
file back to the old version (and reloads when the server may have seen the
new files). No reload ever runs on a mixed set of files.

`work_dir` is certgit's own directory on the controller: the journal, the
backups and the lock files live there and are written with plain `os` calls;
the target's files go through the `Transport`.

Decision on symlinks: a destination that is a symlink at apply time (it was
swapped in after the sandbox resolved the path) is refused with DeniedError
before anything is written; its target is never touched.

Backups are sealed (DESIGN §5, keys encrypted at rest). With a `backup_key`
(32 bytes; certgit derives one per state directory from the master key, see
reconciler/targets.py) every copy in `work_dir/backups/<id>/<n>.bak` is
``b"CGB1" || nonce (12 bytes) || AES-256-GCM ciphertext+tag`` with associated
data ``dest (UTF-8) || NUL || backup id``; `open_backup` decrypts one, and each
set's manifest.json says so. Those sets are kept (newest `retention`).
Without a key (third-party callers, tests) the copies are plain files (0600 in
a 0700 directory) that live only as long as the transaction needs them: they
are deleted as soon as the apply succeeded, was rolled back, or was recovered,
and any plain set nobody references is pruned (this also removes plain sets
written before backups were sealed). A plain set stays only while its journal
does (a crash, or a rollback that needs the operator).

A journal is a file in the state directory, so recovery trusts it no further
than the grants: `recover` and `apply_files` take `allowed_exec` /
`allowed_write` checks (the Sandbox passes its own) and refuse a journal whose
reload command or paths are not granted, before touching anything. Backup
copies are always read from this journal's own backup directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import Any

from certgit.connectors.errors import (
    DeniedError,
    DeployError,
    ReloadFailed,
    RollbackFailed,
    ValidateFailed,
)
from certgit.connectors.sdk.grants import normalize_path
from certgit.connectors.sdk.transport import Transport

log = logging.getLogger(__name__)

JOURNAL = "journal.json"
COMMAND_TIMEOUT = 120.0
BACKUP_MAGIC = b"CGB1"
BACKUP_KEY_SIZE = 32
_BACKUP_NONCE_SIZE = 12
_BACKUP_ID = re.compile(r"\d{8}T\d{6}\.\d{9}-[0-9a-f]{6}")
_BACKUP_NAME = re.compile(r"\d+\.bak")
SEALED_FORMAT = (
    "each <n>.bak is b'CGB1' || 12-byte nonce || AES-256-GCM ciphertext with its 16-byte "
    "tag; associated data is the destination path (UTF-8), one NUL byte, then the backup "
    "id; the key is the backup key certgit derives from its master key "
    "(HKDF-SHA256, no salt, info b'certgit backups v1', 32 bytes; the master key comes "
    "from CERTGIT_MASTER_KEY_FILE, CERTGIT_MASTER_KEY or <state-dir>/master.key); "
    "old_sha is the SHA-256 of the plaintext. In Python: "
    "certgit.connectors.sdk.atomic.open_backup(key, blob, dest, backup_id)"
)
PLAIN_FORMAT = (
    "each <n>.bak is the plain previous content (no backup key was given); certgit "
    "deletes this set as soon as the apply is finished or recovered"
)

# Tests set this to a callable that raises a BaseException at a named phase to
# simulate a crash: nothing below catches BaseException, so the journal stays.
_crash_hook: Callable[[str], None] | None = None


@dataclass(frozen=True)
class FileSpec:
    """One file to put on the target."""

    path: str  # absolute destination on the target
    content: bytes = field(repr=False)
    mode: int | None = None  # None: the existing file's mode, else default_mode
    owner: str | None = None  # None: the existing file's owner, else the process's
    group: str | None = None
    default_mode: int = 0o644
    certificate: str = ""  # which certificate this file belongs to ("" for shared files)
    role: str = ""  # certificate|chain|fullchain|key|combined|sds|other


@dataclass(frozen=True)
class ApplyResult:
    """What an apply did."""

    changed: bool
    validated: bool
    reloaded: bool
    verified: bool
    files: Mapping[str, str]  # path -> sha256 now on disk (removed paths are absent)
    backup_id: str | None  # work_dir/backups/<id> holds the previous versions


class _BackupLost(Exception):
    """A backup copy is missing or corrupt: restoring cannot succeed by retrying."""


class _BackupKeyMissing(Exception):
    """The backups are sealed and no key was given: a caller holding the key can restore."""


def _check_backup_key(backup_key: bytes | None) -> None:
    if backup_key is not None and (
        not isinstance(backup_key, bytes) or len(backup_key) != BACKUP_KEY_SIZE
    ):
        raise ValueError(f"backup_key must be {BACKUP_KEY_SIZE} bytes")


def _backup_aad(dest: str, backup_id: str) -> bytes:
    return dest.encode() + b"\0" + backup_id.encode()


def seal_backup(key: bytes, data: bytes, dest: str, backup_id: str) -> bytes:
    """One sealed backup copy: b"CGB1" || nonce || AES-256-GCM(data), bound to dest and id."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_BACKUP_NONCE_SIZE)
    return BACKUP_MAGIC + nonce + AESGCM(key).encrypt(nonce, data, _backup_aad(dest, backup_id))


def open_backup(key: bytes, blob: bytes, dest: str, backup_id: str) -> bytes:
    """Decrypt a copy made by `seal_backup`; ValueError if not one, wrong key or tampered."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    head = len(BACKUP_MAGIC) + _BACKUP_NONCE_SIZE
    if len(blob) < head + 16 or not blob.startswith(BACKUP_MAGIC):
        raise ValueError("not a sealed certgit backup (truncated or wrong format)")
    try:
        return AESGCM(key).decrypt(
            blob[len(BACKUP_MAGIC) : head], blob[head:], _backup_aad(dest, backup_id)
        )
    except InvalidTag:
        raise ValueError(
            "authentication failed: wrong backup key (was the master key changed?) or the "
            "copy was altered or belongs to another file"
        ) from None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hook(phase: str) -> None:
    if _crash_hook is not None:
        _crash_hook(phase)


# --- work_dir helpers (controller-local) -------------------------------------------


def _write_local(path: Path, data: bytes) -> None:
    """Atomically replace a controller-local file (0600), fsync'd with its directory."""
    tmp = path.with_name(f".{path.name}.{token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_local_dir(path.parent)


def _fsync_local_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def _file_locks(work_dir: Path, dests: Sequence[str]) -> Iterator[None]:
    # Sorted order: two applies sharing files can never deadlock.
    with contextlib.ExitStack() as stack:
        for dest in sorted(set(dests)):
            name = hashlib.sha256(dest.encode()).hexdigest()[:40]
            stack.enter_context(_flock(work_dir / "locks" / f"{name}.lock"))
        yield


def _write_journal(work_dir: Path, journal: dict[str, Any]) -> None:
    _write_local(work_dir / JOURNAL, json.dumps(journal, indent=1, sort_keys=True).encode())


def _set_phase(work_dir: Path, journal: dict[str, Any], phase: str) -> None:
    journal["phase"] = phase
    _write_journal(work_dir, journal)
    _hook(phase)


def _drop_journal(work_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(work_dir / JOURNAL)
    _fsync_local_dir(work_dir)


def _aside_path(work_dir: Path, backup_id: object) -> Path:
    # The id comes from a file someone could edit: only a well-formed one names a path.
    name = backup_id if isinstance(backup_id, str) and _BACKUP_ID.fullmatch(backup_id) else None
    return work_dir / f"journal.failed-{name or 'unknown-' + token_hex(4)}.json"


def _set_journal_aside(work_dir: Path, journal: Mapping[str, Any]) -> Path:
    aside = _aside_path(work_dir, journal.get("backup_id"))
    with contextlib.suppress(FileNotFoundError):
        os.replace(work_dir / JOURNAL, aside)
    return aside


def _referenced_backup_ids(work_dir: Path) -> set[str]:
    """Backup sets a live or set-aside journal still needs."""
    ids = {
        p.name[len("journal.failed-") : -len(".json")]
        for p in work_dir.glob("journal.failed-*.json")
    }
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        ids.add(str(json.loads((work_dir / JOURNAL).read_bytes()).get("backup_id")))
    return ids


def _is_sealed_set(directory: Path) -> bool:
    try:
        manifest = json.loads((directory / "manifest.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("encrypted") is True


def _discard_plain_set(work_dir: Path, backup_id: str) -> None:
    """Delete a plain backup set once no journal needs it (it may hold private keys)."""
    if backup_id not in _referenced_backup_ids(work_dir):
        shutil.rmtree(work_dir / "backups" / backup_id, ignore_errors=True)


def _prune_backups(work_dir: Path, retention: int) -> None:
    """Keep the newest `retention` sealed sets; delete every plain set no journal needs."""
    root = work_dir / "backups"
    if not root.is_dir():
        return
    referenced = _referenced_backup_ids(work_dir)
    sealed: list[Path] = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        if directory.name in referenced:
            continue
        if _is_sealed_set(directory):
            sealed.append(directory)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    for old in sealed[: max(len(sealed) - max(retention, 0), 0)]:
        shutil.rmtree(old, ignore_errors=True)


def _new_backup_id() -> str:
    # Sortable by time (one clock reading), unique across concurrent processes.
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
    return f"{stamp}.{now % 10**9:09d}-{token_hex(3)}"


# --- planning ---------------------------------------------------------------------


def _split_dest(transport: Transport, path: str) -> tuple[str, str]:
    """(resolved parent directory, file name): parent symlinks resolved, the file itself not."""
    normal = normalize_path(path)
    parent, _, name = normal.rpartition("/")
    if not name:
        raise ValueError(f"{path!r} is not a file path")
    directory = transport.realpath(parent or "/")
    return directory, name


def _plan_entry(
    transport: Transport, spec: FileSpec | None, dest: str, directory: str, name: str
) -> dict[str, Any] | None:
    """A journal entry for one path, or None when the file already matches."""
    st = transport.stat(dest)
    if st is not None and st.kind == "symlink":
        raise DeniedError(
            "fs.write",
            dest,
            "a regular file at the destination (it is a symlink; certgit never writes through "
            "one: replace it with the file or point the target at the real path)",
        )
    if st is not None and st.kind != "file":
        raise DeployError(f"{dest} is a {st.kind}, not a file; remove it or change the path")
    current = transport.read(dest) if st is not None else None
    old_sha = _sha(current) if current is not None else None
    entry: dict[str, Any] = {
        "dest": dest,
        "directory": directory,
        "temp_prefix": f".{name}.certgit-",
        "temp": None,
        "backup": None,
        "old_sha": old_sha,
        "old_mode": st.mode if st else None,
        "old_uid": st.uid if st else None,
        "old_gid": st.gid if st else None,
    }
    if spec is None:  # a removal
        if st is None:
            return None
        entry.update(new_sha=None, mode=None, uid=None, gid=None)
        return entry
    if not isinstance(spec.content, bytes):
        raise TypeError(f"FileSpec.content for {spec.path} must be bytes")
    mode = spec.mode if spec.mode is not None else (st.mode if st else spec.default_mode)
    uid = transport.lookup_user(spec.owner) if spec.owner else (st.uid if st else -1)
    gid = transport.lookup_group(spec.group) if spec.group else (st.gid if st else -1)
    new_sha = _sha(spec.content)
    if (
        st is not None
        and old_sha == new_sha
        and st.mode == mode
        and uid in (-1, st.uid)
        and gid in (-1, st.gid)
    ):
        return None
    entry.update(new_sha=new_sha, mode=mode, uid=uid, gid=gid)
    return entry


# --- restore ----------------------------------------------------------------------


def _read_backup(
    work_dir: Path, journal: Mapping[str, Any], entry: Mapping[str, Any], key: bytes | None
) -> bytes:
    """The old content of one journaled file, from this journal's own backup directory."""
    dest, backup_id = entry["dest"], str(journal["backup_id"])
    # Only the copy's name is taken from the journal: it cannot point outside the set.
    path = work_dir / "backups" / backup_id / Path(str(entry["backup"])).name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _BackupLost(f"backup of {dest} at {path} is unreadable: {exc}") from None
    if journal.get("backups_encrypted"):
        assert key is not None  # _restore checked
        try:
            data = open_backup(key, data, dest, backup_id)
        except ValueError as exc:
            raise _BackupLost(f"backup of {dest} at {path} cannot be decrypted: {exc}") from None
    if _sha(data) != entry["old_sha"]:
        raise _BackupLost(f"backup of {dest} at {path} does not match its checksum")
    return data


def _restore(
    transport: Transport, journal: Mapping[str, Any], work_dir: Path, backup_key: bytes | None
) -> list[str]:
    """Put every journaled file back to its old state and delete temps. Idempotent.

    Raises _BackupKeyMissing (sealed backups, no key: nothing done), _BackupLost
    (permanent) or OSError/DeniedError (maybe transient).
    """
    if journal.get("backups_encrypted") and backup_key is None:
        raise _BackupKeyMissing(
            "its backups are sealed and no backup key was given; recover with the target's "
            "backup key (certgit passes the one it derives from the master key)"
        )
    lines: list[str] = []
    entries: list[dict[str, Any]] = journal["files"]
    for entry in entries:
        dest = entry["dest"]
        st = transport.stat(dest)
        if entry["backup"] is None:
            if st is not None:
                transport.unlink(dest)
                lines.append(f"removed {dest} (it did not exist before)")
            continue
        data = _read_backup(work_dir, journal, entry, backup_key)
        if st is not None and st.kind == "file":
            current = transport.read(dest)
            if (
                current is not None
                and _sha(current) == entry["old_sha"]
                and (st.mode, st.uid, st.gid)
                == (entry["old_mode"], entry["old_uid"], entry["old_gid"])
            ):
                continue
        temp = transport.write_temp(
            entry["directory"],
            entry["temp_prefix"],
            data,
            entry["old_mode"],
            entry["old_uid"],
            entry["old_gid"],
        )
        transport.rename(temp, dest)
        lines.append(f"restored {dest} from backup {journal['backup_id']}")
    _delete_temps(transport, entries)
    for directory in sorted({e["directory"] for e in entries}):
        with contextlib.suppress(FileNotFoundError):
            transport.fsync_dir(directory)
    return lines


def _delete_temps(transport: Transport, entries: Sequence[Mapping[str, Any]]) -> None:
    """Remove this transaction's temp files, including ones written before the journal said so."""
    for entry in entries:
        if entry.get("temp"):
            transport.unlink(entry["temp"])
        for name in transport.listdir(entry["directory"]):
            if name.startswith(entry["temp_prefix"]) and name.endswith(".tmp"):
                transport.unlink(f"{entry['directory'].rstrip('/')}/{name}")


def _rollback_failed(
    work_dir: Path, journal: Mapping[str, Any], reason: str, *, permanent: bool, target: str
) -> RollbackFailed:
    dests = ", ".join(e["dest"] for e in journal["files"])
    backups = work_dir / "backups" / str(journal["backup_id"])
    if permanent:
        aside = _set_journal_aside(work_dir, journal)
        next_step = (
            f"the files may be a mixed set; restore them by hand from {backups} "
            "(manifest.json maps each copy to its path and says how to decrypt it; "
            f"journal kept at {aside}) or run the "
            "apply again to write a complete new set, then reload the server yourself"
        )
    else:
        next_step = (
            f"the journal {work_dir / JOURNAL} is kept: fix the cause and run the apply again "
            "(it restores the old files first), or restore them by hand from "
            f"{backups} and reload the server yourself"
        )
    return RollbackFailed(
        f"rollback failed for {dests}: {reason}; {next_step}", target=target or None
    )


def _run(transport: Transport, argv: Sequence[str] | None, timeout: float) -> tuple[bool, str]:
    if not argv:
        return True, ""
    result = transport.run(list(argv), timeout, None)
    return result.returncode == 0, result.summary()


# --- the apply --------------------------------------------------------------------


def apply_files(
    transport: Transport,
    files: Sequence[FileSpec],
    *,
    validate: Sequence[str] | None,
    reload: Sequence[str] | None,
    work_dir: Path,
    verify: Callable[[], None] | None = None,
    retention: int = 3,
    target: str = "",
    remove: Sequence[str] = (),
    command_timeout: float = COMMAND_TIMEOUT,
    backup_key: bytes | None = None,
    allowed_exec: Callable[[Sequence[str]], object] | None = None,
    allowed_write: Callable[[str], object] | None = None,
) -> ApplyResult:
    """Write `files` (and delete `remove`) as one transaction; validate, reload, verify.

    Grants are the caller's business (Sandbox.apply_files checks them);
    `allowed_exec`/`allowed_write` check a leftover journal before it is
    recovered (see `recover`). `backup_key` (32 bytes) seals the backups; without
    one they are plain and deleted when the apply ends. Raises
    ValidateFailed / ReloadFailed / VerifyMismatch (old files back in place),
    RollbackFailed (operator action needed), DeniedError (symlinked destination),
    DeployError (writing failed before the swap; nothing changed).
    """
    _check_backup_key(backup_key)
    work_dir = Path(work_dir)
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    specs: dict[str, tuple[FileSpec | None, str, str]] = {}
    originals: dict[str, str] = {}
    for item in [*files, *remove]:
        spec = item if isinstance(item, FileSpec) else None
        path = spec.path if spec is not None else str(item)
        directory, name = _split_dest(transport, path)
        dest = f"{directory.rstrip('/')}/{name}"
        if dest in specs:
            raise ValueError(f"{path} appears twice in one apply; each file has one owner")
        specs[dest] = (spec, directory, name)
        originals[dest] = path

    with _flock(work_dir / "locks" / "apply.lock"):
        if (work_dir / JOURNAL).exists():
            for line in _recover_locked(
                transport,
                work_dir,
                target=target,
                backup_key=backup_key,
                allowed_exec=allowed_exec,
                allowed_write=allowed_write,
            ):
                log.warning("recovered before apply: %s", line)
        with _file_locks(work_dir, list(specs)):
            return _apply_locked(
                transport,
                specs,
                originals,
                validate=validate,
                reload=reload,
                work_dir=work_dir,
                verify=verify,
                retention=retention,
                target=target,
                command_timeout=command_timeout,
                backup_key=backup_key,
            )


def _apply_locked(
    transport: Transport,
    specs: Mapping[str, tuple[FileSpec | None, str, str]],
    originals: Mapping[str, str],
    *,
    validate: Sequence[str] | None,
    reload: Sequence[str] | None,
    work_dir: Path,
    verify: Callable[[], None] | None,
    retention: int,
    target: str,
    command_timeout: float,
    backup_key: bytes | None,
) -> ApplyResult:
    entries: list[dict[str, Any]] = []
    on_disk: dict[str, str] = {}
    for dest, (spec, directory, name) in specs.items():
        entry = _plan_entry(transport, spec, dest, directory, name)
        if entry is not None:
            entries.append(entry)
        if spec is not None:
            on_disk[originals[dest]] = _sha(spec.content)
    if not entries:
        return ApplyResult(False, False, False, False, on_disk, None)

    backup_id = _new_backup_id()
    backup_dir = work_dir / "backups" / backup_id
    backup_dir.mkdir(mode=0o700, parents=True)
    try:
        result = _backup_and_swap(
            transport,
            specs,
            entries,
            on_disk,
            originals,
            backup_id=backup_id,
            validate=validate,
            reload=reload,
            work_dir=work_dir,
            verify=verify,
            target=target,
            command_timeout=command_timeout,
            backup_key=backup_key,
        )
    except Exception:
        if backup_key is None:
            _discard_plain_set(work_dir, backup_id)  # kept only while a journal needs it
        raise
    _prune_backups(work_dir, retention)  # removes this set too when it is plain
    return result


def _backup_and_swap(
    transport: Transport,
    specs: Mapping[str, tuple[FileSpec | None, str, str]],
    entries: list[dict[str, Any]],
    on_disk: dict[str, str],
    originals: Mapping[str, str],
    *,
    backup_id: str,
    validate: Sequence[str] | None,
    reload: Sequence[str] | None,
    work_dir: Path,
    verify: Callable[[], None] | None,
    target: str,
    command_timeout: float,
    backup_key: bytes | None,
) -> ApplyResult:
    backup_dir = work_dir / "backups" / backup_id
    files: dict[str, Any] = {}
    for index, entry in enumerate(entries):
        if entry["old_sha"] is None:
            continue
        current = transport.read(entry["dest"])
        if current is None or _sha(current) != entry["old_sha"]:
            raise DeployError(
                f"{entry['dest']} changed while certgit was planning; retry the apply",
                target=target or None,
            )
        copy = backup_dir / f"{index}.bak"
        if backup_key is not None:
            _write_local(copy, seal_backup(backup_key, current, entry["dest"], backup_id))
        else:
            _write_local(copy, current)
        entry["backup"] = str(copy)
        files[entry["dest"]] = {
            k: entry[k] for k in ("backup", "old_sha", "old_mode", "old_uid", "old_gid")
        }
    manifest = {
        "backup_id": backup_id,
        "encrypted": backup_key is not None,
        "format": SEALED_FORMAT if backup_key is not None else PLAIN_FORMAT,
        "files": files,  # destination path -> its copy
    }
    _write_local(backup_dir / "manifest.json", json.dumps(manifest, indent=1).encode())

    journal: dict[str, Any] = {
        "version": 1,
        "phase": "preparing",
        "backup_id": backup_id,
        "backups_encrypted": backup_key is not None,
        "target": target,
        "reload": list(reload) if reload else None,
        "files": entries,
    }
    _set_phase(work_dir, journal, "preparing")
    try:
        for entry in entries:
            if entry["new_sha"] is None:
                continue
            spec = specs[entry["dest"]][0]
            assert spec is not None
            transport.makedirs(entry["directory"], 0o755)
            entry["temp"] = transport.write_temp(
                entry["directory"],
                entry["temp_prefix"],
                spec.content,
                entry["mode"],
                entry["uid"],
                entry["gid"],
            )
    except Exception as exc:
        # Nothing visible changed yet: drop the temps and the journal, report.
        with contextlib.suppress(Exception):
            _delete_temps(transport, entries)
            _drop_journal(work_dir)
        if isinstance(exc, DeployError | DeniedError):
            raise
        raise DeployError(
            f"writing temp files failed before anything was swapped ({exc}); "
            "nothing changed on the target: fix the cause (space, permissions) and retry",
            target=target or None,
        ) from None
    _set_phase(work_dir, journal, "prepared")

    def rollback(*, reload_after: bool, why: str) -> None:
        try:
            _restore(transport, journal, work_dir, backup_key)
        except _BackupLost as exc:
            raise _rollback_failed(
                work_dir, journal, f"{why}, then {exc}", permanent=True, target=target
            ) from None
        except (OSError, DeniedError) as exc:
            raise _rollback_failed(
                work_dir,
                journal,
                f"{why}, then restoring failed: {exc}",
                permanent=False,
                target=target,
            ) from None
        if reload_after and reload:
            ok, summary = _run(transport, reload, command_timeout)
            if not ok:
                _drop_journal(work_dir)
                raise RollbackFailed(
                    f"{why}; the old files are back but reloading them failed ({summary}); "
                    f"check the server and run {' '.join(reload)} yourself",
                    target=target or None,
                )
        _drop_journal(work_dir)

    try:
        for entry in entries:
            if entry["new_sha"] is None:
                transport.unlink(entry["dest"])
            else:
                transport.rename(entry["temp"], entry["dest"])
            _hook("swapping")
        for directory in sorted({e["directory"] for e in entries}):
            transport.fsync_dir(directory)
        _set_phase(work_dir, journal, "swapped")

        if validate:
            ok, summary = _run(transport, validate, command_timeout)
            if not ok:
                rollback(reload_after=False, why=f"validate failed ({summary})")
                raise ValidateFailed(
                    f"{' '.join(validate)} rejected the new files; the old files are back and "
                    "no reload happened: fix the certificate or the server config",
                    target=target or None,
                    detail=summary,
                )
        if reload:
            _set_phase(work_dir, journal, "reloading")
            ok, summary = _run(transport, reload, command_timeout)
            if not ok:
                rollback(reload_after=True, why=f"reload failed ({summary})")
                raise ReloadFailed(
                    f"{' '.join(reload)} failed; the old files are back and were reloaded: "
                    "check the server's log and retry",
                    target=target or None,
                    detail=summary,
                )
            _set_phase(work_dir, journal, "reloaded")
        if verify is not None:
            try:
                verify()
            except Exception as exc:
                rollback(reload_after=True, why=f"verify failed ({exc})")
                raise
    except (ValidateFailed, ReloadFailed, RollbackFailed):
        raise
    except Exception as exc:
        if (work_dir / JOURNAL).exists():
            rollback(reload_after=journal["phase"] in ("reloading", "reloaded"), why=str(exc))
        raise

    _drop_journal(work_dir)
    for entry in entries:
        if entry["new_sha"] is None:
            on_disk.pop(originals[entry["dest"]], None)
    return ApplyResult(
        changed=True,
        validated=bool(validate),
        reloaded=bool(reload),
        verified=verify is not None,
        files=on_disk,
        backup_id=backup_id,
    )


# --- recovery ---------------------------------------------------------------------


def recover(
    transport: Transport,
    work_dir: Path,
    backup_key: bytes | None = None,
    *,
    allowed_exec: Callable[[Sequence[str]], object] | None = None,
    allowed_write: Callable[[str], object] | None = None,
) -> list[str]:
    """Finish-or-undo after a crash: every journaled file back to its old version.

    Reloads when the journal says the server may have loaded the new files
    ("reloading" or later). Returns human-readable lines of what it did (empty
    when there was no journal). Raises RollbackFailed when it cannot.

    `backup_key` opens sealed backups (without it a sealed journal is kept and
    RollbackFailed says so). The journal is a file someone could edit, so before
    anything is restored or run, `allowed_exec(reload argv)` and
    `allowed_write(dest)` for every file must not raise (pass the Sandbox's
    `check_exec` / `check_write`, or use `Sandbox.recover`): a journal that fails
    them is set aside and RollbackFailed raised, nothing touched.
    """
    _check_backup_key(backup_key)
    work_dir = Path(work_dir)
    if not (work_dir / JOURNAL).exists():
        return []
    with _flock(work_dir / "locks" / "apply.lock"):
        return _recover_locked(
            transport,
            work_dir,
            target="",
            backup_key=backup_key,
            allowed_exec=allowed_exec,
            allowed_write=allowed_write,
        )


def _check_journal_shape(journal: Any) -> None:
    """ValueError unless the journal has the structure an apply writes."""
    if not isinstance(journal, dict) or not isinstance(journal.get("files"), list):
        raise ValueError("not an apply journal")
    backup_id = journal.get("backup_id")
    if not isinstance(backup_id, str) or not _BACKUP_ID.fullmatch(backup_id):
        raise ValueError(f"malformed backup id {backup_id!r}")
    reload = journal.get("reload")
    if reload is not None and (
        not isinstance(reload, list) or not all(isinstance(a, str) for a in reload)
    ):
        raise ValueError("reload is not a list of strings")
    for entry in journal["files"]:
        dest, directory = entry["dest"], entry["directory"]
        name = dest.rpartition("/")[2]
        if not (
            isinstance(dest, str)
            and isinstance(directory, str)
            and name
            and dest == f"{directory.rstrip('/')}/{name}"
            and entry["temp_prefix"] == f".{name}.certgit-"
        ):
            raise ValueError(f"entry for {dest!r} is inconsistent")
        temp = entry.get("temp")
        if temp is not None and not (
            isinstance(temp, str)
            and temp.rpartition("/")[0] == directory.rstrip("/")
            and temp.rpartition("/")[2].startswith(entry["temp_prefix"])
            and temp.endswith(".tmp")
        ):
            raise ValueError(f"temp file of {dest!r} is outside its directory")
        backup = entry.get("backup")
        if backup is not None and not (
            isinstance(backup, str) and _BACKUP_NAME.fullmatch(Path(backup).name)
        ):
            raise ValueError(f"backup copy of {dest!r} is malformed")


def _recover_locked(
    transport: Transport,
    work_dir: Path,
    *,
    target: str,
    backup_key: bytes | None = None,
    allowed_exec: Callable[[Sequence[str]], object] | None = None,
    allowed_write: Callable[[str], object] | None = None,
) -> list[str]:
    path = work_dir / JOURNAL
    try:
        journal = json.loads(path.read_bytes())
        _check_journal_shape(journal)
        entries = journal["files"]
        phase = journal["phase"]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        aside = path.with_name(f"journal.unreadable-{token_hex(4)}.json")
        os.replace(path, aside)
        raise RollbackFailed(
            f"the apply journal is unreadable ({exc}); moved to {aside}: check the files it "
            "names, restore them from the backups beside it if needed, and reload the server",
            target=target or None,
        ) from None
    target = target or journal.get("target") or ""
    reload = journal.get("reload")
    try:
        if allowed_write is not None:
            for entry in entries:
                allowed_write(entry["dest"])
        if allowed_exec is not None and reload:
            allowed_exec(reload)
    except DeniedError as exc:
        aside = _set_journal_aside(work_dir, journal)
        raise RollbackFailed(
            f"refusing to recover from the apply journal: it asks for something this "
            f"target is not granted ({exc}); the journal is a file in the state directory "
            f"and may have been edited. Nothing was restored or run; it is set aside at "
            f"{aside}: check the files it names against the backups beside it, restore them "
            "by hand if needed and reload the server yourself",
            target=target or None,
        ) from None
    lines = [f"found journal in phase {phase!r} (backup {journal.get('backup_id')})"]
    with _file_locks(work_dir, [e["dest"] for e in entries]):
        try:
            lines += _restore(transport, journal, work_dir, backup_key)
        except _BackupKeyMissing as exc:
            raise _rollback_failed(
                work_dir, journal, str(exc), permanent=False, target=target
            ) from None
        except _BackupLost as exc:
            raise _rollback_failed(
                work_dir, journal, str(exc), permanent=True, target=target
            ) from None
        except (OSError, DeniedError) as exc:
            raise _rollback_failed(
                work_dir, journal, f"restoring failed: {exc}", permanent=False, target=target
            ) from None
        try:
            if phase in ("reloading", "reloaded") and reload:
                ok, summary = _run(transport, reload, COMMAND_TIMEOUT)
                _drop_journal(work_dir)
                if not ok:
                    raise RollbackFailed(
                        f"recovered the old files but reloading them failed ({summary}); "
                        f"check the server and run {' '.join(reload)} yourself",
                        target=target or None,
                    )
                lines.append(f"reloaded: {' '.join(reload)}")
            else:
                _drop_journal(work_dir)
        finally:
            if not journal.get("backups_encrypted") and not (work_dir / JOURNAL).exists():
                _discard_plain_set(work_dir, journal["backup_id"])
    lines.append("journal removed; the next apply re-deploys")
    return lines
