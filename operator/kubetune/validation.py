"""FineTuneJob documents from YAML, checked against the schema, with every problem reported as
``file:line: spec.path.to.field: message``."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kubetune.api import KIND, FineTuneJob, model_dependencies
from kubetune_trainer.plan import FieldError


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


def load_documents(path: Path) -> tuple[list[Document], list[Problem]]:
    """Every non-empty YAML document in a file; a syntax error is a problem with its line."""
    name = str(path)
    try:
        text = path.read_text()
    except OSError as err:
        return [], [Problem(name, None, "", f"cannot read: {err.strerror}")]
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err)
        return [], [Problem(name, line, "", f"invalid YAML: {problem}")]
    documents, problems = [], []
    for index, node in enumerate(nodes):
        if node is None:
            continue
        problems += _duplicate_keys(name, node)
        data = yaml.SafeLoader(yaml.serialize(node)).get_single_data()
        documents.append(Document(name, index, data, node))
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


def load_jobs(paths: list[Path]) -> tuple[list[tuple[Document, FineTuneJob]], list[Problem]]:
    """Every FineTuneJob in the files, and every problem found. Documents of other kinds are
    skipped (a pipeline file may hold a Namespace or a Secret too)."""
    jobs: list[tuple[Document, FineTuneJob]] = []
    problems: list[Problem] = []
    for path in paths:
        documents, file_problems = load_documents(path)
        problems += file_problems
        for doc in documents:
            if isinstance(doc.data, dict) and "kind" in doc.data and not is_finetunejob(doc):
                continue
            job, job_problems = parse_job(doc)
            problems += job_problems
            if job is not None:
                jobs.append((doc, job))
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
