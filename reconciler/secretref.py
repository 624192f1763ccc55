"""Resolve a `secretRef` from Git (`{env: NAME}` or `{file: PATH}`) to its bytes.

Secrets are referenced from the desired-state repo, never stored there. The
value returned here is secret material: callers must not log it, and no error
raised here ever contains it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from certgit.reconciler.errors import IssuanceError
from certgit.reconciler.model import SecretRef


def resolve_secret(
    ref: SecretRef,
    *,
    env: Mapping[str, str] = os.environ,
    base_dir: Path | None = None,
) -> bytes:
    """Return the bytes a SecretRef points at.

    `{env: NAME}` reads the environment variable NAME (encoded as UTF-8);
    `{file: PATH}` reads the file, a relative PATH being relative to `base_dir`
    when given (else to the working directory).

    Raises ValueError when the ref does not name exactly one of env/file (a
    programming error: the schema forbids it), and IssuanceError when the
    variable is unset or the file cannot be read.
    """
    if (ref.env is None) == (ref.file is None):
        raise ValueError("a secretRef must name exactly one of env or file")
    if ref.env is not None:
        value = env.get(ref.env)
        if value is None:
            raise IssuanceError(
                f"secret env var {ref.env} is not set; export it or use secretRef.file"
            )
        return value.encode()
    assert ref.file is not None
    path = Path(ref.file).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise IssuanceError(
            f"secret file {path} does not exist; create it or fix secretRef.file"
        ) from None
    except IsADirectoryError:
        raise IssuanceError(
            f"secret file {path} is a directory; point secretRef.file at a file"
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
