"""Reading the site policy: where it is, its TOML checked key by key, and `site show`.

Every problem is positioned (FILE:LINE:COL) like the YAML loader's, and an
unknown key is an error: a typo in a security boundary must not be ignored.
The model and the defaults live in `sitepolicy`.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from certgit.connectors.sdk.grants import normalize_path, parse_endpoint
from certgit.reconciler.durations import format_duration, parse_duration
from certgit.reconciler.errors import Problem
from certgit.reconciler.model import ApprovalRule
from certgit.reconciler.sitepolicy import (
    DEFAULT_MAX_CERTIFICATES,
    DEFAULT_MAX_DURATION,
    DEFAULT_MAX_SANS,
    DEFAULT_PASSTHROUGH,
    DEFAULT_SITE_POLICY,
    DENY_COMPONENTS,
    DENY_ROOTS,
    ISSUER_TYPES,
    KEY_TYPES,
    Allowances,
    CommandRule,
    EndpointRule,
    Limits,
    Scope,
    SecretsPolicy,
    SignaturePolicy,
    SitePolicy,
    SitePolicyError,
    key_type_name,
    resolve_argv0,
)

# --------------------------------------------------------------------------- loading


def locate_site_policy(
    flag: str | None,
    env: Mapping[str, str],
    inline: Mapping[str, Any] | None,
    config_file: Path | None,
    default: Path = DEFAULT_SITE_POLICY,
) -> tuple[Path | None, Mapping[str, Any] | None]:
    """Which policy applies: (file, None), (None, inline table) or (None, None) for defaults."""
    if flag:
        return Path(flag), None
    if env.get("CERTGIT_SITE_POLICY"):
        return Path(env["CERTGIT_SITE_POLICY"]), None
    if inline is not None:
        return None, inline
    if default.exists():
        return default, None
    return None, None


def load_site_policy(
    path: Path | None = None,
    *,
    inline: Mapping[str, Any] | None = None,
    inline_source: str = "certgit.toml [site]",
    protected: Iterable[Path] = (),
    check_owner: bool = True,
) -> SitePolicy:
    """Read and check a site policy; `SitePolicy()` defaults when neither is given.

    Raises SitePolicyError naming FILE:LINE:COL for every problem, and when
    the file is missing, unreadable, or writable by someone other than its
    owner and root (a policy others can edit bounds nothing).
    """
    if path is None and inline is None:
        return SitePolicy(protected=_protected(protected))
    text = ""
    if path is not None:
        path = path if path.is_absolute() else Path.cwd() / path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise SitePolicyError(
                f"site policy {path} not found; create it (see `certgit site show --example`) "
                "or point --site-policy / CERTGIT_SITE_POLICY at it"
            ) from None
        except OSError as exc:
            raise SitePolicyError(f"site policy {path} could not be read: {exc.strerror}") from None
        if check_owner:
            _owner_only(path)
        text = raw.decode("utf-8", errors="replace")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            line, col = _toml_error_position(str(exc), text)
            message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)$", "", str(exc))
            raise SitePolicyError(
                f"site policy {path} is not valid TOML",
                [Problem(str(path), line, col, f"{message}; fix the TOML syntax")],
            ) from None
        source = str(path)
    else:
        assert inline is not None
        data = dict(inline)
        source = inline_source
    reader = _Reader(source, text)
    policy = reader.policy(data)
    if reader.problems:
        raise SitePolicyError(
            f"site policy {source} has {len(reader.problems)} problem"
            f"{'s' if len(reader.problems) != 1 else ''}",
            sorted(reader.problems, key=lambda p: (p.line, p.column)),
        )
    if check_owner:
        # files and directories that decide what runs or what is trusted: the operator's
        # only, like the policy itself (a hook directory others can write runs their code)
        for rule in (*policy.allow.commands, *(c for s in policy.scopes for c in s.allow.commands)):
            if rule.under and os.path.exists(rule.argv[0]):
                _owner_only(Path(rule.argv[0]), "hook directory")
        for what, trusted in (
            ("allowed signers file", policy.signatures.allowed_signers),
            ("GPG home", policy.signatures.gpg_home),
            ("age key file", policy.secrets.sops_age_key_file),
        ):
            if trusted is not None and trusted.exists():
                _owner_only(trusted, what)
    extra = [path] if path is not None else []
    if policy.signatures.allowed_signers:
        extra.append(policy.signatures.allowed_signers)
    if policy.signatures.gpg_home:
        extra.append(policy.signatures.gpg_home)
    if policy.secrets.sops_age_key_file:
        extra.append(policy.secrets.sops_age_key_file)
    return _with_protected(policy, _protected([*protected, *extra]))


def _with_protected(policy: SitePolicy, protected: tuple[str, ...]) -> SitePolicy:

    return replace(policy, protected=protected)


def _protected(paths: Iterable[Path]) -> tuple[str, ...]:
    out: list[str] = []
    for p in paths:
        for candidate in (str(Path(p).absolute()), os.path.realpath(p)):
            if candidate not in out:
                out.append(candidate)
    return tuple(out)


def _owner_only(path: Path, what: str = "site policy") -> None:
    """SitePolicyError unless only its owner (root or this user) can write `path`."""
    info = path.stat()
    if info.st_mode & stat.S_IWOTH or (
        info.st_mode & stat.S_IWGRP and info.st_gid != 0 and info.st_gid != os.getgid()
    ):
        raise SitePolicyError(
            f"{what} {path} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"a policy others can edit bounds nothing: chmod go-w {path}"
        )
    if info.st_uid not in (0, os.getuid()):
        raise SitePolicyError(
            f"{what} {path} is owned by uid {info.st_uid}, neither root nor this user; "
            f"chown it to the operator who runs certgit"
        )


def _toml_error_position(message: str, text: str) -> tuple[int, int]:
    match = re.search(r"line (\d+), column (\d+)", message)
    if match:
        return int(match.group(1)), int(match.group(2))
    if "end of document" in message:
        lines = text.splitlines() or [""]
        return len(lines), len(lines[-1]) + 1
    return 1, 1


class _Reader:
    """Checks the parsed TOML key by key, collecting positioned problems."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.lines = text.splitlines()
        self.problems: list[Problem] = []

    # -- positions --------------------------------------------------------------------

    def _position(self, where: tuple[str | int, ...]) -> tuple[int, int]:
        """Line and column of the key `where` names (table path then key), best effort."""
        if not self.lines:
            return 1, 1
        tables = [w for w in where[:-1]]
        named = [t for t in tables if isinstance(t, str)]  # kept when the header is implicit
        key = where[-1] if where else None
        header_line = self._header(tables)
        if header_line is None:
            header_line, tables = 0, []
        start = header_line if tables else 0
        for number in range(start, len(self.lines)):
            text = self.lines[number]
            if number > start and re.match(r"\s*\[", text):
                break
            if isinstance(key, str):
                match = re.match(rf'\s*("{re.escape(key)}"|{re.escape(key)})\s*=', text)
                if match:
                    return number + 1, match.start(1) + 1
        if isinstance(key, str):
            # a key that is a table itself: `[key]`, `[[key]]` or `[key.sub]`
            full = ".".join([*named, key])
            for number, text in enumerate(self.lines):
                stripped = text.strip().lstrip("[").rstrip("]").strip()
                if text.lstrip().startswith("[") and (
                    stripped == full or stripped.startswith(full + ".")
                ):
                    return number + 1, text.index("[") + 1
        return (header_line + 1, 1) if tables else (1, 1)

    def _header(self, tables: list[str | int]) -> int | None:
        names = [t for t in tables if isinstance(t, str)]
        index = next((t for t in tables if isinstance(t, int)), None)
        if not names:
            return None
        dotted = ".".join(names)
        seen = -1
        for number, text in enumerate(self.lines):
            stripped = text.strip()
            if stripped == f"[{dotted}]" and index is None:
                return number
            if stripped == f"[[{dotted}]]":
                seen += 1
                if index is None or seen == index:
                    return number
        return None

    def problem(self, where: tuple[str | int, ...], message: str) -> None:
        line, col = self._position(where)
        self.problems.append(Problem(self.source, line, col, message))

    # -- typed readers ----------------------------------------------------------------

    def table(self, data: Any, where: tuple[str | int, ...], keys: set[str]) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            self.problem(where, f"{_dotted(where)} must be a table")
            return {}
        for key in data:
            if key not in keys:
                self.problem(
                    (*where, key),
                    f"unknown key {_dotted((*where, key))!r}; known keys here: "
                    + ", ".join(sorted(keys)),
                )
        return dict(data)

    def boolean(self, data: Mapping[str, Any], where: tuple[str | int, ...], default: bool) -> bool:
        value = data.get(str(where[-1]), default)
        if not isinstance(value, bool):
            self.problem(where, f"{_dotted(where)} must be true or false")
            return default
        return value

    def strings(self, data: Mapping[str, Any], where: tuple[str | int, ...]) -> tuple[str, ...]:
        value = data.get(str(where[-1]), [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problem(where, f"{_dotted(where)} must be a list of non-empty strings")
            return ()
        return tuple(value)

    def positive(self, data: Mapping[str, Any], where: tuple[str | int, ...], default: int) -> int:
        value = data.get(str(where[-1]), default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.problem(where, f"{_dotted(where)} must be a whole number of at least 1")
            return default
        return value

    def path(self, data: Mapping[str, Any], where: tuple[str | int, ...]) -> Path | None:
        value = data.get(str(where[-1]))
        if value is None:
            return None
        if not isinstance(value, str) or not value.startswith("/"):
            self.problem(where, f"{_dotted(where)} must be an absolute path")
            return None
        return Path(value)

    # -- sections ---------------------------------------------------------------------

    def policy(self, data: Mapping[str, Any]) -> SitePolicy:
        top = self.table(
            data,
            (),
            {
                "paths",
                "commands",
                "endpoints",
                "scope",
                "targetTypes",
                "issuers",
                "limits",
                "approvals",
                "env",
                "secrets",
                "signatures",
                "audit",
            },
        )
        paths = self.table(
            top.get("paths", {}), ("paths",), {"allow", "builtin", "owners", "groups"}
        )
        commands = self.table(top.get("commands", {}), ("commands",), {"allow", "builtin"})
        endpoints = self.table(top.get("endpoints", {}), ("endpoints",), {"allow", "loopback"})
        allow = Allowances(
            paths=self.roots(paths, ("paths", "allow")),
            commands=self.commands(commands, ("commands", "allow")),
            endpoints=self.endpoints(endpoints, ("endpoints", "allow")),
        )
        scopes = self.scopes(top.get("scope", []))
        target_types: tuple[str, ...] | None = None
        if "targetTypes" in top:
            target_types = self.strings(top, ("targetTypes",))
        issuers = self.strings(top, ("issuers",)) if "issuers" in top else ISSUER_TYPES
        for position, issuer in enumerate(issuers):
            if issuer not in ISSUER_TYPES:
                self.problem(
                    ("issuers",),
                    f"issuers[{position}] {issuer!r} is not an issuer type "
                    f"({', '.join(ISSUER_TYPES)})",
                )
        env = self.table(top.get("env", {}), ("env",), {"passthrough"})
        passthrough = (
            self.strings(env, ("env", "passthrough"))
            if "passthrough" in env
            else DEFAULT_PASSTHROUGH
        )
        for name in passthrough:
            if name.startswith("CERTGIT_") or fnmatch.fnmatchcase("CERTGIT_MASTER_KEY", name):
                self.problem(
                    ("env", "passthrough"),
                    f"env.passthrough {name!r} would hand certgit's own secrets "
                    "(CERTGIT_*) to validate/reload commands; name the variables they need",
                )
        audit = self.table(top.get("audit", {}), ("audit",), {"syslog"})
        return SitePolicy(
            source=self.source,
            builtin_paths=self.boolean(paths, ("paths", "builtin"), True),
            builtin_commands=self.boolean(commands, ("commands", "builtin"), True),
            loopback_endpoints=self.boolean(endpoints, ("endpoints", "loopback"), True),
            allow=allow,
            scopes=scopes,
            target_types=target_types,
            issuer_types=issuers,
            limits=self.limits(top.get("limits", {})),
            approvals=self.approvals(top.get("approvals", [])),
            env_passthrough=passthrough,
            secrets=self.secrets(top.get("secrets", {})),
            signatures=self.signatures(top.get("signatures", {})),
            audit_syslog=self.boolean(audit, ("audit", "syslog"), False),
            owners=self.strings(paths, ("paths", "owners")) if "owners" in paths else (),
            groups=self.strings(paths, ("paths", "groups")) if "groups" in paths else (),
        )

    def roots(self, data: Mapping[str, Any], where: tuple[str | int, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for value in self.strings(data, where):
            try:
                root = normalize_path(value)
            except ValueError:
                self.problem(where, f"{_dotted(where)}: {value!r} is not an absolute path")
                continue
            if root == "/":
                self.problem(
                    where,
                    f"{_dotted(where)}: '/' would let Git write anywhere; name the directories "
                    "certificates go to",
                )
                continue
            out.append(root)
        return tuple(out)

    def commands(
        self, data: Mapping[str, Any], where: tuple[str | int, ...]
    ) -> tuple[CommandRule, ...]:
        value = data.get(str(where[-1]), [])
        if not isinstance(value, list):
            self.problem(where, f"{_dotted(where)} must be a list of argv lists")
            return ()
        out: list[CommandRule] = []
        for position, item in enumerate(value):
            prefix = under = False
            if isinstance(item, Mapping):
                unknown = set(item) - {"prefix", "argv", "under"}
                if unknown or len(item) != 1:
                    self.problem(
                        where,
                        f"{_dotted(where)}[{position}] must be an argv list, "
                        '{ argv = [...] }, { prefix = [...] } or { under = "/dir" }',
                    )
                    continue
                prefix = "prefix" in item
                under = "under" in item
                if under:
                    directory = item["under"]
                    if (
                        not isinstance(directory, str)
                        or not directory.startswith("/")
                        or (normalize_path(directory) == "/")
                    ):
                        self.problem(
                            where,
                            f"{_dotted(where)}[{position}].under must be an absolute directory "
                            "other than /",
                        )
                        continue
                    out.append(CommandRule((normalize_path(directory),), under=True))
                    continue
                item = item.get("prefix", item.get("argv"))
            if (
                not isinstance(item, list)
                or not item
                or not all(isinstance(a, str) and a for a in item)
            ):
                self.problem(
                    where, f"{_dotted(where)}[{position}] must be a non-empty list of strings"
                )
                continue
            if not item[0].startswith("/"):
                self.problem(
                    where,
                    f"{_dotted(where)}[{position}]: {item[0]!r} must be an absolute path "
                    f"(e.g. {resolve_argv0(item[0]) or '/usr/sbin/' + item[0]})",
                )
                continue
            out.append(CommandRule(tuple(item), prefix=prefix))
        return tuple(out)

    def endpoints(
        self, data: Mapping[str, Any], where: tuple[str | int, ...]
    ) -> tuple[EndpointRule, ...]:
        out: list[EndpointRule] = []
        for value in self.strings(data, where):
            any_port = value.endswith(":*")
            try:
                host, port = parse_endpoint(value[:-2] + ":1" if any_port else value)
            except ValueError:
                self.problem(
                    where,
                    f"{_dotted(where)}: {value!r} is not host:port (port a number or *, "
                    "IPv6 as [addr]:port)",
                )
                continue
            if host in ("0.0.0.0", "::", "*"):
                self.problem(where, f"{_dotted(where)}: {value!r} names no single host")
                continue
            out.append(EndpointRule(host, None if any_port else port))
        return tuple(out)

    def scopes(self, value: Any) -> tuple[Scope, ...]:
        if not isinstance(value, list):
            self.problem(("scope",), "scope must be an array of tables: [[scope]]")
            return ()
        out: list[Scope] = []
        for index, item in enumerate(value):
            where: tuple[str | int, ...] = ("scope", index)
            data = self.table(
                item,
                where,
                {"name", "targets", "types", "labels", "paths", "commands", "endpoints"},
            )
            name = data.get("name")
            if not isinstance(name, str) or not name:
                self.problem((*where, "name"), f'scope[{index}] needs a name = "..."')
                name = f"scope-{index}"
            labels = data.get("labels", {})
            if not isinstance(labels, Mapping) or not all(
                isinstance(v, str) for v in labels.values()
            ):
                self.problem((*where, "labels"), f"scope[{index}].labels must map names to strings")
                labels = {}
            targets = self.strings(data, (*where, "targets"))
            types = self.strings(data, (*where, "types"))
            if not (targets or types or labels):
                self.problem(
                    (*where, "name"),
                    f"scope {name!r} matches no targets: give targets, types or labels "
                    "(site-wide allowances go in [paths], [commands], [endpoints])",
                )
            out.append(
                Scope(
                    name=name,
                    targets=targets,
                    types=types,
                    labels=dict(labels),
                    allow=Allowances(
                        paths=self.roots(data, (*where, "paths")),
                        commands=self.commands(data, (*where, "commands")),
                        endpoints=self.endpoints(data, (*where, "endpoints")),
                    ),
                )
            )
        return tuple(out)

    def limits(self, value: Any) -> Limits:
        data = self.table(
            value,
            ("limits",),
            {"maxCertificates", "maxSansPerCertificate", "maxDuration", "keyTypes"},
        )
        duration = DEFAULT_MAX_DURATION
        if "maxDuration" in data:
            try:
                duration = parse_duration(data["maxDuration"])
            except ValueError as exc:
                self.problem(("limits", "maxDuration"), f"limits.maxDuration: {exc}")
        key_types = KEY_TYPES
        if "keyTypes" in data:
            named = self.strings(data, ("limits", "keyTypes"))
            resolved: list[str] = []
            for name in named:
                canonical = key_type_name(name)
                if canonical is None:
                    self.problem(
                        ("limits", "keyTypes"),
                        f"limits.keyTypes: {name!r} is not a key type ({', '.join(KEY_TYPES)})",
                    )
                else:
                    resolved.append(canonical)
            key_types = tuple(dict.fromkeys(resolved))
        return Limits(
            max_certificates=self.positive(
                data, ("limits", "maxCertificates"), DEFAULT_MAX_CERTIFICATES
            ),
            max_sans=self.positive(data, ("limits", "maxSansPerCertificate"), DEFAULT_MAX_SANS),
            max_duration=duration,
            key_types=key_types,
        )

    def approvals(self, value: Any) -> tuple[ApprovalRule, ...]:
        if not isinstance(value, list):
            self.problem(("approvals",), "approvals must be an array of tables: [[approvals]]")
            return ()
        rules: list[ApprovalRule] = []
        for index, item in enumerate(value):
            where: tuple[str | int, ...] = ("approvals", index)
            data = self.table(item, where, {"name", "match"})
            name = data.get("name")
            if not isinstance(name, str) or not name:
                self.problem((*where, "name"), f'approvals[{index}] needs a name = "..."')
                continue
            match = self.table(
                data.get("match", {}),
                (*where, "match"),
                {"targetLabels", "certificateLabels", "targets", "certificates", "actions"},
            )
            for key in ("targetLabels", "certificateLabels"):
                labels = match.get(key, {})
                if not isinstance(labels, Mapping) or not all(
                    isinstance(v, str) for v in labels.values()
                ):
                    self.problem(
                        (*where, "match"),
                        f"approvals[{index}].match.{key} must map names to strings",
                    )
                    match[key] = {}
            actions = (
                self.strings(match, (*where, "match", "actions")) if "actions" in match else ()
            )
            for action in actions:
                if action not in ("issue", "renew", "deploy", "remove", "rollback"):
                    self.problem(
                        (*where, "match"),
                        f"approvals[{index}].match.actions: {action!r} is not an action kind "
                        "(issue, renew, deploy, remove, rollback)",
                    )
            rules.append(
                ApprovalRule(
                    name=name,
                    target_labels=dict(match.get("targetLabels", {})),
                    certificate_labels=dict(match.get("certificateLabels", {})),
                    targets=self.strings(match, (*where, "match", "targets"))
                    if "targets" in match
                    else (),
                    certificates=(
                        self.strings(match, (*where, "match", "certificates"))
                        if "certificates" in match
                        else ()
                    ),
                    actions=actions,
                )
            )
        return tuple(rules)

    def secrets(self, value: Any) -> SecretsPolicy:
        data = self.table(value, ("secrets",), {"env", "files", "sopsAgeKeyFile"})
        env = self.strings(data, ("secrets", "env")) if "env" in data else ()
        for name in env:
            if fnmatch.fnmatchcase("CERTGIT_MASTER_KEY", name):
                self.problem(
                    ("secrets", "env"),
                    f"secrets.env {name!r} would let Git read certgit's master key; "
                    "name the variables secretRefs need",
                )
        return SecretsPolicy(
            env=env,
            files=self.roots(data, ("secrets", "files")) if "files" in data else (),
            sops_age_key_file=self.path(data, ("secrets", "sopsAgeKeyFile")),
        )

    def signatures(self, value: Any) -> SignaturePolicy:
        data = self.table(value, ("signatures",), {"required", "allowedSigners", "gpgHome"})
        policy = SignaturePolicy(
            required=self.boolean(data, ("signatures", "required"), False),
            allowed_signers=self.path(data, ("signatures", "allowedSigners")),
            gpg_home=self.path(data, ("signatures", "gpgHome")),
        )
        if policy.required and policy.allowed_signers is None and policy.gpg_home is None:
            self.problem(
                ("signatures", "required"),
                "signatures.required needs allowedSigners (an ssh-keygen allowed signers "
                "file) or gpgHome (a GnuPG home holding the allowed keys)",
            )
        return policy


def _dotted(where: tuple[str | int, ...]) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "the policy"


# --------------------------------------------------------------------------- describing


def describe(policy: SitePolicy) -> dict[str, Any]:
    """The policy as plain data, for `certgit site show` (text and --json)."""
    return {
        "source": policy.source,
        "paths": {
            "builtin": policy.builtin_paths,
            "allow": list(policy.allow.paths),
            "owners": list(policy.owners),
            "groups": list(policy.groups),
        },
        "commands": {
            "builtin": policy.builtin_commands,
            "allow": [c.describe() for c in policy.allow.commands],
        },
        "endpoints": {
            "loopback": policy.loopback_endpoints,
            "allow": [e.describe() for e in policy.allow.endpoints],
        },
        "scopes": [
            {
                "name": s.name,
                "targets": list(s.targets),
                "types": list(s.types),
                "labels": dict(s.labels),
                "paths": list(s.allow.paths),
                "commands": [c.describe() for c in s.allow.commands],
                "endpoints": [e.describe() for e in s.allow.endpoints],
            }
            for s in policy.scopes
        ],
        "targetTypes": list(policy.target_types)
        if policy.target_types is not None
        else "any installed",
        "issuers": list(policy.issuer_types),
        "limits": {
            "maxCertificates": policy.limits.max_certificates,
            "maxSansPerCertificate": policy.limits.max_sans,
            "maxDuration": format_duration(policy.limits.max_duration),
            "keyTypes": list(policy.limits.key_types),
        },
        "approvals": [
            {
                "name": r.name,
                "match": {
                    k: v
                    for k, v in (
                        ("targetLabels", dict(r.target_labels)),
                        ("certificateLabels", dict(r.certificate_labels)),
                        ("targets", list(r.targets)),
                        ("certificates", list(r.certificates)),
                        ("actions", list(r.actions)),
                    )
                    if v
                },
            }
            for r in policy.approvals
        ],
        "env": {"passthrough": list(policy.env_passthrough)},
        "secrets": {
            "env": list(policy.secrets.env),
            "files": list(policy.secrets.files),
            "sopsAgeKeyFile": str(policy.secrets.sops_age_key_file or "") or None,
        },
        "signatures": {
            "required": policy.signatures.required,
            "allowedSigners": str(policy.signatures.allowed_signers or "") or None,
            "gpgHome": str(policy.signatures.gpg_home or "") or None,
        },
        "audit": {"syslog": policy.audit_syslog},
        "neverWritable": [*DENY_ROOTS, *(f"any path component {p}" for p in DENY_COMPONENTS)],
    }


check_owner = _owner_only  # public name (config.py checks a certgit.toml carrying [site])
