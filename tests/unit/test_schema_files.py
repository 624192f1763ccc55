"""The JSON Schemas are valid draft 2020-12 and ship as package data."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
from jsonschema import Draft202012Validator

from certgit.schemas.validator import KIND_SCHEMAS, schema_names

SHIPPED = sorted(
    entry.name for entry in files("certgit.schemas").iterdir() if entry.name.endswith(".json")
)


def test_every_kind_and_the_common_schema_ship() -> None:
    assert set(SHIPPED) == {
        "common.schema.json",
        "issuer.schema.json",
        "certificate.schema.json",
        "target.schema.json",
        "policy.schema.json",
    }
    assert set(schema_names()) == set(SHIPPED)
    assert set(KIND_SCHEMAS) == {"Issuer", "Certificate", "Target", "Policy"}


@pytest.mark.parametrize("name", SHIPPED)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = json.loads(files("certgit.schemas").joinpath(name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/" + name)
    assert schema.get("description"), f"{name} needs a description"


@pytest.mark.parametrize("kind", sorted(KIND_SCHEMAS))
def test_kind_schema_pins_kind_and_rejects_unknown_top_level_fields(kind: str) -> None:
    schema = json.loads(
        files("certgit.schemas").joinpath(KIND_SCHEMAS[kind]).read_text(encoding="utf-8")
    )
    assert schema["properties"]["kind"] == {"const": kind}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["spec"]["additionalProperties"] is False


def test_every_builtin_connector_has_its_settings_schema() -> None:
    """Each registered built-in type gets its settings checked at validate time."""
    from certgit.connectors.sdk.registry import available
    from certgit.schemas.validator import load_schema

    schema = load_schema("target.schema.json")
    typed = {
        rule["if"]["properties"]["type"]["const"]
        for rule in schema["properties"]["spec"]["allOf"]
        if "if" in rule
    }
    assert typed == set(available())
