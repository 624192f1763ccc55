"""The conformance suite every connector's tests run (DESIGN §4), plus test bundles.

Use it by subclassing in a test module::

    class TestNginx(ConnectorConformance):
        connector_name = "nginx"

        def make_target(self, tmp_path: Path) -> TargetSpec:
            ...  # settings pointing into tmp_path (and a running server, if any)

        def served_fingerprint(self, target, certificate):   # optional, real servers
            return tls_leaf_fingerprint("127.0.0.1", port, f"{certificate}.example.test")

The suite counts reloads and makes a reload fail by wrapping the target's
reload command (settings.reloadCommand, or the connector's default) in a small
script: it appends to a counter file and, while a "fail once" flag file exists,
deletes the flag and exits 1 instead of running the real reload. A connector
without a reload command gets a counting no-op reload for the suite. Subclasses
that cannot take a reloadCommand override (API connectors) set
`wrap_reload = False` and implement `reload_count()` / `with_failing_reload()`.
A subclass that must start a server for each test may override the `target`
fixture itself (taking its own server fixture) and return
`self.wrap_target(connector, target, tmp_path)`.

Servers that need their certificate files to exist before they start (Apache,
HAProxy, Caddy's `load_files`) set `seed = True` and implement
`start_server(target)`: the `target` fixture first deploys certificates of the
suite's own (`seed_deployments()`: one per name in `certificate_names`, same
DNS names, different keys, so every test's first deploy still changes the
files) through the connector with no-op validate/reload commands, then calls
`start_server(target)`, then wraps the reload. Tests that check "nothing was
written" compare with the state before the step (the seed, or nothing), and,
where `served_fingerprint` answers, that the seed is still served.

`make_bundle()` issues real certificates from a throwaway two-level CA, so
every connector test shares one way to get a key, a leaf and a chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgit.connectors.errors import DeniedError, PreflightFailed, ReloadFailed
from certgit.connectors.model import Capability, ChangeSet, Deployment, TargetSpec
from certgit.connectors.sdk.registry import available, load_connector, sandbox_for

if TYPE_CHECKING:
    from certgit.connectors.sdk.base import Connector

__all__ = ["Bundle", "ConnectorConformance", "conformance_ca", "make_bundle"]

_PEM = serialization.Encoding.PEM


# -- bundles --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A leaf, its chain (intermediate) and its key, as PEM bytes."""

    cert_pem: bytes
    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    fingerprint: str = ""  # SHA-256 of the leaf DER, lowercase hex
    dns_names: tuple[str, ...] = ()

    def deployment(
        self, certificate: str, *, version: int = 1, overrides: Mapping[str, Any] | None = None
    ) -> Deployment:
        """This bundle as the Deployment of `certificate` version `version`."""
        return Deployment(
            certificate=certificate,
            version=version,
            fingerprint=self.fingerprint,
            cert_pem=self.cert_pem,
            chain_pem=self.chain_pem,
            key_pem=self.key_pem,
            overrides=dict(overrides or {}),
            dns_names=self.dns_names,
        )


@dataclass(frozen=True)
class _CA:
    root_pem: bytes
    cert: x509.Certificate  # the intermediate that signs leaves
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    pem: bytes = b""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca_cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


@lru_cache(maxsize=1)
def conformance_ca() -> _CA:
    """The process-wide throwaway CA: a root and the intermediate that signs test leaves."""
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("certgit conformance root", root_key, None, root_key, now)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = _ca_cert("certgit conformance intermediate", inter_key, root, root_key, now)
    return _CA(
        root_pem=root.public_bytes(_PEM), cert=inter, key=inter_key, pem=inter.public_bytes(_PEM)
    )


