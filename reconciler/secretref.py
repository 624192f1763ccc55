"""Resolve a `secretRef` from Git to its bytes, within the site policy's bounds.

Secrets are referenced from the desired-state repo, never stored there:

- `{env: NAME}` reads the certgit process's variable NAME, only when the site
  policy's `[secrets] env` patterns match it (`CERTGIT_*` never);
- `{file: PATH}` reads a file on the certgit host. PATH must be absolute
  (the schema refuses a relative one: it would depend on where certgit runs,
  and against the state directory it would reach certgit's own master key).
  After resolving symlinks it must lie under a `[secrets] files` root and
  outside the never-readable paths: the built-in deny list
  (`sitepolicy.DENY_ROOTS`, any `.ssh` or `sudoers*` component), the state
  directory, and certgit's own configuration files (site policy, certgit.toml,
  allowed-signers file, the age key). A symlink under an allowed root that
  points at /etc/shadow is refused;
- `{sops: {file, key}}` was decrypted at load time (`secretload`); its value
  travels on the ref.

The site policy's load-time check (`sitecheck`) refuses the same refs with a
FILE:LINE:COL; this runtime check is the second line, for any caller.

The value returned here is secret material: callers must not log it, and no
error raised here ever contains it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping

from certgit.reconciler.errors import IssuanceError
from certgit.reconciler.model import SecretRef
from certgit.reconciler.sitepolicy import DENY_ROOTS, SecretsPolicy, denied_component

_POLICY = "the site policy's [secrets]"


def resolve_secret(
    ref: SecretRef,
    policy: SecretsPolicy,
    *,
    env: Mapping[str, str] = os.environ,
    deny: Iterable[str | os.PathLike[str]] = (),
) -> bytes:
    """Return the bytes a SecretRef points at, if `policy` allows reading them.

    `deny`: further paths never read whatever the policy says (the state
    directory, certgit's own configuration files), each with everything under it.

    Raises ValueError when the ref does not name exactly one of env/file/sops
    (a programming error: the schema forbids it), and IssuanceError when the
    policy refuses the ref, the variable is unset or the file cannot be read.
    """
    if sum(x is not None for x in (ref.env, ref.file, ref.sops)) != 1:
        raise ValueError("a secretRef must name exactly one of env, file or sops")
    if ref.sops is not None:
        if ref.value is None:
            raise IssuanceError(
                f"secret {ref.describe()} was not decrypted when the commit was loaded; "
                "load the desired state through certgit's loader"
            )
        return ref.value.reveal()
    if ref.env is not None:
        return _read_env(ref.env, policy, env)
    assert ref.file is not None
    return _read_file(ref.file, policy, deny)


def _read_env(name: str, policy: SecretsPolicy, env: Mapping[str, str]) -> bytes:
    if not policy.allows_env(name):
        why = (
            "certgit's own variables are never readable by a secretRef"
            if name.startswith("CERTGIT_")
            else f"add a pattern matching it to {_POLICY} env to allow it"
        )
        raise IssuanceError(f"secretRef env var {name} is not allowed by {_POLICY} env; {why}")
    value = env.get(name)
    if value is None:
        raise IssuanceError(f"secret env var {name} is not set; export it or use secretRef.file")
    return value.encode()


def _within(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


def refusal(
    path: str, policy: SecretsPolicy, deny: Iterable[str | os.PathLike[str]] = ()
) -> str | None:
    """Why reading `path` (absolute) is refused, or None when the policy allows it.

    Checks the path as written and after resolving symlinks: both must stay
    clear of the never-readable paths, and the resolved one must lie under a
    (resolved) `[secrets] files` root.
    """
    if not path.startswith("/"):
        return "it is not an absolute path (a relative one would depend on where certgit runs)"
    written = os.path.normpath(path)
    real = os.path.realpath(written)
    never = [*DENY_ROOTS, *(os.fspath(p) for p in deny)]
    never += [os.path.realpath(p) for p in never]
    for candidate in dict.fromkeys((written, real)):
        shown = candidate if candidate == written else f"{written} (resolves to {candidate})"
        for root in never:
            if _within(candidate, root):
                return f"{shown} is never readable by a secretRef ({root} is off limits)"
        component = denied_component(candidate)
        if component is not None:
            return f"{shown} is never readable by a secretRef ({component!r} is off limits)"
    roots = [os.path.realpath(r) for r in policy.files]
    if not any(_within(real, root) for root in roots):
        shown = written if real == written else f"{written} (resolves to {real})"
        allowed = ", ".join(policy.files) or "none"
        return (
            f"{shown} is outside {_POLICY} files roots (allowed: {allowed}); "
            "move the secret under one or add its directory there"
        )
    return None


def _read_file(path: str, policy: SecretsPolicy, deny: Iterable[str | os.PathLike[str]]) -> bytes:
    why = refusal(path, policy, deny)
    if why is not None:
        raise IssuanceError(f"secretRef file refused: {why}")
    real = os.path.realpath(path)
    try:
        # O_NOFOLLOW: the last component is not a symlink now either; O_NONBLOCK: a FIFO
        # planted there cannot hang the reconciler (it is refused below as not a file).
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise IssuanceError(
            f"secret file {path} does not exist; create it or fix secretRef.file"
        ) from None
    except PermissionError:
        raise IssuanceError(
            f"secret file {path} is not readable by this user; fix its owner or mode"
        ) from None
    except OSError as exc:
        # strerror only: the OS error never carries file content
        raise IssuanceError(
            f"secret file {path} could not be read ({exc.strerror}); check the path"
        ) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IssuanceError(
                f"secret file {path} is a directory; point secretRef.file at a file"
            )
        if not stat.S_ISREG(info.st_mode):
            raise IssuanceError(
                f"secret file {path} is not a regular file; point secretRef.file at one"
            )
        # A parent directory swapped for a symlink since the check: the file opened is
        # not the one checked. /proc names what was really opened.
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            opened = real
        if opened != real:
            raise IssuanceError(
                f"secret file {path} moved while it was read (now {opened}); refused"
            )
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except IssuanceError:
        raise
    except OSError as exc:
        raise IssuanceError(
            f"secret file {path} could not be read ({exc.strerror}); check the path"
        ) from None
    finally:
        os.close(fd)
