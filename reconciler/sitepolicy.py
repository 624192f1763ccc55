"""The operator's site policy: what desired state from Git may ask for (DESIGN §10).

Git proposes, the site policy disposes. The policy is TOML owned by the
operator, read from (first found) `--site-policy PATH`, `CERTGIT_SITE_POLICY`,
the `[site]` table of certgit.toml, or /etc/certgit/site.toml. Without any of
them the built-in defaults apply, and they are safe:

- file targets write only under `<state>/targets/` and each built-in
  connector's own default directory (`/etc/nginx/ssl`, `/etc/ssl/certgit`, ...);
- validate/reload commands are only the built-in connectors' own
  (`nginx -t`, `nginx -s reload`, ...), with argv[0] found on PATH;
- verify endpoints and admin APIs are loopback only, any port;
- secretRefs read nothing; child processes see PATH, locale and TZ only.

A policy file widens or narrows those bounds. Everything it says is checked
here, with FILE:LINE:COL errors like the YAML loader's, so a typo in a
security boundary is an error rather than a silently ignored key.

Whatever the policy says, certgit never writes under the built-in deny list
(`/etc/shadow`, `/etc/sudoers*`, any `.ssh` directory, `/proc`, `/sys`,
`/dev`, `/boot`, `/etc/certgit`), the state directory, or the files that
configure certgit itself (this policy, certgit.toml, the allowed-signers
file, the age key).

This module is the model; `siteload` reads the TOML, `sitecheck` checks a commit
against it and `sitebounds` turns it into sandbox grants for one target.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from certgit.connectors.sdk.grants import parse_endpoint
from certgit.connectors.sdk.transport import DEFAULT_PASSTHROUGH, scrub_env
from certgit.reconciler.errors import CertgitError, Problem
from certgit.reconciler.model import ApprovalRule

DEFAULT_SITE_POLICY = Path("/etc/certgit/site.toml")
BUILTIN_DEFAULTS = "<built-in defaults>"

# Never writable, whatever a policy says (plus the state dir and certgit's own files).
DENY_ROOTS: tuple[str, ...] = (
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/passwd",
    "/etc/group",
    "/etc/certgit",
    "/root/.ssh",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
)
# Name patterns of path components that are never writable anywhere: any user's
# ~/.ssh, and /etc/sudoers, /etc/sudoers.d, /etc/sudoers.bak ...
DENY_COMPONENTS: tuple[str, ...] = (".ssh", "sudoers*")

KEY_TYPES: tuple[str, ...] = (
    "ECDSA-256",
    "ECDSA-384",
    "RSA-2048",
    "RSA-3072",
    "RSA-4096",
    "Ed25519",
)
_KEY_ALIASES = {
    re.sub(r"[^a-z0-9]", "", alias.lower()): name
    for name, aliases in {
        "ECDSA-256": ("ECDSA-256", "ECDSA P-256", "P-256", "prime256v1", "secp256r1"),
        "ECDSA-384": ("ECDSA-384", "ECDSA P-384", "P-384", "secp384r1"),
        "RSA-2048": ("RSA-2048", "RSA 2048"),
        "RSA-3072": ("RSA-3072", "RSA 3072"),
        "RSA-4096": ("RSA-4096", "RSA 4096"),
        "Ed25519": ("Ed25519",),
    }.items()
    for alias in aliases
}
ISSUER_TYPES: tuple[str, ...] = ("local-ca", "acme")

# What a validate/reload child sees of certgit's environment unless the policy says more
# (DEFAULT_PASSTHROUGH) and how it is cut (scrub_env) live in the connector SDK, which
# LocalTransport uses and which may not import the reconciler; both stay importable here.

DEFAULT_MAX_CERTIFICATES = 50_000
DEFAULT_MAX_SANS = 100
DEFAULT_MAX_DURATION = timedelta(days=3650)

_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class SitePolicyError(CertgitError):
    """The site policy file is unreadable, unsafe or invalid; `problems` are positioned."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        self.problems = tuple(problems)
        if problems:
            message = message + "\n" + "\n".join(str(p) for p in problems)
        super().__init__(message)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class CommandRule:
    """An allowed validate/reload argv.

    Exactly `argv`, or any argv starting with it (`prefix`), or any program
    whose real path lies under the directory `under` (an operator's hook
    directory), with any arguments. argv[0] is an absolute path; a target's
    argv[0] is looked up on PATH and both sides are compared after resolving
    symlinks.
    """

    argv: tuple[str, ...]
    prefix: bool = False
    under: bool = False  # argv == (directory,)
    origin: str = "site"  # "site" or "builtin <connector>"

    def matches(self, argv: Sequence[str], realpath: Any = os.path.realpath) -> bool:
        if not argv:
            return False
        if self.under:
            from certgit.connectors.sdk.grants import path_within

            return path_within(_real(argv[0], realpath), _real(self.argv[0], realpath))
        if len(argv) < len(self.argv) or (not self.prefix and len(argv) != len(self.argv)):
            return False
        if _real(self.argv[0], realpath) != _real(argv[0], realpath):
            return False
        return tuple(argv[1 : len(self.argv)]) == self.argv[1:]

    def allows_binary(self, binary: str, realpath: Any = os.path.realpath) -> bool:
        """True if some argv this rule allows runs `binary` (the sandbox's exec grant)."""
        real = _real(binary, realpath)
        if self.under:
            from certgit.connectors.sdk.grants import path_within

            return path_within(real, _real(self.argv[0], realpath))
        return real == _real(self.argv[0], realpath) or binary == self.argv[0]

    def describe(self) -> str:
        if self.under:
            return f"any program under {self.argv[0]}"
        text = " ".join(self.argv)
        return f"{text} (and any further arguments)" if self.prefix else text


