"""One target's bounds under the site policy, and the sandbox grants they leave.

`bounds_for(policy, target, state_dir)` gathers what the site allows the
target (writable roots, commands, endpoints) and what nobody may touch (the
deny list, the state directory, certgit's own files). The loader asks it
about a commit's paths, argv and endpoints (`sitecheck`); the executor,
observation and the dry run pass a connector's declared grants through
`restrict`, so the sandbox holds the intersection of what the connector
declares and what the site allows (DESIGN §4, §10).
"""

from __future__ import annotations

import os
import posixpath
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from certgit.connectors.sdk.grants import Grants, parse_endpoint, path_within
from certgit.reconciler.sitepolicy import (
    DENY_COMPONENTS,
    DENY_ROOTS,
    CommandRule,
    EndpointRule,
    SitePolicy,
    denied_component,
    resolve_argv0,
)


@dataclass(frozen=True)
class BuiltinDefaults:
    """A built-in connector's own directory and commands: allowed unless the site says not."""

    connector: str
    directory: str | None
    commands: tuple[tuple[str, ...], ...]


@cache
def builtin_defaults() -> dict[str, BuiltinDefaults]:
    """Defaults of the connectors shipped in certgit itself (not third-party ones)."""
    from certgit.connectors.sdk.registry import available, load_connector

    out: dict[str, BuiltinDefaults] = {}
    for name, value in available().items():
        if not value.startswith("certgit.connectors."):
            continue
        try:
            connector = load_connector(name)
        except Exception:  # an unloadable connector contributes nothing
            continue
        commands = tuple(
            tuple(argv)
            for argv in (
                getattr(connector, "validate_command", None),
                getattr(connector, "reload_command", None),
            )
            if argv
        )
        out[name] = BuiltinDefaults(name, getattr(connector, "default_directory", None), commands)
    return out


