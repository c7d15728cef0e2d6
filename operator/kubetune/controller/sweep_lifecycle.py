"""The FineTuneSweep lifecycle: one pure decision, ``sweep_decision(sweep, trials, study, now,
settings)``, modelled on :func:`kubetune.controller.lifecycle.reconcile`.

It reads the sweep (as the API server returned it), the trial FineTuneJobs it owns (the source
of truth for which trials exist) and its Optuna study (which trials were asked, with which
values, and how each ended), and returns a :class:`SweepDecision`: the status to write and the
actions that move the search one step on. No I/O here: :mod:`kubetune.controller.sweep_io`
observes and executes in the cluster, :mod:`kubetune.sweep_local` on this machine.

Phases::

    Pending -> Running -> Succeeded | Failed

A trial is asked of the study first (:class:`Ask`) and made as a FineTuneJob on a later look
(:class:`CreateTrial`), by the same rule that recovers from a crash in between: a study trial
that is running without its FineTuneJob gets it, under its deterministic name
(``<sweep>-t<N>``), so no trial is made twice or left behind. Once the sweep has ended, such a
trial is failed instead (:class:`Tell`). Values the running trials report go to the study
(:class:`Report`), where the pruner judges them; a trial the pruner stopped, or one still
running when the sweep fails, is suspended (:class:`StopTrial`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from kubetune.api import API_VERSION, KIND, Phase
from kubetune.builders import names
from kubetune.builders.common import POD_ANNOTATIONS
from kubetune.controller.lifecycle import Event, rfc3339
from kubetune.reasons import ConditionType, Reason
from kubetune.sweep_api import (
    LABEL_SWEEP,
    LABEL_TRIAL,
    SWEEP_KIND,
    FineTuneSweep,
    SweepPhase,
    TrialState,
    trial_name,
)
from kubetune.sweep_space import (
    format_value,
    pruning_enabled,
    report_interval,
    trial_budget,
    trial_spec,
)
from kubetune.sweep_validation import sweep_problems

Manifest = dict[str, Any]

TERMINAL = (SweepPhase.succeeded, SweepPhase.failed)
TRIAL_DONE = (Phase.succeeded.value, Phase.failed.value)
"""FineTuneJob phases after which a trial runs no more."""

# Optuna's trial states, as the study reports them (optuna.trial.TrialState names).
RUNNING, COMPLETE, PRUNED, FAIL, WAITING = "RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING"


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class TrialJob:
    """A trial's FineTuneJob, as observed (in the cluster, or a local run)."""

    number: int
    name: str
    phase: str | None = None
    """Its status.phase (None before its first pass)."""
    suspended: bool = False
    """spec.runtime.suspend: set by the sweep when it stops the trial."""
    step: int | None = None
    """status.progress.step: the latest step it reported."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The latest values it reported: loss (training), held-out metrics (eval_loss, ...)."""
    output: str | None = None
    """status.output: where its model is, once it succeeded."""
    message: str = ""
    """Why it failed (its Failed condition's message)."""


@dataclass(frozen=True)
class StudyTrial:
    """A trial of the Optuna study."""

    number: int
    state: str
    """RUNNING, COMPLETE, PRUNED, FAIL (or WAITING)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Parameter path -> value asked."""
    values: tuple[float, ...] | None = None
    """Objective values, once COMPLETE."""
    last_step: int | None = None
    """The latest step an intermediate value was reported at."""
    message: str = ""
    """Why it was pruned or failed (kept with the trial in the study)."""


@dataclass(frozen=True)
class StudyView:
    """What the sweep needs of its study."""

    name: str
    trials: tuple[StudyTrial, ...] = ()
    best: tuple[int, ...] = ()
    """The best completed trial's number, or the Pareto front's (several objectives); as
    Optuna computes them."""


@dataclass(frozen=True)
class SweepSettings:
    storage_configured: bool = True
    """Whether the operator has a study storage (KUBETUNE_SWEEP_STORAGE)."""
    poll_seconds: float = 30.0
    """How often a running sweep is looked at without an event."""


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Ask:
    """Ask the study for this many new trials (their values are the sampler's)."""

    count: int


@dataclass(frozen=True)
class CreateTrial:
    """Make a trial's FineTuneJob (create, or adopt when it exists)."""

    number: int
    manifest: Manifest


@dataclass(frozen=True)
class Report:
    """Report a running trial's value at a step to the study; the pruner then judges it."""

    number: int
    step: int
    value: float


