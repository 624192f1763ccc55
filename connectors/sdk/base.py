"""The Connector protocol and FileConnector, the base of every file-based connector.

A file-based connector is mostly class attributes (file names, modes, owner,
validate/reload commands); FileConnector turns a ChangeSet into FileSpecs and
hands ALL of them to one `Sandbox.apply_files` call, so a target gets one
validate and one reload per cycle however many certificates changed.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from certgit.connectors.errors import CertgitError, PreflightFailed
from certgit.connectors.model import (
    Capability,
    ChangeSet,
    Deployment,
    DeployReport,
    Observation,
    Removal,
    TargetSpec,
    VerifyConfig,
)
from certgit.connectors.sdk.atomic import FileSpec
from certgit.connectors.sdk.grants import Grants

if TYPE_CHECKING:
    from certgit.connectors.sdk.sandbox import Sandbox
    from certgit.connectors.sdk.staging import ServerTest

__all__ = ["Connector", "FileConnector", "FileSettings", "FileSpec"]

ROLES = ("certificate", "chain", "fullchain", "key", "combined")
KEY_ROLES = frozenset({"key", "combined"})  # files holding the private key get keyMode
_LEAF_ROLES = ("certificate", "fullchain", "combined")  # files whose first PEM is the leaf

# Key types as the loader and preflight name them: "<algorithm>-<bits>", or "Ed25519".
KEY_TYPES = ("ECDSA-256", "ECDSA-384", "RSA-2048", "RSA-3072", "RSA-4096", "Ed25519")
# What a connector accepts unless it records otherwise: everything but Ed25519, which
# not every TLS stack serves. Connectors for real servers record what was measured.
DEFAULT_ACCEPTED_KEYS = frozenset(KEY_TYPES) - {"Ed25519"}


def file_roles(**templates: str) -> Mapping[str, str | None]:
    """A `roles` mapping: the given roles' name templates, every other role disabled."""
    unknown = set(templates) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown file roles {sorted(unknown)}; use {', '.join(ROLES)}")
    return {role: templates.get(role) for role in ROLES}


# What most servers want: the leaf with its chain in one file, and the key.
FULLCHAIN_AND_KEY = file_roles(fullchain="{name}.crt", key="{name}.key")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL)


@runtime_checkable
class Connector(Protocol):
    """What the executor needs from a connector. See DESIGN §4."""

    name: ClassVar[str]

    def capabilities(self, target: TargetSpec) -> frozenset[Capability]:
        """What this connector does for `target` (at least one capability)."""
        ...

    def grants(self, target: TargetSpec) -> Grants:
        """The least privileges a deploy/observe on `target` needs."""
        ...

    def deploy(self, sandbox: Sandbox, change: ChangeSet) -> DeployReport:
        """Apply the whole ChangeSet as one transaction (one validate, one reload)."""
        ...

    def observe(
        self, sandbox: Sandbox, target: TargetSpec, certificate: str, overrides: Mapping[str, Any]
    ) -> Observation:
        """Report what is live for one binding, for drift detection."""
        ...


@dataclass(frozen=True)
class FileSettings:
    """A target's settings as a FileConnector understands them (parsed and checked)."""

    directory: str
    templates: Mapping[str, str | None]
    mode: int | None
    key_mode: int | None
    owner: str | None
    group: str | None
    validate: tuple[str, ...] | None
    reload: tuple[str, ...] | None


