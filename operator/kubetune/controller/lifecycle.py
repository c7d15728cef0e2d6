"""The FineTuneJob lifecycle: one pure decision function with an explicit switch on phase.

``reconcile(job, world, now, settings)`` reads the job (as the API server returned it) and what
the handler observed about its children and dependencies, and returns a :class:`Decision`: the
status fields the operator owns (a merge patch), the actions that move the world one step
toward the spec (create children, delete children, post events), and when to look again.

No I/O here; :mod:`kubetune.controller.api_client` observes and executes. Phases::

    Pending -> WaitingForDependencies -> Running -> Exporting -> Succeeded | Failed
    Suspended from any active phase and back

A trainer exit of EXIT_BAD_DATA (65) or EXIT_INVALID_PLAN (78) fails the job at once (reasons
BadData, InvalidPlan), with the trainer's termination message (the file and row) in the
condition: a new attempt would fail the same way.

Restarts are level-based: the pass that sees attempt N's launcher fail moves ``status.attempt``
to N+1 and counts the failure in the same status patch (``restarts`` for application failures,
``disruptions`` otherwise), with ``nextAttemptTime`` after the backoff. A later pass creates the
children of attempt N+1 once that time has come. A failure is therefore counted exactly once,
whatever crashes in between: the patch either happened or it did not.

Exporting (only when spec.export asks for formats): once training succeeds, the export stage
runs as its own Job (``<job>-export-a<N>``, N = ``status.exportAttempt``). Its exit code decides:
0 exported (Succeeded, Exported=True); EXIT_GATE_NOT_MET the eval gate was not met (Succeeded,
Exported=False ExportGateNotMet); EXIT_INVALID_PLAN or EXIT_BAD_DATA no retry can help
(Failed); anything else is retried the way training is (``exportRestarts`` against
resume.maxRestarts, disruptions not counted, the same backoff), in a new export Job: a failed
export never retrains. Running and Exporting are one attempt machine (:class:`_Attempts`),
configured twice (``TRAINING``, ``EXPORT``).

Condition types and reasons come from :mod:`kubetune.reasons`; an event that starts a new
attempt records the reason it counts under in kubetune_job_restarts_total (``Event.restart``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from kubetune.api import API_VERSION, KIND, FineTuneJob, Phase, model_dependencies
from kubetune.builders import (
    BuildError,
    ClusterFacts,
    LauncherFailure,
    build_children,
    build_export_job,
    job_failure,
    names,
    rayjob_failure,
)
from kubetune.builders.common import CONTAINER
from kubetune.builders.export_job import EXPORT_CONTAINER
from kubetune.manifest_yaml import Document
from kubetune.planner import UnresolvedDependency, make_plan
from kubetune.reasons import RESTART_REASONS, ConditionType, KubernetesReason, Reason
from kubetune.validation import problems_from_error
from kubetune_trainer.exit_codes import EXIT_BAD_DATA, EXIT_GATE_NOT_MET

Manifest = dict[str, Any]

ACTIVE = (Phase.pending, Phase.waiting_for_dependencies, Phase.running, Phase.exporting)
TERMINAL = (Phase.succeeded, Phase.failed)
LAUNCHER_KINDS = ("Job", "RayJob")
EXPORT_COMPONENT = "export"
"""app.kubernetes.io/component of the export stage's Job (a Job, but not a launcher)."""
TERMINATION_MESSAGE_LIMIT = 1000

# Condition types (the table in kubetune.reasons documents them).
INVALID_SPEC = ConditionType.INVALID_SPEC
DEPENDENCIES_READY = ConditionType.DEPENDENCIES_READY
RUNNING = ConditionType.RUNNING
CHECKPOINTED = ConditionType.CHECKPOINTED
RESUMING = ConditionType.RESUMING
EXPORTED = ConditionType.EXPORTED
SUCCEEDED = ConditionType.SUCCEEDED
FAILED = ConditionType.FAILED
SUSPENDED = ConditionType.SUSPENDED
PODS_READY = ConditionType.PODS_READY


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Child:
    """One object labelled as a child of the job, as observed."""

    api_version: str
    kind: str
    name: str
    attempt: int | None
    finished: bool = False
    """For launchers and export Jobs: the Job/RayJob has succeeded or failed."""
    component: str | None = None
    """Its app.kubernetes.io/component label (``export`` for the export stage's Jobs)."""

    @property
    def is_launcher(self) -> bool:
        return self.kind in LAUNCHER_KINDS and self.component != EXPORT_COMPONENT

    @property
    def is_exporter(self) -> bool:
        return self.kind == "Job" and self.component == EXPORT_COMPONENT


@dataclass(frozen=True)
class Observed:
    """What the handler saw, besides the job itself."""

    launcher: Manifest | None = None
    """The launcher (Job or RayJob) of the attempt in status.attempt, when it exists."""
    children: tuple[Child, ...] = ()
    """Every object labelled kubetune.io/job=<name> that the handler lists."""
    exporter: Manifest | None = None
    """The export Job of the export attempt in status.exportAttempt, when it exists."""
    export_pods: tuple[Manifest, ...] = ()
    """The exporter's pods once it has failed (their termination messages say why)."""
    launcher_pods: tuple[Manifest, ...] = ()
    """The launcher's pods: its trainer pods once it has failed (their termination message
    says why: bad data names the file and row), or, while it runs, its pods when they have not
    all run within the grace (:func:`pods_to_explain`)."""
    launcher_events: tuple[Manifest, ...] = ()
    """The launcher Job's events, read with its pods when it has none (FailedCreate says why)."""
    dependencies: dict[str, Manifest | None] = field(default_factory=dict)
    """finetunejob:// dependencies by name: the FineTuneJob object, or None when absent."""


@dataclass(frozen=True)
class Settings:
    facts: ClusterFacts
    default_storage: str = "./runs"
    dependency_poll_seconds: float = 10.0
    """How often a job waiting for dependencies looks again (the handler also nudges waiting
    jobs when a job succeeds)."""
    pods_grace_seconds: float = 30.0
    """How long a launcher's pods may take to run before PodsReady says why they do not."""


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Create:
    manifests: list[Manifest]


@dataclass(frozen=True)
class Delete:
    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: Reason
    message: str
    restart: Reason | None = None
    """When this event starts a new attempt after a failed or suspended one: the reason it
    counts under in kubetune_job_restarts_total (one of reasons.RESTART_REASONS)."""


Action = Create | Delete | Event


