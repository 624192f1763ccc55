"""Schema validation: positions (JSON paths) and messages a user can act on."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certgit.schemas.validator import (
    SchemaViolation,
    _fast_checks,
    _validators,
    compile_check,
    validate_document,
)


def certificate(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"issuerRef": {"name": "internal-ca"}, "dnsNames": ["www.example.com"]}
    base.update(spec)
    return {
        "apiVersion": "certgit.dev/v1",
        "kind": "Certificate",
        "metadata": {"name": "www", "labels": {"team": "web"}},
        "spec": base,
    }


VALID: list[dict[str, Any]] = [
    {
        "apiVersion": "certgit.dev/v1",
        "kind": "Issuer",
        "metadata": {"name": "internal-ca"},
        "spec": {
            "type": "local-ca",
            "localCA": {
                "commonName": "demo CA",
                "certificateRef": {"file": "/etc/ca.pem"},
                "keyRef": {"env": "CA_KEY_PEM"},
            },
        },
    },
    certificate(
        commonName="www.example.com",
        dnsNames=["www.example.com", "*.example.com"],
        ipAddresses=["192.0.2.10", "2001:db8::1"],
        key={"algorithm": "RSA", "size": 4096, "rotation": "Never"},
        duration="1d12h",
        renewBeforePercentage=20,
        deployTo=[{"target": "web-1", "files": {"certificate": "www.crt", "combined": None}}],
    ),
    certificate(key={"algorithm": "Ed25519"}),
    {
        "apiVersion": "certgit.dev/v1",
        "kind": "Target",
        "metadata": {"name": "web-1", "labels": {"env": "production"}},
        "spec": {
            "type": "files",
            "transport": {"type": "local"},
            "settings": {
                "directory": "/srv/certs",
                "files": {"key": "{name}.key", "combined": None},
                "mode": "0644",
                "keyMode": "0600",
                "owner": "www-data",
                "group": "ssl-cert",
                "validateCommand": ["nginx", "-t"],
                "reloadCommand": ["nginx", "-s", "reload"],
            },
            "verify": {"endpoint": "127.0.0.1:8443", "serverName": "www.example.com"},
            "approval": {"required": True, "actions": ["deploy", "remove"]},
        },
    },
    {
        "apiVersion": "certgit.dev/v1",
        "kind": "Policy",
        "metadata": {"name": "production-gate"},
        "spec": {
            "approvals": [
                {
                    "name": "production-deploys",
                    "match": {
                        "targetLabels": {"env": "production"},
                        "certificateLabels": {},
                        "targets": [],
                        "certificates": ["www"],
                        "actions": ["deploy", "remove"],
                    },
                }
            ],
            "pruneOrphans": False,
        },
    },
]


@pytest.mark.parametrize("doc", VALID, ids=lambda d: d["kind"])
def test_valid_documents_have_no_violations(doc: dict[str, Any]) -> None:
    assert validate_document(doc) == []


def test_unknown_field_points_at_the_key_with_did_you_mean() -> None:
    doc = certificate()
    doc["spec"]["dnsName"] = doc["spec"].pop("dnsNames")
    assert validate_document(doc) == [
        SchemaViolation(
            ("spec", "dnsName"),
            True,
            'Certificate "www": unknown field "dnsName" in spec (did you mean "dnsNames"?)',
        )
    ]


def test_each_unknown_field_is_its_own_violation() -> None:
    doc = certificate(colour="blue", flavour="mint")
    paths = sorted(v.path for v in validate_document(doc))
    assert paths == [("spec", "colour"), ("spec", "flavour")]


def test_key_size_message_names_the_algorithm() -> None:
    [violation] = validate_document(certificate(key={"size": 512}))
    assert violation.path == ("spec", "key", "size")
    assert violation.message == (
        'Certificate "www": spec.key.size: expected one of 256, 384 for ECDSA, got 512'
    )
    [rsa] = validate_document(certificate(key={"algorithm": "RSA", "size": 256}))
    assert "expected one of 2048, 3072, 4096 for RSA, got 256" in rsa.message


def test_ed25519_with_size_points_at_size() -> None:
    [violation] = validate_document(certificate(key={"algorithm": "Ed25519", "size": 256}))
    assert violation == SchemaViolation(
        ("spec", "key", "size"),
        True,
        'Certificate "www": spec.key.size is not allowed for Ed25519 keys: remove it',
    )


@pytest.mark.parametrize("bad", ["90 days", "90", "-5d", "1w", "12h1d"])
def test_duration_pattern(bad: str) -> None:
    [violation] = validate_document(certificate(duration=bad))
    assert violation.path == ("spec", "duration")
    assert f'spec.duration: "{bad}" is not a duration (use e.g. 90d, 720h, 30m)' in (
        violation.message
    )


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("duration", "999999999d"),
        ("duration", "36501d"),
        ("duration", "1d876001h"),
        ("duration", "52560001m"),
        ("renewBefore", "3153600001s"),
    ],
)
def test_duration_longer_than_a_hundred_years(field: str, bad: str) -> None:
    [violation] = validate_document(certificate(**{field: bad}))
    assert violation.path == ("spec", field)
    assert violation.message == (
        f'Certificate "www": spec.{field}: "{bad}" is not a duration of at most 100 years (36500d)'
    )


@pytest.mark.parametrize("good", ["36500d", "876000h", "52560000m", "3153600000s", "36500d1h"])
def test_durations_up_to_a_hundred_years_per_unit_pass_the_schema(good: str) -> None:
    # a sum of units over the cap (36500d1h) is left to the parser, which positions it too
    assert validate_document(certificate(duration=good)) == []


def test_unknown_kind_and_api_version() -> None:
    doc = certificate()
    doc["kind"] = "Certficate"
    doc["apiVersion"] = "certgit.dev/v2"
    violations = validate_document(doc)
    assert [v.path for v in violations] == [("apiVersion",), ("kind",)]
    assert violations[0].message == 'unknown apiVersion "certgit.dev/v2" (expected certgit.dev/v1)'
    assert violations[1].message.startswith(
        'unknown kind "Certficate" (expected one of Issuer, Certificate, Target, Policy)'
    )
    assert 'did you mean "Certificate"' in violations[1].message


def test_missing_required_points_at_parent_key() -> None:
    doc = certificate()
    del doc["spec"]["issuerRef"]
    assert validate_document(doc) == [
        SchemaViolation(
            ("spec",), True, 'Certificate "www": missing required field "issuerRef" in spec'
        )
    ]


def test_wrong_type_says_what_was_expected() -> None:
    [violation] = validate_document(certificate(dnsNames="www.example.com"))
    assert violation.path == ("spec", "dnsNames")
    assert violation.message.endswith("spec.dnsNames: expected a list, got a string")


def test_target_type_must_look_like_a_connector_name() -> None:
    """Which connectors are installed is the loader's check; the schema checks the shape."""
    doc = copy.deepcopy(VALID[3])
    doc["spec"]["type"] = "iis"
    assert validate_document(doc) == []
    doc["spec"]["type"] = "Not A Name"
    violations = validate_document(doc)
    assert violations[0].path == ("spec", "type")