@dataclass(frozen=True)
class Tell:
    """End a study trial: COMPLETE with its values, or FAIL with the reason."""

    number: int
    state: Literal["COMPLETE", "FAIL"]
    values: tuple[float, ...] | None = None
    message: str = ""


@dataclass(frozen=True)
class StopTrial:
    """Stop a trial's FineTuneJob (spec.runtime.suspend: its pods go, its checkpoints stay)."""

    name: str


@dataclass(frozen=True)
class DeleteTrial:
    """Delete a trial FineTuneJob the study does not know."""

    name: str


SweepAction = Ask | CreateTrial | Report | Tell | StopTrial | DeleteTrial | Event


@dataclass
class SweepDecision:
    status_patch: dict[str, Any] = field(default_factory=dict)
    """Merge patch of the sweep's status (camelCase)."""
    actions: list[SweepAction] = field(default_factory=list)
    """Executed in order: study and trial actions, then the status patch, then events."""
    requeue_after: float | None = None
    """Seconds until the sweep should be looked at again regardless of events."""

    def of(self, kind: type) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]

    @property
    def events(self) -> list[Event]:
        return self.of(Event)

    @property
    def changes_study(self) -> bool:
        """The study changes when this is executed: look again before the next decision."""
        return any(isinstance(a, Ask | Tell | Report) for a in self.actions)


# --------------------------------------------------------------------------- the pass


class _Pass:
    def __init__(self, sweep: Manifest, now: datetime) -> None:
        self.raw = sweep
        self.now = now
        self.status: dict[str, Any] = dict(sweep.get("status") or {})
        self.meta: dict[str, Any] = sweep.get("metadata") or {}
        self.name: str = self.meta.get("name", "")
        self.generation: int | None = self.meta.get("generation")
        self.decision = SweepDecision()
        self._conditions = [dict(c) for c in self.status.get("conditions") or []]
        self._conditions_changed = False

    @property
    def phase(self) -> SweepPhase | None:
        value = self.status.get("phase")
        return SweepPhase(value) if value in {p.value for p in SweepPhase} else None

    def set(self, **fields: Any) -> None:
        for key, value in fields.items():
            if self.status.get(key) != value:
                self.status[key] = value
                self.decision.status_patch[key] = value

    def set_condition(
        self, type_: ConditionType, status: bool, reason: Reason, message: str
    ) -> None:
        value = "True" if status else "False"
        old = next((c for c in self._conditions if c.get("type") == type_), None)
        new = {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": rfc3339(self.now),
            "observedGeneration": self.generation,
        }
        if old is not None:
            unchanged = (old.get("status"), old.get("reason"), old.get("message")) == (
                value,
                reason,
                message,
            )
            if unchanged and old.get("observedGeneration") == self.generation:
                return
            if old.get("status") == value:
                new["lastTransitionTime"] = old.get("lastTransitionTime", new["lastTransitionTime"])
            self._conditions[self._conditions.index(old)] = new
        else:
            self._conditions.append(new)
        self._conditions_changed = True

    def act(self, action: SweepAction) -> None:
        self.decision.actions.append(action)

    def event(self, reason: Reason, message: str, warning: bool = False) -> None:
        self.act(Event("Warning" if warning else "Normal", reason, message))

    def transition(self, phase: SweepPhase, reason: Reason, message: str, warning: bool = False):
        if self.phase != phase:
            self.set(phase=phase.value)
            self.event(reason, f"{phase.value}: {message}", warning)

    def requeue(self, seconds: float) -> None:
        current = self.decision.requeue_after
        seconds = max(0.0, seconds)
        self.decision.requeue_after = seconds if current is None else min(current, seconds)

    def finish(self) -> SweepDecision:
        if self._conditions_changed:
            self.decision.status_patch["conditions"] = self._conditions
        if self.generation is not None and self.status.get("observedGeneration") != self.generation:
            self.decision.status_patch["observedGeneration"] = self.generation
        return self.decision


@dataclass
class _Trial:
    """One study trial and its FineTuneJob, with the state this pass leaves it in."""

    study: StudyTrial
    job: TrialJob | None
    state: TrialState
    values: tuple[float, ...] | None = None
    message: str = ""


# --------------------------------------------------------------------------- the decision


