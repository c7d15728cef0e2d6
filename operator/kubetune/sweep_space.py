"""A sweep's search space against the FineTuneJob schema: is every parameter a field of the
template, of the right kind, with values the schema accepts; can the algorithm and the pruner
search it; and what a trial's spec is once its values are set. Pure: no Optuna, no I/O.

Every problem is reported at its field in the sweep (``spec.parameters[0].max: ...``) before
any trial starts.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from kubetune.api import FineTuneJobSpec
from kubetune.sweep_api import FineTuneSweepSpec, SweepParameter

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]
"""(location under the sweep's spec, message)."""

RESERVED_PATHS = {
    "runtime.suspend": "the sweep stops pruned trials by suspending them",
}
GRID_LIMIT = 100_000
TRAINING_LOSS = "loss"
"""The objective read from status.progress.loss; every other metric is a held-out one."""


# --------------------------------------------------------------------------- the schema


def field_annotation(path: str) -> tuple[Any, str | None]:
    """The type of the FineTuneJob spec field at a camelCase path, or (None, why not)."""
    current: Any = FineTuneJobSpec
    walked: list[str] = []
    for part in path.split("."):
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {f.alias or n: f for n, f in current.model_fields.items()}
            if part not in fields:
                where = ".".join(walked) or "a FineTuneJob spec"
                known = ", ".join(fields)
                return None, f"'{part}' is not a field of {where} (fields: {known})"
            current = fields[part].annotation
        elif get_origin(current) is list:
            if not part.isdigit():
                return None, f"{'.'.join(walked)} is a list: index it with a number"
            current = get_args(current)[0]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None, f"{'.'.join(walked)} has no fields"
        walked.append(part)
    return _unwrap(current), None


def _unwrap(annotation: Any) -> Any:
    """X from X | None and Annotated[X, ...]."""
    while True:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) is Literal or not args:
            return annotation
        annotated = hasattr(annotation, "__metadata__")  # Annotated[X, ...]
        optional = len(args) == 1 and get_origin(annotation) not in (list, dict)
        if not (annotated or optional):
            return annotation
        annotation = args[0]


def field_kind(annotation: Any) -> str:
    """float, int, bool, str, choice (a Literal or an enum) or other."""
    if annotation is Any:
        return "any"
    if get_origin(annotation) is Literal:
        return "choice"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if isinstance(annotation, type) and issubclass(annotation, str):
        return "choice" if annotation is not str else "str"
    return "other"


# --------------------------------------------------------------------------- trial specs