@dataclass
class Decision:
    status_patch: dict[str, Any] = field(default_factory=dict)
    """Merge patch of status (camelCase; the operator's fields only, never progress or
    lastCheckpoint)."""
    actions: list[Action] = field(default_factory=list)
    """Executed in order: creations and deletions, then the status patch, then events."""
    requeue_after: float | None = None
    """Seconds until the job should be looked at again regardless of events."""
    recheck_pods_after: float | None = None
    """Seconds until the job should be looked at again *unless* its launcher's pods all run by
    then (the launcher's own events tell the handler so, without a request)."""
    pods_expected: int = 1
    """How many pods that launcher runs: fewer existing is worth a pass (FailedCreate)."""

    @property
    def events(self) -> list[Event]:
        return [a for a in self.actions if isinstance(a, Event)]

    @property
    def creates(self) -> list[Create]:
        return [a for a in self.actions if isinstance(a, Create)]

    @property
    def deletes(self) -> list[Delete]:
        return [a for a in self.actions if isinstance(a, Delete)]


# --------------------------------------------------------------------------- helpers


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def backoff_seconds(base: int, cap: int, failures: int) -> int:
    """base * 2**(failures-1), capped: the delay before the attempt after the Nth failure."""
    if failures < 1 or base == 0:
        return 0
    return min(cap, base * 2 ** min(failures - 1, 32))


LauncherState = Literal["running", "succeeded", "failed"]


def launcher_state(launcher: Manifest) -> tuple[LauncherState, LauncherFailure | None]:
    """Whether a Job or RayJob launcher runs, succeeded or failed (and how)."""
    if launcher.get("kind") == "RayJob":
        failure = rayjob_failure(launcher)
        if failure is not None:
            return "failed", failure
        status = launcher.get("status") or {}
        if status.get("jobStatus") == "SUCCEEDED" or status.get("jobDeploymentStatus") == (
            "Complete"
        ):
            return "succeeded", None
        return "running", None
    failure = job_failure(launcher)
    if failure is not None:
        return "failed", failure
    for cond in (launcher.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "SuccessCriteriaMet") and cond.get("status") == "True":
            return "succeeded", None
    return "running", None


def expected_pods(launcher: Manifest) -> int:
    """How many pods a Job launcher runs at once (its spec.parallelism)."""
    return int((launcher.get("spec") or {}).get("parallelism") or 1)


def pods_ready(launcher: Manifest) -> bool | None:
    """Whether every pod of a Job launcher runs and is ready (or already finished): its
    status.ready + status.succeeded reach spec.parallelism. None for a RayJob (KubeRay's pods)
    and for a suspended Job."""
    if launcher.get("kind") != "Job":
        return None
    if (launcher.get("spec") or {}).get("suspend"):
        return None  # held (by Kueue, until admitted): no pod is meant to run yet
    status = launcher.get("status") or {}
    return int(status.get("ready") or 0) + int(status.get("succeeded") or 0) >= expected_pods(
        launcher
    )


LauncherSignal = tuple[LauncherState, bool | str | None]
"""What the lifecycle reads of a launcher: its state, and for a Job whether its pods run, for a
RayJob KubeRay's jobDeploymentStatus. A launcher event that changes neither needs no pass."""


def launcher_signal(launcher: Manifest) -> LauncherSignal:
    state = launcher_state(launcher)[0]
    if launcher.get("kind") == "RayJob":
        return state, (launcher.get("status") or {}).get("jobDeploymentStatus")
    return state, pods_ready(launcher)


def signal_needs_pass(old: LauncherSignal, new: LauncherSignal, pods_flagged: bool) -> bool:
    """Whether a launcher's event asks for a pass of its job: its state changed; or KubeRay's
    progress did (the Running condition follows it); or its pods now run, or no longer do,
    for a job whose PodsReady is False (a Job's pods starting is otherwise no news)."""
    if old[0] != new[0]:
        return True
    if isinstance(old[1], str) or isinstance(new[1], str):
        return old[1] != new[1]
    return pods_flagged and old[1] != new[1]


def _age_seconds(obj: Manifest, now: datetime) -> float:
    created = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    return (now - created).total_seconds() if created is not None else 0.0


def pods_to_explain(launcher: Manifest | None, now: datetime, grace: float) -> bool:
    """Whether a pass must read the launcher's pods (and events): it runs, but its pods have
    not all run ``grace`` seconds after it was created."""
    if launcher is None or launcher_state(launcher)[0] != "running":
        return False
    return pods_ready(launcher) is False and _age_seconds(launcher, now) >= grace


PATIENCE_GRACES = 10
"""A pending pod nobody has said anything about (the scheduler has not looked at it yet) is
reported after this many graces: a busy scheduler is no problem, one that never comes is."""


def live_pods(pods: tuple[Manifest, ...] | list[Manifest]) -> list[Manifest]:
    return [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]


def pods_word(
    pods: tuple[Manifest, ...] | list[Manifest], now: datetime, patience: float
) -> tuple[Reason, str] | None:
    """What whoever knows says of a launcher's pending pods: the scheduler (a PodScheduled
    condition that is False), the kubelet (a waiting container's reason), or, after
    ``patience`` seconds, the silence itself. None while no pending pod has a word: pods wait
    in a busy scheduler's queue without one, and that is no problem worth a condition."""
    silent: Manifest | None = None
    for pod in sorted(live_pods(pods), key=lambda p: p["metadata"]["name"]):
        status = pod.get("status") or {}
        if status.get("phase") != "Pending":
            continue
        name = pod["metadata"]["name"]
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                why = cond.get("message") or cond.get("reason") or "not scheduled"
                if cond.get("reason") == KubernetesReason.UNSCHEDULABLE:
                    return Reason.UNSCHEDULABLE, f"pod {name}: {why}"
                return Reason.PODS_PENDING, f"pod {name}: {why}"
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting")
            if waiting:
                detail = ": ".join(x for x in (waiting.get("reason"), waiting.get("message")) if x)
                return Reason.PODS_PENDING, f"pod {name}: {detail or 'waiting'}"
        if silent is None and _age_seconds(pod, now) >= patience:
            silent = pod
    if silent is not None:
        waited = int(_age_seconds(silent, now))
        scheduler = (silent.get("spec") or {}).get("schedulerName") or "default-scheduler"
        text = f"pod {silent['metadata']['name']}: Pending for {waited}s, {scheduler} said nothing"
        return Reason.PODS_PENDING, text
    return None


def pods_started(pods: tuple[Manifest, ...] | list[Manifest], expected: int) -> bool:
    """Whether every pod of a launcher exists and none is Pending (running or finished)."""
    live = live_pods(pods)
    pending = [p for p in live if (p.get("status") or {}).get("phase", "Pending") == "Pending"]
    return len(live) >= expected and not pending


