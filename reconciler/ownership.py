"""Cross-document checks of bindings that need the Targets' connectors (run on every load).

- **Path ownership** (errors): every file a binding will write, computed by
  the connector of its Target's type (`FileConnector.paths`, plus companion
  files such as Envoy's SDS file), is owned by exactly one binding per host.
  Two bindings naming one path on one target, two targets whose directories
  overlap on one host (both local, or the same ssh host), and a path written
  as one binding's certificate and another's key are refused at validate
  time, before a graceful restart meets a key that does not match its
  certificate. The problem sits on the binding that named the file by hand
  (else the later one) and names the other one's file:line:col.
- **Key types** (warnings): a Certificate whose key type the Target's
  connector does not list in `accepted_keys` (measured against the real
  server) is reported, not refused; preflight would refuse that deploy.

Relative target directories resolve against the state directory, which the
loader does not know: they resolve against STATE_DIR instead, so they compare
equal among themselves and never with an absolute path. Connectors that are
not FileConnectors, that fail to load, or that raise while computing paths
are skipped (the Target's own problems are reported elsewhere).

Cost: one dict insert per file per binding. Paths are computed once per
(target, overrides) with a stand-in certificate name and then specialised by
string replacement, after checking on the first real name that the connector
treats the name as an opaque string.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from certgit.reconciler.errors import Problem
from certgit.reconciler.model import (
    Binding,
    Certificate,
    FileEntry,
    KeyAlgorithm,
    KeySpec,
    Target,
)

STATE_DIR = "/<state-dir>"
# Stands for the certificate name in memoised paths; names match [a-z0-9.-], so the
# upper-case letters keep it from ever being a real name (or part of one).
_NAME = "CERTGIT-NAME-STANDIN"
_NAME_CHECK = "certgit-name-check.example"  # a real-looking name to verify substitution
_COMPANION = "companion"  # role of files outside ROLES (Envoy SDS, Traefik dynamic config)

# Connectors that loaded once (they are stateless): importing one is the expensive part.
_LOADED: dict[str, Any] = {}

PathElement = str | int


class Positions(Protocol):
    def at(
        self, entry: FileEntry, index: int, path: tuple[PathElement, ...], at_key: bool = False
    ) -> tuple[int, int]: ...


class Located(Protocol):
    """desired._Doc: document index and model."""

    @property
    def index(self) -> int: ...

    @property
    def model(self) -> Any: ...


def key_type(key: KeySpec) -> str:
    """The connectors' name for a key type: "ECDSA-256", "RSA-4096", "Ed25519"."""
    if key.algorithm == KeyAlgorithm.ED25519:
        return "Ed25519"
    return f"{key.algorithm.value}-{key.size}"


def _connector(type_name: str, failed: set[str]) -> Any | None:
    connector = _LOADED.get(type_name)
    if connector is not None or type_name in failed:
        return connector
    from certgit.connectors.sdk.registry import load_connector

    try:
        connector = load_connector(type_name)
    except Exception:  # unavailable connectors are reported as such elsewhere
        failed.add(type_name)
        return None
    _LOADED[type_name] = connector
    return connector


def _host(transport: Mapping[str, Any]) -> tuple[str, str]:
    kind = str(transport.get("type", "local"))
    if kind == "local":
        return ("local", "")
    if kind == "ssh":
        return ("ssh", str(transport.get("host", "")).lower().rstrip("."))
    return (kind, json.dumps(dict(transport), sort_keys=True, default=str))


class _Files(NamedTuple):
    """What one binding writes: parallel roles and paths; `twice` when a path repeats."""

    roles: tuple[str, ...]
    paths: tuple[str, ...]
    twice: bool


