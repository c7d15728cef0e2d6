"""The FineTuneSweep API (kubetune.io/v1alpha1): a hyperparameter search whose trials are
FineTuneJobs. This is the only definition of FineTuneSweep; its CRD is generated from it
(``python -m kubetune.crd``), and the field docs below are what ``kubectl explain`` shows.

A sweep names a FineTuneJob spec (``template``), the fields of it to vary (``parameters``, by
their camelCase path), the metrics to optimise (``objectives``), and how to search
(``algorithm``, ``pruner``, ``maxTrials``, ``parallelism``). Optuna asks for each trial's
values; the trial runs as the FineTuneJob ``<sweep>-t<N>`` (N: the study's trial number),
owned by the sweep.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from kubetune.api import Condition, FineTuneJobSpec
from kubetune_trainer.plan import (
    SWEEP_BEST_SUFFIX,
    SWEEP_NAME_MAX,
    FieldError,
    Name,
    Section,
    ShortText,
)

SWEEP_KIND = "FineTuneSweep"
SWEEP_PLURAL = "finetunesweeps"
SWEEP_SINGULAR = "finetunesweep"
SWEEP_SHORT_NAMES = ["fts"]
MAX_TRIALS_LIMIT = 1000

LABEL_SWEEP = "kubetune.io/sweep"
"""On every trial FineTuneJob: the sweep it belongs to."""
LABEL_TRIAL = "kubetune.io/trial"
"""On every trial FineTuneJob: its number in the sweep's study (0, 1, ...)."""

BEST_SUFFIX = SWEEP_BEST_SUFFIX

MetricName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=63)]
ParameterPath = Annotated[
    str,
    StringConstraints(
        pattern=r"^[a-z][A-Za-z0-9]*(\.([a-z][A-Za-z0-9]*|[0-9]+))*$", max_length=253
    ),
]


def trial_name(sweep: str, number: int) -> str:
    """The FineTuneJob that runs trial ``number`` of a sweep."""
    return f"{sweep}-t{number}"


def sweep_of_dependency(dependency: str) -> str | None:
    """The sweep a ``finetunejob://`` dependency names (``<sweep>/best``), or None when it names
    a FineTuneJob."""
    return dependency.removesuffix(BEST_SUFFIX) if dependency.endswith(BEST_SUFFIX) else None


def best_dependency(sweep: dict[str, Any] | None) -> dict[str, Any] | None:
    """A sweep as a ``finetunejob://<sweep>/best`` dependency sees it: a FineTuneJob-like
    object whose phase is Succeeded, with the best trial's output, once the sweep has
    succeeded with one best trial (several objectives have no single best: name a trial of
    the Pareto front instead). None when the sweep does not exist."""
    if sweep is None:
        return None
    status = sweep.get("status") or {}
    phase = status.get("phase") or SweepPhase.pending.value
    output = (status.get("bestTrial") or {}).get("output")
    if phase == SweepPhase.succeeded.value and not output:
        phase = "has no single best trial"
    return {"status": {"phase": phase, "output": output}}


class SweepParameter(Section):
    """One dimension of the search space: a field of the trial's FineTuneJob spec."""

    path: ParameterPath
    """The field of spec.template to vary, by its camelCase path, e.g. training.learningRate,
    peft.r, dpo.beta, data.sources.0.weight. Checked against the FineTuneJob schema before any
    trial starts."""
    type: Literal["float", "int", "categorical"]
    """float or int (between min and max), or categorical (one of values)."""
    min: float | None = None
    """Lowest value (float and int)."""
    max: float | None = None
    """Highest value (float and int)."""
    log: bool = False
    """Sample on a log scale (float and int; min must be above 0)."""
    step: float | None = Field(default=None, gt=0)
    """Only values min, min+step, ... are tried (float and int). The grid algorithm needs it
    for float parameters; int parameters step by 1 unless told."""
    values: list[Any] | None = Field(default=None, max_length=256)
    """The choices of a categorical parameter: strings, numbers or booleans."""

    @field_validator("values")
    @classmethod
    def _scalars(cls, values: list[Any] | None) -> list[Any] | None:
        if values is None:
            return None
        for value in values:
            if not isinstance(value, str | int | float | bool):
                raise ValueError(f"{value!r} is not a string, number or boolean")
        if len({repr(v) for v in values}) != len(values):
            raise ValueError("each value may appear once")
        return values

    @model_validator(mode="after")
    def _range(self) -> SweepParameter:
        if self.type == "categorical":
            if not self.values:
                raise FieldError(("values",), "a categorical parameter needs values")
            for name in ("min", "max", "step"):
                if getattr(self, name) is not None:
                    raise FieldError((name,), f"a categorical parameter takes values, not {name}")
            if self.log:
                raise FieldError(("log",), "a categorical parameter has no scale")
            return self
        if self.values is not None:
            raise FieldError(("values",), f"a {self.type} parameter takes min and max, not values")
        for name in ("min", "max"):
            value = getattr(self, name)
            if value is None:
                raise FieldError((name,), f"a {self.type} parameter needs {name}")
            if not math.isfinite(value):
                raise FieldError((name,), "must be a finite number")
            if self.type == "int" and value != int(value):
                raise FieldError((name,), f"an int parameter needs a whole number, not {value}")
        assert self.min is not None and self.max is not None
        if self.min >= self.max:
            raise FieldError(("max",), f"must be above min ({self.min:g})")
        if self.log and self.min <= 0:
            raise FieldError(("min",), "a log-scale parameter needs min above 0")
        if self.log and self.step is not None:
            raise FieldError(("step",), "a log-scale parameter cannot have a step")
        if self.type == "int" and self.step is not None and self.step != int(self.step):
            raise FieldError(("step",), f"an int parameter needs a whole step, not {self.step}")
        return self