def pods_need_pass(
    pods: tuple[Manifest, ...] | list[Manifest],
    events: tuple[Manifest, ...] | list[Manifest],
    expected: int,
    now: datetime,
    patience: float,
) -> bool:
    """Whether a look at a launcher's pods (and, when some are missing, its events) found
    something a pass would report: a word on a pending pod, or the Job controller's word on
    the pods it cannot create. Missing pods alone are no word: the Job controller may not have
    got to them yet."""
    if pods_word(pods, now, patience) is not None:
        return True
    failed = any(e.get("reason") == KubernetesReason.FAILED_CREATE for e in events)
    return failed and len(live_pods(pods)) < expected


def pods_problem(
    launcher: Manifest,
    pods: tuple[Manifest, ...],
    events: tuple[Manifest, ...],
    now: datetime,
    patience: float,
) -> tuple[Reason, str] | None:
    """Why a launcher's pods do not run, in the words of who knows: :func:`pods_word` for
    the pods that exist; for pods that do not, the Job controller (its latest FailedCreate
    event) or, after ``patience`` seconds, the count of those missing. None: no word yet."""
    word = pods_word(pods, now, patience)
    if word is not None:
        return word
    expected = expected_pods(launcher)
    missing = expected - len(live_pods(pods))
    if missing <= 0:
        return None
    failed = [e for e in events if e.get("reason") == KubernetesReason.FAILED_CREATE]
    if failed:
        latest = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return Reason.FAILED_CREATE, str(latest.get("message") or "pods cannot be created")
    waited = _age_seconds(launcher, now)
    if waited >= patience:
        return Reason.PODS_PENDING, f"{missing} of {expected} pods not created after {int(waited)}s"
    return None


Reads = Literal["none", "jobs", "all"]


def reads(job: Manifest) -> Reads:
    """Which of a job's children its next pass can depend on: none before its first attempt
    (nothing of it exists yet; a crash that left some is settled by create-or-adopt), every kind
    when it is Suspended (an attempt whose launcher the suspension deleted is known by the rest)
    or finished (the TTL deletes them all), else its Jobs (launchers and export Jobs)."""
    status = job.get("status") or {}
    phase = status.get("phase")
    fresh = (None, Phase.pending.value, Phase.waiting_for_dependencies.value)
    if phase in fresh and not int(status.get("attempt") or 0):
        return "none"
    if phase in (Phase.suspended.value, Phase.succeeded.value, Phase.failed.value):
        return "all"
    return "jobs"