def _real(path: str, realpath: Any) -> str:
    try:
        return str(realpath(path))
    except OSError:
        return path


def resolve_argv0(argv0: str, path_env: str | None = None) -> str | None:
    """argv[0] as the sandbox will run it: absolute as written, else found on PATH."""
    import shutil

    if argv0.startswith("/"):
        return argv0
    return shutil.which(argv0, path=path_env)


@dataclass(frozen=True)
class EndpointRule:
    """An allowed dial: host exactly (case-insensitive, canonical IPs), one port or any (`*`)."""

    host: str
    port: int | None  # None: any port

    def matches(self, host: str, port: int) -> bool:
        want, _ = parse_endpoint(f"{_bracket(host)}:1")
        return want == self.host and (self.port is None or self.port == port)

    def describe(self) -> str:
        return f"{_bracket(self.host)}:{'*' if self.port is None else self.port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True)
class Allowances:
    """Roots, commands and endpoints a scope (or the whole site) allows."""

    paths: tuple[str, ...] = ()
    commands: tuple[CommandRule, ...] = ()
    endpoints: tuple[EndpointRule, ...] = ()


@dataclass(frozen=True)
class Scope:
    """Allowances for the targets it matches: by name, type and labels (all given must match).

    Labels come from Git: a scope matched only by labels is as strong as whoever
    may push them. Pin production scopes by `targets` (names) or `types`.
    """

    name: str
    allow: Allowances
    targets: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def applies(self, name: str, type_: str, labels: Mapping[str, str]) -> bool:
        if self.targets and name not in self.targets:
            return False
        if self.types and type_ not in self.types:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True)
class Limits:
    max_certificates: int = DEFAULT_MAX_CERTIFICATES
    max_sans: int = DEFAULT_MAX_SANS
    max_duration: timedelta = DEFAULT_MAX_DURATION
    key_types: tuple[str, ...] = KEY_TYPES


@dataclass(frozen=True)
class SecretsPolicy:
    """What a Git `secretRef` may read: env names (fnmatch patterns) and file roots."""

    env: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    sops_age_key_file: Path | None = None

    def allows_env(self, name: str) -> bool:
        if name.startswith("CERTGIT_"):
            return False  # certgit's own secrets are never a secretRef's to read
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.env)


@dataclass(frozen=True)
class SignaturePolicy:
    """Which commits may be applied: signed by a key in `allowed_signers` when `required`."""

    required: bool = False
    allowed_signers: Path | None = None  # ssh-keygen ALLOWED SIGNERS file
    gpg_home: Path | None = None  # GNUPGHOME whose keyring holds the allowed GPG keys


@dataclass(frozen=True)
class SitePolicy:
    """The operator's bounds on desired state. `SitePolicy()` is the safe default."""

    source: str = BUILTIN_DEFAULTS
    builtin_paths: bool = True
    builtin_commands: bool = True
    loopback_endpoints: bool = True
    allow: Allowances = Allowances()
    scopes: tuple[Scope, ...] = ()
    target_types: tuple[str, ...] | None = None  # None: every installed connector
    issuer_types: tuple[str, ...] = ISSUER_TYPES
    limits: Limits = Limits()
    approvals: tuple[ApprovalRule, ...] = ()
    env_passthrough: tuple[str, ...] = DEFAULT_PASSTHROUGH
    secrets: SecretsPolicy = SecretsPolicy()
    signatures: SignaturePolicy = SignaturePolicy()
    audit_syslog: bool = False
    # users and groups a Target's settings.owner / settings.group may name ([paths]);
    # none by default: files belong to the user certgit runs as
    owners: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    # certgit's own configuration files: never writable by a target
    protected: tuple[str, ...] = ()

    @property
    def is_default(self) -> bool:
        return self.source == BUILTIN_DEFAULTS

    @property
    def where(self) -> str:
        """Where an operator changes this policy, for error messages."""
        if self.is_default:
            return (
                f"a site policy (none is in use: write {DEFAULT_SITE_POLICY} or pass "
                "--site-policy FILE)"
            )
        return self.source

    def allowances_for(self, name: str, type_: str, labels: Mapping[str, str]) -> Allowances:
        """The site-wide allowances plus those of every scope matching the target."""
        parts = [self.allow] + [s.allow for s in self.scopes if s.applies(name, type_, labels)]
        return Allowances(
            paths=tuple(dict.fromkeys(p for a in parts for p in a.paths)),
            commands=tuple(dict.fromkeys(c for a in parts for c in a.commands)),
            endpoints=tuple(dict.fromkeys(e for a in parts for e in a.endpoints)),
        )

    def loopback(self) -> tuple[EndpointRule, ...]:
        if not self.loopback_endpoints:
            return ()
        return tuple(EndpointRule(h, None) for h in _LOOPBACK_HOSTS)

    def child_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The environment a validate/reload child gets: passthrough names only, no CERTGIT_*."""
        return scrub_env(environ, self.env_passthrough)


# --------------------------------------------------------------------------- deny list


def denied_component(path: str) -> str | None:
    """The component of `path` that puts it on the deny-by-name list (`.ssh`, `sudoers*`)."""
    for part in path.split("/"):
        for pattern in DENY_COMPONENTS:
            if part and fnmatch.fnmatchcase(part, pattern):
                return part
    return None


def key_type_name(text: str) -> str | None:
    """The canonical key type name for an operator's spelling (`ECDSA P-256` → `ECDSA-256`)."""
    return _KEY_ALIASES.get(re.sub(r"[^a-z0-9]", "", text.lower()))
