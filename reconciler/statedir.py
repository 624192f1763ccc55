"""Safety checks on the state directory and the private directories inside it.

The state directory holds the master key, the sealed private keys and, under
`work/`, the journals and backups connectors restore from. A directory another
user can write to (or owns) lets that user swap those files, so certgit refuses
it and says which `chmod` / `chown` fixes it.
"""

from __future__ import annotations

import os
import pwd
import shlex
import stat
from pathlib import Path

from certgit.reconciler.errors import StoreError, UnsafeStateDir

__all__ = ["CA_DIR_NAME", "check_private_dir"]

CA_DIR_NAME = "ca"  # <state>/ca/<issuer>: the local CAs (see issuance.py)


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
