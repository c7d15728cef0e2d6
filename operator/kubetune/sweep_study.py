"""A sweep's Optuna study: made from the sweep's spec, kept in Optuna's RDB storage (PostgreSQL
in the cluster, SQLite on this machine), read into a :class:`StudyView` for the decision, and
changed by the decision's study actions (ask, report and let the pruner judge, tell).

Shared by the operator (:mod:`kubetune.controller.sweep_io`) and the local runner
(:mod:`kubetune.sweep_local`), so a sweep means the same wherever it runs.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import Trial, TrialState

from kubetune.controller.sweep_lifecycle import (
    Ask,
    Report,
    StudyTrial,
    StudyView,
    SweepAction,
    Tell,
)
from kubetune.sweep_api import FineTuneSweepSpec, SweepParameter
from kubetune.sweep_space import format_value, grid_values, pruning_enabled

STUDY_PREFIX = "kubetune"
MESSAGE_ATTR = "message"
"""The user attribute holding why a trial was pruned or failed."""

log = logging.getLogger("kubetune.sweep")


def study_name(namespace: str, name: str, uid: str) -> str:
    """``kubetune/<namespace>/<sweep>/<uid>``: a sweep deleted and made again under the same
    name gets a new study."""
    return f"{STUDY_PREFIX}/{namespace}/{name}/{uid}"


def parse_study_name(study: str) -> tuple[str, str, str] | None:
    """(namespace, sweep, uid) of a study this operator made, else None."""
    parts = study.split("/")
    if len(parts) != 4 or parts[0] != STUDY_PREFIX:
        return None
    return parts[1], parts[2], parts[3]


# --------------------------------------------------------------------------- from the spec


def distribution(parameter: SweepParameter) -> BaseDistribution:
    if parameter.type == "categorical":
        return CategoricalDistribution(parameter.values or [])
    assert parameter.min is not None and parameter.max is not None
    if parameter.type == "int":
        step = int(parameter.step or 1)
        return IntDistribution(int(parameter.min), int(parameter.max), log=parameter.log, step=step)
    return FloatDistribution(parameter.min, parameter.max, log=parameter.log, step=parameter.step)


def distributions(spec: FineTuneSweepSpec) -> dict[str, BaseDistribution]:
    """The search space as Optuna's distributions, by parameter path."""
    return {p.path: distribution(p) for p in spec.parameters}


def make_sampler(spec: FineTuneSweepSpec, asked: int) -> optuna.samplers.BaseSampler:
    """The sampler for the next trial. A sampler is made per ask (the operator is restartable
    and keeps nothing in memory), seeded with the sweep's seed plus the trials asked so far,
    so a seeded sweep is reproducible and two asks never draw alike. The grid sampler numbers
    its points in an order its seed shuffles: every instance needs the same seed."""
    algorithm = spec.algorithm
    # Distinct streams per sweep seed: seed+asked would make sweeps with seeds 1 and 2 overlap.
    seed = None if algorithm.seed is None else (algorithm.seed * 1_000_003 + asked) % 2**32
    match algorithm.name:
        case "random":
            return optuna.samplers.RandomSampler(seed=seed)
        case "grid":
            space = {p.path: grid_values(p) for p in spec.parameters}
            return optuna.samplers.GridSampler(space, seed=algorithm.seed or 0)
        case "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        case _:
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=algorithm.startup_trials, constant_liar=True
            )


def make_pruner(spec: FineTuneSweepSpec) -> optuna.pruners.BasePruner:
    pruner = spec.pruner
    if pruner is None or not pruning_enabled(spec):
        return optuna.pruners.NopPruner()
    if pruner.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps
        )
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=pruner.min_steps or "auto", reduction_factor=pruner.reduction_factor
    )


# --------------------------------------------------------------------------- the storage


