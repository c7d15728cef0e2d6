"""FineTuneJob files read the way kubectl reads them, safely: every document of a file with its
node tree (for line numbers), or a :class:`Problem` saying why the file cannot be used (not
UTF-8, too large, invalid YAML, aliases that expand too far, duplicate keys)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


@dataclass
class Document:
    """One YAML document of a file, parsed, with the node tree kept for line numbers."""

    file: str
    index: int
    data: Any
    node: yaml.Node | None

    def line_of(self, loc: tuple[str | int, ...]) -> int | None:
        """1-based line of the deepest node along loc (the field, or its nearest parent)."""
        node = self.node
        line = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            child = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if key.value == part:
                        child = value
                        line = key.start_mark.line + 1
                        break
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                child = node.value[part]
                line = child.start_mark.line + 1
            if child is None:
                break
            node = child
        return line


MAX_FILE_BYTES = 3 * 1024 * 1024
"""Files larger than this are refused unread (the API server takes requests up to 3 MiB)."""
MAX_DEPTH = 50
"""Deepest nesting of mappings and sequences accepted (a FineTuneJob needs fewer than 10)."""
MAX_VALUES = 100_000
"""Most values (scalars, mappings, sequences) a document may hold once its aliases are
followed; a FineTuneJob has a few hundred."""

_GO_YAML_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_GO_YAML_BOOLS = {"y": True, "n": False}
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class ManifestLoader(yaml.SafeLoader):
    """YAML read the way kubectl reads it (go-yaml, YAML 1.1): ``1e-4`` is a number (PyYAML
    wants ``1.0e-4``), ``y`` and ``n`` are booleans, and dates stay strings, so a value is
    checked with the type the API server will see."""


ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ManifestLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", _GO_YAML_FLOAT, list("-+0123456789.")
)
ManifestLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^[yYnN]$"), list("yYnN")
)


def _construct_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    value = str(loader.construct_scalar(node)).lower()
    known = {**loader.bool_values, **_GO_YAML_BOOLS}
    if value not in known:
        raise yaml.constructor.ConstructorError(
            None, None, f"'{value}' is not a boolean", node.start_mark
        )
    return known[value]


ManifestLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


class ManifestDumper(yaml.SafeDumper):
    """Writes YAML that ManifestLoader (and kubectl) read back as the same values."""


ManifestDumper.yaml_implicit_resolvers = ManifestLoader.yaml_implicit_resolvers


def read_text(path: Path) -> tuple[str | None, Problem | None]:
    """The file as text, or why it cannot be read: unreadable, too large, not UTF-8."""
    name = str(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        return None, Problem(name, None, "", f"cannot read: {err.strerror or err}")
    if len(data) > MAX_FILE_BYTES:
        return None, Problem(
            name, None, "", f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; not read"
        )
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        bad = data[err.start : err.start + 1].hex()
        return None, Problem(
            name, line, "", f"not UTF-8: byte 0x{bad} at byte offset {err.start} ({err.reason})"
        )


def _depth_problem(name: str, text: str) -> Problem | None:
    """Nesting deeper than MAX_DEPTH, found by the parser before anything is built (deep
    nesting would exhaust the recursion of the YAML composer)."""
    depth = 0
    for event in yaml.parse(text, Loader=ManifestLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                return Problem(name, line, "", f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


class _TooBig(Exception):
    pass


def _expansion_problem(name: str, node: yaml.Node) -> Problem | None:
    """Aliases are followed the way a reader of the data would follow them: a document whose
    aliases expand it beyond MAX_VALUES values or MAX_DEPTH levels (a "billion laughs", or an
    alias inside its own anchor) is refused before it is built."""
    sizes: dict[int, tuple[int, int]] = {}

    def expanded(node: yaml.Node, depth: int) -> tuple[int, int]:
        """(values, height) of the subtree at node, reached at depth."""
        known = sizes.get(id(node))
        if depth > MAX_DEPTH or (known is not None and depth + known[1] > MAX_DEPTH):
            raise _TooBig(f"nested deeper than {MAX_DEPTH} levels once aliases are followed")
        if known is not None:
            return known
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        values, height = 1, 0
        for child in children:
            child_values, child_height = expanded(child, depth + 1)
            values += child_values
            height = max(height, child_height + 1)
            if values > MAX_VALUES:
                raise _TooBig(f"aliases expand the document beyond {MAX_VALUES} values")
        sizes[id(node)] = (values, height)
        return values, height

    try:
        expanded(node, 0)
    except _TooBig as err:
        return Problem(name, node.start_mark.line + 1, "", str(err))
    return None


def _yaml_problem(name: str, err: yaml.YAMLError) -> Problem:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(err, "problem", None) or str(err)
    return Problem(name, line, "", f"invalid YAML: {' '.join(str(problem).split())}")


def load_documents(path: Path) -> tuple[list[Document], list[Problem]]:
    """Every non-empty YAML document in a file, or why the file cannot be used. A file with no
    document at all is a problem; an empty document (a trailing ``---``) is skipped."""
    name = str(path)
    text, problem = read_text(path)
    if text is None:
        return [], [problem] if problem else []
    documents: list[Document] = []
    problems: list[Problem] = []
    try:
        problem = _depth_problem(name, text)
        if problem is not None:
            return [], [problem]
        loader = ManifestLoader(text)
        try:
            index = 0
            while loader.check_node():
                node = loader.get_node()
                problem = _expansion_problem(name, node) if node is not None else None
                if problem is not None:
                    return [], [problem]
                data = loader.construct_document(node)
                if data is not None:
                    problems += _duplicate_keys(name, node)
                    documents.append(Document(name, index, data, node))
                index += 1
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        return [], [_yaml_problem(name, err)]
    except Exception as err:
        # values (!!int x, !!timestamp x) raise whatever their parsing raises
        return [], [Problem(name, None, "", f"invalid YAML value: {type(err).__name__}: {err}")]
    if not documents and not problems:
        problems.append(Problem(name, None, "", "no YAML documents: the file is empty"))
    return documents, problems


def _duplicate_keys(file: str, node: yaml.Node, path: str = "") -> list[Problem]:
    """YAML silently keeps the last of two equal keys; a typo-level mistake worth refusing."""
    problems = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            child_path = f"{path}.{key.value}" if path else str(key.value)
            if key.value in seen:
                problems.append(Problem(file, key.start_mark.line + 1, child_path, "duplicate key"))
            seen.add(key.value)
            problems += _duplicate_keys(file, value, child_path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(file, item, f"{path}[{i}]")
    return problems
