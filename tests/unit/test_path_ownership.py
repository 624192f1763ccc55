"""Path ownership and key-type warnings: cross-document checks that use the Targets' connectors."""

from __future__ import annotations

import hashlib

import pytest

from certgit.reconciler.desired import DesiredLoader
from certgit.reconciler.errors import ConfigErrors, Problem
from certgit.reconciler.model import DesiredState, FileEntry, KeyAlgorithm, KeySpec
from certgit.reconciler.ownership import STATE_DIR, key_type

ISSUER = """\
apiVersion: certgit.dev/v1
kind: Issuer
metadata: {name: ca}
spec: {type: local-ca}
"""


def target(name: str, type_: str = "apache", settings: str = "", transport: str = "") -> str:
    return f"""\
apiVersion: certgit.dev/v1
kind: Target
metadata: {{name: {name}}}
spec:
  type: {type_}
{transport or "  transport: {type: local}"}
  settings: {{{settings}}}
"""


def cert(name: str, deploy: str, key: str = "{algorithm: ECDSA, size: 256}") -> str:
    return f"""\
apiVersion: certgit.dev/v1
kind: Certificate
metadata: {{name: {name}}}
spec:
  commonName: {name}.example.com
  key: {key}
  issuerRef: {{name: ca}}
  deployTo:
{deploy}"""


def entries(files: dict[str, str]) -> list[FileEntry]:
    out = []
    for path, text in files.items():
        data = text.encode()
        out.append(FileEntry(path, hashlib.sha256(data).hexdigest(), lambda data=data: data))
    return out


def load(files: dict[str, str]) -> DesiredState:
    return DesiredLoader().load(entries(files), None)


def problems(files: dict[str, str]) -> list[Problem]:
    with pytest.raises(ConfigErrors) as info:
        load(files)
    return list(info.value.problems)


def test_distinct_files_load_and_defaults_do_not_clash() -> None:
    state = load(
        {
            "issuer.yaml": ISSUER,
            "targets.yaml": target("web"),
            "certs/a.yaml": cert("a", "    - target: web\n"),
            "certs/b.yaml": cert("b", "    - target: web\n"),
        }
    )
    assert sorted(state.certificates) == ["a", "b"]
    assert state.warnings == ()


def test_two_bindings_naming_one_path_on_one_target_name_both_documents() -> None:
    # The incident: b's deployTo names a's certificate file on the same Apache target.
    [problem] = problems(
        {
            "issuer.yaml": ISSUER,
            "targets.yaml": target("web"),
            "certs/a.yaml": cert("a", "    - target: web\n"),
            "certs/b.yaml": cert(
                "b", "    - target: web\n      files: {certificate: certs/a.crt}\n"
            ),
        }
    )
    # positioned at b's files.certificate, naming a's deployTo entry
    assert (problem.path, problem.line, problem.column) == ("certs/b.yaml", 10, 28)
    assert "certs/a.yaml:9:15" in problem.message
    assert "/etc/ssl/certgit/certs/a.crt" in problem.message
    assert 'Certificate "a"' in problem.message and 'Certificate "b"' in problem.message
    assert "spec.deployTo[0].files.certificate" in problem.message


def test_two_targets_whose_directories_overlap_on_one_host() -> None:
    # web-a writes /srv/tls/{name}.crt; web-b's directory /srv/tls/../tls is the same place.
    files = {
        "issuer.yaml": ISSUER,
        "targets.yaml": target("web-a", "nginx", "directory: /srv/tls")
        + "---\n"
        + target("web-b", "nginx", "directory: /srv/tls/../tls"),
        "certs/www.yaml": cert("www", "    - target: web-a\n    - target: web-b\n"),
    }
    found = problems(files)
    assert len(found) == 2  # fullchain and key
    for problem in found:
        assert problem.path == "certs/www.yaml"
        assert (problem.line, problem.column) == (10, 15)  # deployTo[1].target
        assert "certs/www.yaml:9:15" in problem.message  # deployTo[0].target
        assert "overlapping directories on the same host" in problem.message
    written = ("/srv/tls/www.crt", "/srv/tls/www.key")
    assert {path for p in found for path in written if path in p.message} == set(written)