def spec_problems(job: Manifest) -> list[str]:
    """``field.path: message`` for everything the schema rejects that the CRD let through."""
    data = {k: job[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in job}
    try:
        FineTuneJob.model_validate(data)
    except ValidationError as err:
        doc = Document(file="", index=0, data=data, node=None)
        return [
            f"{p.path}: {p.message}" if p.path else p.message for p in problems_from_error(doc, err)
        ]
    return []


class _Pass:
    """The state of one reconcile pass: the job, its status, and what is being decided."""

    def __init__(self, job: Manifest, world: Observed, now: datetime, settings: Settings) -> None:
        self.raw = job
        self.world = world
        self.now = now
        self.settings = settings
        self.status: dict[str, Any] = dict(job.get("status") or {})
        self.meta: dict[str, Any] = job.get("metadata") or {}
        self.name: str = self.meta.get("name", "")
        self.generation: int | None = self.meta.get("generation")
        self.decision = Decision()
        self._conditions: list[dict[str, Any]] = [
            dict(c) for c in self.status.get("conditions") or []
        ]
        self._conditions_changed = False
        self._model: FineTuneJob | None = None
        self._transition_event: Event | None = None

    # -- reading -----------------------------------------------------------------------------

    @property
    def model(self) -> FineTuneJob:
        if self._model is None:
            data = {k: self.raw[k] for k in ("apiVersion", "kind", "metadata", "spec")}
            self._model = FineTuneJob.model_validate(data)
        return self._model

    @property
    def phase(self) -> Phase | None:
        value = self.status.get("phase")
        return Phase(value) if value in {p.value for p in Phase} else None

    @property
    def attempt(self) -> int:
        return int(self.status.get("attempt") or 0)

    @property
    def export_attempt(self) -> int:
        return int(self.status.get("exportAttempt") or 0)

    def condition(self, type_: str) -> dict[str, Any] | None:
        return next((c for c in self._conditions if c.get("type") == type_), None)

    # -- writing -----------------------------------------------------------------------------

    def set(self, **fields: Any) -> None:
        for key, value in fields.items():
            if self.status.get(key) != value:
                self.status[key] = value
                self.decision.status_patch[key] = value

    def set_condition(
        self, type_: ConditionType, status: bool, reason: Reason, message: str = ""
    ) -> None:
        value = "True" if status else "False"
        old = self.condition(type_)
        new = {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": rfc3339(self.now),
            "observedGeneration": self.generation,
        }
        if old is not None:
            if (old.get("status"), old.get("reason"), old.get("message")) == (
                value,
                reason,
                message,
            ) and old.get("observedGeneration") == self.generation:
                return
            if old.get("status") == value:
                new["lastTransitionTime"] = old.get("lastTransitionTime", new["lastTransitionTime"])
            self._conditions[self._conditions.index(old)] = new
        else:
            self._conditions.append(new)
        self._conditions_changed = True

    def clear_condition(self, type_: ConditionType, reason: Reason, message: str = "") -> None:
        """Turn a condition False if it is present and True (absent stays absent)."""
        old = self.condition(type_)
        if old is not None and old.get("status") == "True":
            self.set_condition(type_, False, reason, message)

    def event(
        self, reason: Reason, message: str, warning: bool = False, restart: Reason | None = None
    ) -> None:
        kind: Literal["Normal", "Warning"] = "Warning" if warning else "Normal"
        self.decision.actions.append(Event(kind, reason, message, restart))

    def transition(
        self,
        phase: Phase,
        reason: Reason,
        message: str,
        warning: bool = False,
        restart: Reason | None = None,
    ) -> None:
        """Enter ``phase``: one event per phase change, with the reason for the change. A pass
        that moves twice (Pending, then Running at once) says only where it ended: the status
        never showed the phase in between."""
        if self.phase == phase:
            return
        self.set(phase=phase.value)
        earlier = self._transition_event
        if earlier is not None:
            actions = self.decision.actions
            actions.pop(next(i for i, a in enumerate(actions) if a is earlier))
            restart = restart or earlier.restart
        kind: Literal["Normal", "Warning"] = "Warning" if warning else "Normal"
        self._transition_event = Event(kind, reason, f"{phase.value}: {message}", restart)
        self.decision.actions.append(self._transition_event)

    def requeue(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        current = self.decision.requeue_after
        self.decision.requeue_after = seconds if current is None else min(current, seconds)

    def recheck_pods(self, seconds: float, expected: int) -> None:
        self.decision.recheck_pods_after = max(0.0, seconds)
        self.decision.pods_expected = expected

    def finish(self) -> Decision:
        if self._conditions_changed:
            self.decision.status_patch["conditions"] = self._conditions
        if self.generation is not None and self.status.get("observedGeneration") != self.generation:
            self.decision.status_patch["observedGeneration"] = self.generation
        return self.decision

    # -- children ----------------------------------------------------------------------------

    def launchers(self) -> list[Child]:
        return [c for c in self.world.children if c.is_launcher]

    def delete_launchers(self, keep_attempt: int | None = None, keep_finished: bool = True) -> None:
        """Delete the launchers of every attempt but keep_attempt; finished launchers are kept
        for inspection unless keep_finished is False."""
        for child in self.world.children:
            if not child.is_launcher or child.attempt is None:
                continue
            if child.attempt == keep_attempt or (keep_finished and child.finished):
                continue
            self.decision.actions.append(Delete(child.api_version, child.kind, child.name))

    def delete_exporters(self, keep: int | None = None, keep_finished: bool = True) -> None:
        """Delete the export Jobs of every export attempt but keep (finished ones are kept for
        inspection unless keep_finished is False)."""
        kept = names.export_job_name(self.name, keep) if keep else None
        for child in self.world.children:
            if not child.is_exporter or child.name == kept or (keep_finished and child.finished):
                continue
            self.decision.actions.append(Delete(child.api_version, child.kind, child.name))

    def resolve_output(self, name: str) -> str | None:
        dep = self.world.dependencies.get(name)
        if not dep:
            return None
        status = dep.get("status") or {}
        if status.get("phase") != Phase.succeeded.value:
            return None
        return status.get("output")

    def children_for(self, attempt: int) -> list[Manifest]:
        plan = make_plan(
            self.model,
            attempt=attempt,
            default_storage=self.settings.default_storage,
            resolve_job_output=self.resolve_output,
        )
        return build_children(self.model, plan, self.settings.facts)

    def output_uri(self) -> str:
        plan = make_plan(
            self.model,
            attempt=max(self.attempt, 1),
            default_storage=self.settings.default_storage,
            resolve_job_output=self.resolve_output,
        )
        return plan.storage.output_dir

    def export_job_for(self, export_attempt: int) -> Manifest:
        """The export Job exporting what training attempt status.attempt produced."""
        try:
            resolver = self.resolve_output
            plan = make_plan(
                self.model,
                attempt=max(self.attempt, 1),
                default_storage=self.settings.default_storage,
                resolve_job_output=resolver,
            )
        except UnresolvedDependency:
            # An input job deleted since training (its TTL): the mounted plan ConfigMap still
            # holds the resolved plan; this one only decides mounts and secrets.
            plan = make_plan(
                self.model,
                attempt=max(self.attempt, 1),
                default_storage=self.settings.default_storage,
            )
        return build_export_job(self.model, plan, self.settings.facts, export_attempt)


# --------------------------------------------------------------------------- the switch


def reconcile(job: Manifest, world: Observed, now: datetime, settings: Settings) -> Decision:
    """One step of the lifecycle. Pure: everything it knows arrives as arguments."""
    p = _Pass(job, world, now, settings)
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return p.decision  # the garbage collector removes the children (ownerReferences)

    phase = p.phase
    if phase in TERMINAL:
        _terminal(p)
        return p.finish()

    problems = spec_problems(job)
    if problems:
        _invalid(p, problems)
        return p.finish()
    p.clear_condition(INVALID_SPEC, Reason.VALID, "the spec is valid")

    if phase is None:
        p.transition(Phase.pending, Reason.ACCEPTED, "the job was accepted")
        phase = Phase.pending

    match phase:
        case Phase.pending | Phase.waiting_for_dependencies:
            _start(p)
        case Phase.running:
            TRAINING.step(p)
        case Phase.exporting:
            EXPORT.step(p)
        case Phase.suspended:
            _suspended(p)
    return p.finish()


def _invalid(p: _Pass, problems: list[str]) -> None:
    message = "; ".join(problems)
    p.set_condition(INVALID_SPEC, True, Reason.INVALID_SPEC, message)
    p.set_condition(FAILED, True, Reason.INVALID_SPEC, message)
    p.delete_launchers(keep_finished=False)
    p.delete_exporters(keep_finished=False)
    p.set(completionTime=p.status.get("completionTime") or rfc3339(p.now))
    p.transition(Phase.failed, Reason.INVALID_SPEC, message, warning=True)


def _deadline_passed(p: _Pass) -> bool:
    deadline = p.model.spec.active_deadline_seconds
    start = parse_time(p.status.get("startTime"))
    if deadline is None or start is None:
        return False
    left = (start + timedelta(seconds=deadline) - p.now).total_seconds()
    if left <= 0:
        return True
    p.requeue(left)
    return False


def _fail(p: _Pass, reason: Reason, message: str) -> None:
    p.set_condition(FAILED, True, reason, message)
    p.set_condition(RUNNING, False, reason, message)
    p.clear_condition(RESUMING, reason, message)
    p.set(completionTime=rfc3339(p.now), nextAttemptTime=None)
    p.transition(Phase.failed, reason, message, warning=True)


def _start(p: _Pass) -> None:
    """Pending / WaitingForDependencies: wait for finetunejob:// inputs, then attempt 1 (or the
    attempt after a suspension)."""
    if p.model.spec.runtime.suspend:
        _suspend(p)
        return
    waiting = []
    for path, dep in model_dependencies(p.model.spec):
        field_path = "spec." + ".".join(path)
        obj = p.world.dependencies.get(dep)
        if obj is None:
            waiting.append(f"{field_path}: job '{dep}' does not exist")
            continue
        dep_phase = (obj.get("status") or {}).get("phase") or "Pending"
        if dep_phase != Phase.succeeded.value:
            waiting.append(f"{field_path}: job '{dep}' is {dep_phase}")
    if waiting:
        message = "; ".join(waiting)
        p.set_condition(DEPENDENCIES_READY, False, Reason.WAITING_FOR_JOBS, message)
        p.transition(Phase.waiting_for_dependencies, Reason.WAITING_FOR_DEPENDENCIES, message)
        p.requeue(p.settings.dependency_poll_seconds)
        return
    if model_dependencies(p.model.spec):
        p.set_condition(
            DEPENDENCIES_READY, True, Reason.JOBS_SUCCEEDED, "every input job succeeded"
        )
    _launch(p, max(p.attempt, 1), Reason.LAUNCHED, "attempt {attempt} launched")


def _launch(
    p: _Pass, attempt: int, reason: Reason, message: str, *, restart: Reason | None = None
) -> None:
    """Create attempt's children (create-or-adopt by name) and enter Running."""
    try:
        children = p.children_for(attempt)
    except BuildError as err:
        _fail(p, Reason.BUILD_FAILED, str(err))
        return
    except UnresolvedDependency as err:
        p.set_condition(DEPENDENCIES_READY, False, Reason.OUTPUT_MISSING, str(err))
        p.transition(Phase.waiting_for_dependencies, Reason.WAITING_FOR_DEPENDENCIES, str(err))
        p.requeue(p.settings.dependency_poll_seconds)
        return
    text = message.format(attempt=attempt)
    checkpoint = p.status.get("lastCheckpoint") or {}
    if attempt > 1 and checkpoint.get("uri"):
        text += f", resuming from step {checkpoint.get('step')} ({checkpoint['uri']})"
    p.decision.actions.append(Create(children))
    p.delete_launchers(keep_attempt=attempt)
    p.set(attempt=attempt, nextAttemptTime=None)
    if not p.status.get("startTime"):
        p.set(startTime=rfc3339(p.now))
    p.set_condition(RUNNING, True, reason, text)
    p.clear_condition(SUSPENDED, Reason.RESUMED, text)
    if p.phase == Phase.running:  # a later attempt: no phase change, still worth an event
        p.event(reason, text, restart=restart)
    else:
        p.transition(Phase.running, reason, text, restart=restart)
    jobs = [m for m in children if m["kind"] == "Job"]
    if jobs:  # a RayJob's pods are KubeRay's: its progress comes with the RayJob's events
        p.recheck_pods(p.settings.pods_grace_seconds, expected_pods(jobs[0]))
    _deadline_passed(p)  # only to requeue at the deadline


def _suspend(p: _Pass) -> None:
    """Suspended from any active phase: no launcher or export Job runs (finished ones are
    kept)."""
    p.delete_launchers(keep_finished=True)
    p.delete_exporters(keep_finished=True)
    p.set(nextAttemptTime=None)
    p.set_condition(SUSPENDED, True, Reason.SUSPENDED, "spec.runtime.suspend is true")
    p.clear_condition(RUNNING, Reason.SUSPENDED, "spec.runtime.suspend is true")
    p.transition(Phase.suspended, Reason.SUSPENDED, "spec.runtime.suspend is true")


def _suspended(p: _Pass) -> None:
    if p.model.spec.runtime.suspend:
        _suspend(p)  # level: keep launchers gone
        return
    if p.attempt == 0:
        p.set_condition(SUSPENDED, False, Reason.RESUMED, "spec.runtime.suspend is false")
        p.transition(Phase.pending, Reason.RESUMED, "spec.runtime.suspend is false")
        _start(p)
        return
    if p.export_attempt:
        # Training had succeeded (status.exportAttempt is set only then): export again.
        _launch_export(
            p,
            _next_export_attempt(p),
            Reason.EXPORT_RESUMED,
            "export attempt {attempt} launched after suspension",
        )
        return
    # An attempt whose children were made (its launcher deleted by the suspension) is not
    # reused: resume in a new one. An attempt still waiting for its backoff was never made.
    made = any(c.attempt == p.attempt for c in p.world.children)
    attempt = p.attempt + 1 if made else p.attempt
    p.set_condition(RESUMING, True, Reason.UNSUSPENDED, f"attempt {attempt} after suspension")
    _launch(
        p,
        attempt,
        Reason.RESUMED,
        "attempt {attempt} launched after suspension",
        restart=Reason.UNSUSPENDED,
    )


def _checkpoint_message(checkpoint: dict[str, Any]) -> str:
    return f"step {checkpoint.get('step')} at {checkpoint['uri']}"


def _checkpointed(p: _Pass) -> None:
    checkpoint = p.status.get("lastCheckpoint") or {}
    if checkpoint.get("uri"):
        p.set_condition(
            CHECKPOINTED, True, Reason.CHECKPOINT_SAVED, _checkpoint_message(checkpoint)
        )


def status_wants_pass(job: Manifest) -> bool:
    """Whether a change to a running job's status made by someone else (the trainer) asks for a
    pass: a checkpoint the Checkpointed condition does not name yet. Other status changes
    (progress, metrics) do not; the operator's own patches never do."""
    status = job.get("status") or {}
    checkpoint = status.get("lastCheckpoint") or {}
    if status.get("phase") != Phase.running.value or not checkpoint.get("uri"):
        return False
    conditions = status.get("conditions") or []
    said = next((c for c in conditions if c.get("type") == CHECKPOINTED), None)
    return said is None or said.get("message") != _checkpoint_message(checkpoint)


def pods_flagged(job: Manifest) -> bool:
    """Whether the job says its pods do not run (PodsReady False): the launcher event that
    tells they run now asks for a pass."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") == PODS_READY and c.get("status") == "False" for c in conditions)


def _failure_text(failure: LauncherFailure) -> str:
    code = f", exit code {failure.exit_code}" if failure.exit_code is not None else ""
    detail = f": {failure.message}" if failure.message else ""
    return f"{failure.kind} failure ({failure.reason}{code}){detail}"


def _export_formats(p: _Pass) -> list[str]:
    export = p.model.spec.export
    return list(export.formats) if export is not None else []


EVALUATION_HEADLINE_CHARS = 1024


def _evaluation_headline(status: dict[str, Any]) -> str:
    """An eval job's summary (reported by the trainer in status.evaluation) for the Succeeded
    condition: one clause per metric, e.g. '; dpo vs baseline base: exact_match: 0.81 ...'."""
    summary = (status.get("evaluation") or {}).get("summary") or ""
    lines = [line.strip() for line in summary.splitlines() if line.strip()]
    if not lines:
        return ""
    head = lines[0].removeprefix("Model: ")
    text = f"; {head}: " + "; ".join(lines[1:])
    if len(text) > EVALUATION_HEADLINE_CHARS:
        text = text[: EVALUATION_HEADLINE_CHARS - 1] + "…"
    return text


def _trained(p: _Pass) -> None:
    """Training succeeded: the job succeeds, or exports first when spec.export asks for it."""
    formats = _export_formats(p)
    if not formats:
        _succeed(p, f"attempt {p.attempt} succeeded" + _evaluation_headline(p.status))
        return
    message = f"attempt {p.attempt} succeeded; exporting {', '.join(formats)}"
    p.set(output=p.output_uri())
    p.set_condition(RUNNING, False, Reason.TRAINING_SUCCEEDED, message)
    p.clear_condition(RESUMING, Reason.TRAINING_SUCCEEDED, message)
    p.event(Reason.TRAINING_SUCCEEDED, message)
    _launch_export(
        p, _next_export_attempt(p), Reason.EXPORT_LAUNCHED, "export attempt {attempt} launched"
    )


def _next_export_attempt(p: _Pass) -> int:
    """The export attempt to launch: the current one unless its Job was made already (then
    deleted by a suspension, or finished): a name is never reused."""
    current = p.export_attempt
    if current == 0:
        return 1
    made = names.export_job_name(p.name, current)
    return current + 1 if any(c.name == made for c in p.world.children) else current


def _launch_export(p: _Pass, export_attempt: int, reason: Reason, message: str) -> None:
    """Create the export Job of export_attempt (create-or-adopt by name), enter Exporting."""
    try:
        manifest = p.export_job_for(export_attempt)
    except BuildError as err:
        p.set_condition(EXPORTED, False, Reason.BUILD_FAILED, str(err))
        _fail(p, Reason.BUILD_FAILED, str(err))
        return
    text = message.format(attempt=export_attempt)
    p.decision.actions.append(Create([manifest]))
    p.delete_exporters(keep=export_attempt)
    p.set(exportAttempt=export_attempt, nextAttemptTime=None)
    p.set_condition(EXPORTED, False, Reason.EXPORT_RUNNING, text)
    p.clear_condition(SUSPENDED, Reason.RESUMED, text)
    if p.phase == Phase.exporting:
        p.event(reason, text)
    else:
        p.transition(Phase.exporting, reason, text)
    _deadline_passed(p)  # only to requeue at the deadline


def _termination_message(
    pods: tuple[Manifest, ...], container: str, exit_code: int | None = None
) -> str:
    """What the container said when it stopped (its termination message, else the tail of its
    log on an error: terminationMessagePolicy FallbackToLogsOnError). Among several pods, the
    one that exited with exit_code (the one that failed the Job) speaks first."""
    said: list[tuple[bool, str]] = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != container:
                continue
            terminated = (status.get("state") or {}).get("terminated") or {}
            message = " ".join(str(terminated.get("message") or "").split())
            if message:
                said.append((terminated.get("exitCode") == exit_code, message))
    said.sort(key=lambda entry: not entry[0])
    return said[0][1][-TERMINATION_MESSAGE_LIMIT:] if said else ""


def _artifact_summary(artifacts: list[dict[str, Any]]) -> str:
    formats = ", ".join(str(a.get("format")) for a in artifacts)
    verified = sum(1 for a in artifacts if a.get("verified"))
    return f"{len(artifacts)} artifact(s) ({formats}), {verified} verified"


def _exported(p: _Pass) -> None:
    n = p.export_attempt
    artifacts = p.status.get("artifacts") or []
    if artifacts:
        text = f"export attempt {n} succeeded: {_artifact_summary(artifacts)}"
    else:
        text = f"export attempt {n} succeeded but reported no artifacts in status.artifacts"
        p.event(Reason.NO_ARTIFACTS_REPORTED, text, warning=True)
    p.set_condition(EXPORTED, True, Reason.EXPORTED, text)
    p.event(Reason.EXPORTED, text)
    _succeed(p, text, reason=Reason.EXPORTED)


def _gate_not_met(p: _Pass, detail: str) -> None:
    gate = p.model.spec.export.gate if p.model.spec.export else None
    if not detail and gate is not None:
        bounds = [f"{op} {v}" for op, v in ((">=", gate.min), ("<=", gate.max)) if v is not None]
        detail = f"spec.export.gate asks for {gate.metric} {' and '.join(bounds)}"
    text = f"the export gate was not met, nothing was exported: {detail or 'no detail given'}"
    p.set_condition(EXPORTED, False, Reason.EXPORT_GATE_NOT_MET, text)
    p.event(Reason.EXPORT_GATE_NOT_MET, text)
    _succeed(p, f"training succeeded; {text}", reason=Reason.EXPORT_GATE_NOT_MET)


def _succeed(p: _Pass, message: str, reason: Reason = Reason.TRAINING_SUCCEEDED) -> None:
    p.set(output=p.output_uri(), completionTime=rfc3339(p.now), nextAttemptTime=None)
    p.set_condition(SUCCEEDED, True, reason, message)
    p.set_condition(RUNNING, False, Reason.COMPLETED, message)
    p.clear_condition(RESUMING, Reason.COMPLETED, message)
    p.transition(Phase.succeeded, Reason.SUCCEEDED, message)
    _ttl(p)


def _terminal(p: _Pass) -> None:
    """Succeeded / Failed: nothing runs; ttlSecondsAfterFinished deletes children, then the
    job. A Failed InvalidSpec job whose spec changed is looked at again."""
    invalid = p.condition(INVALID_SPEC)
    if (
        p.phase == Phase.failed
        and invalid is not None
        and invalid.get("status") == "True"
        and invalid.get("observedGeneration") != p.generation
        and not spec_problems(p.raw)
    ):
        p.set_condition(INVALID_SPEC, False, Reason.VALID, "the spec was corrected")
        p.set_condition(FAILED, False, Reason.VALID, "the spec was corrected")
        p.set(completionTime=None)
        p.transition(Phase.pending, Reason.SPEC_CORRECTED, "the spec was corrected")
        _start(p)
        return
    p.delete_launchers(keep_finished=True)
    p.delete_exporters(keep_finished=True)
    _ttl(p)


def _ttl(p: _Pass) -> None:
    ttl = (p.raw.get("spec") or {}).get("ttlSecondsAfterFinished")
    done = parse_time(p.status.get("completionTime"))
    if ttl is None or done is None:
        return
    left = (done + timedelta(seconds=int(ttl)) - p.now).total_seconds()
    if left > 0:
        p.requeue(left)
        return
    p.decision.actions += [Delete(c.api_version, c.kind, c.name) for c in p.world.children]
    p.decision.actions.append(Delete(API_VERSION, KIND, p.name))
    p.event(Reason.TTL_EXPIRED, f"deleting the job {ttl}s after it finished")


# --------------------------------------------------------------------------- attempts


class _Attempts:
    """One machine for the two phases that run numbered attempts of a child until one
    succeeds: training (phase Running; the launcher of status.attempt) and the export stage
    (phase Exporting; the export Job of status.exportAttempt). Per pass::

        suspended          -> Suspended
        deadline passed    -> Failed (DeadlineExceeded)
        child absent       -> wait out nextAttemptTime, then create it
        child running      -> say so
        child succeeded    -> the phase's next step
        child failed       -> Failed when no retry can help or resume.maxRestarts is used up;
                              else the next attempt after the backoff, the failure counted once
                              (the phase's restarts field, or disruptions)

    The subclasses supply the status fields, the reasons, the messages and the hooks.
    """

    noun: str
    """How messages name an attempt ("attempt 2", "export attempt 2")."""
    attempt_field: str
    restarts_field: str
    """The status field counting this phase's failures against resume.maxRestarts."""
    launched: Reason
    relaunched: Reason
    failure: Reason
    disruption: Reason
    refused: Reason
    """Failed's reason when the child refused the plan (exit code 78)."""
    refused_note: str
    exhausted: Reason
    """Failed's reason when resume.maxRestarts is used up."""
    gave_up: Reason
    """The reason on the phase's own condition when a failure is final."""
    retry_note: str
    """What the next attempt starts from (for the message)."""
    deadline_is_final: bool
    """A child stopped by its own deadline fails the job (else it is retried)."""

    def attempt(self, p: _Pass) -> int:
        return int(p.status.get(self.attempt_field) or 0)

    # -- hooks -------------------------------------------------------------------------------

    def child(self, p: _Pass) -> Manifest | None:
        raise NotImplementedError

    def launch(self, p: _Pass, attempt: int, reason: Reason, message: str) -> None:
        raise NotImplementedError

    def delete_children(self, p: _Pass) -> None:
        raise NotImplementedError

    def settled_before(self, p: _Pass) -> bool:
        """Checks before the child's state is read; True when they decided the pass."""
        return False

    def running(self, p: _Pass, attempt: int) -> None:
        raise NotImplementedError

    def succeeded(self, p: _Pass) -> None:
        raise NotImplementedError

    def settled_failure(self, p: _Pass, failure: LauncherFailure) -> bool:
        """A failure exit that is not a failure (the export gate); True when handled."""
        return False

    def failure_detail(self, p: _Pass, failure: LauncherFailure) -> str:
        return ""

    def mark_retry(self, p: _Pass, reason: Reason, message: str) -> None:
        raise NotImplementedError

    def mark_final(self, p: _Pass, reason: Reason, message: str) -> None:
        """The phase's own condition when the job fails in this phase."""

    # -- the machine -------------------------------------------------------------------------

    def step(self, p: _Pass) -> None:
        spec = p.model.spec
        if spec.runtime.suspend:
            _suspend(p)
            return
        if _deadline_passed(p):
            self.delete_children(p)  # every attempt's, the current one included
            message = (
                f"the job was active longer than spec.activeDeadlineSeconds "
                f"({spec.active_deadline_seconds}s)"
            )
            self.mark_final(p, Reason.DEADLINE_EXCEEDED, message)
            _fail(p, Reason.DEADLINE_EXCEEDED, message)
            return
        if self.settled_before(p):
            return

        attempt = self.attempt(p)
        child = self.child(p)
        if child is None:
            pending = parse_time(p.status.get("nextAttemptTime"))
            if pending is not None and pending > p.now:
                p.requeue((pending - p.now).total_seconds())
                return
            # After the backoff, or a crash between the decision and the creation.
            reason = self.relaunched if attempt > 1 else self.launched
            self.launch(p, max(attempt, 1), reason, f"{self.noun} {{attempt}} launched")
            return

        state, failure = launcher_state(child)
        if state == "running":
            self.running(p, attempt)
        elif state == "succeeded":
            self.succeeded(p)
        else:
            assert failure is not None
            self.failed(p, failure)

    def failed(self, p: _Pass, failure: LauncherFailure) -> None:
        if self.settled_failure(p, failure):
            return
        resume = p.model.spec.resume
        attempt = self.attempt(p)
        detail = self.failure_detail(p, failure)
        text = f"{self.noun} {attempt} failed: {_failure_text(failure)}{detail}"
        if failure.kind == "deadline" and self.deadline_is_final:
            _fail(p, Reason.DEADLINE_EXCEEDED, text)
            return
        if not failure.retryable:
            if failure.exit_code == EXIT_BAD_DATA:
                reason = Reason.BAD_DATA
                text += "; the data cannot be used, a retry cannot help"
            else:
                reason, text = self.refused, text + self.refused_note
            self.mark_final(p, self.gave_up, text)
            _fail(p, reason, text)
            return
        restarts = int(p.status.get(self.restarts_field) or 0)
        disruptions = int(p.status.get("disruptions") or 0)
        if failure.counts_as_restart or failure.kind == "deadline":
            if restarts >= resume.max_restarts:
                text += f"; resume.maxRestarts ({resume.max_restarts}) exhausted"
                self.mark_final(p, self.gave_up, text)
                _fail(p, self.exhausted, text)
                return
            restarts += 1
            reason = self.failure
        else:
            disruptions += 1
            reason = self.disruption
        delay = backoff_seconds(resume.backoff_seconds, resume.max_backoff_seconds, attempt)
        nxt = attempt + 1
        p.set(
            **{self.attempt_field: nxt, self.restarts_field: restarts},
            disruptions=disruptions,
            nextAttemptTime=rfc3339(p.now + timedelta(seconds=delay)),
        )
        message = f"{text}; {self.noun} {nxt} in {delay}s {self.retry_note}"
        self.mark_retry(p, reason, message)
        restart = reason if reason in RESTART_REASONS else None
        p.event(reason, message, warning=True, restart=restart)
        p.requeue(delay)


class _Training(_Attempts):
    noun = "attempt"
    attempt_field = "attempt"
    restarts_field = "restarts"
    launched = Reason.LAUNCHED
    relaunched = Reason.RESUMED
    failure = Reason.APPLICATION_FAILURE
    disruption = Reason.DISRUPTION
    refused = Reason.INVALID_PLAN
    refused_note = "; the trainer refused the plan, a restart cannot help"
    exhausted = Reason.RESTARTS_EXHAUSTED
    gave_up = Reason.RESTARTS_EXHAUSTED
    retry_note = "from the latest checkpoint"
    deadline_is_final = True

    def child(self, p: _Pass) -> Manifest | None:
        return p.world.launcher

    def launch(self, p: _Pass, attempt: int, reason: Reason, message: str) -> None:
        _launch(p, attempt, reason, message)

    def delete_children(self, p: _Pass) -> None:
        p.delete_launchers(keep_finished=True)

    def settled_before(self, p: _Pass) -> bool:
        _checkpointed(p)
        return False

    def running(self, p: _Pass, attempt: int) -> None:
        p.set_condition(RUNNING, True, Reason.RUNNING, f"attempt {attempt} is running")
        p.clear_condition(RESUMING, Reason.RESUMED, f"attempt {attempt} is running")
        _pods(p, attempt)

    def succeeded(self, p: _Pass) -> None:
        _trained(p)

    def failure_detail(self, p: _Pass, failure: LauncherFailure) -> str:
        detail = _termination_message(p.world.launcher_pods, CONTAINER, failure.exit_code)
        return f"; the trainer said: {detail}" if detail else ""

    def mark_retry(self, p: _Pass, reason: Reason, message: str) -> None:
        p.set_condition(RESUMING, True, reason, message)
        p.set_condition(RUNNING, False, reason, message)


def _pods(p: _Pass, attempt: int) -> None:
    """PodsReady: said only when the launcher's pods have not all run within the grace and
    somebody said why (False, in their words), and again once they run (True)."""
    launcher = p.world.launcher
    ready = pods_ready(launcher) if launcher is not None else None
    if launcher is None or ready is None:
        return
    old = p.condition(PODS_READY)
    if ready:
        if old is not None and old.get("status") == "False":
            message = f"attempt {attempt}: every pod runs"
            p.set_condition(PODS_READY, True, Reason.PODS_RUNNING, message)
            p.event(Reason.PODS_RUNNING, message)
        return
    grace = p.settings.pods_grace_seconds
    expected = expected_pods(launcher)
    left = grace - _age_seconds(launcher, p.now)
    if left > 0:
        p.recheck_pods(left, expected)
        return
    pods, events = p.world.launcher_pods, p.world.launcher_events
    problem = pods_problem(launcher, pods, events, p.now, grace * PATIENCE_GRACES)
    # Look again later for a (newer) word; recovery itself comes with the launcher's events.
    p.recheck_pods(grace, expected)
    if problem is None:
        return
    reason, detail = problem
    message = f"attempt {attempt}: {detail}"
    if old is None or old.get("status") != "False" or old.get("reason") != reason:
        p.event(reason, message, warning=True)
    p.set_condition(PODS_READY, False, reason, message)


class _Export(_Attempts):
    noun = "export attempt"
    attempt_field = "exportAttempt"
    restarts_field = "exportRestarts"
    launched = Reason.EXPORT_LAUNCHED
    relaunched = Reason.EXPORT_RETRIED
    failure = Reason.EXPORT_FAILURE
    disruption = Reason.EXPORT_DISRUPTION
    refused = Reason.EXPORT_INVALID_PLAN
    refused_note = "; the export stage refused the plan, a retry cannot help"
    exhausted = Reason.EXPORT_FAILED
    gave_up = Reason.EXPORT_FAILED
    retry_note = "(the trained model is kept)"
    deadline_is_final = False

    def child(self, p: _Pass) -> Manifest | None:
        return p.world.exporter

    def launch(self, p: _Pass, attempt: int, reason: Reason, message: str) -> None:
        _launch_export(p, attempt, reason, message)

    def delete_children(self, p: _Pass) -> None:
        p.delete_exporters(keep_finished=True)

    def settled_before(self, p: _Pass) -> bool:
        if _export_formats(p):
            return False
        p.delete_exporters(keep_finished=True)
        message = "spec.export no longer asks for artifacts; nothing to export"
        p.clear_condition(EXPORTED, Reason.NOT_REQUESTED, message)
        _succeed(p, message)
        return True

    def running(self, p: _Pass, attempt: int) -> None:
        p.set_condition(
            EXPORTED, False, Reason.EXPORT_RUNNING, f"export attempt {attempt} is running"
        )

    def succeeded(self, p: _Pass) -> None:
        _exported(p)

    def settled_failure(self, p: _Pass, failure: LauncherFailure) -> bool:
        if failure.exit_code != EXIT_GATE_NOT_MET:
            return False
        _gate_not_met(p, _termination_message(p.world.export_pods, EXPORT_CONTAINER))
        return True

    def failure_detail(self, p: _Pass, failure: LauncherFailure) -> str:
        detail = _termination_message(p.world.export_pods, EXPORT_CONTAINER, failure.exit_code)
        return f"; the export stage said: {detail}" if detail else ""

    def mark_retry(self, p: _Pass, reason: Reason, message: str) -> None:
        p.set_condition(EXPORTED, False, reason, message)

    def mark_final(self, p: _Pass, reason: Reason, message: str) -> None:
        p.set_condition(EXPORTED, False, reason, message)


TRAINING = _Training()
EXPORT = _Export()


#: Phases each handler may move a job to (documentation and a unit-test oracle).
TRANSITIONS: dict[Phase | None, set[Phase]] = {
    None: {
        Phase.pending,
        Phase.waiting_for_dependencies,
        Phase.running,
        Phase.suspended,
        Phase.failed,
    },
    Phase.pending: {Phase.waiting_for_dependencies, Phase.running, Phase.suspended, Phase.failed},
    Phase.waiting_for_dependencies: {Phase.running, Phase.suspended, Phase.failed},
    Phase.running: {Phase.exporting, Phase.succeeded, Phase.failed, Phase.suspended},
    Phase.exporting: {Phase.succeeded, Phase.failed, Phase.suspended},
    Phase.suspended: {
        Phase.pending,
        Phase.waiting_for_dependencies,
        Phase.running,
        Phase.exporting,
        Phase.failed,
    },
    Phase.succeeded: set(),
    Phase.failed: {Phase.pending, Phase.waiting_for_dependencies, Phase.running},
}

__all__ = [
    "TRANSITIONS",
    "Child",
    "Create",
    "Decision",
    "Delete",
    "Event",
    "Observed",
    "Settings",
    "backoff_seconds",
    "launcher_signal",
    "launcher_state",
    "pods_flagged",
    "pods_need_pass",
    "pods_problem",
    "pods_ready",
    "pods_started",
    "pods_to_explain",
    "reads",
    "reconcile",
    "signal_needs_pass",
    "spec_problems",
    "status_wants_pass",
]