def _octal(value: Any, field_name: str, target: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # already an int (tests, programmatic callers)
    text = str(value)
    if not re.fullmatch(r"0?[0-7]{3,4}", text):
        raise PreflightFailed(
            f"target {target}: settings.{field_name} {text!r} is not an octal mode; "
            'write it in quotes, e.g. "0640"',
            target=target,
        )
    return int(text, 8)


def _argv(value: Any, field_name: str, target: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or not value
        or not all(isinstance(a, str) and a for a in value)
    ):
        raise PreflightFailed(
            f"target {target}: settings.{field_name} must be a non-empty list of strings "
            "(an argv, no shell), e.g. [nginx, -t]",
            target=target,
        )
    return tuple(value)


def _leaf_fingerprint(pem: bytes | None) -> str | None:
    """SHA-256 of the first certificate in a PEM blob (or None when there is none)."""
    if not pem:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    match = _PEM_CERT.search(pem)
    if match is None:
        return None
    cert = x509.load_pem_x509_certificate(match.group(0))
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _name_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


class FileConnector:
    """Base for connectors that deploy PEM files, validate the config and reload a server.

    Target settings understood (`spec.settings`): directory, files (name
    templates per role, `{name}` = certificate name, null disables a role),
    mode, keyMode (octal strings), owner, group, validateCommand, reloadCommand
    (argv lists). Per binding (`deployTo[]` → Deployment.overrides): files and
    directory (relative to the target directory).
    """

    name: ClassVar[str] = ""
    roles: ClassVar[Mapping[str, str | None]] = {
        "certificate": "{name}.crt",
        "chain": "{name}.chain.pem",
        "fullchain": "{name}.fullchain.pem",
        "key": "{name}.key",
        "combined": None,
    }
    default_directory: ClassVar[str | None] = None  # None: settings.directory required
    default_mode: ClassVar[int] = 0o644
    default_key_mode: ClassVar[int] = 0o600
    default_owner: ClassVar[str | None] = None
    default_group: ClassVar[str | None] = None
    validate_command: ClassVar[tuple[str, ...] | None] = None
    reload_command: ClassVar[tuple[str, ...] | None] = None
    # Key types the server really serves (KEY_TYPES names). Preflight refuses the others,
    # and the loader warns when a Certificate's key type is not here for a bound Target.
    accepted_keys: ClassVar[frozenset[str]] = DEFAULT_ACCEPTED_KEYS
    # How `validate_only` points the config test at staged new files (sdk/staging.py).
    config_test: ClassVar[ServerTest | None] = None

    @property
    def accepts_ed25519(self) -> bool:
        """True when "Ed25519" is in `accepted_keys` (kept for older callers)."""
        return "Ed25519" in self.accepted_keys

    # -- settings -------------------------------------------------------------------------

    def settings(self, target: TargetSpec) -> FileSettings:
        """Parse `target.settings` over the class defaults; PreflightFailed when malformed."""
        raw = target.settings or {}
        directory = raw.get("directory") or self.default_directory
        if not directory:
            raise PreflightFailed(
                f"target {target.name}: settings.directory is required by the "
                f"{self.name} connector; set it to the directory the files go to",
                target=target.name,
            )
        directory = str(directory)
        if not posixpath.isabs(directory):
            directory = posixpath.join(str(target.base_dir), directory)
        templates = self._templates(self.roles, raw.get("files"), target.name)
        validate = raw.get("validateCommand")
        reload = raw.get("reloadCommand")
        return FileSettings(
            directory=posixpath.normpath(directory),
            templates=templates,
            mode=_octal(raw.get("mode"), "mode", target.name),
            key_mode=_octal(raw.get("keyMode"), "keyMode", target.name),
            owner=raw.get("owner") or self.default_owner,
            group=raw.get("group") or self.default_group,
            validate=(
                _argv(validate, "validateCommand", target.name)
                if validate is not None
                else self.validate_command
            ),
            reload=(
                _argv(reload, "reloadCommand", target.name)
                if reload is not None
                else self.reload_command
            ),
        )

    @staticmethod
    def _templates(
        base: Mapping[str, str | None], override: Any, target: str
    ) -> dict[str, str | None]:
        merged = dict(base)
        if override is None:
            return merged
        if not isinstance(override, Mapping):
            raise PreflightFailed(
                f"target {target}: files must map roles ({', '.join(ROLES)}) to file names",
                target=target,
            )
        for role, template in override.items():
            if role not in ROLES:
                raise PreflightFailed(
                    f"target {target}: unknown file role {role!r}; use one of {', '.join(ROLES)}",
                    target=target,
                )
            merged[role] = None if template is None else str(template)
        return merged

    def paths(
        self, target: TargetSpec, certificate: str, overrides: Mapping[str, Any]
    ) -> dict[str, str]:
        """role -> absolute destination path for one binding (disabled roles left out)."""
        settings = self.settings(target)
        templates = self._templates(settings.templates, overrides.get("files"), target.name)
        directory = settings.directory
        if overrides.get("directory"):
            directory = posixpath.normpath(
                posixpath.join(settings.directory, str(overrides["directory"]))
            )
        out: dict[str, str] = {}
        for role in ROLES:
            template = templates.get(role)
            if not template:
                continue
            # str.replace, not str.format: a template from Git must not reach attributes.
            filename = template.replace("{name}", certificate)
            out[role] = posixpath.normpath(posixpath.join(directory, filename))
        return out

    # -- Connector protocol ---------------------------------------------------------------

    def capabilities(self, target: TargetSpec) -> frozenset[Capability]:
        """FILES and OBSERVE, plus VALIDATE/RELOAD when commands are configured, ED25519."""
        settings = self.settings(target)
        caps = {Capability.FILES, Capability.OBSERVE}
        if settings.validate:
            caps.add(Capability.VALIDATE)
        if settings.reload:
            caps.add(Capability.RELOAD)
        if self.accepts_ed25519:
            caps.add(Capability.ED25519)
        return frozenset(caps)

    def grants(self, target: TargetSpec) -> Grants:
        """fs.read/fs.write on the directory, process.exec on the commands, net.dial on verify.

        With a `config_test`, also fs.read on the server's config (the dry run
        copies it to test the new files; see `validate_only`).
        """
        settings = self.settings(target)
        binaries: list[str] = []
        for argv in (settings.validate, settings.reload):
            if argv:
                binaries.append(_resolve_binary(argv[0]))
        dial: tuple[str, ...] = ()
        if target.verify is not None:
            dial = (_endpoint(target.verify),)
        # a dry run reads the server's config tree to test the new files on a staged copy
        config = (
            self.config_test.read_roots(settings.validate, target.settings or {})
            if self.config_test is not None
            else []
        )
        return Grants(
            fs_read=tuple(dict.fromkeys((settings.directory, *config))),
            fs_write=(settings.directory,),
            net_dial=dial,
            process_exec=tuple(dict.fromkeys(binaries)),
        )

    def file_specs(self, target: TargetSpec, deployment: Deployment) -> list[FileSpec]:
        """One FileSpec per enabled role. Override for special formats (SDS, JKS...)."""
        settings = self.settings(target)
        contents = {
            "certificate": deployment.cert_pem,
            "chain": deployment.chain_pem,
            "fullchain": deployment.fullchain_pem,
            "key": deployment.key_pem,
            # HAProxy reads leaf, chain, then key from one file; others accept that order too.
            "combined": _join_pem(deployment.cert_pem, deployment.chain_pem, deployment.key_pem),
        }
        specs: list[FileSpec] = []
        for role, path in self.paths(target, deployment.certificate, deployment.overrides).items():
            is_key = role in KEY_ROLES
            specs.append(
                FileSpec(
                    path=path,
                    content=contents[role],
                    mode=settings.key_mode if is_key else settings.mode,
                    owner=settings.owner,
                    group=settings.group,
                    default_mode=self.default_key_mode if is_key else self.default_mode,
                    certificate=deployment.certificate,
                    role=role,
                )
            )
        return specs

    def with_companion(
        self,
        target: TargetSpec,
        deployment: Deployment,
        specs: list[FileSpec],
        path: str,
        render: Callable[[str, str], bytes],
        role: str,
    ) -> list[FileSpec]:
        """`specs` plus a config file that names the certificate and key files.

        For servers that watch a config file rather than reload (Envoy SDS,
        Traefik dynamic config): `render(cert_path, key_path)` gives its content.
        It is written last, so the files it names are in place when it appears.
        Without both a certificate and a key file there is nothing to name.
        """
        by_role = {spec.role: spec.path for spec in specs}
        cert = by_role.get("fullchain") or by_role.get("certificate")
        key = by_role.get("key")
        if cert is None or key is None:
            return specs
        settings = self.settings(target)
        companion = FileSpec(
            path=path,
            content=render(cert, key),
            mode=settings.mode,
            owner=settings.owner,
            group=settings.group,
            default_mode=self.default_mode,
            certificate=deployment.certificate,
            role=role,
        )
        return [*specs, companion]

    def removal_paths(self, target: TargetSpec, removal: Removal) -> list[str]:
        """The files a removal deletes: every path the binding would have written."""
        return list(self.paths(target, removal.certificate, removal.overrides).values())

    def preflight(self, deployment: Deployment) -> None:
        """Refuse an unusable bundle before anything is written (PreflightFailed)."""
        from certgit.connectors.sdk.preflight import preflight

        preflight(deployment, accepted_keys=self.accepted_keys)

    def plan_files(self, change: ChangeSet) -> tuple[list[FileSpec], list[str]]:
        """Preflight every deployment and collect (files to write, paths to delete).

        Raises PreflightFailed before anything is written when a bundle is
        unusable or two bindings would write the same path. Removals delete the
        paths their deploy recorded (key files first), or, without a record,
        every path the binding would have written.
        """
        target = change.target
        for deployment in change.deployments:
            self.preflight(deployment)
        specs: list[FileSpec] = []
        owners: dict[str, str] = {}
        for deployment in change.deployments:
            for spec in self.file_specs(target, deployment):
                _claim(owners, spec.path, f"{deployment.certificate} {spec.role}", target.name)
                specs.append(spec)
        deletes: list[str] = []
        for removal in change.removals:
            paths = list(removal.paths) or self.removal_paths(target, removal)
            for path in paths:
                if path in owners:
                    continue  # a deployment rewrites the file this removal would delete
                _claim(owners, path, f"{removal.certificate} (removed)", target.name)
                deletes.append(path)
        return specs, deletes

    def isolate(self, sandbox: Sandbox, change: ChangeSet) -> tuple[ChangeSet, dict[str, str]]:
        """Per-binding isolation: (the change without unusable bindings, certificate -> why).

        A binding whose bundle fails preflight (key type, chain, dates) or whose
        files would overwrite files certgit did not write (first contact, without
        `adopt`) is left out, with the cleanup of its old files when it was moving;
        the rest of the target's change set goes ahead.
        """
        failed: dict[str, str] = {}
        keep: list[Deployment] = []
        for deployment in change.deployments:
            try:
                self.preflight(deployment)
                if change.owned is not None and not deployment.adopt:
                    self._check_first_contact(sandbox, change, deployment)
            except PreflightFailed as exc:
                failed[deployment.certificate] = str(exc)
                continue
            keep.append(deployment)
        if not failed:
            return change, failed
        # A binding left out stays where it is: its move's cleanup of old files waits too.
        removals = tuple(
            r for r in change.removals if not (r.relocation and r.certificate in failed)
        )
        return replace(change, deployments=tuple(keep), removals=removals), failed

    def _foreign_files(
        self, sandbox: Sandbox, change: ChangeSet, deployment: Deployment
    ) -> list[str]:
        """Files this deployment would replace that certgit did not write (content differs)."""
        owned = change.owned or frozenset()
        foreign = []
        for spec in self.file_specs(change.target, deployment):
            if spec.path in owned:
                continue
            current = sandbox.file_sha256(spec.path)
            if current is not None and current != hashlib.sha256(spec.content).hexdigest():
                foreign.append(spec.path)
        return foreign

    def _check_first_contact(
        self, sandbox: Sandbox, change: ChangeSet, deployment: Deployment
    ) -> None:
        foreign = self._foreign_files(sandbox, change, deployment)
        if foreign:
            raise PreflightFailed(
                f"certificate {deployment.certificate}: {foreign[0]} already exists and "
                "certgit did not write it (its content differs); refusing to overwrite "
                "it. Set `adopt: true` on the deployTo entry or the Target to take it "
                "over (the old file is backed up), or point the binding at another file",
                target=change.target.name,
            )

    def deploy(self, sandbox: Sandbox, change: ChangeSet) -> DeployReport:
        """Isolate unusable bindings → one atomic apply of every file → verify each binding."""
        target = change.target
        change, failed = self.isolate(sandbox, change)
        if failed and not change.deployments and not change.removals:
            # Nothing usable is left: the whole change failed, as one error.
            raise PreflightFailed("; ".join(failed.values()), target=target.name)
        specs, deletes = self.plan_files(change)
        settings = self.settings(target)
        verify = self._verifier(sandbox, change)
        adopted: list[str] = []
        if change.owned is not None:
            for deployment in change.deployments:
                if deployment.adopt:
                    adopted += self._foreign_files(sandbox, change, deployment)
        result = sandbox.apply_files(
            specs,
            validate=settings.validate,
            reload=settings.reload,
            work_dir=target.work_dir,
            verify=verify,
            remove=deletes,
            backup_key=target.backup_key,  # sealed copies, kept (retention); never plain
        )
        written: dict[str, list[tuple[str, str, str]]] = {}
        for spec in specs:
            written.setdefault(spec.certificate, []).append(
                (spec.path, spec.role, hashlib.sha256(spec.content).hexdigest())
            )
        return DeployReport(
            target=target.name,
            changed=result.changed,
            validated=result.validated,
            reloaded=result.reloaded,
            verified=result.verified,
            files=dict(result.files),
            fingerprints={d.certificate: d.fingerprint for d in change.deployments},
            written={cert: tuple(files) for cert, files in written.items()},
            failed=failed,
            adopted=tuple(adopted),
        )

    def observe(
        self, sandbox: Sandbox, target: TargetSpec, certificate: str, overrides: Mapping[str, Any]
    ) -> Observation:
        """Read the binding's files back: SHA-256 of each, leaf fingerprint of the cert file.

        Each file is read once; an unreadable one makes the whole observation an
        error naming it (no conclusion about drift).
        """
        path = ""
        try:
            paths = self.paths(target, certificate, overrides)
            files: dict[str, str | None] = {}
            fingerprint = None
            for role, path in paths.items():
                data = sandbox.read_bytes(path)
                files[path] = hashlib.sha256(data).hexdigest() if data is not None else None
                if fingerprint is None and data is not None and role in _LEAF_ROLES:
                    fingerprint = _leaf_fingerprint(data)
        except OSError as exc:
            why = f"{path or target.name}: {exc.strerror or exc}"
            return Observation(
                certificate=certificate, target=target.name, fingerprint=None, error=why
            )
        except (CertgitError, ValueError) as exc:
            return Observation(
                certificate=certificate, target=target.name, fingerprint=None, error=str(exc)
            )
        return Observation(
            certificate=certificate, target=target.name, fingerprint=fingerprint, files=files
        )

    def validate_only(
        self, sandbox: Sandbox, change: ChangeSet, *, always_test: bool = False
    ) -> list[str]:
        """Dry run: preflight, grants, the config test on the new files. Writes no live file.

        Returns lines: `create/replace/keep/delete <path>` per file, `run` for
        the validate/reload a real apply would run, `test` for what the config
        test showed, `note` for its limits. When something changes and a
        validateCommand is configured, the config test runs against a staged
        copy of the new files and the server config (sdk/staging.py; the
        connector's `config_test` says how); when that copy cannot be built, the
        configured command runs against the CURRENT config only if it is a known
        read-only config test, and the `test` line starts "new files not
        tested: <why>". The reload command never runs. `always_test` runs the
        config test even when no file changes (the caller stands in files in
        place for a certificate the apply has yet to issue).

        Contract: every failure RAISES, nothing returns a failure line.
        PreflightFailed (bundle unusable), DeniedError (missing grant), and
        DryRunFailed (a ValidateFailed) when the config test fails: its message
        names the target and the command, `.detail` holds the server's output
        (staged paths shown as the live paths they stand for) and `.lines` the
        file lines found before the test. A caller prints it as
        "<target>: WOULD FAIL: <message>: <detail>".
        """
        from certgit.connectors.sdk.staging import dry_run_config_test

        target = change.target
        specs, deletes = self.plan_files(change)
        settings = self.settings(target)
        lines: list[str] = []
        changed = False
        # the sandbox's own checks: paths and binaries resolved on the target, as apply does
        for spec in specs:
            sandbox.check_write(spec.path)
            current = sandbox.file_sha256(spec.path)
            new = hashlib.sha256(spec.content).hexdigest()
            if current is None:
                lines.append(f"create  {spec.path} ({spec.certificate} {spec.role})")
            elif current != new:
                lines.append(f"replace {spec.path} ({spec.certificate} {spec.role})")
            else:
                lines.append(f"keep    {spec.path} (unchanged)")
                continue
            changed = True
        for path in deletes:
            sandbox.check_write(path)
            if sandbox.file_sha256(path) is not None:
                lines.append(f"delete  {path}")
                changed = True
        for label, argv in (("validate", settings.validate), ("reload", settings.reload)):
            if not argv:
                continue
            sandbox.check_exec(argv)
            if changed:
                lines.append(f"run     {label}: {' '.join(argv)}")
        if target.verify is not None:
            sandbox.check_dial(target.verify.host, target.verify.port)
        if changed and target.verify is not None:
            lines.append(f"verify  {_endpoint(target.verify)}")
        if not changed and not always_test:
            lines.append(f"target {target.name}: nothing to change")
            return lines
        lines += dry_run_config_test(
            sandbox,
            target=target.name,
            work_dir=str(target.work_dir),
            validate=settings.validate,
            test=self.config_test,
            settings=target.settings or {},
            specs=specs,
            deletes=deletes,
            lines=lines,
        )
        return lines

    # -- helpers --------------------------------------------------------------------------

    def _verifier(self, sandbox: Sandbox, change: ChangeSet) -> Callable[[], None] | None:
        config = change.target.verify
        if config is None or not change.deployments:
            return None
        pairs = expected_pairs(config, change.deployments)
        if not pairs:
            return None
        from certgit.connectors.sdk.verify import verify_with_retry

        def check(server_name: str | None, expected: str) -> None:
            def fingerprint() -> str:
                return sandbox.tls_leaf_fingerprint(
                    config.host, config.port, server_name, timeout=config.timeout
                )

            verify_with_retry(fingerprint, expected, replace(config, server_name=server_name))

        def verify() -> None:
            # Each binding with its own SNI: a target serving several certificates
            # is checked for every one this change put in place.
            for server_name, expected in pairs:
                check(server_name, expected)

        return verify


def expected_pairs(
    config: VerifyConfig, deployments: Sequence[Deployment]
) -> list[tuple[str | None, str]]:
    """(SNI, fingerprint) for every binding the verify endpoint must serve after this change.

    A binding's own `server_name` wins; else the target's serverName when the
    certificate carries that name; else the certificate's first DNS name. A
    binding with no name at all is checked only when it is the sole deployment
    (with the target's serverName, or no SNI).
    """
    pairs: list[tuple[str | None, str]] = []
    for deployment in deployments:
        if not deployment.verify:
            continue
        name = deployment.server_name
        if name is None and config.server_name and any(
            _name_matches(n, config.server_name) for n in deployment.dns_names
        ):
            name = config.server_name
        if name is None:
            name = next((n for n in deployment.dns_names if not n.startswith("*.")), None)
        if name is None and len(deployments) == 1:
            pairs.append((config.server_name, deployment.fingerprint))
            continue
        if name is not None:
            pairs.append((name, deployment.fingerprint))
    return pairs


def expected_fingerprint(config: VerifyConfig, deployments: Sequence[Deployment]) -> str | None:
    """The fingerprint the verify endpoint must serve for the target's own serverName.

    The deployment whose dns_names match the SNI name, else the only deployment.
    With several deployments and no match there is nothing to compare: None.
    """
    if config.server_name:
        for deployment in deployments:
            if any(_name_matches(n, config.server_name) for n in deployment.dns_names):
                return deployment.fingerprint
    if len(deployments) == 1:
        return deployments[0].fingerprint
    return None


def _claim(owners: dict[str, str], path: str, label: str, target: str) -> None:
    previous = owners.get(path)
    if previous is not None:
        raise PreflightFailed(
            f"target {target}: {previous} and {label} would both write {path}; "
            "give one of them a different file name (settings.files or deployTo[].files)",
            target=target,
        )
    owners[path] = label


def _join_pem(*parts: bytes) -> bytes:
    out = b""
    for part in parts:
        if not part:
            continue
        out += part if part.endswith(b"\n") else part + b"\n"
    return out


def _endpoint(config: VerifyConfig) -> str:
    host = config.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{config.port}"


def _resolve_binary(argv0: str) -> str:
    """An absolute path for the exec grant: argv[0] as written, or found on PATH."""
    if posixpath.isabs(argv0):
        return argv0
    found = shutil.which(argv0)
    return found or argv0
