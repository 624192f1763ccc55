"""Hostile-input-safe YAML loading, and line:column positions on the error path.

Hot path: PyYAML's libyaml `CSafeLoader` (about 17x faster than a ruamel
round-trip load, see shared/FACTS.md), with caps on file size, alias uses and
the expanded node count so an alias bomb ("billion laughs") is refused in
linear time instead of exploding a later walk. Only safe tags load: a
`!!python/object` tag is a positioned error, never an object.

Error path only: `PositionIndex` re-parses a file with ruamel.yaml round-trip
to map a JSON path inside a document to a 1-based line and column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from certgit.reconciler.errors import Problem

MAX_FILE_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_NODES = 100_000

PathElement = str | int
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Mark(Protocol):
    """What we read of a PyYAML mark (the pure-Python and the libyaml one alike)."""

    line: int
    column: int


@dataclass(frozen=True)
class ParsedFile:
    """The mapping documents of one file, by index in the stream, or its problems.

    A file-level problem (size, encoding, syntax, alias caps, unsafe tag) leaves
    `documents` empty; a non-mapping document is a problem of its own while the
    other documents still load.
    """

    documents: tuple[tuple[int, dict[str, Any]], ...]
    problems: tuple[Problem, ...] = ()


class _Loader(_SafeLoader):  # type: ignore[misc,valid-type]
    """The safe loader, plus a refusal of duplicate keys (the last one would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            marker = (key_node.tag, key_node.value)
            if marker in seen:
                first = seen[marker].start_mark
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f'duplicate key "{key_node.value}" (first at line {first.line + 1}): '
                    "remove one of them",
                    key_node.start_mark,
                )
            seen[marker] = key_node
        return super().construct_mapping(node, deep=deep)


