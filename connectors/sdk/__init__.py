"""Connector SDK: sandbox, transports, atomic apply, verify, registry, conformance.

The public names are resolved lazily so that importing one piece (the registry
listing connectors, the errors) does not pull in cryptography, ssl or the
transports. `conformance` needs pytest and is imported explicitly by tests.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from certgit.connectors.sdk.atomic import ApplyResult, FileSpec, apply_files, recover
    from certgit.connectors.sdk.base import Connector, FileConnector, FileSettings
    from certgit.connectors.sdk.grants import Grants
    from certgit.connectors.sdk.preflight import preflight
    from certgit.connectors.sdk.registry import (
        ConnectorUnavailable,
        available,
        load_connector,
        sandbox_for,
    )
    from certgit.connectors.sdk.sandbox import ExecResult, FileStat, Sandbox
    from certgit.connectors.sdk.transport import LocalTransport, Transport
    from certgit.connectors.sdk.verify import tls_leaf_fingerprint, verify_with_retry

_EXPORTS: dict[str, str] = {
    "ApplyResult": "atomic",
    "FileSpec": "atomic",
    "apply_files": "atomic",
    "recover": "atomic",
    "Connector": "base",
    "FileConnector": "base",
    "FileSettings": "base",
    "Grants": "grants",
    "preflight": "preflight",
    "ConnectorUnavailable": "registry",
    "available": "registry",
    "load_connector": "registry",
    "sandbox_for": "registry",
    "ExecResult": "sandbox",
    "FileStat": "sandbox",
    "Sandbox": "sandbox",
    "LocalTransport": "transport",
    "Transport": "transport",
    "tls_leaf_fingerprint": "verify",
    "verify_with_retry": "verify",
}

__all__ = [
    "ApplyResult",
    "Connector",
    "ConnectorUnavailable",
    "ExecResult",
    "FileConnector",
    "FileSettings",
    "FileSpec",
    "FileStat",
    "Grants",
    "LocalTransport",
    "Sandbox",
    "Transport",
    "apply_files",
    "available",
    "load_connector",
    "preflight",
    "recover",
    "sandbox_for",
    "tls_leaf_fingerprint",
    "verify_with_retry",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