class SweepObjective(Section):
    """A metric the trials report, and which way is better."""

    metric: MetricName
    """loss (the training loss in status.progress.loss) or a held-out metric the trials
    report during training (status.progress.evalMetrics, e.g. eval_loss, eval_perplexity,
    at training.evalEverySteps). A trial's value is the last one it reported."""
    direction: Literal["minimize", "maximize"]
    """minimize or maximize."""


class SweepAlgorithm(Section):
    """How the next trial's values are chosen (Optuna's samplers)."""

    name: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    """tpe (tree-structured Parzen estimator), random, grid (every combination once; float
    parameters need a step) or cmaes (CMA-ES: float and int parameters and one objective
    only)."""
    seed: int | None = Field(default=None, ge=0)
    """Seed of the sampler, for a reproducible search. Default: random."""
    startup_trials: int = Field(default=4, ge=0, le=1000)
    """tpe: trials sampled at random before the model takes over."""


class PrunerSpec(Section):
    """Early stopping of unpromising trials from the values they report during training
    (Optuna's pruners; single-objective sweeps only: with several objectives trials run to
    the end, and the sweep's conditions say so)."""

    type: Literal["median", "successiveHalving"]
    """median: stop a trial whose value at a step is worse than the median of earlier
    trials' at the same step; successiveHalving: keep the best 1/reductionFactor of trials at
    each rung of steps."""
    startup_trials: int = Field(default=2, ge=0, le=1000)
    """median: trials that finish before any is stopped."""
    warmup_steps: int = Field(default=0, ge=0)
    """median: steps of each trial before it can be stopped."""
    min_steps: int | None = Field(default=None, ge=1)
    """successiveHalving: steps of the first rung. Default: estimated from the first trial."""
    reduction_factor: int = Field(default=3, ge=2, le=100)
    """successiveHalving: 1/reductionFactor of trials go on at each rung."""


class FineTuneSweepSpec(Section):
    """A hyperparameter search over FineTuneJobs."""

    template: FineTuneJobSpec
    """The FineTuneJob spec every trial starts from; each trial sets the parameters' fields.
    Its runtime.queueName (Kueue) and everything else reach every trial unchanged."""
    parameters: list[SweepParameter] = Field(min_length=1, max_length=32)
    """The search space: fields of the template and their ranges or choices."""
    objectives: list[SweepObjective] = Field(min_length=1, max_length=4)
    """What to optimise. Several objectives search for the Pareto front (trials no other
    trial beats on every objective), without pruning."""
    algorithm: SweepAlgorithm = Field(default_factory=SweepAlgorithm)
    """The sampler."""
    pruner: PrunerSpec | None = None
    """Early stopping of unpromising trials. Default: every trial runs to the end."""
    max_trials: int = Field(default=10, ge=1, le=MAX_TRIALS_LIMIT)
    """Trials to run in all (grid: at most one per combination)."""
    parallelism: int = Field(default=1, ge=1, le=100)
    """Trials running at once."""
    max_failed_trials: int = Field(default=3, ge=0, le=MAX_TRIALS_LIMIT)
    """Failed trials tolerated; one more fails the sweep (running trials are stopped)."""

    @model_validator(mode="after")
    def _unique_paths(self) -> FineTuneSweepSpec:
        seen: set[str] = set()
        for i, parameter in enumerate(self.parameters):
            if parameter.path in seen:
                raise FieldError(
                    ("parameters", i, "path"), f"'{parameter.path}' is already a parameter"
                )
            seen.add(parameter.path)
        metrics = [o.metric for o in self.objectives]
        for i, metric in enumerate(metrics):
            if metrics.index(metric) != i:
                raise FieldError(("objectives", i, "metric"), f"'{metric}' appears twice")
        return self


