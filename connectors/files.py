"""The generic `files` connector: PEM files in one directory, optional validate/reload.

Everything comes from FileConnector; this connector has no server-specific
defaults, so `settings.directory` is required and commands run only when the
target configures them.
"""

from __future__ import annotations

from typing import ClassVar

from certgit.connectors.sdk.base import KEY_TYPES, FileConnector


class FilesConnector(FileConnector):
    """Writes certificate, chain, fullchain, key (and optionally combined) PEM files."""

    name: ClassVar[str] = "files"
    # plain files: the consumer decides, so every key type is accepted
    accepted_keys: ClassVar[frozenset[str]] = frozenset(KEY_TYPES)