class _TargetFiles:
    """The files one Target's connector writes per binding, memoised per overrides."""

    def __init__(self, target: Target, connector: Any, owners: dict[str, Binding]) -> None:
        from certgit.connectors.model import TargetSpec
        from certgit.connectors.sdk.base import FileConnector

        self.name = target.name
        self.type = target.type
        self.owners = owners  # path -> first binding writing it, shared by every target of a host
        self.accepted: frozenset[str] | None = getattr(connector, "accepted_keys", None)
        self.connector = connector
        self.spec = TargetSpec(
            name=target.name,
            type=target.type,
            settings=dict(target.settings),
            work_dir=Path(STATE_DIR, "work", target.name),
            base_dir=Path(STATE_DIR),
            transport=dict(target.transport),
        )
        self.writes_files = False
        self.companions = False
        if isinstance(connector, FileConnector):
            from certgit.connectors.model import Capability

            try:
                # e.g. Caddy's admin-api method deploys without files
                self.writes_files = Capability.FILES in connector.capabilities(self.spec)
            except Exception:  # malformed settings: reported at deploy, nothing to compare
                self.writes_files = False
            self.companions = type(connector).removal_paths is not FileConnector.removal_paths
        self._memo: dict[str, _Files | None] = {}
        # Key types the server refuses (KEY_TYPES names): usually none.
        from certgit.connectors.sdk.base import KEY_TYPES

        accepted = self.accepted
        self.refuses = frozenset(KEY_TYPES) - accepted if accepted is not None else frozenset()
        # Path templates of a binding without overrides (None: not a plain substitution, or
        # the roles repeat a path), checked against a real name on first use.
        self.plain: tuple[str, ...] | None = None
        if self.writes_files:
            template = self._compute(_NAME, {})
            check = self._compute(_NAME_CHECK, {})
            if (
                template is not None
                and check is not None
                and not template.twice
                and template.roles == check.roles
                and tuple(p.replace(_NAME, _NAME_CHECK) for p in template.paths) == check.paths
            ):
                self.plain = template.paths

    def files(self, certificate: str, overrides: Mapping[str, Any]) -> _Files | None:
        """What the binding writes; None when the connector cannot say."""
        key = _overrides_key(overrides)
        if key in self._memo:
            template = self._memo[key]
            if template is None:
                return self._compute(certificate, overrides)
            return _Files(
                template.roles,
                tuple([path.replace(_NAME, certificate) for path in template.paths]),
                template.twice,
            )
        real = self._compute(certificate, overrides)
        template = self._compute(_NAME, overrides)
        if (
            template is None
            or real is None
            or template.roles != real.roles
            or tuple(p.replace(_NAME, certificate) for p in template.paths) != real.paths
        ):
            template = None  # the name is not a plain substitution here: compute every time
        self._memo[key] = template
        return real

    def _compute(self, certificate: str, overrides: Mapping[str, Any]) -> _Files | None:
        from certgit.connectors.model import Removal

        try:
            paths = self.connector.paths(self.spec, certificate, overrides)
            out = list(paths.items())
            if self.companions:
                known = set(paths.values())
                removal = Removal(certificate=certificate, overrides=overrides)
                for path in self.connector.removal_paths(self.spec, removal):
                    if path not in known:
                        known.add(path)
                        out.append((_COMPANION, path))
        except Exception:  # a connector that cannot say: skipped, deploy reports it
            return None
        roles = tuple(role for role, _ in out)
        written = tuple(str(path) for _, path in out)
        return _Files(roles, written, len(set(written)) != len(written))


class _Binding(NamedTuple):
    """One deployTo entry, recorded once however many files it writes."""

    entry: FileEntry
    doc_index: int  # not `index`: that would shadow tuple.index
    certificate: str
    target: _TargetFiles
    position: int  # in deployTo
    overrides: Mapping[str, Any]

    def role_of(self, path: str, after: str | None = None) -> str:
        """The role under which this binding writes `path` (the next one after `after`)."""
        files = self.target.files(self.certificate, self.overrides)
        pairs = zip(files.roles, files.paths, strict=True) if files else ()
        roles = [role for role, written in pairs if written == path]
        if after is not None and after in roles:
            roles = roles[roles.index(after) + 1 :]
        return roles[0] if roles else _COMPANION

    def where(self, role: str) -> tuple[PathElement, ...]:
        """The YAML path of the binding's own name for `role`, else of its target."""
        named = self.overrides.get("files")
        if isinstance(named, Mapping) and role in named:
            return ("spec", "deployTo", self.position, "files", role)
        return ("spec", "deployTo", self.position, "target")


def _overrides_key(overrides: Mapping[str, Any]) -> str:
    if not overrides:
        return ""
    return json.dumps(overrides, sort_keys=True, default=str)