def parse_yaml(data: bytes, path: str) -> ParsedFile:
    """Load every document of one YAML file, refusing hostile or malformed input.

    Empty documents (e.g. after a trailing `---`) are skipped; indices count
    every document of the stream so they match `PositionIndex`.
    """
    if len(data) > MAX_FILE_BYTES:
        return _fatal(
            path,
            1,
            1,
            f"file is {len(data)} bytes, more than the limit of {MAX_FILE_BYTES} (1 MiB): "
            "split it into several files",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _byte_position(data, exc.start)
        return _fatal(
            path,
            line,
            column,
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x}): save the file as UTF-8",
        )
    if "&" in text:
        # Aliases need anchors; without "&" there are none and the cheap check below suffices.
        problem = _check_aliases(text, path)
        if problem is not None:
            return ParsedFile((), (problem,))
    try:
        loaded = list(yaml.load_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        return ParsedFile((), (_marked_problem(exc, path),))
    except yaml.YAMLError as exc:
        return _fatal(path, 1, 1, f"YAML error: {exc}")
    except RecursionError:
        return _fatal(path, 1, 1, "YAML nesting is too deep: flatten the document")

    documents: list[tuple[int, dict[str, Any]]] = []
    problems: list[Problem] = []
    total = 0
    roots: list[tuple[int, int]] | None = None
    for index, doc in enumerate(loaded):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            if roots is None:
                roots = document_roots(text)
            line, column = roots[index] if index < len(roots) else (1, 1)
            problems.append(
                Problem(
                    path,
                    line,
                    column,
                    f"document {index + 1} is {_kind_of(doc)}, not a mapping: every document "
                    "needs apiVersion, kind, metadata and spec",
                )
            )
            continue
        total += _count_nodes(doc)
        if total > MAX_NODES:
            # Unreachable through aliases (checked above); a plain huge file lands here.
            return _fatal(path, 1, 1, f"file has more than {MAX_NODES} YAML nodes: split it")
        documents.append((index, doc))
    return ParsedFile(tuple(documents), tuple(problems))


def _fatal(path: str, line: int, column: int, message: str) -> ParsedFile:
    return ParsedFile((), (Problem(path, line, column, message),))


def _byte_position(data: bytes, offset: int) -> tuple[int, int]:
    start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


def _marked_problem(exc: yaml.MarkedYAMLError, path: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = exc.problem or "invalid YAML"
    if isinstance(exc, yaml.constructor.ConstructorError) and "constructor for the tag" in problem:
        tag = problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        message = (
            f"tag {tag} is not allowed: certgit documents hold only plain mappings, lists "
            "and scalars"
        )
    else:
        context = f" {exc.context}" if exc.context else ""
        what = (
            "YAML error"
            if isinstance(exc, yaml.constructor.ConstructorError)
            else ("YAML syntax error")
        )
        message = f"{what}: {problem}{context}"
    return Problem(path, line, column, message)


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def _count_nodes(root: Any) -> int:
    # Iterative: a deeply nested document must not hit the recursion limit here.
    count = 0
    stack = [root]
    while stack:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        if count > MAX_NODES:
            break
    return count


def _events(text: str) -> Iterator[yaml.Event]:
    return yaml.parse(text, Loader=_SafeLoader)


def _mark_position(mark: _Mark | None) -> tuple[int, int]:
    """1-based (line, column) of a parser mark (PyYAML's parser sets one on every event)."""
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _check_aliases(text: str, path: str) -> Problem | None:
    """Count alias uses and the expanded node count on the event stream.

    Each anchor's expanded size is computed once, when its node closes, so an
    alias costs O(1) however large the structure it names: a billion-laughs
    file is measured in linear time. An alias to a node still open is a
    recursive alias and is refused. Returns None when within the caps (or when
    the stream has a syntax error, which the loader reports with its position).
    """
    aliases = 0
    expanded = 0  # nodes of the file so far, with every alias expanded
    sizes: dict[str, int] = {}
    open_anchors: list[str | None] = []
    counts: list[int] = []  # expanded size of each open collection
    try:
        for event in _events(text):
            mark = event.start_mark
            if isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    return Problem(
                        path,
                        *_mark_position(mark),
                        f"more than {MAX_ALIASES} alias uses in one file: write the values out "
                        "or split the file",
                    )
                if event.anchor in open_anchors:
                    return Problem(
                        path,
                        *_mark_position(mark),
                        f'recursive alias "*{event.anchor}": an anchor cannot contain itself',
                    )
                size = sizes.get(event.anchor or "", 1)
                expanded += size
                if counts:
                    counts[-1] += size
            elif isinstance(event, yaml.ScalarEvent):
                expanded += 1
                if counts:
                    counts[-1] += 1
                if event.anchor:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.CollectionStartEvent):
                expanded += 1
                open_anchors.append(event.anchor)
                counts.append(1)
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor = open_anchors.pop()
                size = counts.pop()
                if anchor:
                    sizes[anchor] = size
                if counts:
                    counts[-1] += size
            if expanded > MAX_NODES:
                return Problem(
                    path,
                    *_mark_position(mark),
                    f"file has more than {MAX_NODES} YAML nodes once aliases are expanded "
                    "(an alias bomb?): "
                    "write the values out or split the file",
                )
    except yaml.YAMLError:
        return None
    return None


def document_roots(text: str) -> list[tuple[int, int]]:
    """1-based (line, column) of each document's root node, by stream index."""
    roots: list[tuple[int, int]] = []
    expect_root = False
    try:
        for event in _events(text):
            if isinstance(event, yaml.DocumentStartEvent):
                expect_root = True
            elif expect_root and isinstance(event, yaml.NodeEvent):
                roots.append(_mark_position(event.start_mark))
                expect_root = False
    except yaml.YAMLError:
        pass
    return roots


class PositionIndex:
    """Positions inside one file, from a ruamel.yaml round-trip parse (error path only)."""

    def __init__(self, data: bytes) -> None:
        self._docs: list[Any] = []
        self._roots: list[tuple[int, int]] = []
        if len(data) > MAX_FILE_BYTES:
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return
        # ruamel shares aliased objects like PyYAML: the same caps keep it linear,
        # and we only ever walk one path down, never the whole graph.
        if "&" in text and _check_aliases(text, "") is not None:
            return
        self._roots = document_roots(text)
        loader = YAML(typ="rt")
        loader.allow_duplicate_keys = True
        try:
            for doc in loader.load_all(text):
                self._docs.append(doc)
        except Exception:
            pass  # a parse failure only means fewer positions: fall back to ancestors

    def position(
        self, doc_index: int, path: tuple[PathElement, ...], at_key: bool
    ) -> tuple[int, int]:
        """1-based (line, column) of `path` in document `doc_index`.

        `at_key` positions at the key of the last path element (for unknown
        fields) instead of its value. A missing path element falls back to the
        nearest existing ancestor's key, and a document without positions to
        its root, or 1:1.
        """
        root = self._roots[doc_index] if doc_index < len(self._roots) else (1, 1)
        if doc_index >= len(self._docs):
            return root
        node = self._docs[doc_index]
        best: tuple[int, int] | None = None  # key position of the deepest resolved element
        for depth, element in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, CommentedMap) and element in node:
                key_pos = node.lc.key(element)
                value_pos = node.lc.value(element)
                if last:
                    return _one_based(key_pos if at_key else value_pos)
                best = key_pos
                node = node[element]
            elif (
                isinstance(node, CommentedSeq)
                and isinstance(element, int)
                and (0 <= element < len(node))
            ):
                item_pos = node.lc.item(element)
                if last:
                    return _one_based(item_pos)
                best = item_pos
                node = node[element]
            else:
                break
        if best is not None:
            return _one_based(best)
        return root


def _one_based(position: tuple[int, int]) -> tuple[int, int]:
    return position[0] + 1, position[1] + 1


def position_of(
    text: bytes, doc_index: int, json_path: tuple[PathElement, ...], at_key: bool
) -> tuple[int, int]:
    """1-based (line, column) of `json_path` in document `doc_index` of `text`.

    Builds a `PositionIndex`; to position many problems of one file, build one
    index and call `position` on it.
    """
    return PositionIndex(text).position(doc_index, json_path, at_key)