def sweep_decision(
    sweep: Manifest,
    trials: tuple[TrialJob, ...],
    study: StudyView | None,
    now: datetime,
    settings: SweepSettings,
) -> SweepDecision:
    """One step of a sweep. Pure: everything it knows arrives as arguments. ``study`` is None
    when there is no study storage."""
    p = _Pass(sweep, now)
    if p.meta.get("deletionTimestamp"):
        return p.decision  # the garbage collector removes the trials (ownerReferences)

    problems = sweep_problems(sweep)
    if problems:
        if p.phase not in TERMINAL:
            message = "; ".join(problems)
            p.set_condition(ConditionType.INVALID_SPEC, True, Reason.INVALID_SPEC, message)
            p.set_condition(ConditionType.FAILED, True, Reason.INVALID_SPEC, message)
            p.set(completionTime=rfc3339(now))
            p.transition(SweepPhase.failed, Reason.INVALID_SPEC, message, warning=True)
        return p.finish()
    model = FineTuneSweep.model_validate(
        {k: sweep[k] for k in ("apiVersion", "kind", "metadata", "spec")}
    )
    if p.phase is None:
        p.set_condition(ConditionType.INVALID_SPEC, False, Reason.VALID, "the spec is valid")
        p.transition(SweepPhase.pending, Reason.ACCEPTED, "the sweep was accepted")

    if study is None or not settings.storage_configured:
        p.set_condition(
            ConditionType.STUDY_READY,
            False,
            Reason.STORAGE_NOT_CONFIGURED,
            "the operator has no study storage: set KUBETUNE_SWEEP_STORAGE (chart value "
            "sweeps.storage.secretName) to a database URL",
        )
        p.requeue(settings.poll_seconds)
        return p.finish()
    p.set(study=study.name)
    p.set_condition(ConditionType.STUDY_READY, True, Reason.STUDY_LOADED, f"study {study.name}")
    _pruning_condition(p, model)

    jobs = {job.number: job for job in trials}
    known = {t.number for t in study.trials}
    for job in trials:
        if job.number not in known:
            p.act(DeleteTrial(job.name))
            p.event(
                Reason.TRIAL_UNKNOWN,
                f"{job.name}: trial {job.number} is not in study {study.name}; deleted",
                warning=True,
            )
    current = [_settle(p, model, t, jobs.get(t.number)) for t in study.trials]

    if p.phase in TERMINAL:
        _wind_down(p, current, "the sweep has ended")
    else:
        _advance(p, model, current, study, settings)
    _write_status(p, model, current, study)
    return p.finish()


def _pruning_condition(p: _Pass, model: FineTuneSweep) -> None:
    spec = model.spec
    if spec.pruner is None:
        p.set_condition(
            ConditionType.PRUNING,
            False,
            Reason.NOT_REQUESTED,
            "no spec.pruner: trials run to the end",
        )
    elif not pruning_enabled(spec):
        p.set_condition(
            ConditionType.PRUNING,
            False,
            Reason.MULTI_OBJECTIVE,
            f"{len(spec.objectives)} objectives: Optuna's pruners judge one objective, so "
            "trials run to the end",
        )
    else:
        p.set_condition(
            ConditionType.PRUNING,
            True,
            Reason.PRUNER_ACTIVE,
            f"{spec.pruner.type} pruner on {spec.objectives[0].metric}, "
            f"every {report_interval(spec)} steps",
        )


def _objective_values(model: FineTuneSweep, job: TrialJob) -> tuple[tuple[float, ...], str]:
    """A finished trial's objective values, or () and what is missing."""
    values = []
    for objective in model.spec.objectives:
        value = job.metrics.get(objective.metric)
        if value is None or not math.isfinite(value):
            reported = ", ".join(sorted(job.metrics)) or "nothing"
            return (), f"it reported no {objective.metric} (reported: {reported})"
        values.append(value)
    return tuple(values), ""


def _report_step(model: FineTuneSweep, step: int) -> int:
    """The step a reported value belongs to: a trial's status holds the latest step and the
    latest value of each metric, and the value was computed at the last multiple of the
    metric's interval (the pruner compares trials at equal steps)."""
    interval = report_interval(model.spec)
    return step - step % interval


