"""FineTuneJob documents (read by :mod:`kubetune.manifest_yaml`) checked against the schema, with
every problem reported as ``file:line: spec.path.to.field: message``."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kubetune.api import API_VERSION, GROUP, KIND, FineTuneJob, model_dependencies
from kubetune.manifest_yaml import Document, Problem, load_documents
from kubetune_trainer.plan import DataSource, FieldError, uri_scheme
from kubetune_trainer.uris import local_path


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
            if metric.dataset is not None  # lmEval tasks name their own data
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