def set_path(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of a FineTuneJob spec (wire form) with the field at path set to value; missing
    sections are made on the way. Raises KeyError when a list index is out of range."""
    out = copy.deepcopy(spec)
    node: Any = out
    parts = path.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            index = int(part)
            if index >= len(node):
                raise KeyError(f"the template has no item {index} there")
            node = node[index]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        if int(last) >= len(node):
            raise KeyError(f"the template has no item {last} there")
        node[int(last)] = value
    else:
        node[last] = value
    return out


def trial_spec(template: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The spec of a trial: the template (as written) with each parameter's value set."""
    spec = copy.deepcopy(template)
    for path, value in sorted(params.items()):
        spec = set_path(spec, path, value)
    return spec


def _schema_error(spec: dict[str, Any]) -> str | None:
    try:
        FineTuneJobSpec.model_validate(spec)
    except ValidationError as err:
        item = err.errors()[0]
        cause = (item.get("ctx") or {}).get("error")
        where = [p for p in item["loc"] if isinstance(p, int) or "[" not in str(p)]
        if cause is not None and hasattr(cause, "loc"):
            where += list(cause.loc)
        message = getattr(cause, "message", None) or item["msg"].removeprefix("Value error, ")
        path = ".".join(str(p) for p in where)
        return f"{path}: {message}" if path else message
    return None


# --------------------------------------------------------------------------- the checks


def _candidates(parameter: SweepParameter) -> list[tuple[Loc, Any]]:
    """The values worth trying against the schema, each with the field that gave it."""
    if parameter.type == "categorical":
        return [(("values", j), v) for j, v in enumerate(parameter.values or [])]
    cast = int if parameter.type == "int" else float
    return [(("min",), cast(parameter.min)), (("max",), cast(parameter.max))]


def _kind_problem(parameter: SweepParameter, kind: str) -> tuple[Loc, str] | None:
    path = parameter.path
    if parameter.type == "float" and kind != "float":
        return ("type",), f"{path} is {_kind_text(kind)}; use type {_suggest(kind)}"
    if parameter.type == "int" and kind not in ("int", "float"):
        return ("type",), f"{path} is {_kind_text(kind)}; use type {_suggest(kind)}"
    if kind == "other":
        return ("path",), f"{path} is a section, not a single value"
    if parameter.type != "categorical" or kind == "any":
        return None
    for j, value in enumerate(parameter.values or []):
        ok = {
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "choice": isinstance(value, str),
        }[kind]
        if not ok:
            return ("values", j), f"{value!r} is not {_kind_text(kind)} ({path})"
    return None


def _kind_text(kind: str) -> str:
    return {
        "float": "a number",
        "int": "an integer",
        "bool": "a boolean",
        "str": "a string",
        "choice": "one of a fixed set of strings",
    }.get(kind, "not a single value")


def _suggest(kind: str) -> str:
    return {"int": "int (or categorical)", "float": "float"}.get(kind, "categorical")


def grid_values(parameter: SweepParameter) -> list[Any] | None:
    """Every value the grid algorithm tries for a parameter (None: not a finite set)."""
    if parameter.type == "categorical":
        return list(parameter.values or [])
    assert parameter.min is not None and parameter.max is not None
    if parameter.type == "int":
        step = int(parameter.step or 1)
        return list(range(int(parameter.min), int(parameter.max) + 1, step))
    if parameter.step is None:
        return None
    count = math.floor((parameter.max - parameter.min) / parameter.step + 1e-9) + 1
    return [round(parameter.min + i * parameter.step, 12) for i in range(count)]


def grid_size(spec: FineTuneSweepSpec) -> int | None:
    """Combinations a grid sweep can try (None when the algorithm is not grid)."""
    if spec.algorithm.name != "grid":
        return None
    size = 1
    for parameter in spec.parameters:
        values = grid_values(parameter)
        size *= len(values) if values is not None else 0
    return size


def trial_budget(spec: FineTuneSweepSpec) -> int:
    """Trials the sweep runs in all: maxTrials, or fewer when a grid has fewer points."""
    size = grid_size(spec)
    return spec.max_trials if size is None else min(spec.max_trials, size)


def pruning_enabled(spec: FineTuneSweepSpec) -> bool:
    """Optuna's pruners judge one objective: a multi-objective sweep runs without them."""
    return spec.pruner is not None and len(spec.objectives) == 1


def space_problems(spec: FineTuneSweepSpec, template: dict[str, Any]) -> list[Problem]:
    """Everything wrong with a sweep's search space, algorithm and objectives, each at its
    field (under spec). ``template`` is spec.template as written."""
    problems: list[Problem] = []
    for i, parameter in enumerate(spec.parameters):
        at = ("parameters", i)
        if parameter.path in RESERVED_PATHS:
            why = RESERVED_PATHS[parameter.path]
            problems.append(((*at, "path"), f"{parameter.path} cannot be a parameter: {why}"))
            continue
        annotation, why_not = field_annotation(parameter.path)
        if why_not is not None:
            problems.append(((*at, "path"), why_not))
            continue
        kind_problem = _kind_problem(parameter, field_kind(annotation))
        if kind_problem is not None:
            problems.append(((*at, *kind_problem[0]), kind_problem[1]))
            continue
        for loc, value in _candidates(parameter):
            try:
                error = _schema_error(set_path(template, parameter.path, value))
            except KeyError as err:
                problems.append(((*at, "path"), f"{parameter.path}: {err.args[0]}"))
                break
            if error is not None:
                problems.append(((*at, *loc), f"{value!r} is not valid for {error}"))
                if parameter.type != "categorical":
                    break  # min and max usually fail alike
        if spec.algorithm.name == "cmaes" and parameter.type == "categorical":
            problems.append(
                (
                    (*at, "type"),
                    f"algorithm cmaes samples float and int parameters only; {parameter.path} "
                    "is categorical (use algorithm tpe or random)",
                )
            )
        if spec.algorithm.name == "grid" and grid_values(parameter) is None:
            problems.append(
                (
                    (*at, "step"),
                    "algorithm grid tries every value once: a float parameter needs a step",
                )
            )
    if spec.algorithm.name == "cmaes" and len(spec.objectives) > 1:
        problems.append(
            (
                ("algorithm", "name"),
                f"cmaes optimises one objective and spec.objectives has {len(spec.objectives)} "
                "(use algorithm tpe or random)",
            )
        )
    size = grid_size(spec)
    if size is not None and size > GRID_LIMIT:
        problems.append(
            (("algorithm", "name"), f"the grid has {size} points (at most {GRID_LIMIT})")
        )
    problems += _objective_problems(spec)
    return problems


def _objective_problems(spec: FineTuneSweepSpec) -> list[Problem]:
    problems: list[Problem] = []
    template = spec.template
    data = template.data
    has_held_out = data is not None and (bool(data.eval_sources) or data.eval_ratio > 0)
    for i, objective in enumerate(spec.objectives):
        if objective.metric == TRAINING_LOSS or has_held_out:
            continue
        problems.append(
            (
                ("objectives", i, "metric"),
                f"{objective.metric} is a held-out metric: give the template held-out data "
                "(template.data.evalSources or template.data.evalRatio)",
            )
        )
    if pruning_enabled(spec):
        metric = spec.objectives[0].metric
        if metric != TRAINING_LOSS and template.training.eval_every_steps is None:
            problems.append(
                (
                    ("template", "training", "evalEverySteps"),
                    f"the pruner compares trials at the same steps: set evalEverySteps so "
                    f"{metric} is reported at fixed steps",
                )
            )
    return problems


def report_interval(spec: FineTuneSweepSpec) -> int:
    """Steps between two values of the (single) objective: its trials report the training
    loss at every logEverySteps and held-out metrics at every evalEverySteps."""
    training = spec.template.training
    if spec.objectives[0].metric == TRAINING_LOSS:
        return training.log_every_steps
    return training.eval_every_steps or training.log_every_steps


def format_value(value: Any) -> str:
    """A parameter or metric value as status shows it."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


__all__ = [
    "TRAINING_LOSS",
    "field_annotation",
    "format_value",
    "grid_size",
    "grid_values",
    "pruning_enabled",
    "report_interval",
    "set_path",
    "space_problems",
    "trial_budget",
    "trial_spec",
]
