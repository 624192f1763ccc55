"""A commit checked against the site policy: what Git asks beyond the operator's bounds.

Runs as a `DesiredLoader` check (on every load, after the documents are
valid on their own), so a commit that asks too much fails validation with
FILE:LINE:COL naming the rule, the last good commit stays in force, and
nothing is written or run. The sandbox enforces the same bounds again at
deploy time (`sitebounds.TargetBounds.restrict`); this check is where the
person who pushed learns why.

Checked per document:
- Target: its type; every directory and file it would write (the target's
  directory and each binding's paths, symlinks resolved on this host);
  validate/reload argv; verify and admin endpoints.
- Issuer: its type; secretRefs (env names and files the site allows).
- Certificate: SAN count, duration, key type; and the number of Certificates.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from certgit.connectors.sdk.grants import path_within
from certgit.reconciler.errors import Problem
from certgit.reconciler.model import Certificate, Issuer, SecretRef, Target
from certgit.reconciler.ownership import key_type
from certgit.reconciler.sitebounds import TargetBounds, bounds_for, builtin_defaults
from certgit.reconciler.sitepolicy import DENY_ROOTS, SitePolicy, denied_component

PathElement = str | int


class Positions(Protocol):
    def problem(
        self, entry: Any, index: int, path: tuple[PathElement, ...], message: str
    ) -> Problem: ...


class SiteCheck:
    """A loader check bound to one site policy and state directory."""

    def __init__(
        self,
        policy: SitePolicy,
        state_dir: Path,
        connectors: Mapping[str, Any] | None = None,
    ) -> None:
        self.policy = policy
        self.state_dir = Path(state_dir).absolute()
        self._connectors = dict(connectors or {})

    def __call__(
        self, located: Sequence[tuple[Any, Any]], positions: Positions
    ) -> Iterator[Problem]:
        run = _Run(self, positions)
        certificates = 0
        targets: dict[str, Target] = {}
        for _, doc in located:
            if isinstance(doc.model, Target):
                targets[doc.name] = doc.model
        bounds = {
            name: bounds_for(self.policy, name, t.type, t.labels, self.state_dir)
            for name, t in targets.items()
        }
        for entry, doc in located:
            model = doc.model
            at = _At(entry, doc.index, positions)
            if isinstance(model, Target):
                yield from run.target(at, model, bounds[model.name])
            elif isinstance(model, Issuer):
                yield from run.issuer(at, model)
            elif isinstance(model, Certificate):
                certificates += 1
                if certificates == self.policy.limits.max_certificates + 1:
                    yield at.problem(
                        ("metadata", "name"),
                        f"more than {self.policy.limits.max_certificates} Certificates: "
                        f"limits.maxCertificates in {self.policy.where} allows no more",
                    )
                yield from run.certificate(at, model, targets, bounds)

    def connector(self, type_: str) -> Any | None:
        if type_ not in self._connectors:
            from certgit.connectors.sdk.registry import load_connector

            try:
                self._connectors[type_] = load_connector(type_)
            except Exception:  # an unavailable connector is reported by the loader itself
                self._connectors[type_] = None
        return self._connectors[type_]


class _At:
    """Problems of one document."""

    def __init__(self, entry: Any, index: int, positions: Positions) -> None:
        self.entry, self.index, self.positions = entry, index, positions

    def problem(self, path: tuple[PathElement, ...], message: str) -> Problem:
        return self.positions.problem(self.entry, self.index, path, message)


class _Run:
    """One check run: memoises what is asked many times (directories, connector specs)."""

    def __init__(self, check: SiteCheck, positions: Positions) -> None:
        self.check = check
        self.policy = check.policy
        self._dirs: dict[tuple[str, str], str | None] = {}
        self._specs: dict[str, Any] = {}

    def spec(self, target: Target) -> Any:
        if target.name not in self._specs:
            from certgit.connectors.model import TargetSpec

            self._specs[target.name] = TargetSpec(
                name=target.name,
                type=target.type,
                settings=dict(target.settings),
                work_dir=self.check.state_dir / "work" / target.name,
                base_dir=self.check.state_dir,
                transport=dict(target.transport),
            )
        return self._specs[target.name]

    def path_problem(self, bounds: TargetBounds, path: str) -> str | None:
        """Why `path` may not be written: its directory (memoised) and its own name."""
        directory, name = posixpath.split(posixpath.normpath(path))
        key = (bounds.target, directory)
        if key not in self._dirs:
            self._dirs[key] = bounds.path_problem(directory)
        found = self._dirs[key]
        if found is not None:
            return found.replace(directory, path, 1)
        if denied_component(name) is not None:
            return f"{path} is never writable (a {name!r} file)"
        for deny in (*DENY_ROOTS, *bounds.deny):
            if path_within(path, deny):
                return f"{path} is never writable (under {deny})"
        return None

    # -- documents ------------------------------------------------------------------------

    def target(self, at: _At, target: Target, bounds: TargetBounds) -> Iterator[Problem]:
        allowed_types = self.policy.target_types
        if allowed_types is not None and target.type not in allowed_types:
            yield at.problem(
                ("spec", "type"),
                f"target type {target.type!r} is not allowed by the site policy "
                f"(targetTypes: {', '.join(allowed_types) or 'none'} in {self.policy.where})",
            )
            return
        connector = self.check.connector(target.type)
        settings = target.settings or {}
        if target.verify is not None:
            problem = bounds.endpoint_problem(target.verify.endpoint)
            if problem:
                yield at.problem(("spec", "verify", "endpoint"), problem)
        if connector is None:
            return
        spec = self.spec(target)
        try:
            grants = connector.grants(spec)
        except Exception:  # malformed settings: the connector reports them at preflight
            return
        verify = target.verify.endpoint if target.verify is not None else None
        for endpoint in grants.net_dial:
            if verify is not None and _same_endpoint(endpoint, verify):
                continue
            problem = bounds.endpoint_problem(endpoint)
            if problem:
                where = "adminEndpoint" if "adminEndpoint" in settings else None
                yield at.problem(
                    ("spec", "settings", where) if where else ("spec", "type"), problem
                )
        for root in grants.fs_write:
            problem = self.path_problem(bounds, posixpath.join(root, "x"))
            if problem:
                problem = problem.replace(posixpath.join(root, "x"), root)
                where = "directory" if "directory" in settings else None
                yield at.problem(
                    ("spec", "settings", where) if where else ("spec", "type"),
                    f"Target {target.name!r}: directory {problem}",
                )
        yield from self.commands(at, target, bounds, connector, spec)

    def commands(
        self, at: _At, target: Target, bounds: TargetBounds, connector: Any, spec: Any
    ) -> Iterator[Problem]:
        settings_of = getattr(connector, "settings", None)
        if settings_of is None:
            return
        try:
            parsed = settings_of(spec)
        except Exception:
            return
        defaults = builtin_defaults().get(target.type)
        own = defaults.commands if defaults is not None and self.policy.builtin_commands else ()
        for field, argv in (("validateCommand", parsed.validate), ("reloadCommand", parsed.reload)):
            if not argv:
                continue
            if tuple(argv) in own:
                continue  # the built-in connector's own command, allowed by default
            problem = bounds.command_problem(argv)
            if problem:
                place = (
                    ("spec", "settings", field) if field in target.settings else ("spec", "type")
                )
                yield at.problem(place, f"Target {target.name!r}: {field}: {problem}")

    def issuer(self, at: _At, issuer: Issuer) -> Iterator[Problem]:
        if issuer.type not in self.policy.issuer_types:
            yield at.problem(
                ("spec", "type"),
                f"issuer type {issuer.type!r} is not allowed by the site policy "
                f"(issuers: {', '.join(self.policy.issuer_types) or 'none'} in "
                f"{self.policy.where})",
            )
        for field, ref in (("certificateRef", issuer.ca_certificate), ("keyRef", issuer.ca_key)):
            if ref is None:
                continue
            problem = secret_problem(ref, self.policy, self.check.state_dir)
            if problem:
                yield at.problem(("spec", "localCA", field), problem)

    def certificate(
        self,
        at: _At,
        cert: Certificate,
        targets: Mapping[str, Target],
        bounds: Mapping[str, TargetBounds],
    ) -> Iterator[Problem]:
        limits = self.policy.limits
        sans = len(cert.dns_names) + len(cert.ip_addresses)
        if sans > limits.max_sans:
            field = "dnsNames" if cert.dns_names else "ipAddresses"
            yield at.problem(
                ("spec", field),
                f"{sans} SANs: limits.maxSansPerCertificate in {self.policy.where} allows "
                f"{limits.max_sans}; split the names over several Certificates",
            )
        if cert.duration > limits.max_duration:
            from certgit.reconciler.durations import format_duration

            yield at.problem(
                ("spec", "duration"),
                f"duration {format_duration(cert.duration)} is longer than limits.maxDuration "
                f"{format_duration(limits.max_duration)} in {self.policy.where}",
            )
        kind = key_type(cert.key)
        if kind not in limits.key_types:
            yield at.problem(
                ("spec", "key"),
                f"key type {kind} is not allowed by the site policy (limits.keyTypes: "
                f"{', '.join(limits.key_types) or 'none'} in {self.policy.where})",
            )
        for position, binding in enumerate(cert.deploy_to):
            target = targets.get(binding.target)
            if target is None or binding.target not in bounds:
                continue
            yield from self.binding(at, cert, position, binding.overrides, target, bounds)

    def binding(
        self,
        at: _At,
        cert: Certificate,
        position: int,
        overrides: Mapping[str, Any],
        target: Target,
        bounds: Mapping[str, TargetBounds],
    ) -> Iterator[Problem]:
        connector = self.check.connector(target.type)
        paths_of = getattr(connector, "paths", None)
        if paths_of is None:
            return
        try:
            paths = paths_of(self.spec(target), cert.name, overrides)
        except Exception:
            return
        named = overrides.get("files") if isinstance(overrides.get("files"), Mapping) else {}
        for role, path in paths.items():
            problem = self.path_problem(bounds[target.name], str(path))
            if not problem:
                continue
            if role in named:
                where: tuple[PathElement, ...] = ("spec", "deployTo", position, "files", role)
            elif "directory" in overrides:
                where = ("spec", "deployTo", position, "directory")
            else:
                where = ("spec", "deployTo", position, "target")
            yield at.problem(where, f"deployTo[{position}] ({target.name}) {role}: {problem}")
            return  # one problem per binding: the rest of its files share the cause


def secret_problem(ref: SecretRef, policy: SitePolicy, state_dir: Path) -> str | None:
    """Why the site policy refuses this secretRef, or None."""
    secrets = policy.secrets
    if ref.env is not None:
        if secrets.allows_env(ref.env):
            return None
        allowed = ", ".join(secrets.env) or "none"
        return (
            f"secretRef env {ref.env} is not allowed by the site policy ([secrets] env: "
            f"{allowed} in {policy.where})"
        )
    if ref.file is not None:
        import os

        path = ref.file if ref.file.startswith("/") else str(state_dir / ref.file)
        normal = posixpath.normpath(path)
        resolved = posixpath.normpath(os.path.realpath(normal))
        state = posixpath.normpath(str(state_dir))
        never = (*DENY_ROOTS, *policy.protected, state, os.path.realpath(state))
        for candidate in (normal, resolved):
            if denied_component(candidate) is not None or any(
                path_within(candidate, d) for d in never
            ):
                return (
                    f"secretRef file {ref.file} is never readable by a secretRef "
                    "(system credentials, certgit's own files and state directory)"
                )
        if not any(path_within(resolved, root) for root in secrets.files):
            allowed = ", ".join(secrets.files) or "none"
            return (
                f"secretRef file {ref.file} is outside the files the site policy lets "
                f"secretRefs read ([secrets] files: {allowed} in {policy.where})"
            )
    return None


def _same_endpoint(a: str, b: str) -> bool:
    from certgit.connectors.sdk.grants import parse_endpoint

    try:
        return parse_endpoint(a) == parse_endpoint(b)
    except ValueError:
        return False
