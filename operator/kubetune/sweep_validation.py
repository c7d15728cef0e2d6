"""FineTuneSweep documents checked against the schema and the search-space rules, every
problem reported as ``file:line: spec.path.to.field: message`` (the CLI) or
``spec.path.to.field: message`` (the operator's InvalidSpec condition)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kubetune.sweep_api import SWEEP_KIND, FineTuneSweep
from kubetune.sweep_space import space_problems
from kubetune.validation import Document, Problem, format_loc, load_documents, problems_from_error


def parse_sweep(doc: Document) -> tuple[FineTuneSweep | None, list[Problem]]:
    """The FineTuneSweep in a document, or every problem that stops it being a valid one."""
    if not isinstance(doc.data, dict):
        return None, [Problem(doc.file, doc.line_of(()), "", "document is not a mapping")]
    try:
        sweep = FineTuneSweep.model_validate(doc.data)
    except ValidationError as err:
        return None, problems_from_error(doc, err)
    template = doc.data["spec"]["template"]
    problems = [
        Problem(doc.file, doc.line_of(("spec", *loc)), format_loc(("spec", *loc)), message)
        for loc, message in space_problems(sweep.spec, template)
    ]
    return (None if problems else sweep), problems


def sweep_problems(manifest: dict[str, Any]) -> list[str]:
    """``field.path: message`` for everything wrong with a sweep as the API server stored it."""
    data = {k: manifest[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in manifest}
    _, problems = parse_sweep(Document(file="", index=0, data=data, node=None))
    return [f"{p.path}: {p.message}" if p.path else p.message for p in problems]


def load_sweeps(paths: list[Path]) -> tuple[list[tuple[Document, FineTuneSweep]], list[Problem]]:
    """Every FineTuneSweep in the files and the problems found in them (files that are not
    valid YAML are left to the FineTuneJob loader, which reports them)."""
    found: list[tuple[Document, FineTuneSweep]] = []
    problems: list[Problem] = []
    for path in paths:
        documents, file_problems = load_documents(path)
        if file_problems:
            continue
        for doc in documents:
            if isinstance(doc.data, dict) and doc.data.get("kind") == SWEEP_KIND:
                sweep, sweep_problems = parse_sweep(doc)
                problems += sweep_problems
                if sweep is not None:
                    found.append((doc, sweep))
    return found, problems


def load_sweep(path: Path) -> tuple[FineTuneSweep | None, dict[str, Any], list[Problem]]:
    """The one FineTuneSweep of a file (documents of other kinds are skipped), as validated and
    as written, or the problems found."""
    documents, problems = load_documents(path)
    sweeps = [d for d in documents if isinstance(d.data, dict) and d.data.get("kind") == SWEEP_KIND]
    if problems:
        return None, {}, problems
    if len(sweeps) != 1:
        found = f"{len(sweeps)} FineTuneSweep documents"
        return (
            None,
            {},
            [Problem(str(path), None, "", f"expected one FineTuneSweep, found {found}")],
        )
    sweep, problems = parse_sweep(sweeps[0])
    return sweep, sweeps[0].data, problems


__all__ = ["load_sweep", "load_sweeps", "parse_sweep", "sweep_problems"]
