"""yamlsafe: hostile input is refused with a position, never a hang or an object."""

from __future__ import annotations

import pytest

from certgit.reconciler.errors import Problem
from certgit.reconciler.yamlsafe import (
    MAX_ALIASES,
    MAX_FILE_BYTES,
    PositionIndex,
    document_roots,
    parse_yaml,
    position_of,
)

BILLION_LAUGHS = b"""\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def only_problem(data: bytes) -> Problem:
    parsed = parse_yaml(data, "f.yaml")
    assert parsed.documents == ()
    [problem] = parsed.problems
    return problem


def test_multi_document_file_skips_empty_documents() -> None:
    parsed = parse_yaml(b"a: 1\n---\n---\nb: [x, y]\n---\n", "f.yaml")
    assert parsed.problems == ()
    assert parsed.documents == ((0, {"a": 1}), (2, {"b": ["x", "y"]}))


def test_small_anchors_and_aliases_are_fine() -> None:
    parsed = parse_yaml(b"base: &b {x: 1}\nuse: *b\nmerged: {<<: *b, y: 2}\n", "f.yaml")
    assert parsed.problems == ()
    assert parsed.documents[0][1]["merged"] == {"x": 1, "y": 2}


@pytest.mark.timeout(20)
def test_billion_laughs_is_refused_at_the_alias_over_the_cap() -> None:
    problem = only_problem(BILLION_LAUGHS)
    # 1 + 9 + 9*10 + 9*91 ... the expansion passes 100,000 nodes inside line 6 (f: ...)
    assert (problem.path, problem.line, problem.column) == ("f.yaml", 6, 8)
    assert "alias bomb" in problem.message


@pytest.mark.timeout(20)
def test_position_index_on_a_bomb_does_not_hang() -> None:
    assert PositionIndex(BILLION_LAUGHS).position(0, ("i", 3), False) == (1, 1)


def test_too_many_aliases() -> None:
    body = b"x: &x 1\nl: [" + b", ".join([b"*x"] * (MAX_ALIASES + 1)) + b"]\n"
    problem = only_problem(body)
    assert problem.line == 2
    assert problem.column == 5 + 4 * MAX_ALIASES  # the 101st "*x"
    assert f"more than {MAX_ALIASES} alias uses" in problem.message


def test_recursive_alias() -> None:
    problem = only_problem(b"a: 1\nb: &loop\n  - *loop\n")
    assert (problem.line, problem.column) == (3, 5)
    assert "recursive alias" in problem.message


def test_python_object_tag_is_refused_with_position() -> None:
    problem = only_problem(b"a: 1\nb: !!python/object/apply:os.system [echo hi]\n")
    assert (problem.line, problem.column) == (2, 4)
    assert "!!python/object/apply:os.system is not allowed" in problem.message


def test_custom_tag_is_refused() -> None:
    problem = only_problem(b"a: !secret x\n")
    assert "!secret is not allowed" in problem.message


def test_oversized_file() -> None:
    problem = only_problem(b"#" * (MAX_FILE_BYTES + 1))
    assert (problem.line, problem.column) == (1, 1)
    assert "1 MiB" in problem.message


def test_too_many_nodes_without_aliases() -> None:
    problem = only_problem(b"a: [" + b"1," * 100_001 + b"]\n")
    assert "more than 100000 YAML nodes" in problem.message


def test_non_utf8_is_positioned_at_the_bad_byte() -> None:
    # "é" is two bytes of valid UTF-8 and one column; 0xff is never valid
    problem = only_problem(b"a: 1\nb: caf\xc3\xa9 \xff\n")
    assert (problem.line, problem.column) == (2, 9)
    assert "UTF-8" in problem.message


def test_syntax_error_position() -> None:
    problem = only_problem(b"a: 1\nb:\n  c: 2\n   d: 3\n")
    assert (problem.line, problem.column) == (4, 5)
    assert problem.message.startswith("YAML syntax error: mapping values are not allowed")


def test_duplicate_key_is_an_error() -> None:
    problem = only_problem(b"spec:\n  dnsNames: [a]\n  dnsNames: [b]\n")
    assert (problem.line, problem.column) == (3, 3)
    assert 'duplicate key "dnsNames" (first at line 2)' in problem.message


def test_non_mapping_document_is_positioned_other_documents_load() -> None:
    parsed = parse_yaml(b"a: 1\n---\n- x\n- y\n---\njust text\n", "f.yaml")
    assert parsed.documents == ((0, {"a": 1}),)
    assert [(p.line, p.column) for p in parsed.problems] == [(3, 1), (6, 1)]
    assert "document 2 is a list, not a mapping" in parsed.problems[0].message
    assert "document 3 is a string" in parsed.problems[1].message


TEXT = b"""\
apiVersion: certgit.dev/v1
kind: Certificate
metadata:
  name: www
spec:
  dnsNames:
    - a.example.com
    - b.example.com
  key: {size: 512}
---
kind: Target
"""


@pytest.mark.parametrize(
    ("doc", "path", "at_key", "expected"),
    [
        (0, ("metadata", "name"), False, (4, 9)),
        (0, ("metadata", "name"), True, (4, 3)),
        (0, ("spec", "dnsNames", 1), False, (8, 7)),
        (0, ("spec", "key", "size"), False, (9, 15)),
        (0, ("spec", "key", "size"), True, (9, 9)),
        (0, ("spec", "issuerRef"), True, (5, 1)),  # missing: the parent's key
        (0, ("spec", "dnsNames", 7), False, (6, 3)),  # index out of range: the list's key
        (0, (), False, (1, 1)),
        (1, ("kind",), False, (11, 7)),
        (1, ("metadata", "name"), False, (11, 1)),  # nothing resolves: the document root
        (5, ("kind",), False, (1, 1)),  # no such document
    ],
)
def test_position_of(
    doc: int, path: tuple[str | int, ...], at_key: bool, expected: tuple[int, int]
) -> None:
    assert position_of(TEXT, doc, path, at_key) == expected


def test_position_index_survives_broken_yaml() -> None:
    assert position_of(b"a: [\n", 0, ("a",), False) == (1, 1)


def test_document_roots() -> None:
    assert document_roots("a: 1\n---\n\n  - x\n") == [(1, 1), (4, 3)]