@dataclass(frozen=True)
class TargetBounds:
    """What the site lets one target touch. Paths here are normalised and absolute."""

    target: str
    roots: tuple[str, ...]
    deny: tuple[str, ...]
    commands: tuple[CommandRule, ...]
    endpoints: tuple[EndpointRule, ...]
    source: str
    state_dirs: tuple[str, ...] = ()  # the state directory (as given and resolved)

    # -- questions the loader asks --------------------------------------------------------

    def path_problem(self, path: str, realpath: object = os.path.realpath) -> str | None:
        """Why the site refuses writes to `path` (after resolving symlinks), or None."""
        normal = posixpath.normpath(path)
        resolved = _realpath(normal, realpath)
        for candidate in dict.fromkeys((normal, resolved)):
            part = denied_component(candidate)
            if part is not None:
                return f"{candidate} is never writable (a {part!r} path component)"
            for state in self.state_dirs:
                if path_within(candidate, state) and not path_within(
                    candidate, posixpath.join(state, "targets")
                ):
                    return (
                        f"{candidate} is in the state directory {state}, which is never a "
                        "target (relative directories go under its targets/)"
                    )
            for deny in self.deny:
                if path_within(candidate, deny):
                    return f"{candidate} is never writable (under {deny})"
        if not any(path_within(resolved, root) for root in self.roots):
            shown = f"{normal} (resolves to {resolved})" if resolved != normal else normal
            allowed = ", ".join(self.roots) or "nothing"
            return (
                f"{shown} is outside the directories the site policy allows this target "
                f"({allowed}); add a root to [paths] allow or a [[scope]] in {self.source}"
            )
        return None

    def command_problem(self, argv: Sequence[str], path_env: str | None = None) -> str | None:
        """Why the site refuses this validate/reload argv, or None."""
        found = resolve_argv0(argv[0], path_env)
        if found is None:
            return (
                f"{argv[0]!r} is not found on PATH; write the absolute path of a command "
                f"the site policy allows"
            )
        resolved = [found, *argv[1:]]
        matched = [rule for rule in self.commands if rule.matches(resolved)]
        if matched:
            for rule in matched:
                if not rule.under:
                    return None
            # only hook-directory rules: the program must be the operator's, not editable
            # by others (it runs as certgit's user, often root)
            return _hook_problem(_realpath(found, os.path.realpath), matched[0].argv[0])
        allowed = "; ".join(rule.describe() for rule in self.commands) or "none"
        real = _realpath(found, os.path.realpath)
        runs = f" ({argv[0]} runs {real} here)" if real != argv[0] else ""
        return (
            f"command `{shlex.join(argv)}` is not allowed by the site policy{runs} (allowed: "
            f"{allowed}); an operator adds it under [commands] allow in {self.source}"
        )

    def endpoint_problem(self, endpoint: str) -> str | None:
        """Why the site refuses dialling `endpoint` ("host:port"), or None."""
        try:
            host, port = parse_endpoint(endpoint)
        except ValueError as exc:
            return str(exc)
        if any(rule.matches(host, port) for rule in self.endpoints):
            return None
        allowed = ", ".join(rule.describe() for rule in self.endpoints) or "none"
        return (
            f"endpoint {endpoint} is not allowed by the site policy (allowed: {allowed}); "
            f"an operator adds it under [endpoints] allow in {self.source}"
        )

    # -- the sandbox ----------------------------------------------------------------------

    def restrict(self, grants: Grants) -> Grants:
        """The intersection of a connector's grants and these bounds, plus the deny list.

        fs.write keeps each declared prefix that lies under an allowed root, and
        narrows one that contains a root to that root. Reads stay as declared
        (a dry run reads the server's config tree) but the deny list applies to
        them too. process.exec keeps binaries some allowed command runs;
        net.dial keeps endpoints the site allows.
        """
        writes: list[str] = []
        for grant in grants.fs_write:
            for root in self.roots:
                if path_within(grant, root):
                    writes.append(grant)
                elif path_within(root, grant):
                    writes.append(root)
        execs = tuple(
            b for b in grants.process_exec if any(r.allows_binary(b) for r in self.commands)
        )
        dials: list[str] = []
        for endpoint in grants.net_dial:
            if self.endpoint_problem(endpoint) is None:
                dials.append(endpoint)
        return replace(
            grants,
            fs_write=tuple(dict.fromkeys(writes)),
            process_exec=execs,
            net_dial=tuple(dials),
            fs_deny=tuple(dict.fromkeys((*grants.fs_deny, *self.deny))),
            fs_deny_names=tuple(dict.fromkeys((*grants.fs_deny_names, *DENY_COMPONENTS))),
        )


def _hook_problem(program: str, directory: str) -> str | None:
    """Why a program in an operator's hook directory may not run: it, or a directory
    between it and the hook directory, is writable by others or owned by another user."""
    real_dir = _realpath(directory, os.path.realpath)
    path = program
    while True:
        try:
            info = os.stat(path)
        except OSError as exc:
            return f"hook {program} cannot be checked ({exc.strerror})"
        writable = info.st_mode & 0o002 or (
            info.st_mode & 0o020 and info.st_gid not in (0, os.getgid())
        )
        if writable or info.st_uid not in (0, os.getuid()):
            return (
                f"hook {program} cannot run: {path} is writable by others or owned by "
                f"another user (mode {info.st_mode & 0o7777:04o}, uid {info.st_uid}); "
                f"a hook others can edit runs their code as this user: chmod go-w {path}"
            )
        if path == real_dir or path == "/":
            return None
        path = posixpath.dirname(path)


def absolute_path_env() -> str:
    """PATH without relative entries (`bin`, `.`, an empty one): a built-in connector's
    own command is the binary an absolute PATH entry names, never one found relative to
    the working directory (which may be a checkout of the desired-state repository)."""
    entries = (os.environ.get("PATH") or os.defpath).split(os.pathsep)
    return os.pathsep.join(e for e in entries if e.startswith("/"))