def _settle(p: _Pass, model: FineTuneSweep, trial: StudyTrial, job: TrialJob | None) -> _Trial:
    """One trial's study state against its FineTuneJob: tell the study how it ended, report
    its latest value, stop it when the study ended it."""
    done = {COMPLETE: TrialState.completed, PRUNED: TrialState.pruned, FAIL: TrialState.failed}
    if trial.state in done:
        if job is not None and job.phase not in TRIAL_DONE and not job.suspended:
            p.act(StopTrial(job.name))
            if trial.state == PRUNED:
                p.event(Reason.TRIAL_PRUNED, f"{job.name}: {trial.message or 'pruned'}")
        return _Trial(trial, job, done[trial.state], trial.values, trial.message)
    if job is None:
        return _Trial(trial, None, TrialState.pending)
    if job.phase == Phase.succeeded.value:
        values, missing = _objective_values(model, job)
        if not values:
            message = f"{job.name} succeeded but {missing}"
            p.act(Tell(trial.number, FAIL, message=message))
            p.event(Reason.TRIAL_FAILED, message, warning=True)
            return _Trial(trial, job, TrialState.failed, message=message)
        p.act(Tell(trial.number, COMPLETE, values=values))
        shown = ", ".join(
            f"{o.metric}={format_value(v)}"
            for o, v in zip(model.spec.objectives, values, strict=True)
        )
        p.event(Reason.TRIAL_COMPLETED, f"{job.name} completed: {shown}")
        return _Trial(trial, job, TrialState.completed, values)
    if job.phase == Phase.failed.value:
        message = f"{job.name} failed" + (f": {job.message}" if job.message else "")
        p.act(Tell(trial.number, FAIL, message=message))
        p.event(Reason.TRIAL_FAILED, message, warning=True)
        return _Trial(trial, job, TrialState.failed, message=message)
    metric = model.spec.objectives[0].metric
    value = job.metrics.get(metric)
    if pruning_enabled(model.spec) and job.step is not None and value is not None:
        step = _report_step(model, job.step)
        if math.isfinite(value) and (trial.last_step is None or step > trial.last_step):
            p.act(Report(trial.number, step, value))
    return _Trial(trial, job, TrialState.running)


def _wind_down(p: _Pass, current: list[_Trial], why: str) -> None:
    """The sweep has ended: trials asked but never made are failed, running ones stopped."""
    for t in current:
        if t.state == TrialState.pending:
            message = f"trial {t.study.number} never ran: {why}"
            p.act(Tell(t.study.number, FAIL, message=message))
            p.event(Reason.TRIAL_ABANDONED, message)
            t.state, t.message = TrialState.failed, message
        elif t.state == TrialState.running and t.job is not None:
            message = f"stopped: {why}"
            p.act(Tell(t.study.number, FAIL, message=message))
            if not t.job.suspended:
                p.act(StopTrial(t.job.name))
            t.state, t.message = TrialState.failed, message


def _advance(
    p: _Pass,
    model: FineTuneSweep,
    current: list[_Trial],
    study: StudyView,
    settings: SweepSettings,
) -> None:
    spec = model.spec
    count = {state: sum(1 for t in current if t.state == state) for state in TrialState}
    if count[TrialState.failed] > spec.max_failed_trials:
        message = (
            f"{count[TrialState.failed]} trials failed, more than spec.maxFailedTrials "
            f"({spec.max_failed_trials})"
        )
        _wind_down(p, current, "the sweep failed")
        _end(p, SweepPhase.failed, Reason.TOO_MANY_FAILED_TRIALS, message)
        return
    for t in current:
        if t.state == TrialState.pending:
            manifest = trial_manifest(p.raw, t.study.number, t.study.params)
            p.act(CreateTrial(t.study.number, manifest))
            name = manifest["metadata"]["name"]
            p.event(Reason.TRIAL_CREATED, f"{name} created: {_params_text(t.study.params)}")
    active = count[TrialState.pending] + count[TrialState.running]
    asked = len(current)
    budget = trial_budget(spec)
    ask = min(spec.parallelism - active, budget - asked)
    if ask > 0:
        p.act(Ask(ask))
    if asked or ask > 0:
        if not p.status.get("startTime"):
            p.set(startTime=rfc3339(p.now))
        p.transition(
            SweepPhase.running, Reason.RUNNING, f"{budget} trials, {spec.parallelism} at once"
        )
    told = any(isinstance(a, Tell) for a in p.decision.actions)
    if asked >= budget and active == 0 and not told:
        if count[TrialState.completed] == 0:
            message = f"all {asked} trials were pruned or failed"
            _end(p, SweepPhase.failed, Reason.NO_TRIAL_COMPLETED, message)
            return
        best = ", ".join(trial_name(p.name, n) for n in study.best)
        message = (
            f"{asked} trials ({count[TrialState.completed]} completed, "
            f"{count[TrialState.pruned]} pruned, {count[TrialState.failed]} failed); best: {best}"
        )
        _end(p, SweepPhase.succeeded, Reason.BEST_TRIAL_FOUND, message)
        return
    p.requeue(settings.poll_seconds)


