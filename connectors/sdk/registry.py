"""Connector discovery through the `certgit.connectors` entry-point group.

Built-ins register the same way a third-party package does, so `available()`
lists them all without importing any (a broken connector must not break
`certgit validate`); `load_connector()` imports one and turns every failure
into `ConnectorUnavailable`, which the CLI shows as "misconfigured".
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from certgit.connectors.errors import CertgitError

if TYPE_CHECKING:
    from certgit.connectors.model import TargetSpec
    from certgit.connectors.sdk.base import Connector
    from certgit.connectors.sdk.sandbox import Sandbox

GROUP = "certgit.connectors"


class ConnectorUnavailable(CertgitError):
    """A connector cannot be used: unknown, duplicated, failing to import, or unsupported."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"connector {name!r} is unavailable: {reason}")
        self.name = name
        self.reason = reason


def _entry_points() -> list[EntryPoint]:
    return list(entry_points(group=GROUP))


def available() -> dict[str, str]:
    """Every registered connector: name -> "module:attr". Imports nothing.

    A name registered twice maps to the first value seen; `load_connector`
    refuses it.
    """
    found: dict[str, str] = {}
    for ep in _entry_points():
        found.setdefault(ep.name, ep.value)
    return dict(sorted(found.items()))


def load_connector(name: str) -> Connector:
    """Import and instantiate the connector registered as `name`.

    Raises ConnectorUnavailable when the name is unknown, registered by more
    than one distribution with different values, or its module fails to import.
    """
    matches = [ep for ep in _entry_points() if ep.name == name]
    if not matches:
        known = ", ".join(available()) or "none"
        raise ConnectorUnavailable(
            name,
            f"no connector registered under that name (known: {known}); "
            "fix the Target's spec.type or install the package that provides it",
        )
    values = sorted({ep.value for ep in matches})
    if len(values) > 1:
        raise ConnectorUnavailable(
            name,
            f"registered more than once ({', '.join(values)}); "
            "uninstall one of the packages that provide it",
        )
    try:
        factory: Any = matches[0].load()
        connector = factory()
    except Exception as exc:  # any import/construct failure is a misconfiguration, not a crash
        raise ConnectorUnavailable(
            name,
            f"{values[0]} failed to load ({type(exc).__name__}: {exc}); "
            "reinstall certgit or the connector package",
        ) from exc
    if getattr(connector, "name", None) != name:
        raise ConnectorUnavailable(
            name,
            f"{values[0]} names itself {getattr(connector, 'name', None)!r}; "
            "the entry-point name and the connector's `name` must agree",
        )
    return connector


def sandbox_for(connector: Connector, target: TargetSpec) -> Sandbox:
    """A Sandbox holding exactly the grants `connector` declares for `target`."""
    from certgit.connectors.sdk.sandbox import Sandbox
    from certgit.connectors.sdk.transport import LocalTransport

    kind = str((target.transport or {}).get("type", "local"))
    if kind == "ssh":
        raise ConnectorUnavailable(
            connector.name, "ssh transport arrives with issue 6; use transport type local"
        )
    if kind != "local":
        raise ConnectorUnavailable(
            connector.name, f"unknown transport {kind!r}; use transport type local"
        )
    return Sandbox(connector.grants(target), LocalTransport(), target=target.name)