def test_relative_directories_compare_among_themselves_and_hosts_apart() -> None:
    files = {
        "issuer.yaml": ISSUER,
        "targets.yaml": target("one", "files", "directory: targets/shared")
        + "---\n"
        + target("two", "files", "directory: targets/shared/"),
        "certs/a.yaml": cert("a", "    - target: one\n"),
        "certs/b.yaml": cert(
            "b", "    - target: two\n      files: {certificate: a.crt, key: b.key}\n"
        ),
    }
    [problem] = problems(files)
    assert problem.path == "certs/b.yaml"
    assert f"{STATE_DIR}/targets/shared/a.crt" in problem.message
    assert "certs/a.yaml:9:15" in problem.message


def test_paths_are_owned_per_host() -> None:
    # The schema allows only local transport today; the check keys paths by host already:
    # the same path on two ssh hosts is fine, on one ssh host (any spelling) a clash.
    from types import SimpleNamespace

    from certgit.reconciler import ownership
    from certgit.reconciler.model import Binding, Certificate, Target

    def ssh(name: str, host: str) -> Target:
        return Target(name, "nginx", transport={"type": "ssh", "host": host})

    def run(*targets: Target) -> list[Problem]:
        entry = FileEntry("repo.yaml", "k", lambda: b"")
        www = Certificate("www", "ca", deploy_to=tuple(Binding(t.name) for t in targets))
        docs = [*targets, www]
        located = [(entry, SimpleNamespace(index=i, model=m)) for i, m in enumerate(docs)]
        positions = SimpleNamespace(at=lambda *_args, **_kw: (1, 1))
        errors, _ = ownership.check_bindings(located, {"nginx"}, positions, set())
        return errors

    assert run(ssh("a", "web1.example"), ssh("b", "web2.example")) == []
    assert len(run(ssh("a", "web1.example"), ssh("b", "WEB1.example."))) == 2


def test_a_path_written_as_one_certificate_and_another_key() -> None:
    [problem] = problems(
        {
            "issuer.yaml": ISSUER,
            "targets.yaml": target("web"),
            "certs/a.yaml": cert("a", "    - target: web\n"),
            "certs/b.yaml": cert(
                "b", "    - target: web\n      files: {certificate: private/a.key}\n"
            ),
        }
    )
    assert (problem.path, problem.line, problem.column) == ("certs/b.yaml", 10, 28)
    assert "certs/a.yaml:9:15" in problem.message
    assert "/etc/ssl/certgit/private/a.key" in problem.message
    assert "would hold this binding's certificate and Certificate \"a\"'s private key" in (
        problem.message
    )
    assert "does not match its certificate" in problem.message


def test_one_binding_giving_two_roles_one_file() -> None:
    [problem] = problems(
        {
            "issuer.yaml": ISSUER,
            "targets.yaml": target("web"),
            "certs/a.yaml": cert(
                "a", "    - target: web\n      files: {certificate: x.pem, chain: x.pem}\n"
            ),
        }
    )
    assert problem.path == "certs/a.yaml"
    assert "its chain and its certificate" in problem.message
    assert "/etc/ssl/certgit/x.pem" in problem.message


def test_companion_files_count_too() -> None:
    # Envoy's SDS file of "a" named as b's key file
    [problem] = problems(
        {
            "issuer.yaml": ISSUER,
            "targets.yaml": target("edge", "envoy", "directory: /srv/envoy"),
            "certs/a.yaml": cert("a", "    - target: edge\n"),
            "certs/b.yaml": cert(
                "b", "    - target: edge\n      files: {key: a.sds.yaml}\n"
            ),
        }
    )
    assert "/srv/envoy/a.sds.yaml" in problem.message
    assert "companion config file" in problem.message


