"""Deny-by-default grants: which paths, endpoints and binaries a connector may touch.

Matching is structural, never a raw string prefix (DESIGN §9): paths compare
normalised component by component, so `/etc/ssl` grants `/etc/ssl/x.pem` and
never `/etc/ssl-evil/x.pem`; hosts compare exactly (case-insensitive, IPv6 in
canonical form), so `fw.example:443` never grants `fw.example.evil.com:443`.

`Grants` itself is pure: it does not touch the filesystem. The sandbox resolves
`..` and symlinks through the transport (on the target's side) before asking.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass


def normalize_path(path: str) -> str:
    """Lexically normalise an absolute POSIX path (`..`, `.`, `//`); refuse relative paths.

    Raises ValueError for a relative or empty path: a grant or a checked path
    must say exactly where it is.
    """
    if not path or not path.startswith("/"):
        raise ValueError(f"path {path!r} is not absolute; grants and targets use absolute paths")
    if "\x00" in path:
        raise ValueError("path contains a NUL byte")
    normal = posixpath.normpath(path)
    # POSIX keeps a leading "//" as implementation-defined; treat it as "/".
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    return normal


def path_within(path: str, prefix: str) -> bool:
    """True if normalised `path` equals `prefix` or lies below it, compared by component."""
    try:
        p_parts = [c for c in normalize_path(path).split("/") if c]
        g_parts = [c for c in normalize_path(prefix).split("/") if c]
    except ValueError:
        return False
    return p_parts[: len(g_parts)] == g_parts


def _canonical_host(host: str) -> str:
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.rstrip(".").lower()
    try:
        # "0:0::1" and "::1" are the same endpoint; compare the canonical form.
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port") into a canonical host and an int port.

    Raises ValueError when the port is missing or not a number: a dial grant
    without a port would silently grant every port.
    """
    text = endpoint.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text[close + 1 :].startswith(":"):
            raise ValueError(f'net.dial grant {endpoint!r}: write IPv6 as "[addr]:port"')
        host, port_text = text[1:close], text[close + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(
                f'net.dial grant {endpoint!r}: expected "host:port" (IPv6 as "[addr]:port")'
            )
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f'net.dial grant {endpoint!r}: expected "host:port" with port 1-65535')
    return _canonical_host(host), int(port_text)


def format_endpoint(host: str, port: int) -> str:
    """The grant spelling of an endpoint: "host:port", "[v6]:port"."""
    canonical = _canonical_host(host)
    return f"[{canonical}]:{port}" if ":" in canonical else f"{canonical}:{port}"


@functools.lru_cache(maxsize=64)
def _deny_matcher(
    prefixes: tuple[str, ...], names: tuple[str, ...]
) -> tuple[tuple[tuple[int, frozenset[tuple[str, ...]]], ...], re.Pattern[str] | None]:
    """Deny prefixes grouped by depth (component tuples) and name patterns as one regex."""
    by_depth: dict[int, set[tuple[str, ...]]] = {}
    for prefix in prefixes:
        try:
            parts = tuple(c for c in normalize_path(prefix).split("/") if c)
        except ValueError:
            continue
        by_depth.setdefault(len(parts), set()).add(parts)
    grouped = tuple((depth, frozenset(v)) for depth, v in sorted(by_depth.items()))
    pattern = re.compile("|".join(fnmatch.translate(n) for n in names)) if names else None
    return grouped, pattern


@dataclass(frozen=True)
class Grants:
    """What a connector may do on one target; everything else is denied."""

    fs_read: tuple[str, ...] = ()  # absolute directory/file prefixes
    fs_write: tuple[str, ...] = ()
    net_dial: tuple[str, ...] = ()  # "host:port", "[::1]:443"
    process_exec: tuple[str, ...] = ()  # absolute binary paths, matched exactly
    # Never readable or writable, whatever the grants above say: prefixes, and name
    # patterns matched against every component (the site's deny list: `.ssh`, `sudoers*`).
    fs_deny: tuple[str, ...] = ()
    fs_deny_names: tuple[str, ...] = ()

    def denies(self, path: str) -> bool:
        """True if `path` lies under an fs_deny prefix or has a component named in fs_deny_names."""
        if not self.fs_deny and not self.fs_deny_names:
            return False
        prefixes, names = _deny_matcher(self.fs_deny, self.fs_deny_names)
        try:
            parts = tuple(c for c in normalize_path(path).split("/") if c)
        except ValueError:
            return True  # not an absolute path: nothing to grant
        # checked on every observation and write: one split, set lookups per depth
        if any(parts[:depth] in wanted for depth, wanted in prefixes):
            return True
        return names is not None and any(names.fullmatch(part) for part in parts)

    def allows_read(self, path: str) -> bool:
        """True if `path` (already resolved by the caller) lies under an fs.read grant."""
        return any(path_within(path, g) for g in self.fs_read) and not self.denies(path)

    def allows_write(self, path: str) -> bool:
        """True if `path` (already resolved by the caller) lies under an fs.write grant."""
        return any(path_within(path, g) for g in self.fs_write) and not self.denies(path)

    def allows_dial(self, host: str, port: int) -> bool:
        """True if exactly host:port is granted (host case-insensitive, port must match)."""
        want = (_canonical_host(host), int(port))
        for grant in self.net_dial:
            try:
                if parse_endpoint(grant) == want:
                    return True
            except ValueError:
                continue
        return False

    def allows_exec(self, binary: str) -> bool:
        """True if the absolute, resolved `binary` is exactly a process.exec grant."""
        try:
            wanted = normalize_path(binary)
        except ValueError:
            return False
        for grant in self.process_exec:
            try:
                if normalize_path(grant) == wanted:
                    return True
            except ValueError:
                continue
        return False

    def resolved(self, realpath: Callable[[str], str]) -> Grants:
        """These grants plus each path grant resolved through `realpath`.

        A grant on `/bin/sh` must also match its real location
        (`/usr/bin/dash`), since checked paths are resolved before matching.
        """

        def both(entries: tuple[str, ...]) -> tuple[str, ...]:
            out: list[str] = []
            for entry in entries:
                try:
                    candidates = (normalize_path(entry), normalize_path(realpath(entry)))
                except (ValueError, OSError):
                    continue
                for candidate in candidates:
                    if candidate not in out:
                        out.append(candidate)
            return tuple(out)

        return Grants(
            fs_read=both(self.fs_read),
            fs_write=both(self.fs_write),
            net_dial=self.net_dial,
            process_exec=both(self.process_exec),
            fs_deny=both(self.fs_deny),
            fs_deny_names=self.fs_deny_names,
        )

    def describe(self) -> str:
        """One line listing every grant, for error messages and `validate_only`."""
        parts = [f"fs.read:{p}" for p in self.fs_read]
        parts += [f"fs.write:{p}" for p in self.fs_write]
        parts += [f"net.dial:{e}" for e in self.net_dial]
        parts += [f"process.exec:{b}" for b in self.process_exec]
        parts += [f"deny:{p}" for p in self.fs_deny]
        return ", ".join(parts) if parts else "(none)"