class Studies:
    """The studies of one RDB storage; one connection pool for the process, made on first
    use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._storage: optuna.storages.RDBStorage | None = None

    @property
    def storage(self) -> optuna.storages.RDBStorage:
        if self._storage is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._storage = optuna.storages.RDBStorage(
                self.url, engine_kwargs={"pool_pre_ping": True}
            )
        return self._storage

    def open(self, spec: FineTuneSweepSpec, name: str) -> optuna.Study:
        """The sweep's study, made on first use."""
        return optuna.create_study(
            storage=self.storage,
            study_name=name,
            directions=[o.direction for o in spec.objectives],
            sampler=optuna.samplers.RandomSampler(),  # asking sets the sweep's own (_ask)
            pruner=make_pruner(spec),
            load_if_exists=True,
        )

    def names(self) -> list[str]:
        return [s.study_name for s in optuna.get_all_study_summaries(self.storage)]

    def delete(self, name: str) -> None:
        optuna.delete_study(study_name=name, storage=self.storage)


def view(study: optuna.Study) -> StudyView:
    """What the decision needs of a study."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best: tuple[int, ...] = ()
    if complete:
        chosen = study.best_trials if len(study.directions) > 1 else [study.best_trial]
        best = tuple(sorted(t.number for t in chosen))
    return StudyView(
        name=study.study_name,
        trials=tuple(
            StudyTrial(
                number=t.number,
                state=t.state.name,
                params=dict(t.params),
                values=tuple(t.values) if t.values is not None else None,
                last_step=max(t.intermediate_values) if t.intermediate_values else None,
                message=str(t.user_attrs.get(MESSAGE_ATTR, "")),
            )
            for t in trials
        ),
        best=best,
    )


def _live_trial(study: optuna.Study, number: int) -> tuple[Trial, Any] | None:
    """A running trial, to report to (Optuna has no public look-up of a Trial by number)."""
    for frozen in study.get_trials(deepcopy=False):
        if frozen.number == number:
            if frozen.state != TrialState.RUNNING:
                return None
            return Trial(study, frozen._trial_id), frozen
    return None


def _ask(study: optuna.Study, spec: FineTuneSweepSpec) -> Trial:
    """One new trial, its values drawn by the sweep's sampler. Only asking uses it: telling
    with the grid sampler would make it stop the study once the grid is done, which Optuna
    refuses outside ``optimize``."""
    neutral = study.sampler
    study.sampler = make_sampler(spec, len(study.get_trials(deepcopy=False)))
    try:
        return study.ask(distributions(spec))
    finally:
        study.sampler = neutral


def apply(study: optuna.Study, spec: FineTuneSweepSpec, actions: list[SweepAction]) -> list[str]:
    """Carry out the decision's study actions, in order; returns log lines."""
    done: list[str] = []
    metric = spec.objectives[0].metric
    for action in actions:
        if isinstance(action, Ask):
            for _ in range(action.count):
                trial = _ask(study, spec)
                shown = ", ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
                done.append(f"asked trial {trial.number} ({shown})")
        elif isinstance(action, Report):
            found = _live_trial(study, action.number)
            if found is None:
                continue
            trial, frozen = found
            if action.step not in frozen.intermediate_values:
                trial.report(action.value, action.step)
            if trial.should_prune():
                pruner = spec.pruner.type if spec.pruner else "pruner"
                message = (
                    f"pruned at step {action.step}: {metric}={format_value(action.value)} "
                    f"({pruner} pruner)"
                )
                trial.set_user_attr(MESSAGE_ATTR, message)
                study.tell(action.number, state=TrialState.PRUNED, skip_if_finished=True)
                done.append(f"trial {action.number} {message}")
        elif isinstance(action, Tell):
            found = _live_trial(study, action.number)
            if found is None:
                continue
            if action.message:
                found[0].set_user_attr(MESSAGE_ATTR, action.message)
            state = TrialState.COMPLETE if action.state == "COMPLETE" else TrialState.FAIL
            values = list(action.values) if action.values is not None else None
            study.tell(action.number, values, state=state, skip_if_finished=True)
            done.append(f"told trial {action.number} {state.name}")
    return done


__all__ = [
    "Studies",
    "apply",
    "distributions",
    "make_pruner",
    "make_sampler",
    "parse_study_name",
    "study_name",
    "view",
]