def make_bundle(
    common_name: str,
    *,
    dns_names: Sequence[str] | None = None,
    key_type: str = "ec",
    rsa_bits: int = 2048,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Bundle:
    """Issue a leaf for `common_name` from the test CA.

    key_type: "ec" (P-256), "rsa" (`rsa_bits`, e.g. 1024 to provoke OpenSSL's
    security level) or "ed25519". Validity defaults to yesterday..+90 days.
    """
    key: Any
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    elif key_type == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"key_type {key_type!r}: use ec, rsa or ed25519")
    ca = conformance_ca()
    now = dt.datetime.now(dt.UTC)
    names = tuple(dns_names) if dns_names is not None else (common_name,)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    key_pem = key.private_bytes(
        _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Bundle(
        cert_pem=cert.public_bytes(_PEM),
        chain_pem=ca.pem,
        key_pem=key_pem,
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        dns_names=names,
    )


# -- the suite ------------------------------------------------------------------------------

_RELOAD_SCRIPT = """#!{python}
# certgit conformance: count reloads; fail once while the flag exists; else run the real one.
import os, sys
with open({counter!r}, "a") as f:
    f.write("reload\\n")
try:
    os.unlink({flag!r})
except FileNotFoundError:
    pass
else:
    sys.stderr.write("reload refused by the conformance suite (fail-once flag)\\n")
    sys.exit(1)
argv = {argv!r}
if argv:
    os.execvp(argv[0], argv)
"""


@dataclass
class _Harness:
    counter: Path
    flag: Path


class ConnectorConformance:
    """Mix-in: subclass in a test module, set `connector_name`, implement `make_target`."""

    connector_name: ClassVar[str] = ""
    wrap_reload: ClassVar[bool] = True
    # Every certificate name the suite deploys (what a server config must list).
    certificate_names: ClassVar[tuple[str, ...]] = ("alpha", "bravo", "charlie")
    # Deploy seed certificates and call start_server() before each test (see module doc).
    seed: ClassVar[bool] = False

    # -- hooks for subclasses ---------------------------------------------------------------

    def make_target(self, tmp_path: Path) -> TargetSpec:
        """A target for this connector with everything under `tmp_path`."""
        raise NotImplementedError("subclasses return a TargetSpec rooted in tmp_path")

    def dns_names_for(self, certificate: str) -> tuple[str, ...]:
        """DNS names of test certificates (the SNI a served_fingerprint hook should send)."""
        return (f"{certificate}.example.test",)

    def served_fingerprint(self, target: TargetSpec, certificate: str) -> str | None:
        """Real-server connectors: the leaf fingerprint served for `certificate`, else None."""
        return None

    def start_server(self, target: TargetSpec) -> None:
        """With `seed = True`: start the server on the seeded files (stop it at teardown)."""
        raise NotImplementedError("seed = True needs start_server(target)")

    def seed_deployments(self) -> tuple[Deployment, ...]:
        """The seed certificates (cached per test): one per `certificate_names` entry."""
        found: tuple[Deployment, ...] | None = self.__dict__.get("_conformance_seeds")
        if found is None:
            deployments = []
            for name in self.certificate_names:
                names = self.dns_names_for(name)
                deployments.append(make_bundle(names[0], dns_names=names).deployment(name))
            found = self.__dict__["_conformance_seeds"] = tuple(deployments)
        return found

    def reload_count(self, target: TargetSpec) -> int:
        """How many reloads ran on `target` (the wrapping script's counter by default)."""
        harness = self._harnesses().get(str(target.work_dir))
        if harness is None:
            pytest.skip("no reload counter: set wrap_reload or override reload_count()")
        if not harness.counter.exists():
            return 0
        return len(harness.counter.read_text().splitlines())

    def with_failing_reload(self, target: TargetSpec) -> TargetSpec:
        """`target` whose next reload fails once (then the real reload runs again)."""
        harness = self._harnesses().get(str(target.work_dir))
        if harness is None:
            pytest.skip("cannot make the reload fail: set wrap_reload or override this hook")
        harness.flag.write_text("fail once\n")
        return target

    def _harnesses(self) -> dict[str, _Harness]:
        # pytest makes one instance per test, so per-instance state never leaks between tests.
        found: dict[str, _Harness] | None = self.__dict__.get("_conformance_harnesses")
        if found is None:
            found = self.__dict__["_conformance_harnesses"] = {}
        return found

    # -- fixtures ---------------------------------------------------------------------------

    @pytest.fixture
    def connector(self) -> Connector:
        """The connector instance, loaded through the entry-point registry."""
        return load_connector(self.connector_name)

    @pytest.fixture
    def target(self, tmp_path: Path, connector: Connector) -> TargetSpec:
        """make_target(tmp_path) with its reload wrapped by the counting script."""
        target = self.make_target(tmp_path)
        if self.seed:
            self._seed(connector, target)
            self.start_server(target)
        if self.wrap_reload:
            target = self.wrap_target(connector, target, tmp_path)
        return target

    @pytest.fixture
    def make_deployment(self) -> Callable[..., Deployment]:
        """make_deployment(name, *, version=1, overrides=None) -> Deployment (cached per test)."""
        cache: dict[tuple[str, int], Bundle] = {}

        def factory(
            name: str, *, version: int = 1, overrides: Mapping[str, Any] | None = None
        ) -> Deployment:
            bundle = cache.get((name, version))
            if bundle is None:
                names = self.dns_names_for(name)
                bundle = make_bundle(names[0], dns_names=names)
                cache[(name, version)] = bundle
            return bundle.deployment(name, version=version, overrides=overrides)

        return factory

    def wrap_target(self, connector: Connector, target: TargetSpec, tmp_path: Path) -> TargetSpec:
        """`target` with its reload command wrapped by the counting / fail-once script."""
        settings = dict(target.settings)
        original = settings.get("reloadCommand")
        if original is None:
            original = getattr(connector, "reload_command", None) or ()
        root = tmp_path / "conformance-reload"
        root.mkdir(exist_ok=True)
        harness = _Harness(counter=root / "count", flag=root / "fail-once")
        script = root / "reload.py"
        script.write_text(
            _RELOAD_SCRIPT.format(
                python=sys.executable,
                counter=str(harness.counter),
                flag=str(harness.flag),
                argv=list(original),
            )
        )
        script.chmod(0o755)
        settings["reloadCommand"] = [str(script)]
        self._harnesses()[str(target.work_dir)] = harness
        return replace(target, settings=settings)

    def _seed(self, connector: Connector, target: TargetSpec) -> None:
        # The server is not running yet: validate and reload are no-ops for the seed.
        settings = {**target.settings, "validateCommand": [_TRUE], "reloadCommand": [_TRUE]}
        quiet = replace(target, settings=settings)
        seeded = self._deploy(connector, quiet, *self.seed_deployments())
        assert seeded.changed is True, "seeding the target wrote nothing"

    def _deploy(self, connector: Connector, target: TargetSpec, *deployments: Deployment) -> Any:
        sandbox = sandbox_for(connector, target)
        return connector.deploy(sandbox, ChangeSet(target=target, deployments=deployments))

    def _observe(self, connector: Connector, target: TargetSpec, deployment: Deployment) -> Any:
        sandbox = sandbox_for(connector, target)
        return connector.observe(sandbox, target, deployment.certificate, deployment.overrides)

    # -- the tests --------------------------------------------------------------------------

    def test_names_itself(self, connector: Connector) -> None:
        assert connector.name, "a connector must have a non-empty name"
        assert connector.name == self.connector_name
        assert connector.name in available(), "register it in the certgit.connectors group"

    def test_declares_a_capability(self, connector: Connector, target: TargetSpec) -> None:
        caps = connector.capabilities(target)
        assert len(caps) >= 1
        assert all(isinstance(c, Capability) for c in caps)

    def test_deploy_then_observe_reports_what_was_written(
        self, connector: Connector, target: TargetSpec, make_deployment: Callable[..., Deployment]
    ) -> None:
        dep = make_deployment("alpha")
        report = self._deploy(connector, target, dep)
        assert report.changed is True
        assert report.fingerprints.get("alpha") == dep.fingerprint
        seen = self._observe(connector, target, dep)
        assert seen.error is None, seen.error
        assert seen.fingerprint == dep.fingerprint
        for path, sha in seen.files.items():
            assert sha is not None, f"observe found {path} missing right after deploy"
            assert report.files.get(path, sha) == sha
        _assert_keys_not_world_readable(report.files)
        served = self.served_fingerprint(target, "alpha")
        if served is not None:
            assert served == dep.fingerprint

    def test_redeploy_is_a_noop(
        self, connector: Connector, target: TargetSpec, make_deployment: Callable[..., Deployment]
    ) -> None:
        dep = make_deployment("alpha")
        first = self._deploy(connector, target, dep)
        reloads = self.reload_count(target)
        second = self._deploy(connector, target, dep)
        assert first.changed is True
        assert second.changed is False
        assert second.reloaded is False
        assert self.reload_count(target) == reloads, "a re-deploy must not reload again"
        assert dict(second.files) == dict(first.files)
        assert self._observe(connector, target, dep).fingerprint == dep.fingerprint

    def test_many_certificates_one_reload(
        self, connector: Connector, target: TargetSpec, make_deployment: Callable[..., Deployment]
    ) -> None:
        deps = [make_deployment(n) for n in self.certificate_names]
        before = self.reload_count(target)
        report = self._deploy(connector, target, *deps)
        assert report.changed is True
        if Capability.RELOAD in connector.capabilities(target):
            assert self.reload_count(target) == before + 1
        for dep in deps:
            assert self._observe(connector, target, dep).fingerprint == dep.fingerprint

    def test_ungranted_operation_is_denied_and_nothing_written(
        self, connector: Connector, target: TargetSpec, make_deployment: Callable[..., Deployment]
    ) -> None:
        old, new = make_deployment("alpha", version=1), make_deployment("alpha", version=2)
        self._deploy(connector, target, old)
        before = self._observe(connector, target, old)
        listing = _listing(before.files)
        # imported here so make_bundle() works without the sandbox modules loaded
        from certgit.connectors.sdk.grants import Grants
        from certgit.connectors.sdk.sandbox import Sandbox
        from certgit.connectors.sdk.transport import LocalTransport

        bare = Sandbox(Grants(), LocalTransport(), target=target.name)
        with pytest.raises(DeniedError):
            connector.deploy(bare, ChangeSet(target=target, deployments=(new,)))
        after = self._observe(connector, target, old)
        assert after.fingerprint == old.fingerprint
        assert after.files == before.files
        assert _listing(after.files) == listing, "a denied deploy left files behind"
        served = self.served_fingerprint(target, old.certificate)
        if served is not None:
            assert served == old.fingerprint

    def test_preflight_refuses_a_mismatched_key_before_writing(
        self, connector: Connector, target: TargetSpec, make_deployment: Callable[..., Deployment]
    ) -> None:
        good = make_deployment("alpha")
        other = make_deployment("other")
        bad = replace(good, key_pem=other.key_pem)
        before = self._observe(connector, target, good)
        with pytest.raises(PreflightFailed):
            self._deploy(connector, target, bad)
        self._assert_untouched(connector, target, good, before)

    def test_failed_reload_rolls_back(
        self, connector: Connector, target: TargetSpec, make_deployment: Callable[..., Deployment]
    ) -> None:
        if Capability.RELOAD not in connector.capabilities(target):
            pytest.skip(f"{connector.name} does not reload on this target")
        old, new = make_deployment("alpha", version=1), make_deployment("alpha", version=2)
        self._deploy(connector, target, old)
        before = self._observe(connector, target, old)
        reloads = self.reload_count(target)
        failing = self.with_failing_reload(target)
        with pytest.raises(ReloadFailed):
            self._deploy(connector, failing, new)
        # the failed reload, then one more on the restored files
        assert self.reload_count(target) == reloads + 2
        after = self._observe(connector, target, old)
        assert after.fingerprint == old.fingerprint
        assert after.files == before.files
        served = self.served_fingerprint(target, "alpha")
        if served is not None:
            assert served == old.fingerprint

    def test_validate_only_writes_nothing(
        self, connector: Connector, target: TargetSpec, make_deployment: Callable[..., Deployment]
    ) -> None:
        validate_only = getattr(connector, "validate_only", None)
        if validate_only is None:
            pytest.skip(f"{connector.name} has no dry run")
        dep = make_deployment("alpha")
        before = self._observe(connector, target, dep)
        lines = validate_only(
            sandbox_for(connector, target), ChangeSet(target=target, deployments=(dep,))
        )
        assert lines and any("alpha" in line for line in lines)
        self._assert_untouched(connector, target, dep, before)

    def _assert_untouched(
        self, connector: Connector, target: TargetSpec, dep: Deployment, before: Any
    ) -> None:
        """Nothing changed since `before`: empty, or the seed still on disk and served."""
        seen = self._observe(connector, target, dep)
        assert seen.fingerprint == before.fingerprint
        assert seen.files == before.files
        if not self.seed:
            assert seen.fingerprint is None
            assert all(sha is None for sha in seen.files.values())
            return
        seeds = {d.certificate: d.fingerprint for d in self.seed_deployments()}
        assert seen.fingerprint == seeds.get(dep.certificate)
        served = self.served_fingerprint(target, dep.certificate)
        if served is not None:
            assert served == seeds.get(dep.certificate)


_TRUE = "/bin/true"


def _assert_keys_not_world_readable(files: Mapping[str, str]) -> None:
    """Every written file that holds a private key is closed to "other" (0600/0640)."""
    for path in files:
        file = Path(path)
        if file.is_file() and b"PRIVATE KEY-----" in file.read_bytes():
            mode = file.stat().st_mode & 0o777
            assert mode & 0o007 == 0, f"{path} holds a private key and has mode {mode:o}"


def _listing(files: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Names in every directory holding a binding's files (temp files would show up here)."""
    out: dict[str, list[str]] = {}
    for path in files:
        directory = Path(path).parent
        names = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
        out[str(directory)] = names
    return out
