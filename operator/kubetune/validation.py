"""FineTuneJob documents from YAML, checked against the schema, with every problem reported as
``file:line: spec.path.to.field: message``."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kubetune.api import API_VERSION, GROUP, KIND, FineTuneJob, model_dependencies
from kubetune_trainer.plan import DataSource, FieldError, uri_scheme
from kubetune_trainer.uris import local_path


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


def format_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_names(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Wire names of the fields of the model found by walking loc from model (for hints)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            continue
        match = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if match is None:
            return []
        current = _inner_model(match.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside X, X | None, list[X] or dict[str, X], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    """pydantic's loc without its internal tags (function-after[...], [key], …)."""
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and "(" not in p))


def problems_from_error(doc: Document, error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = _clean_loc(item["loc"])
        if item["type"] == "extra_forbidden":  # the unknown key as written, brackets and all
            loc = (*_clean_loc(item["loc"][:-1]), item["loc"][-1])
        message = item["msg"]
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            loc = loc + cause.loc
            message = cause.message
        elif item["type"] == "extra_forbidden":
            known = _field_names(FineTuneJob, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            message = "unknown field" + (f"; did you mean '{close[0]}'?" if close else "")
            if known and not close:
                message += f" (known: {', '.join(known)})"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        problems.append(Problem(doc.file, doc.line_of(loc), format_loc(loc), message))
    return problems


def parse_job(doc: Document) -> tuple[FineTuneJob | None, list[Problem]]:
    """The FineTuneJob in a document, or the problems that stop it being one."""
    if not isinstance(doc.data, dict):
        return None, [Problem(doc.file, doc.line_of(()), "", "document is not a mapping")]
    try:
        return FineTuneJob.model_validate(doc.data), []
    except ValidationError as err:
        return None, problems_from_error(doc, err)


def is_finetunejob(doc: Document) -> bool:
    return isinstance(doc.data, dict) and doc.data.get("kind") == KIND


def _meant_as_finetunejob(doc: Document) -> bool:
    """A document without a kind, or whose kind or apiVersion is a near miss of ours."""
    if not isinstance(doc.data, dict) or "kind" not in doc.data:
        return True
    kind, api_version = str(doc.data.get("kind")), str(doc.data.get("apiVersion", ""))
    near = difflib.SequenceMatcher(None, kind.lower(), KIND.lower()).ratio() >= 0.8
    return near or api_version.split("/")[0] == GROUP


def _kind_problem(doc: Document, alone: bool) -> Problem:
    kind, api_version = doc.data.get("kind"), doc.data.get("apiVersion")
    line = doc.line_of(("kind",))
    if alone:
        message = (
            f"not a FineTuneJob: kind {kind}, apiVersion {api_version}; the file holds no "
            f"FineTuneJob ({API_VERSION})"
        )
    else:
        message = f"unknown kind '{kind}' (apiVersion {api_version}); did you mean {KIND}?"
    return Problem(doc.file, line, "kind", message)


def local_data_problems(jobs: list[tuple[Document, FineTuneJob]]) -> list[Problem]:
    """Local data paths that do not exist on this machine. A relative path is read from the
    manifest's directory (as ``kubetune run --local`` reads it)."""
    return [problem for doc, job in jobs for problem in _missing_paths(doc, job)]


def _missing_paths(doc: Document, job: FineTuneJob) -> list[Problem]:
    problems = []
    for loc, source in data_locations(job):
        path = resolve_local_data(source.uri, Path(doc.file).parent)
        if path is None:
            continue
        try:
            if path.exists():
                continue
            message = f"{source.uri}: no such file or directory ({path})"
        except (OSError, ValueError) as err:  # a name too long, a NUL byte
            message = f"{source.uri}: not a usable path: {getattr(err, 'strerror', None) or err}"
        full = ("spec", *loc, "uri")
        problems.append(Problem(doc.file, doc.line_of(full), format_loc(full), message))
    return problems


def data_locations(job: FineTuneJob) -> list[tuple[tuple[str | int, ...], DataSource]]:
    """Every data source of a job with its path under spec: training, held-out, eval metrics."""
    found = job.spec.data_sources()
    if job.spec.eval is not None:
        found += [
            (("eval", "metrics", i, "dataset"), metric.dataset)
            for i, metric in enumerate(job.spec.eval.metrics)
        ]
    return found


def resolve_local_data(uri: str, manifest_dir: Path) -> Path | None:
    """The path a local (``file``) data URI names, relative ones under manifest_dir; None for
    remote URIs."""
    if uri_scheme(uri) != "file":
        return None
    path = local_path(uri)
    return path if path.is_absolute() else manifest_dir / path


def load_jobs(paths: list[Path]) -> tuple[list[tuple[Document, FineTuneJob]], list[Problem]]:
    """Every FineTuneJob in the files, and every problem found. A file may hold other kinds
    beside its FineTuneJobs (a pipeline may carry its Namespace); they are skipped. A file with
    none, or a near miss of ours (kind FineTuneJobb, apiVersion kubetune.io/v1), is a problem."""
    jobs: list[tuple[Document, FineTuneJob]] = []
    problems: list[Problem] = []
    for path in paths:
        documents, file_problems = load_documents(path)
        problems += file_problems
        others = []
        for doc in documents:
            if not is_finetunejob(doc) and not _meant_as_finetunejob(doc):
                others.append(doc)
                continue
            if isinstance(doc.data, dict) and "kind" in doc.data and not is_finetunejob(doc):
                problems.append(_kind_problem(doc, alone=False))
                continue
            job, job_problems = parse_job(doc)
            problems += job_problems
            if job is not None:
                jobs.append((doc, job))
        if others and len(others) == len(documents):
            problems += [_kind_problem(doc, alone=True) for doc in others]
    return jobs, problems


def job_key(job: FineTuneJob) -> tuple[str, str]:
    """(namespace, name) of a job."""
    ref = job.job_ref()
    return ref.namespace, ref.name


def pipeline_problems(jobs: list[tuple[Document, FineTuneJob]]) -> list[Problem]:
    """Problems that only show across documents: duplicate names, self-references and cycles
    among finetunejob:// dependencies."""
    problems: list[Problem] = []
    by_key: dict[tuple[str, str], tuple[Document, FineTuneJob]] = {}
    for doc, job in jobs:
        key = job_key(job)
        if key in by_key:
            first = by_key[key][0]
            problems.append(
                Problem(
                    doc.file,
                    doc.line_of(("metadata", "name")),
                    "metadata.name",
                    f"job {key[0]}/{key[1]} is also defined in {first.file}",
                )
            )
        by_key.setdefault(key, (doc, job))
    for doc, job in jobs:
        namespace, name = job_key(job)
        for path, target in model_dependencies(job.spec):
            if target == name:
                loc = ("spec", *path, "source")
                problems.append(
                    Problem(
                        doc.file,
                        doc.line_of(loc),
                        ".".join(loc),
                        "a job cannot use its own output as a model",
                    )
                )
                continue
            seen, frontier = {name}, [target]
            while frontier:
                current = frontier.pop()
                if current == name:
                    loc = ("spec", *path, "source")
                    problems.append(
                        Problem(
                            doc.file,
                            doc.line_of(loc),
                            ".".join(loc),
                            f"dependency cycle through finetunejob://{target}",
                        )
                    )
                    break
                if current in seen or (namespace, current) not in by_key:
                    continue
                seen.add(current)
                frontier += [t for _, t in model_dependencies(by_key[(namespace, current)][1].spec)]
    return problems
