"""accepted_keys: the key types each connector records, and preflight refusing the others."""

from __future__ import annotations

import pytest

from certgit.connectors.errors import PreflightFailed
from certgit.connectors.model import Capability, TargetSpec
from certgit.connectors.sdk.base import DEFAULT_ACCEPTED_KEYS, KEY_TYPES, FileConnector
from certgit.connectors.sdk.conformance import make_bundle
from certgit.connectors.sdk.preflight import preflight
from certgit.connectors.sdk.registry import load_connector

MEASURED = ("apache", "nginx", "haproxy", "caddy", "postfix", "dovecot", "files")


@pytest.mark.parametrize("name", MEASURED)
def test_measured_connectors_accept_every_key_type(name: str) -> None:
    # tests/integration/test_key_types.py proves each against the real server
    connector = load_connector(name)
    assert isinstance(connector, FileConnector)
    assert connector.accepted_keys == frozenset(KEY_TYPES)
    assert connector.accepts_ed25519


def test_unmeasured_connectors_keep_the_default_without_ed25519(tmp_path) -> None:
    envoy = load_connector("envoy")
    assert isinstance(envoy, FileConnector)
    assert envoy.accepted_keys == DEFAULT_ACCEPTED_KEYS and not envoy.accepts_ed25519
    target = TargetSpec("t", "envoy", {"directory": str(tmp_path)}, tmp_path, tmp_path)
    assert Capability.ED25519 not in envoy.capabilities(target)
    nginx = load_connector("nginx")
    assert Capability.ED25519 in nginx.capabilities(
        TargetSpec("t", "nginx", {"directory": str(tmp_path)}, tmp_path, tmp_path)
    )


def test_preflight_refuses_a_key_type_the_target_does_not_accept() -> None:
    ed = make_bundle("a.example.test", key_type="ed25519").deployment("a")
    with pytest.raises(PreflightFailed, match="does not accept Ed25519 keys"):
        preflight(ed, accepted_keys=DEFAULT_ACCEPTED_KEYS)
    preflight(ed, accepted_keys=frozenset(KEY_TYPES))
    rsa = make_bundle("b.example.test", key_type="rsa", rsa_bits=2048).deployment("b")
    with pytest.raises(PreflightFailed, match=r"RSA-2048 keys \(it accepts ECDSA-256\)"):
        preflight(rsa, accepted_keys={"ECDSA-256"})
    # a type outside KEY_TYPES (here RSA-1024) was never measured: preflight lets it
    # through, the connector's own checks (Apache's RSA floor) still apply
    weak = make_bundle("c.example.test", key_type="rsa", rsa_bits=1024).deployment("c")
    preflight(weak, accepted_keys={"ECDSA-256"})
