"""A commit checked against the site policy: what Git asks beyond the operator's bounds.

Runs as a `DesiredLoader` check (on every load, after the documents are
valid on their own), so a commit that asks too much fails validation with
FILE:LINE:COL naming the rule, the last good commit stays in force, and
nothing is written or run. The sandbox enforces the same bounds again at
deploy time (`sitebounds.TargetBounds.restrict`); this check is where the
person who pushed learns why.

Checked per document:
- Target: its type; every directory and file it would write (the target's
  directory and each binding's paths, symlinks resolved on this host, a file
  that is a symlink already included); validate/reload argv (resolved on PATH
  as the sandbox will run them); verify and admin endpoints; file modes (never
  setuid/setgid/sticky or writable by others, keys never readable by others).
- Issuer: its type; secretRefs (env names and files the site allows).
- Certificate: SAN count, duration, key type; and the number of Certificates.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from certgit.reconciler.errors import Problem
from certgit.reconciler.model import Certificate, Issuer, SecretRef, Target
from certgit.reconciler.ownership import key_type
from certgit.reconciler.sitebounds import TargetBounds, bounds_for, builtin_defaults
from certgit.reconciler.sitepolicy import (
    DENY_ROOTS,
    SitePolicy,
    denied_component,
    resolve_argv0,
)

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
        self._links: dict[str, frozenset[str]] = {}
        self._real: dict[str, str] = {}
        self._deny: dict[str, frozenset[str]] = {}
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
        """Why `path` may not be written: its directory (memoised), its name, and where
        it leads when it is a symlink already (an allowed directory's `www.crt` pointing
        outside the roots is refused here, not only by the sandbox at deploy time).

        Once the directory passed, a file is on the deny list only if it IS a denied
        path (certgit's own files, this policy): a set lookup per file, not a walk of
        the list (measured: that walk was ~80% of a 10,000-certificate load).
        """
        normal = "/" + posixpath.normpath(path).lstrip("/")  # POSIX keeps a leading "//"
        directory, name = posixpath.split(normal)
        key = (bounds.target, directory)
        if key not in self._dirs:
            self._dirs[key] = bounds.path_problem(directory)
            self._real.setdefault(directory, posixpath.normpath(os.path.realpath(directory)))
        found = self._dirs[key]
        if found is not None:
            return found.replace(directory, path, 1)
        if denied_component(name) is not None:
            return f"{path} is never writable (a {name!r} file)"
        deny = self.denied(bounds)
        for candidate in dict.fromkeys((normal, posixpath.join(self._real[directory], name))):
            if candidate in deny:
                return f"{path} is never writable (under {candidate})"
        if name in self.symlinks(directory):
            return bounds.path_problem(normal)
        return None

    def denied(self, bounds: TargetBounds) -> frozenset[str]:
        """The deny list of one target's bounds as normalised paths, built once per run."""
        if bounds.target not in self._deny:
            self._deny[bounds.target] = frozenset(
                posixpath.normpath(d) for d in (*DENY_ROOTS, *bounds.deny)
            )
        return self._deny[bounds.target]

    def symlinks(self, directory: str) -> frozenset[str]:
        """Names of the symlinks in `directory` on this host: one listing per directory."""
        if directory not in self._links:
            try:
                with os.scandir(directory) as entries:
                    self._links[directory] = frozenset(e.name for e in entries if e.is_symlink())
            except OSError:  # absent (created at deploy) or unreadable: nothing to follow
                self._links[directory] = frozenset()
        return self._links[directory]

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
        for field in ("mode", "keyMode"):
            problem = mode_problem(settings.get(field), key=field == "keyMode")
            if problem:
                yield at.problem(("spec", "settings", field), f"Target {target.name!r}: {problem}")
        for field, allowed, noun in (
            ("owner", self.policy.owners, "owners"),
            ("group", self.policy.groups, "groups"),
        ):
            value = settings.get(field)
            if value is not None and str(value) not in allowed:
                yield at.problem(
                    ("spec", "settings", field),
                    f"Target {target.name!r}: {field} {value!r} is not allowed by the site "
                    f"policy ([paths] {noun}: {', '.join(allowed) or 'none'} in "
                    f"{self.policy.where}); files belong to the user certgit runs as",
                )
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
            if tuple(argv) in own and resolve_argv0(argv[0]) is None:
                continue  # the built-in connector's own command, not installed: nothing runs
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
        files = overrides.get("files")
        named: Mapping[str, Any] = files if isinstance(files, Mapping) else {}
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


def mode_problem(value: Any, *, key: bool) -> str | None:
    """Why a file mode from Git is refused whatever the site policy says, or None.

    Never setuid/setgid/sticky, never writable by others, and a private key never
    readable by others: a commit must not hand the served certificate or its key
    to every local user.
    """
    text = str(value) if value is not None else ""
    if not text.isdigit() or any(c not in "01234567" for c in text):
        return None  # absent, or malformed: the schema and the connector say so
    mode = int(text, 8)
    field = "keyMode" if key else "mode"
    if mode & 0o7000:
        return f"{field} {text}: setuid, setgid and sticky bits are never set on certgit's files"
    if mode & 0o002:
        return f"{field} {text}: files certgit writes are never writable by others"
    if key and mode & 0o004:
        return f"{field} {text}: a private key is never readable by others; use 0600 or 0640"
    return None


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
        # the same check the read itself makes (secretref.refusal), with positions here
        from certgit.reconciler.secretref import refusal

        state = posixpath.normpath(str(state_dir))
        why = refusal(ref.file, secrets, (*policy.protected, state))
        if why is not None:
            return f"secretRef file {ref.file}: {why} (site policy: {policy.where})"
    return None


def _same_endpoint(a: str, b: str) -> bool:
    from certgit.connectors.sdk.grants import parse_endpoint

    try:
        return parse_endpoint(a) == parse_endpoint(b)
    except ValueError:
        return False
