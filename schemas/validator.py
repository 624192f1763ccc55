"""Validate one YAML document against the JSON Schema of its kind.

The schemas ship as package data next to this module and are loaded once.
Violations carry the JSON path of the offending node and whether the error
should be shown at the node's KEY (unknown fields: point at the misspelled
key) or its VALUE, so the loader can turn them into `file:line:col` problems.

This module must not import `certgit.reconciler` (import-linter contract).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match, relevance
from referencing import Registry, Resource

API_VERSION = "certgit.dev/v1"
KIND_SCHEMAS: Mapping[str, str] = {
    "Issuer": "issuer.schema.json",
    "Certificate": "certificate.schema.json",
    "Target": "target.schema.json",
    "Policy": "policy.schema.json",
}
SHARED_SCHEMAS = ("common.schema.json",)

PathElement = str | int


@dataclass(frozen=True)
class SchemaViolation:
    """One schema problem in a document.

    `path` leads from the document root to the offending node; `at_key` says
    whether to position the error at that node's key (True) or its value.
    """

    path: tuple[PathElement, ...]
    at_key: bool
    message: str


def schema_names() -> tuple[str, ...]:
    """File names of every schema shipped in `certgit.schemas`."""
    return (*SHARED_SCHEMAS, *KIND_SCHEMAS.values())


def load_schema(name: str) -> dict[str, Any]:
    """Read one shipped schema (package data) as a dict."""
    text = files("certgit.schemas").joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validators() -> dict[str, Draft202012Validator]:
    # Built once per process: compiling the validators and the registry is the
    # expensive part; validating a small document afterwards is cheap.
    schemas = {name: load_schema(name) for name in schema_names()}
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas.values()
    )
    validators = {}
    for kind, name in KIND_SCHEMAS.items():
        # Resolving a $ref through the registry costs more than checking the node
        # it names, and the hot path validates 10,000 documents: inline the
        # (non-recursive) references once. The registry still serves any $ref
        # left in place.
        inlined = _inline(schemas[name], schemas[name], schemas)
        validators[kind] = Draft202012Validator(inlined, registry=registry)
    return validators


@cache
def _fast_checks() -> dict[str, Check]:
    """A compiled validity check per kind (True = valid), or none if the schema is unsupported."""
    checks: dict[str, Check] = {}
    for kind, validator in _validators().items():
        try:
            checks[kind] = compile_check(validator.schema)
        except ValueError:
            pass  # a keyword the compiler does not know: jsonschema alone decides
    return checks


# --------------------------------------------------------------------------- compiled check

Check = Callable[[Any], bool]
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$defs",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "x-expected",
    }
)


def compile_check(schema: Any) -> Check:
    """Compile an inlined schema into one boolean function with jsonschema's semantics.

    Only the keywords our schemas use are supported (ValueError otherwise).
    jsonschema walks a document through a validator object per keyword and
    per level, which costs ~0.4 ms for a small Certificate; this closure tree
    decides validity about ten times faster. jsonschema still produces every
    message: the check only lets valid documents skip it, and a test compares
    both on generated documents.
    """
    if schema is True:
        return lambda _value: True
    if schema is False:
        return lambda _value: False
    if not isinstance(schema, dict):
        raise ValueError(f"not a schema: {schema!r}")
    checks: list[Check] = []
    for keyword, argument in schema.items():
        if keyword in _ANNOTATIONS or keyword in ("then", "else"):
            continue
        checks.append(_compile_keyword(keyword, argument, schema))
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _is_type(value: Any, name: str) -> bool:
    if name == "string":
        return isinstance(value, str)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, int | float)
    raise ValueError(f"unknown type {name!r}")


def _json_equal(left: Any, right: Any) -> bool:
    # JSON equality: true is not 1, and containers compare element by element.
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_json_equal, left, right))
    if isinstance(left, dict | list) or isinstance(right, dict | list):
        return False
    return bool(left == right)


def _unique(items: list[Any]) -> bool:
    if all(isinstance(item, str) for item in items):
        return len(set(items)) == len(items)
    return not any(
        _json_equal(items[i], items[j]) for i in range(len(items)) for j in range(i + 1, len(items))
    )


def _compile_keyword(keyword: str, argument: Any, schema: dict[str, Any]) -> Check:
    if keyword == "type":
        names = argument if isinstance(argument, list) else [argument]
        for name in names:
            _is_type(None, name)  # raises on an unknown type name
        return lambda value: any(_is_type(value, name) for name in names)
    if keyword == "properties":
        props = [(name, compile_check(sub)) for name, sub in argument.items()]
        return lambda value: (
            not isinstance(value, dict)
            or all(check(value[name]) for name, check in props if name in value)
        )
    if keyword == "additionalProperties":
        known = frozenset(schema.get("properties", {}))
        if argument is False:
            return lambda value: not isinstance(value, dict) or all(k in known for k in value)
        extra = compile_check(argument)
        return lambda value: (
            not isinstance(value, dict) or all(extra(v) for k, v in value.items() if k not in known)
        )
    if keyword == "required":
        names = list(argument)
        return lambda value: not isinstance(value, dict) or all(n in value for n in names)
    if keyword in ("enum", "const"):
        options = list(argument) if keyword == "enum" else [argument]
        return lambda value: any(_json_equal(value, option) for option in options)
    if keyword == "pattern":
        regex = re.compile(argument)
        return lambda value: not isinstance(value, str) or regex.search(value) is not None
    if keyword in ("minLength", "maxLength", "minItems", "maxItems"):
        kind = str if keyword.endswith("Length") else list
        low = keyword.startswith("min")
        return lambda value: (
            not isinstance(value, kind)
            or (len(value) >= argument if low else len(value) <= argument)
        )
    if keyword in ("minProperties", "maxProperties"):
        low = keyword == "minProperties"
        return lambda value: (
            not isinstance(value, dict)
            or (len(value) >= argument if low else len(value) <= argument)
        )
    if keyword in ("minimum", "maximum"):
        low = keyword == "minimum"
        return lambda value: (
            not _is_type(value, "number") or (value >= argument if low else value <= argument)
        )
    if keyword == "items":
        item = compile_check(argument)
        return lambda value: not isinstance(value, list) or all(item(v) for v in value)
    if keyword == "uniqueItems":
        return lambda value: not argument or not isinstance(value, list) or _unique(value)
    if keyword == "allOf":
        parts = [compile_check(sub) for sub in argument]
        return lambda value: all(part(value) for part in parts)
    if keyword == "anyOf":
        parts = [compile_check(sub) for sub in argument]
        return lambda value: any(part(value) for part in parts)
    if keyword == "not":
        inner = compile_check(argument)
        return lambda value: not inner(value)
    if keyword == "if":
        condition = compile_check(argument)
        then = compile_check(schema.get("then", True))
        otherwise = compile_check(schema.get("else", True))
        return lambda value: then(value) if condition(value) else otherwise(value)
    raise ValueError(f"keyword {keyword!r} is not supported by the compiled check")


def _inline(node: Any, home: dict[str, Any], schemas: Mapping[str, dict[str, Any]]) -> Any:
    """A copy of `node` with every `$ref` into our own schemas replaced by its target."""
    if isinstance(node, list):
        return [_inline(item, home, schemas) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and "#/$defs/" in ref:
        document, _, pointer = ref.partition("#/$defs/")
        target_home = schemas.get(document, home) if document else home
        if "/" not in pointer and pointer in target_home.get("$defs", {}):
            target = _inline(target_home["$defs"][pointer], target_home, schemas)
            siblings = {k: _inline(v, home, schemas) for k, v in node.items() if k != "$ref"}
            # siblings are annotations (description), so a merge keeps the meaning
            return {**target, **siblings}
    return {key: _inline(value, home, schemas) for key, value in node.items()}


def validate_document(doc: Any) -> list[SchemaViolation]:
    """Every schema violation of one document, in document order. Empty when valid."""
    if not isinstance(doc, dict):
        return [
            SchemaViolation(
                (), False, "a document must be a mapping with apiVersion, kind, metadata and spec"
            )
        ]
    violations: list[SchemaViolation] = []
    api_version = doc.get("apiVersion")
    if "apiVersion" not in doc:
        violations.append(
            SchemaViolation((), True, f'missing field "apiVersion" (add apiVersion: {API_VERSION})')
        )
    elif api_version != API_VERSION:
        violations.append(
            SchemaViolation(
                ("apiVersion",),
                False,
                f"unknown apiVersion {_show(api_version)} (expected {API_VERSION})",
            )
        )
    kind = doc.get("kind")
    fast = _fast_checks().get(kind) if isinstance(kind, str) else None
    if fast is not None and fast(doc):
        return violations  # valid: the common case skips jsonschema's slower walk
    if "kind" not in doc:
        violations.append(
            SchemaViolation(
                (), True, f'missing field "kind" (expected one of {", ".join(KIND_SCHEMAS)})'
            )
        )
        return violations
    validator = _validators().get(kind) if isinstance(kind, str) else None
    if validator is None:
        violations.append(
            SchemaViolation(
                ("kind",),
                False,
                f"unknown kind {_show(kind)} (expected one of {', '.join(KIND_SCHEMAS)})"
                + _did_you_mean(kind, KIND_SCHEMAS).replace(" (", "; ").rstrip(")"),
            )
        )
        return violations
    prefix = _prefix(cast(str, kind), doc)  # a validator was found, so kind is a str
    for error in validator.iter_errors(doc):
        for violation in _explain(error, doc, prefix):
            if violation.path == ("apiVersion",):
                continue  # already reported above with a better message
            violations.append(violation)
    return violations


# --------------------------------------------------------------------------- messages


def _prefix(kind: str, doc: Mapping[str, Any]) -> str:
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f'{kind} "{name}": ' if isinstance(name, str) else f"{kind}: "


def _dotted(path: Sequence[PathElement]) -> str:
    text = ""
    for element in path:
        if isinstance(element, int):
            text += f"[{element}]"
        else:
            text += f".{element}" if text else str(element)
    return text


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    # YAML 1.1 turns 2024-01-01 into a date: tell the user to quote it
    return f"a {type(value).__name__} (quote the value to make it a string)"


def _did_you_mean(word: Any, choices: Iterable[Any]) -> str:
    if not isinstance(word, str):
        return ""
    options = [str(c) for c in choices]
    lowered = {o.lower(): o for o in options}
    if word.lower() in lowered:
        return f' (did you mean "{lowered[word.lower()]}"?)'
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _pick(error: ValidationError) -> ValidationError:
    # oneOf/anyOf/if-then errors carry sub-errors: show the most relevant leaf
    # instead of a wall of text about every alternative.
    while error.context:
        best = best_match(error.context, key=relevance)
        if best is None or best is error:
            break
        error = best
    return error


def _explain(error: ValidationError, doc: Any, prefix: str) -> list[SchemaViolation]:
    error = _pick(error)
    path = tuple(error.absolute_path)
    where = _dotted(path)
    label = f"{where}: " if where else ""
    keyword = error.validator
    rule: Any = error.validator_value  # the keyword's value in the schema; set on every error
    value: Any = error.instance  # the checked part of the document; set on every error
    schema = error.schema if isinstance(error.schema, dict) else {}

    if keyword == "additionalProperties" and isinstance(value, dict):
        known = list(schema.get("properties", {}))
        extras = [k for k in value if k not in schema.get("properties", {})]
        container = where or "the document"
        return [
            SchemaViolation(
                (*path, extra),
                True,
                f"{prefix}unknown field {_show(str(extra))} in {container}"
                + (_did_you_mean(extra, known) or _allowed(known)),
            )
            for extra in extras
        ]
    if keyword == "required":
        missing = [f for f in rule if f not in value]
        container = where or "the document"
        return [
            SchemaViolation(path, True, f'{prefix}missing required field "{field}" in {container}')
            for field in missing
        ]
    if keyword == "type":
        expected = rule
        types = expected if isinstance(expected, list) else [expected]
        wanted = " or ".join(str(_TYPE_WORDS.get(t, t)) for t in types)
        return [_at(path, f"{prefix}{label}expected {wanted}, got {_type_of(value)}")]
    if keyword in ("enum", "const"):
        options = rule if keyword == "enum" else [rule]
        shown = ", ".join(_show(o) for o in options)
        context = _key_context(path, doc)
        return [
            _at(
                path,
                f"{prefix}{label}expected {'one of ' if len(options) > 1 else ''}{shown}{context}, "
                f"got {_show(value)}" + _did_you_mean(value, options),
            )
        ]
    if keyword == "not" and isinstance(rule, dict):
        # `not: {required: [x]}`: field x is forbidden in this context
        forbidden = rule.get("required", [])
        if forbidden and isinstance(value, dict):
            field = forbidden[0]
            reason = " for Ed25519 keys" if path[-1:] == ("key",) else " here"
            return [
                SchemaViolation(
                    (*path, field),
                    True,
                    f"{prefix}{_dotted((*path, field))} is not allowed{reason}: remove it",
                )
            ]
    if keyword == "pattern":
        expected = schema.get("x-expected", f"a value matching {rule}")
        return [_at(path, f"{prefix}{label}{_show(value)} is not {expected}")]
    if keyword in ("minProperties", "maxProperties") and "env" in schema.get("properties", {}):
        return [_at(path, f"{prefix}{label}give exactly one of env or file, e.g. {{env: NAME}}")]
    if keyword == "uniqueItems":
        return [_at(path, f"{prefix}{label}contains the same item twice: remove the duplicate")]
    if keyword in ("minLength", "minItems"):
        return [_at(path, f"{prefix}{label}must not be empty")]
    if keyword in ("maxLength", "maxItems"):
        return [_at(path, f"{prefix}{label}is too long (at most {rule})")]
    if keyword == "minimum":
        return [_at(path, f"{prefix}{label}must be at least {rule}, got {value}")]
    if keyword == "maximum":
        return [_at(path, f"{prefix}{label}must be at most {rule}, got {value}")]
    return [_at(path, f"{prefix}{label}{error.message}")]


def _at(path: tuple[PathElement, ...], message: str) -> SchemaViolation:
    return SchemaViolation(path, False, message)


def _allowed(known: Sequence[str]) -> str:
    return f" (allowed: {', '.join(known)})" if known else ""


def _key_context(path: tuple[PathElement, ...], doc: Any) -> str:
    # spec.key.size depends on spec.key.algorithm: say which one applied
    if len(path) >= 2 and path[-2:] == ("key", "size"):
        node = doc
        for element in path[:-1]:
            node = node[element]
        algorithm = node.get("algorithm", "ECDSA") if isinstance(node, dict) else "ECDSA"
        return f" for {algorithm}"
    return ""