def check_bindings(
    located: Sequence[tuple[FileEntry, Located]],
    connector_types: Collection[str],
    positions: Positions,
    failed: set[str],
) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings): path ownership problems and key-type warnings of every binding.

    `failed` collects connector types that would not load (the caller may keep
    it for the loader's lifetime so they are not retried on every binding).
    """
    hosts: dict[tuple[str, str], dict[str, Binding]] = {}
    targets: dict[str, _TargetFiles | None] = {}
    for _entry, doc in located:
        model = doc.model
        if isinstance(model, Target) and model.name not in targets:
            connector = (
                _connector(model.type, failed) if model.type in connector_types else None
            )
            owners = hosts.setdefault(_host(model.transport), {})
            targets[model.name] = _TargetFiles(model, connector, owners) if connector else None

    # The hot loop (every binding of every load): a path maps to the Binding object
    # itself, so nothing but the path string is allocated per file (fewer objects for
    # the garbage collector to track), and the key type is named only where a target
    # refuses some. Context for messages is looked up only when there is a clash.
    warnings: list[Problem] = []
    clashes: list[tuple[Binding, Binding, str]] = []
    seen: set[str] = set()
    for entry, doc in located:
        cert = doc.model
        if not isinstance(cert, Certificate) or cert.name in seen:
            continue  # a duplicate Certificate is its own problem, not a path clash
        name = cert.name
        seen.add(name)
        kind: str | None = None
        for position, binding in enumerate(cert.deploy_to):
            target = targets.get(binding.target)
            if target is None:
                continue
            if target.refuses:
                kind = kind or key_type(cert.key)
                if kind in target.refuses:
                    warnings.append(
                        _key_warning(entry, doc.index, cert, position, target, positions)
                    )
            if not target.writes_files:
                continue
            overrides = binding.overrides
            owners = target.owners
            plain = target.plain if not overrides else None
            if plain is not None:  # the common case: the target's templates, no overrides
                for template in plain:
                    path = template.replace(_NAME, name)
                    first = owners.setdefault(path, binding)
                    if first is not binding:
                        clashes.append((binding, first, path))
                continue
            files = target.files(name, overrides)
            if files is None:
                continue
            for path in files.paths:
                first = owners.setdefault(path, binding)
                if first is not binding:
                    clashes.append((binding, first, path))
            if files.twice:
                for path in {p for p in files.paths if files.paths.count(p) > 1}:
                    clashes.append((binding, binding, path))
    if not clashes:
        return [], warnings
    context = _context(located, targets, {id(b) for pair in clashes for b in pair[:2]})
    errors = [
        _clash(context[id(later)], context[id(first)], path, positions)
        for later, first, path in clashes
    ]
    return errors, warnings


def _context(
    located: Sequence[tuple[FileEntry, Located]],
    targets: Mapping[str, _TargetFiles | None],
    wanted: set[int],
) -> dict[int, _Binding]:
    """id(Binding) -> where it is, for the bindings named in clashes (one pass, errors only)."""
    found: dict[int, _Binding] = {}
    seen: set[str] = set()
    for entry, doc in located:
        cert = doc.model
        if not isinstance(cert, Certificate) or cert.name in seen:
            continue
        seen.add(cert.name)
        for position, binding in enumerate(cert.deploy_to):
            target = targets.get(binding.target)
            if id(binding) in wanted and target is not None:
                found[id(binding)] = _Binding(
                    entry, doc.index, cert.name, target, position, binding.overrides
                )
    return found


def _key_warning(
    entry: FileEntry,
    index: int,
    cert: Certificate,
    position: int,
    target: _TargetFiles,
    positions: Positions,
) -> Problem:
    from certgit.connectors.sdk.base import KEY_TYPES

    where = ("spec", "deployTo", position, "target")
    line, column = positions.at(entry, index, where)
    kind = key_type(cert.key)
    accepted = ", ".join(k for k in KEY_TYPES if k in (target.accepted or ())) or "none"
    return Problem(
        entry.path,
        line,
        column,
        f'Certificate "{cert.name}": spec.deployTo[{position}].target: target '
        f'"{target.name}" ({target.type}) does not accept {kind} keys (it accepts {accepted}); '
        "its deploy will be refused before anything is written: change spec.key or bind "
        "this certificate to another target",
    )


_KEY_ROLES = frozenset({"key", "combined"})


def _clash(later: _Binding, first: _Binding, path: str, positions: Positions) -> Problem:
    """The problem of two bindings (or two roles of one) writing `path`.

    It sits on the binding that named the file by hand (else the later one)
    and names the other's position.
    """
    same = first == later  # one binding, two of its roles
    later_role = later.role_of(path)
    first_role = first.role_of(path, after=later_role if same else None)
    if same:
        later_role, first_role = first_role, later_role  # report at the second role's name
    elif "files" in first.where(first_role) and "files" not in later.where(later_role):
        later, first, later_role, first_role = first, later, first_role, later_role
    where = later.where(later_role)
    line, column = positions.at(later.entry, later.doc_index, where)
    first_line, first_column = positions.at(first.entry, first.doc_index, first.where(first_role))
    at = f"{first.entry.path}:{first_line}:{first_column}"
    field = ".".join(str(p) for p in where[3:])
    prefix = f'Certificate "{later.certificate}": spec.deployTo[{later.position}].{field}: '
    if same:
        return Problem(
            later.entry.path,
            line,
            column,
            f"{prefix}its {_describe(later_role)} and its {_describe(first_role)} on target "
            f'"{later.target.name}" are both {path} (at {at}): give each role its own file name',
        )
    whose = f'Certificate "{first.certificate}"'
    mixed = (later_role in _KEY_ROLES) != (first_role in _KEY_ROLES) and _COMPANION not in (
        later_role,
        first_role,
    )
    via = f'on target "{first.target.name}"'
    overlap = ""
    if first.target is not later.target:
        overlap = (
            f' (targets "{first.target.name}" and "{later.target.name}" write to overlapping '
            "directories on the same host)"
        )
    if mixed:
        reason = (
            f"{path} would hold this binding's {_describe(later_role)} and {whose}'s "
            f"{_describe(first_role)} {via}{overlap} (at {at}); the server would load a key "
            "that does not match its certificate and fail on reload"
        )
    else:
        reason = (
            f'target "{later.target.name}" would write its {_describe(later_role)} to {path}, '
            f"which {whose} already writes as its {_describe(first_role)} {via}{overlap} "
            f"(at {at}); each would overwrite the other's file"
        )
    return Problem(
        later.entry.path,
        line,
        column,
        f"{prefix}{reason}: give one of them a different file name (deployTo[].files or "
        "the Target's settings.files) or directory",
    )


def _describe(role: str) -> str:
    if role == "key":
        return "private key"
    if role == "combined":
        return "combined certificate + key file"
    if role == _COMPANION:
        return "companion config file"
    return role