# --------------------------------------------------------------------------- status


class SweepPhase(StrEnum):
    pending = "Pending"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"


class TrialState(StrEnum):
    pending = "Pending"
    running = "Running"
    completed = "Completed"
    pruned = "Pruned"
    failed = "Failed"


class TrialSummary(Section):
    """One trial, as the sweep last saw it."""

    number: int
    """Trial number in the study."""
    name: Name
    """The trial's FineTuneJob."""
    state: TrialState
    """Pending (asked, its FineTuneJob not made yet), Running, Completed, Pruned or Failed."""
    parameters: dict[str, ShortText] = Field(default_factory=dict)
    """Parameter path -> the value tried."""
    values: dict[str, ShortText] = Field(default_factory=dict)
    """Objective metric -> its value (the final one once Completed, else the latest seen)."""
    step: int | None = None
    """The latest step a value was seen at."""
    message: ShortText | None = None
    """Why it was pruned or failed."""


class BestTrial(Section):
    """The best trial, or one trial of the Pareto front."""

    number: int
    """Trial number in the study."""
    name: Name
    """The trial's FineTuneJob."""
    parameters: dict[str, ShortText] = Field(default_factory=dict)
    """Parameter path -> its value."""
    values: dict[str, ShortText] = Field(default_factory=dict)
    """Objective metric -> its final value."""
    output: ShortText | None = None
    """Where its trained model is."""


class FineTuneSweepStatus(Section):
    """Observed state, written by the operator."""

    phase: SweepPhase | None = None
    """Pending, Running, Succeeded or Failed."""
    conditions: list[Condition] = Field(default_factory=list)
    """Detailed conditions."""
    study: ShortText | None = None
    """The Optuna study's name in the operator's study storage."""
    trials: list[TrialSummary] = Field(default_factory=list, max_length=MAX_TRIALS_LIMIT)
    """Every trial asked so far, by number."""
    running: int | None = None
    """Trials pending or running."""
    completed: int | None = None
    """Trials that finished and reported every objective."""
    pruned: int | None = None
    """Trials stopped early by the pruner."""
    failed: int | None = None
    """Trials that failed (counted against maxFailedTrials)."""
    best_trial: BestTrial | None = None
    """The best completed trial (single objective)."""
    best_value: ShortText | None = None
    """Its objective value (single objective)."""
    pareto_front: list[BestTrial] = Field(default_factory=list, max_length=MAX_TRIALS_LIMIT)
    """The completed trials no other beats on every objective (several objectives)."""
    start_time: ShortText | None = None
    """When the first trial was asked (RFC 3339)."""
    completion_time: ShortText | None = None
    """When the sweep succeeded or failed (RFC 3339)."""
    observed_generation: int | None = None
    """The spec generation the operator last acted on."""


class SweepMeta(Section):
    """The part of metadata the schema checks; everything else is passed through."""

    model_config = Section.model_config | {"extra": "allow"}

    name: Annotated[
        str,
        StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=SWEEP_NAME_MAX),
    ]
    """Sweep name: a DNS label of at most 42 characters, so trial names fit theirs."""
    namespace: Name | None = None
    """Namespace."""


class FineTuneSweep(Section):
    """A FineTuneSweep as written by users (apiVersion, kind, metadata, spec, status)."""

    model_config = Section.model_config | {"extra": "forbid"}

    api_version: Literal["kubetune.io/v1alpha1"]
    """kubetune.io/v1alpha1."""
    kind: Literal["FineTuneSweep"]
    """FineTuneSweep."""
    metadata: SweepMeta
    """Standard object metadata."""
    spec: FineTuneSweepSpec
    """Desired state."""
    status: FineTuneSweepStatus | None = None
    """Observed state."""

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"


__all__ = [
    "BEST_SUFFIX",
    "LABEL_SWEEP",
    "LABEL_TRIAL",
    "SWEEP_KIND",
    "SWEEP_PLURAL",
    "BestTrial",
    "FineTuneSweep",
    "FineTuneSweepSpec",
    "FineTuneSweepStatus",
    "PrunerSpec",
    "SweepAlgorithm",
    "SweepObjective",
    "SweepParameter",
    "SweepPhase",
    "TrialState",
    "TrialSummary",
    "sweep_of_dependency",
    "trial_name",
]
