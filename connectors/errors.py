"""The root of certgit's exceptions and the errors of the connector layer.

The root lives here, in the lowest layer, because connectors may not import
the reconciler; `certgit.reconciler.errors` re-exports it.

    CertgitError
    ├── DeniedError          a sandbox grant was missing (permanent)
    └── DeployError          a deploy did not complete
        ├── PreflightFailed  key/cert/chain/dates refused before anything was written
        ├── ValidateFailed   the server rejected its config with the new files in place;
        │                    the backups were restored before any reload
        ├── ReloadFailed     the reload failed; backups restored and reloaded again
        ├── VerifyMismatch   the endpoint did not serve the deployed certificate; rolled back
        ├── RollbackFailed   restoring the old files failed: operator action needed
        └── TransportError   the target could not be reached (temporary)
"""

from __future__ import annotations


class CertgitError(Exception):
    """Root of every error certgit raises on purpose.

    `temporary` tells the executor whether retrying later can help.
    """

    temporary: bool = False


class DeniedError(CertgitError):
    """An operation outside the connector's grants. Names the operation and the missing grant."""

    def __init__(self, operation: str, subject: str, grant: str) -> None:
        super().__init__(
            f"denied: {operation} {subject!r} needs grant {grant}; "
            "the target's settings and the operator's site policy (`certgit site show`) "
            "must both allow it"
        )
        self.operation = operation
        self.subject = subject
        self.grant = grant


class DeployError(CertgitError):
    """A deploy did not complete. `rolled_back` says whether the old state is back."""

    temporary = True
    rolled_back: bool = True

    def __init__(self, message: str, *, target: str | None = None, detail: str = "") -> None:
        super().__init__(message if not detail else f"{message}: {detail}")
        self.target = target
        self.detail = detail


class PreflightFailed(DeployError):
    """The bundle is unusable (key/cert mismatch, broken chain, dates). Nothing was written."""

    temporary = False


class ValidateFailed(DeployError):
    """The server's config check failed with the new files in place; backups restored."""

    temporary = False


class ReloadFailed(DeployError):
    """The reload failed; backups restored and the server reloaded on the old files."""


class VerifyMismatch(DeployError):
    """The endpoint kept serving something else after the deploy; rolled back."""


class RollbackFailed(DeployError):
    """Restoring the backups failed. The target may be in a mixed state: operator action needed."""

    temporary = False
    rolled_back = False


class TransportError(DeployError):
    """The target (host, API) could not be reached; nothing was changed."""