def test_files_settings_are_checked_for_files_targets() -> None:
    doc = copy.deepcopy(VALID[3])
    doc["spec"]["settings"]["directry"] = doc["spec"]["settings"].pop("directory")
    messages = {v.path: v.message for v in validate_document(doc)}
    assert 'did you mean "directory"' in messages[("spec", "settings", "directry")]
    assert 'missing required field "directory"' in messages[("spec", "settings")]


def test_secret_ref_needs_exactly_one_source() -> None:
    doc = copy.deepcopy(VALID[0])
    doc["spec"]["localCA"]["keyRef"] = {"env": "A", "file": "/b"}
    [violation] = validate_document(doc)
    assert violation.path == ("spec", "localCA", "keyRef")
    assert "give exactly one of env or file" in violation.message


def test_invalid_name_and_policy_action() -> None:
    doc = copy.deepcopy(VALID[4])
    doc["metadata"]["name"] = "Production_Gate"
    doc["spec"]["approvals"][0]["match"]["actions"] = ["deploy", "deplyo"]
    messages = {v.path: v.message for v in validate_document(doc)}
    assert "is not a lowercase name" in messages[("metadata", "name")]
    assert 'did you mean "deploy"' in messages[("spec", "approvals", 0, "match", "actions", 1)]


def test_yaml_date_value_suggests_quoting() -> None:
    import datetime

    doc = certificate()
    doc["metadata"]["labels"]["since"] = datetime.date(2024, 1, 1)
    [violation] = validate_document(doc)
    assert violation.path == ("metadata", "labels", "since")
    assert "quote the value" in violation.message


def test_non_mapping_document() -> None:
    [violation] = validate_document(["a"])
    assert violation.path == ()


def test_every_kind_has_a_compiled_check() -> None:
    assert set(_fast_checks()) == set(_validators())


def test_compiled_check_rejects_unknown_keywords() -> None:
    with pytest.raises(ValueError, match="not supported"):
        compile_check({"oneOf": [{"type": "string"}]})


# The compiled check must agree with jsonschema: generate near-valid documents
# by replacing one node of a valid document with an arbitrary JSON-ish value.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=5000),
    st.sampled_from(
        [
            256,
            384,
            2048,
            1.0,
            2048.0,
            "",
            "90d",
            "0644",
            "files",
            "RSA",
            "Ed25519",
            "web-1",
            "deploy",
            "127.0.0.1:1",
            "*.example.com",
        ]
    ),
    st.text(max_size=6),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["name", "size", "algorithm", "env", "file", "type", "x"]),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_compiled_check_agrees_with_jsonschema(data: st.DataObject) -> None:
    doc = copy.deepcopy(data.draw(st.sampled_from(VALID)))
    kind = doc["kind"]
    path = data.draw(st.sampled_from(_paths(doc)[1:]))
    node = doc
    for element in path[:-1]:
        node = node[element]
    if data.draw(st.booleans()) or not isinstance(node, dict):
        node[path[-1]] = data.draw(_values)
    else:
        del node[path[-1]]
    assert _fast_checks()[kind](doc) == _validators()[kind].is_valid(doc)