def _end(p: _Pass, phase: SweepPhase, reason: Reason, message: str) -> None:
    if phase == SweepPhase.succeeded:
        p.set_condition(ConditionType.SUCCEEDED, True, reason, message)
    else:
        p.set_condition(ConditionType.FAILED, True, reason, message)
    p.set(completionTime=rfc3339(p.now))
    event_reason = Reason.SUCCEEDED if phase == SweepPhase.succeeded else reason
    p.transition(phase, event_reason, message, warning=phase == SweepPhase.failed)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in sorted(params.items()))


def trial_manifest(sweep: Manifest, number: int, params: dict[str, Any]) -> Manifest:
    """The FineTuneJob of a trial: the template with the trial's values, owned by the sweep.
    The sweep's kubetune.io/pod-annotations annotation (annotations for the trainer pods)
    reaches every trial."""
    meta = sweep["metadata"]
    name = meta["name"]
    pod_annotations = (meta.get("annotations") or {}).get(POD_ANNOTATIONS)
    owner = {
        "apiVersion": API_VERSION,
        "kind": SWEEP_KIND,
        "name": name,
        "uid": meta.get("uid", ""),
        "controller": True,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": trial_name(name, number),
            "namespace": meta.get("namespace") or "default",
            "labels": {
                LABEL_SWEEP: name,
                LABEL_TRIAL: str(number),
                names.LABEL_MANAGED_BY: names.MANAGER,
            },
            "ownerReferences": [owner],
            **({"annotations": {POD_ANNOTATIONS: pod_annotations}} if pod_annotations else {}),
        },
        "spec": trial_spec(sweep["spec"]["template"], params),
    }


# --------------------------------------------------------------------------- status


def _write_status(p: _Pass, model: FineTuneSweep, current: list[_Trial], study: StudyView) -> None:
    objectives = [o.metric for o in model.spec.objectives]
    rows = []
    for t in sorted(current, key=lambda t: t.study.number):
        if t.values is not None:
            values = {m: format_value(v) for m, v in zip(objectives, t.values, strict=False)}
        elif t.job is not None:
            values = {m: format_value(t.job.metrics[m]) for m in objectives if m in t.job.metrics}
        else:
            values = {}
        row: dict[str, Any] = {
            "number": t.study.number,
            "name": trial_name(p.name, t.study.number),
            "state": t.state.value,
            "parameters": {k: format_value(v) for k, v in sorted(t.study.params.items())},
            "values": values,
        }
        if t.job is not None and t.job.step is not None:
            row["step"] = t.job.step
        message = t.message or (t.job.message if t.job is not None else "")
        if message and t.state in (TrialState.pruned, TrialState.failed):
            row["message"] = message[:1024]
        rows.append(row)
    counts = {state: sum(1 for t in current if t.state == state) for state in TrialState}
    p.set(
        trials=rows,
        running=counts[TrialState.pending] + counts[TrialState.running],
        completed=counts[TrialState.completed],
        pruned=counts[TrialState.pruned],
        failed=counts[TrialState.failed],
    )
    by_number = {t.study.number: t for t in current}
    best = [
        _best_entry(p, objectives, by_number[n])
        for n in study.best
        if n in by_number and by_number[n].state == TrialState.completed
    ]
    if len(objectives) == 1:
        entry = best[0] if best else None
        p.set(bestTrial=entry, bestValue=entry["values"][objectives[0]] if entry else None)
    else:
        p.set(paretoFront=best)


def _best_entry(p: _Pass, objectives: list[str], t: _Trial) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "number": t.study.number,
        "name": trial_name(p.name, t.study.number),
        "parameters": {k: format_value(v) for k, v in sorted(t.study.params.items())},
        "values": {m: format_value(v) for m, v in zip(objectives, t.values or (), strict=False)},
    }
    if t.job is not None and t.job.output:
        entry["output"] = t.job.output
    return entry


__all__ = [
    "Ask",
    "CreateTrial",
    "DeleteTrial",
    "Report",
    "StopTrial",
    "StudyTrial",
    "StudyView",
    "SweepDecision",
    "SweepSettings",
    "Tell",
    "TrialJob",
    "sweep_decision",
    "trial_manifest",
]
