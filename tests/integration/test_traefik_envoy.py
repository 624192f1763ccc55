"""traefik and envoy: file level only (neither is packaged in Debian, so no real server here).

The dynamic-config YAML (traefik) and the SDS Secret (envoy) are parsed back
and must name exactly the files the deploy wrote; both connectors also pass the
conformance suite at file level (no reload command: the servers watch files).
"""

from __future__ import annotations

import stat
from pathlib import Path

import yaml

from certgit.connectors.model import ChangeSet, Removal, TargetSpec
from certgit.connectors.sdk.conformance import ConnectorConformance
from certgit.connectors.sdk.registry import load_connector, sandbox_for
from tests.integration.conftest import deploy, issue, make_target


def test_traefik_dynamic_config_names_the_deployed_files(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    target = make_target(tmp_path, "traefik", {"directory": str(certs)})
    web = issue("web")
    report = deploy(target, web)
    doc = yaml.safe_load((certs / "web.tls.yml").read_text())
    entry = doc["tls"]["certificates"][0]
    assert Path(entry["certFile"]).read_bytes() == web.fullchain_pem
    assert Path(entry["keyFile"]).read_bytes() == web.key_pem
    assert stat.S_IMODE(Path(entry["keyFile"]).stat().st_mode) == 0o600
    assert set(report.files) == {str(certs / n) for n in ("web.crt", "web.key", "web.tls.yml")}
    assert report.reloaded is False  # traefik watches the directory
    # removal deletes all three files
    connector = load_connector("traefik")
    connector.deploy(
        sandbox_for(connector, target), ChangeSet(target, removals=(Removal("web"),))
    )
    assert sorted(p.name for p in certs.iterdir()) == []


def test_envoy_sds_secret_names_the_deployed_files(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    target = make_target(tmp_path, "envoy", {"directory": str(certs), "secretName": "tls-{name}"})
    web = issue("web")
    deploy(target, web)
    doc = yaml.safe_load((certs / "web.sds.yaml").read_text())
    (resource,) = doc["resources"]
    assert resource["@type"] == (
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    )
    assert resource["name"] == "tls-web"
    tls = resource["tls_certificate"]
    assert Path(tls["certificate_chain"]["filename"]).read_bytes() == web.fullchain_pem
    assert Path(tls["private_key"]["filename"]).read_bytes() == web.key_pem
    assert tls["watched_directory"]["path"] == str(certs)
    # a new version rewrites cert and key; the SDS text is unchanged (same paths)
    before = (certs / "web.sds.yaml").read_bytes()
    web2 = issue("web", 2)
    assert deploy(target, web2).changed is True
    assert (certs / "web.crt").read_bytes() == web2.fullchain_pem
    assert (certs / "web.sds.yaml").read_bytes() == before


class TestTraefikConformance(ConnectorConformance):
    connector_name = "traefik"

    def make_target(self, tmp_path: Path) -> TargetSpec:
        return make_target(tmp_path, "traefik", {"directory": str(tmp_path / "certs")})


class TestEnvoyConformance(ConnectorConformance):
    connector_name = "envoy"

    def make_target(self, tmp_path: Path) -> TargetSpec:
        return make_target(tmp_path, "envoy", {"directory": str(tmp_path / "certs")})