def test_connectors_that_cannot_compute_paths_are_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a type listed as deployable that does not load, and a FileConnector that raises
    # while computing paths: both are left to deploy time, never a guessed clash
    files = {
        "issuer.yaml": ISSUER,
        "targets.yaml": target("iis-1", "iis") + "---\n" + target("web", "files", "directory: /x"),
        "certs/a.yaml": cert(
            "a", "    - target: iis-1\n      files: {certificate: same}\n    - target: web\n"
        ),
        "certs/b.yaml": cert(
            "b", "    - target: iis-1\n      files: {certificate: same}\n    - target: web\n"
            "      files: {certificate: a.crt}\n"
        ),
    }
    from certgit.connectors.files import FilesConnector

    def broken(*_args: object) -> dict[str, str]:
        raise RuntimeError("cannot say")

    monkeypatch.setattr(FilesConnector, "paths", broken)
    state = DesiredLoader(connector_types={"files", "iis"}).load(entries(files), None)
    assert sorted(state.certificates) == ["a", "b"]


def test_caddy_through_the_admin_api_writes_no_files() -> None:
    files = {
        "issuer.yaml": ISSUER,
        "targets.yaml": target("api", "caddy", "method: admin-api"),
        "certs/a.yaml": cert("a", "    - target: api\n      files: {fullchain: same}\n"),
        "certs/b.yaml": cert("b", "    - target: api\n      files: {fullchain: same}\n"),
    }
    assert sorted(load(files).certificates) == ["a", "b"]


def test_ed25519_on_a_target_that_does_not_accept_it_is_a_warning_not_an_error() -> None:
    # Envoy keeps the SDK default (no Ed25519); nginx was measured to serve it.
    state = load(
        {
            "issuer.yaml": ISSUER,
            "targets.yaml": target("edge", "envoy", "directory: /srv/envoy")
            + "---\n"
            + target("web", "nginx", "directory: /srv/nginx"),
            "certs/a.yaml": cert(
                "a", "    - target: web\n    - target: edge\n", key="{algorithm: Ed25519}"
            ),
        }
    )
    assert "a" in state.certificates
    [warning] = state.warnings
    assert (warning.path, warning.line, warning.column) == ("certs/a.yaml", 10, 15)
    assert 'target "edge" (envoy) does not accept Ed25519 keys' in warning.message
    assert "ECDSA-256" in warning.message and "Ed25519" not in warning.message.split("accepts")[1]


def test_warnings_survive_a_cached_load() -> None:
    files = {
        "issuer.yaml": ISSUER,
        "targets.yaml": target("edge", "envoy", "directory: /srv/envoy"),
        "certs/a.yaml": cert("a", "    - target: edge\n", key="{algorithm: Ed25519}"),
    }
    loader = DesiredLoader()
    first = loader.load(entries(files), None)
    again = loader.load(entries(files), None)
    assert first.warnings == again.warnings and len(again.warnings) == 1


def test_key_type_names_match_the_connectors() -> None:
    from certgit.connectors.sdk.base import KEY_TYPES

    assert key_type(KeySpec(KeyAlgorithm.ECDSA, 384)) == "ECDSA-384"
    assert key_type(KeySpec(KeyAlgorithm.RSA, 4096)) == "RSA-4096"
    assert key_type(KeySpec(KeyAlgorithm.ED25519, None)) == "Ed25519"
    assert {key_type(KeySpec(a, s)) for a, s in [
        (KeyAlgorithm.ECDSA, 256), (KeyAlgorithm.ECDSA, 384), (KeyAlgorithm.RSA, 2048),
        (KeyAlgorithm.RSA, 3072), (KeyAlgorithm.RSA, 4096), (KeyAlgorithm.ED25519, None),
    ]} == set(KEY_TYPES)