def _realpath(path: str, realpath: object) -> str:
    try:
        return posixpath.normpath(str(realpath(path)))  # type: ignore[operator]
    except (OSError, ValueError):
        return path


def bounds_for(
    policy: SitePolicy,
    name: str,
    type_: str,
    labels: Mapping[str, str],
    state_dir: Path,
) -> TargetBounds:
    """The bounds of target `name` of type `type_` with `labels` under `policy`."""
    allowances = policy.allowances_for(name, type_, labels)
    state = posixpath.normpath(str(Path(state_dir).absolute()))
    roots: list[str] = []
    commands: list[CommandRule] = []
    if policy.builtin_paths:
        roots.append(posixpath.join(state, "targets"))
        defaults = builtin_defaults().get(type_)
        if defaults is not None and defaults.directory:
            roots.append(defaults.directory)
    roots.extend(allowances.paths)
    if policy.builtin_commands:
        defaults = builtin_defaults().get(type_)
        for argv in defaults.commands if defaults is not None else ():
            found = resolve_argv0(argv[0], absolute_path_env())
            if found is not None:
                commands.append(CommandRule((found, *argv[1:]), origin=f"builtin {type_}"))
    commands.extend(allowances.commands)
    endpoints = (*policy.loopback(), *allowances.endpoints)
    deny = [*DENY_ROOTS, *policy.protected]
    # The state directory itself is never a target, but its targets/ subtree is the
    # default home of relative target directories.
    real_state = _realpath(state, os.path.realpath)
    for candidate in dict.fromkeys((state, real_state)):
        deny.extend(posixpath.join(candidate, entry) for entry in _state_entries(candidate))
    return TargetBounds(
        target=name,
        roots=tuple(dict.fromkeys(roots)),
        deny=tuple(dict.fromkeys(deny)),
        commands=tuple(dict.fromkeys(commands)),
        endpoints=tuple(dict.fromkeys(endpoints)),
        source=policy.where,
        state_dirs=tuple(dict.fromkeys((state, real_state))),
    )


# Everything directly in the state directory except targets/ is certgit's own.
_STATE_OWN = (
    "state.db",
    "state.db-wal",
    "state.db-shm",
    "master.key",
    "audit.head",
    "ca",
    "work",
    "cache",
    "mirror",
    "git",
    "lock",
    "site.toml",
    "certgit.toml",
)


def _state_entries(state: str) -> list[str]:
    try:
        present = [e for e in os.listdir(state) if e != "targets"]
    except OSError:
        present = []
    return list(dict.fromkeys((*_STATE_OWN, *present)))


def sandbox_factory(
    policy: SitePolicy,
    state_dir: Path,
    labels_of: Mapping[str, Mapping[str, str]],
) -> Callable[[Any, Any], Any]:
    """A sandbox maker for the executor, observation and the dry run.

    Each sandbox holds the connector's declared grants restricted to the
    target's site bounds (`TargetBounds.restrict`). `labels_of` gives each
    desired target's labels; a target no longer desired (an orphan being
    removed) is bounded by the site-wide allowances and name/type scopes.
    """

    def make(connector: Any, spec: Any) -> Any:
        from certgit.connectors.sdk.registry import sandbox_for
        from certgit.connectors.sdk.sandbox import Sandbox
        from certgit.connectors.sdk.transport import LocalTransport

        declared = sandbox_for(connector, spec)  # refuses unknown transports
        bounds = bounds_for(policy, spec.name, spec.type, labels_of.get(spec.name, {}), state_dir)
        transport = declared.transport
        if isinstance(transport, LocalTransport):
            # children see only what the site passes through (never CERTGIT_*)
            transport = LocalTransport(passthrough=policy.env_passthrough)
        return Sandbox(bounds.restrict(declared.grants), transport, target=spec.name)

    return make
