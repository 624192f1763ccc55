"""Build the desired state of one commit from its YAML files.

Per file: one libyaml parse (`yamlsafe.parse_yaml`), one schema validation
per document (`certgit.schemas.validator`), semantic checks the schema cannot
express, and conversion to model objects. That result is cached by the file's
content key, so an unchanged file is never read or validated again; only the
cross-document checks (duplicate names, dangling references, file paths two
bindings would both write: `certgit.reconciler.ownership`) re-run per load.
Key types a bound Target does not accept are warnings (`DesiredState.warnings`).

Any problem anywhere rejects the whole commit: `load` raises `ConfigErrors`
with every positioned problem of every file.

Every file of the commit, YAML or not (`others`), is scanned for committed
private keys (`certgit.reconciler.keyscan`), the verdict cached by content key
like the parse. Values of SOPS-encrypted files named by `secretRef.sops` are
decrypted on every load (`certgit.reconciler.secretload`), never cached, and
attached to the assembled model only (the cached model never holds them).
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
from collections.abc import (
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from certgit.reconciler.durations import format_duration, parse_duration
from certgit.reconciler.errors import ConfigErrors, Problem
from certgit.reconciler.keyscan import find_private_keys
from certgit.reconciler.model import (
    KINDS,
    ApprovalHook,
    ApprovalRule,
    Binding,
    Certificate,
    DesiredState,
    FileEntry,
    Issuer,
    KeyAlgorithm,
    KeyRotation,
    KeySpec,
    Policy,
    SecretRef,
    SopsRef,
    SourceRef,
    Target,
    VerifySpec,
)
from certgit.reconciler.ownership import check_bindings
from certgit.reconciler.yamlsafe import MAX_FILE_BYTES, PositionIndex, parse_yaml
from certgit.schemas.validator import validate_document

_CACHE_PREFIX = "certgit.desired/v1:"
_SCAN_PREFIX = "certgit.keyscan/v1:"  # verdicts for non-YAML files, by content key
_DEFAULT_KEY_SIZE = {KeyAlgorithm.ECDSA: 256, KeyAlgorithm.RSA: 2048, KeyAlgorithm.ED25519: None}

PathElement = str | int
Model = Issuer | Certificate | Target | Policy
# reports a problem of the document being built: (path, message, at_key)
Report = Callable[..., None]
# a whole-commit check: (located documents, positions) -> problems (see DesiredLoader)
Check = Callable[[Sequence[tuple["FileEntry", "_Doc"]], "_Positions"], Iterable["Problem"]]


@dataclass(frozen=True)
class _Doc:
    """One document of a file: enough for cross-document checks, and its model if valid."""

    index: int
    kind: str
    name: str
    model: Model | None  # None when the document itself has problems


@dataclass(frozen=True)
class _FileResult:
    """What the cache keeps per file content: built documents and positioned problems."""

    docs: tuple[_Doc, ...]
    problems: tuple[tuple[int, int, str], ...]  # (line, column, message); path added per load


@dataclass(frozen=True)
class _Pending:
    """A problem found before it has a position: document index and JSON path."""

    index: int
    path: tuple[PathElement, ...]
    at_key: bool
    message: str


class DesiredLoader:
    """Loads commits into `DesiredState`, caching per-file work by content key.

    `cache` may be any mutable mapping shared across loaders (values pickle);
    without one, the loader keeps its own and drops entries of files that
    vanished from the latest load. `connector_types` are the Target types that
    can be deployed (default: the connectors installed in the
    `certgit.connectors` entry-point group); it is checked on every load, not
    cached, so installing a connector takes effect without a new commit.
    """

    def __init__(
        self,
        cache: MutableMapping[str, Any] | None = None,
        connector_types: Collection[str] | None = None,
        checks: Sequence[Check] = (),
        sops: Any = None,
    ) -> None:
        # Decrypts `secretRef.sops` files (a sops.SopsDecryptor); None: no age key configured.
        self._sops = sops
        # Extra whole-commit checks run on every load, never cached (the site policy's
        # bounds, which live outside Git and may change between loads of one commit).
        self._checks = tuple(checks)
        self._owns_cache = cache is None
        self._cache: MutableMapping[str, Any] = {} if cache is None else cache
        if connector_types is None:
            from certgit.connectors.sdk.registry import available

            connector_types = available()
        self._connector_types = frozenset(connector_types)
        self._failed_connectors: set[str] = set()  # types that would not load, not retried

    def load(
        self, files: Iterable[FileEntry], commit: str | None, others: Iterable[FileEntry] = ()
    ) -> DesiredState:
        """Validate and build every document of `files`.

        `others` are the commit's remaining files (not desired state): each is
        scanned for committed private keys, and `secretRef.sops` may name one.
        Raises ConfigErrors with every problem of the commit (paths exactly as
        in the FileEntry) when anything is wrong.
        """
        entries = sorted(files, key=lambda entry: entry.path)
        rest = sorted(others, key=lambda entry: entry.path)
        problems: list[Problem] = []
        located: list[tuple[FileEntry, _Doc]] = []
        used_keys: set[str] = set()
        def cached(
            key: str, kind: type, make: Callable[[bytes], Any], read: Callable[[], bytes]
        ) -> Any:
            # per content key: a file (or blob) seen before is never parsed or scanned again
            used_keys.add(key)
            value = self._cache.get(key)
            if not isinstance(value, kind):
                value = self._cache[key] = make(read())
            return value

        for entry in entries:
            result = cached(_CACHE_PREFIX + entry.key, _FileResult, build_file, entry.read)
            problems.extend(
                Problem(entry.path, line, col, msg) for line, col, msg in result.problems
            )
            located.extend((entry, doc) for doc in result.docs)
        for entry in rest:
            found = cached(_SCAN_PREFIX + entry.key, tuple, find_private_keys, entry.read)
            problems.extend(Problem(entry.path, line, col, msg) for line, col, msg in found)
        if self._owns_cache:
            for stale in [key for key in self._cache if key not in used_keys]:
                del self._cache[stale]

        problems.extend(_cross_check(located, self._connector_types))
        ownership, warnings = check_bindings(
            located, self._connector_types, _Positions(), self._failed_connectors
        )
        problems.extend(ownership)
        positions = _Positions()
        for check in self._checks:
            problems.extend(check(located, positions))
        from certgit.reconciler.secretload import decrypt_sops_refs

        secrets, failed = decrypt_sops_refs(located, (*entries, *rest), self._sops, positions)
        problems.extend(failed)
        if problems:
            raise ConfigErrors(problems)
        return _assemble(located, commit, warnings, secrets)


def load_directory(root: Path, checks: Sequence[Check] = (), sops: Any = None) -> DesiredState:
    """Load every `*.yaml`/`*.yml` under `root` (skipping dot-files and dot-directories).

    Paths are relative to `root` in POSIX form, keys are SHA-256 of the bytes,
    and symlinks that lead out of `root` are ignored. Every other file
    (dot-files too, `.git` excepted) is scanned for committed private keys.
    `checks` and `sops`: see DesiredLoader.
    """
    yaml_files, others = directory_files(root)
    return DesiredLoader(checks=checks, sops=sops).load(yaml_files, None, others)


def directory_entries(root: Path) -> list[FileEntry]:
    """The YAML files under `root` as FileEntry objects (content read once, now)."""
    return directory_files(root)[0]


def directory_files(root: Path) -> tuple[list[FileEntry], list[FileEntry]]:
    """(desired-state YAML files, every other file) under `root`, as FileEntry objects.

    The YAML files are read now (at most one byte over the loader's cap); the
    others only when the loader scans them.
    """
    base = root.resolve()
    entries: list[FileEntry] = []
    others: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        hidden_dir = any(part.startswith(".") for part in Path(dirpath).relative_to(base).parts)
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for filename in sorted(filenames):
            full = Path(dirpath, filename)
            if not full.resolve().is_relative_to(base) or not full.resolve().is_file():
                continue  # a symlink out of the repo, or to something that is not a file
            path = full.relative_to(base).as_posix()
            if hidden_dir or filename.startswith(".") or not filename.endswith((".yaml", ".yml")):
                data = full.read_bytes()
                key = hashlib.sha256(data).hexdigest()
                others.append(FileEntry(path=path, key=key, read=_reader(data)))
                continue
            with full.open("rb") as handle:
                # One byte over the cap is enough for the loader to refuse the file.
                data = handle.read(MAX_FILE_BYTES + 1)
            entries.append(
                FileEntry(path=path, key=hashlib.sha256(data).hexdigest(), read=_reader(data))
            )
    return sorted(entries, key=lambda e: e.path), sorted(others, key=lambda e: e.path)


def _reader(data: bytes) -> Any:
    return lambda: data


# --------------------------------------------------------------------------- one file


def build_file(data: bytes) -> _FileResult:
    """Parse, validate and build one file; problems positioned without a path.

    A committed private key anywhere in the file is a problem. A document with
    top-level `sops` metadata and no `kind` is a SOPS-encrypted file (data for
    `secretRef.sops`), not desired state: it is skipped.
    """
    parsed = parse_yaml(data, "")
    fixed = [(p.line, p.column, p.message) for p in parsed.problems]
    fixed.extend(find_private_keys(data))
    pending: list[_Pending] = []
    docs: list[_Doc] = []
    for index, doc in parsed.documents:
        if is_sops_document(doc):
            continue
        violations = validate_document(doc)
        model: Model | None = None
        if violations:
            pending.extend(_Pending(index, v.path, v.at_key, v.message) for v in violations)
        else:
            model, semantic = _build(doc, index)
            if semantic:
                pending.extend(semantic)
                model = None
        kind = doc.get("kind")
        metadata = doc.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        if kind in KINDS and isinstance(name, str):
            docs.append(_Doc(index, kind, name, model))
    if pending:
        positions = PositionIndex(data)
        for item in pending:
            line, column = positions.position(item.index, item.path, item.at_key)
            fixed.append((line, column, item.message))
    return _FileResult(tuple(docs), tuple(fixed))


def is_sops_document(doc: Any) -> bool:
    """True for a SOPS-encrypted YAML document: `sops` metadata at the top, no `kind`."""
    return (
        isinstance(doc, dict)
        and "kind" not in doc
        and isinstance(doc.get("sops"), dict)
        and "mac" in doc["sops"]
    )


def _build(doc: dict[str, Any], index: int) -> tuple[Model | None, list[_Pending]]:
    kind = doc["kind"]
    metadata = doc["metadata"]
    name: str = metadata["name"]
    labels = dict(metadata.get("labels") or {})
    spec: dict[str, Any] = doc.get("spec") or {}
    prefix = f'{kind} "{name}": '
    problems: list[_Pending] = []

    def problem(path: tuple[PathElement, ...], message: str, at_key: bool = False) -> None:
        problems.append(_Pending(index, path, at_key, prefix + message))

    model: Model
    if kind == "Issuer":
        model = _build_issuer(name, labels, spec, problem)
    elif kind == "Certificate":
        model = _build_certificate(name, labels, spec, problem)
    elif kind == "Target":
        model = _build_target(name, labels, spec)
    else:
        model = _build_policy(name, labels, spec)
    return model, problems


def _build_issuer(
    name: str, labels: dict[str, str], spec: dict[str, Any], problem: Report
) -> Issuer:
    local = spec.get("localCA") or {}
    cert_ref, key_ref = local.get("certificateRef"), local.get("keyRef")
    if (cert_ref is None) != (key_ref is None):
        problem(
            ("spec", "localCA"),
            "spec.localCA: give both certificateRef and keyRef, or neither "
            "(certgit then creates the CA in its state directory)",
            at_key=True,
        )
    return Issuer(
        name=name,
        type=spec["type"],
        labels=labels,
        ca_certificate=secret_ref(cert_ref) if cert_ref else None,
        ca_key=secret_ref(key_ref) if key_ref else None,
        ca_common_name=local.get("commonName"),
        settings=dict(spec),
        source=None,
    )


def secret_ref(raw: Mapping[str, Any]) -> SecretRef:
    """The model of a schema-valid `secretRef` mapping."""
    sops = raw.get("sops")
    return SecretRef(
        env=raw.get("env"),
        file=raw.get("file"),
        sops=SopsRef(file=sops["file"], key=sops["key"]) if sops else None,
    )


def _duration(
    spec: dict[str, Any], field: str, default: timedelta | None, problem: Report
) -> timedelta | None:
    if field not in spec:
        return default
    try:
        return parse_duration(spec[field])
    except ValueError as exc:
        problem(("spec", field), f"spec.{field}: {exc}")
        return default


def _build_certificate(
    name: str, labels: dict[str, str], spec: dict[str, Any], problem: Report
) -> Certificate:
    common_name = spec.get("commonName")
    dns_names = tuple(spec.get("dnsNames") or ())
    ips: list[str] = []
    for position, raw in enumerate(spec.get("ipAddresses") or ()):
        try:
            ips.append(str(ipaddress.ip_address(raw)))
        except ValueError:
            problem(
                ("spec", "ipAddresses", position),
                f'spec.ipAddresses[{position}]: "{raw}" is not an IPv4 or IPv6 address',
            )
    if not common_name and not dns_names and not spec.get("ipAddresses"):
        problem(("spec",), "give at least one of commonName, dnsNames or ipAddresses", at_key=True)

    key = spec.get("key") or {}
    algorithm = KeyAlgorithm(key.get("algorithm", KeyAlgorithm.ECDSA.value))
    key_spec = KeySpec(
        algorithm=algorithm,
        size=key.get("size", _DEFAULT_KEY_SIZE[algorithm]),
        rotation=KeyRotation(key.get("rotation", KeyRotation.ALWAYS.value)),
    )

    duration = _duration(spec, "duration", timedelta(days=90), problem) or timedelta(days=90)
    renew_before = _duration(spec, "renewBefore", None, problem)
    if renew_before is not None and renew_before >= duration:
        problem(
            ("spec", "renewBefore"),
            f"spec.renewBefore ({format_duration(renew_before)}) must be shorter than "
            f"spec.duration ({format_duration(duration)})",
        )
    if "renewBefore" in spec and "renewBeforePercentage" in spec:
        problem(
            ("spec", "renewBeforePercentage"),
            "give either renewBefore or renewBeforePercentage, not both",
            at_key=True,
        )

    bindings: list[Binding] = []
    seen_targets: set[str] = set()
    for position, entry in enumerate(spec.get("deployTo") or ()):
        target = entry["target"]
        if target in seen_targets:
            problem(
                ("spec", "deployTo", position, "target"),
                f'spec.deployTo[{position}].target: target "{target}" is listed twice: '
                "merge the two entries",
            )
        seen_targets.add(target)
        overrides = {k: v for k, v in entry.items() if k != "target"}
        bindings.append(Binding(target=target, overrides=overrides))

    return Certificate(
        name=name,
        issuer_ref=spec["issuerRef"]["name"],
        common_name=common_name,
        dns_names=dns_names,
        ip_addresses=tuple(ips),
        key=key_spec,
        duration=duration,
        renew_before=renew_before,
        renew_before_percentage=spec.get("renewBeforePercentage"),
        deploy_to=tuple(bindings),
        labels=labels,
    )


def _build_target(name: str, labels: dict[str, str], spec: dict[str, Any]) -> Target:
    verify = spec.get("verify")
    approval = spec.get("approval")
    return Target(
        name=name,
        type=spec["type"],
        labels=labels,
        transport=dict(spec.get("transport") or {"type": "local"}),
        settings=dict(spec.get("settings") or {}),
        verify=VerifySpec(verify["endpoint"], verify.get("serverName")) if verify else None,
        approval=(
            ApprovalHook(
                required=approval.get("required", True),
                actions=tuple(approval.get("actions") or ()),
            )
            if approval is not None
            else None
        ),
        adopt=bool(spec.get("adopt", False)),
    )


def _build_policy(name: str, labels: dict[str, str], spec: dict[str, Any]) -> Policy:
    rules = []
    for rule in spec.get("approvals") or ():
        match = rule.get("match") or {}
        rules.append(
            ApprovalRule(
                name=rule["name"],
                target_labels=dict(match.get("targetLabels") or {}),
                certificate_labels=dict(match.get("certificateLabels") or {}),
                targets=tuple(match.get("targets") or ()),
                certificates=tuple(match.get("certificates") or ()),
                actions=tuple(match.get("actions") or ()),
            )
        )
    return Policy(
        name=name,
        approvals=tuple(rules),
        prune_orphans=bool(spec.get("pruneOrphans", False)),
        labels=labels,
    )


# --------------------------------------------------------------------------- cross-document


class _Positions:
    """Positions in files by path, re-reading a file only when a problem needs it."""

    def __init__(self) -> None:
        self._indexes: dict[str, PositionIndex] = {}

    def at(
        self, entry: FileEntry, index: int, path: tuple[PathElement, ...], at_key: bool = False
    ) -> tuple[int, int]:
        if entry.path not in self._indexes:
            self._indexes[entry.path] = PositionIndex(entry.read())
        return self._indexes[entry.path].position(index, path, at_key)

    def problem(
        self, entry: FileEntry, index: int, path: tuple[PathElement, ...], message: str
    ) -> Problem:
        line, column = self.at(entry, index, path)
        return Problem(entry.path, line, column, message)


def _cross_check(
    located: list[tuple[FileEntry, _Doc]], connector_types: frozenset[str]
) -> Iterator[Problem]:
    positions = _Positions()
    first: dict[tuple[str, str], tuple[FileEntry, _Doc]] = {}
    for entry, doc in located:
        key = (doc.kind, doc.name)
        if key not in first:
            first[key] = (entry, doc)
            continue
        first_entry, first_doc = first[key]
        line, column = positions.at(first_entry, first_doc.index, ("metadata", "name"))
        yield positions.problem(
            entry,
            doc.index,
            ("metadata", "name"),
            f'duplicate {doc.kind} "{doc.name}" (first defined at '
            f"{first_entry.path}:{line}:{column}): rename one of them",
        )

    names: dict[str, list[str]] = {}
    for kind, name in first:
        names.setdefault(kind, []).append(name)
    known = {kind: set(values) for kind, values in names.items()}

    def dangling(kind: str, name: str) -> bool:
        return name not in known.get(kind, set())

    def hint(kind: str, name: str) -> str:
        close = difflib.get_close_matches(name, names.get(kind, []), n=1)
        return f' (did you mean "{close[0]}"?)' if close else f": define a {kind} named {name!r}"

    for entry, doc in located:
        model = doc.model
        prefix = f'{doc.kind} "{doc.name}": '
        if isinstance(model, Certificate):
            if dangling("Issuer", model.issuer_ref):
                yield positions.problem(
                    entry,
                    doc.index,
                    ("spec", "issuerRef", "name"),
                    f'{prefix}spec.issuerRef.name: no Issuer named "{model.issuer_ref}"'
                    + hint("Issuer", model.issuer_ref),
                )
            for position, binding in enumerate(model.deploy_to):
                if dangling("Target", binding.target):
                    yield positions.problem(
                        entry,
                        doc.index,
                        ("spec", "deployTo", position, "target"),
                        f"{prefix}spec.deployTo[{position}].target: no Target named "
                        f'"{binding.target}"' + hint("Target", binding.target),
                    )
        elif isinstance(model, Target) and model.type not in connector_types:
            installed = ", ".join(sorted(connector_types)) or "none"
            yield positions.problem(
                entry,
                doc.index,
                ("spec", "type"),
                f'{prefix}spec.type: no connector "{model.type}" is installed '
                f"(installed: {installed}); fix the type or install the package that "
                "provides it",
            )
        elif isinstance(model, Policy):
            for rule_index, rule in enumerate(model.approvals):
                for field, kind, values in (
                    ("targets", "Target", rule.targets),
                    ("certificates", "Certificate", rule.certificates),
                ):
                    for position, value in enumerate(values):
                        if dangling(kind, value):
                            path = ("spec", "approvals", rule_index, "match", field, position)
                            yield positions.problem(
                                entry,
                                doc.index,
                                path,
                                f"{prefix}spec.approvals[{rule_index}].match.{field}[{position}]: "
                                f'no {kind} named "{value}"' + hint(kind, value),
                            )


def _assemble(
    located: list[tuple[FileEntry, _Doc]],
    commit: str | None,
    warnings: Iterable[Problem] = (),
    secrets: Mapping[tuple[str, str], Model] | None = None,
) -> DesiredState:
    """The DesiredState; `secrets` replaces (kind, name) models by ones holding decrypted values."""
    by_kind: dict[str, dict[str, Model]] = {kind: {} for kind in KINDS}
    for entry, doc in located:
        if doc.model is None:  # unreachable: a doc without model always comes with a problem
            continue
        source = SourceRef(entry.path, doc.index)
        model = (secrets or {}).get((doc.kind, doc.name), doc.model)
        by_kind[doc.kind][doc.name] = _with_source(model, source)
    return DesiredState(
        commit=commit,
        issuers=_sorted(by_kind["Issuer"]),
        certificates=_sorted(by_kind["Certificate"]),
        targets=_sorted(by_kind["Target"]),
        policies=_sorted(by_kind["Policy"]),
        warnings=tuple(sorted(set(warnings))),
    )


def _with_source(model: Model, source: SourceRef) -> Any:
    # The cached model has no source: the same content may live at another path.
    return replace(model, source=source)


def _sorted(items: Mapping[str, Model]) -> dict[str, Any]:
    return {name: items[name] for name in sorted(items)}
