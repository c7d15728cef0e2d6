"""The one table of the condition types (of FineTuneJobs and FineTuneSweeps) and of the reasons
the operator writes: on conditions, on events, and as the ``reason`` label of
``kubetune_job_restarts_total``.

Every reason the operator writes is a :class:`Reason` member; nothing else in the operator
spells one (tests/unit/test_reasons.py holds this). docs/conditions.md is this table as
Markdown, printed by ``python -m kubetune.reasons``.
"""

from __future__ import annotations

import sys
from enum import StrEnum


class _Documented(StrEnum):
    """A string enum whose members carry a one-line description (``.doc``)."""

    doc: str

    def __new__(cls, value: str, doc: str) -> _Documented:
        member = str.__new__(cls, value)
        member._value_ = value
        member.doc = doc
        return member


class ConditionType(_Documented):
    INVALID_SPEC = "InvalidSpec", "True when the spec breaks a rule the CRD cannot check"
    DEPENDENCIES_READY = "DependenciesReady", "whether every finetunejob:// input has succeeded"
    RUNNING = "Running", "True while an attempt's launcher runs"
    CHECKPOINTED = "Checkpointed", "the latest complete checkpoint (step and URI)"
    RESUMING = "Resuming", "True from a failed or suspended attempt until the next one runs"
    EXPORTED = "Exported", "the export stage: running, retrying, done, gate not met or failed"
    SUCCEEDED = "Succeeded", "True once the job succeeded"
    FAILED = "Failed", "True once the job failed for good"
    SUSPENDED = "Suspended", "True while spec.runtime.suspend holds the job"
    PODS_READY = (
        "PodsReady",
        "False while the current attempt's pods cannot run and somebody said why (after a grace; "
        "the scheduler's, the kubelet's or the Job controller's message; pods queued silently "
        "for ten graces), True once they run again; absent when they ran without a word",
    )
    # FineTuneSweep (with InvalidSpec, Succeeded and Failed above)
    STUDY_READY = "StudyReady", "sweep: whether its Optuna study is in the operator's storage"
    PRUNING = "Pruning", "sweep: whether unpromising trials are stopped early, and why not"


class Reason(_Documented):
    """Each with where it is written (condition types, ``event``, ``restart``: the reason label
    of kubetune_job_restarts_total) and what it means. A job that fails also gets the reason
    on Running (False) and Resuming (False, when it was True)."""

    # Admission and dependencies
    ACCEPTED = (
        "Accepted",
        "event: a new job or sweep was accepted (phase Pending); a job that moves on in the "
        "same pass gets only the event of where it went (Launched, WaitingForDependencies)",
    )
    INVALID_SPEC = (
        "InvalidSpec",
        "InvalidSpec, Failed, event: the spec breaks a rule; the job failed",
    )
    VALID = "Valid", "InvalidSpec, Failed: the spec is valid (again)"
    SPEC_CORRECTED = "SpecCorrected", "event: an InvalidSpec job's spec was corrected"
    WAITING_FOR_JOBS = "WaitingForJobs", "DependenciesReady: an input job has not succeeded"
    WAITING_FOR_DEPENDENCIES = (
        "WaitingForDependencies",
        "event: the job waits for its input jobs (phase WaitingForDependencies)",
    )
    JOBS_SUCCEEDED = "JobsSucceeded", "DependenciesReady: every input job succeeded"
    OUTPUT_MISSING = "OutputMissing", "DependenciesReady: an input job succeeded but has no output"
    BUILD_FAILED = (
        "BuildFailed",
        "Failed, Exported, event: the children cannot be built for the cluster",
    )
    # Training attempts
    LAUNCHED = "Launched", "Running, event: attempt 1 was launched (phase Running)"
    RESUMED = (
        "Resumed",
        "Running, Resuming, Suspended, event: a later attempt was launched (phase Running)",
    )
    RUNNING = "Running", "Running: the attempt's launcher runs"
    UNSCHEDULABLE = (
        "Unschedulable",
        "PodsReady, event: the scheduler cannot place a pod (no node has room, a claim is missing)",
    )
    FAILED_CREATE = (
        "FailedCreate",
        "PodsReady, event: the Job controller cannot create the pods (a ResourceQuota, a policy)",
    )
    PODS_PENDING = (
        "PodsPending",
        "PodsReady, event: a pod waits (a container's waiting reason, a scheduler's other "
        "word, or ten graces of silence)",
    )
    PODS_RUNNING = "PodsRunning", "PodsReady, event: the attempt's pods run after all"
    CHECKPOINT_SAVED = "CheckpointSaved", "Checkpointed: the trainer published a checkpoint"
    APPLICATION_FAILURE = (
        "ApplicationFailure",
        "Resuming, Running, event, restart: the trainer failed; a new attempt follows",
    )
    DISRUPTION = (
        "Disruption",
        "Resuming, Running, event, restart: a pod was preempted or evicted; a new attempt follows",
    )
    UNSUSPENDED = (
        "Unsuspended",
        "Resuming, restart: a new attempt after the job was suspended",
    )
    RESTARTS_EXHAUSTED = "RestartsExhausted", "Failed, event: resume.maxRestarts attempts failed"
    INVALID_PLAN = "InvalidPlan", "Failed, event: the trainer refused the plan (exit code 78)"
    BAD_DATA = (
        "BadData",
        "Failed, Exported, event: the data cannot be used (exit code 65; the message names the "
        "file and row); no retry",
    )
    DEADLINE_EXCEEDED = (
        "DeadlineExceeded",
        "Failed, Exported, event: the job ran longer than spec.activeDeadlineSeconds",
    )
    TRAINING_SUCCEEDED = (
        "TrainingSucceeded",
        "Running, Resuming, Succeeded, event: training succeeded (an export may follow)",
    )
    # The export stage
    EXPORT_LAUNCHED = "ExportLaunched", "event: export attempt 1 was launched (phase Exporting)"
    EXPORT_RETRIED = "ExportRetried", "event: a later export attempt was launched"
    EXPORT_RESUMED = (
        "ExportResumed",
        "event: an export attempt was launched after a suspension (phase Exporting)",
    )
    EXPORT_RUNNING = "ExportRunning", "Exported: an export attempt runs"
    EXPORT_FAILURE = (
        "ExportFailure",
        "Exported, event: the export stage failed; a new export attempt follows",
    )
    EXPORT_DISRUPTION = (
        "ExportDisruption",
        "Exported, event: the export pod was disrupted; a new export attempt follows",
    )
    EXPORT_FAILED = "ExportFailed", "Exported, Failed, event: the export failed for good"
    EXPORT_INVALID_PLAN = (
        "ExportInvalidPlan",
        "Failed, event: the export stage refused the plan (exit code 78)",
    )
    EXPORT_GATE_NOT_MET = (
        "ExportGateNotMet",
        "Exported, Succeeded, event: the eval gate was not met; nothing was exported",
    )
    NO_ARTIFACTS_REPORTED = (
        "NoArtifactsReported",
        "event: the export stage succeeded without reporting its artifacts",
    )
    EXPORTED = "Exported", "Exported, Succeeded, event: every artifact was exported and verified"
    NOT_REQUESTED = "NotRequested", "Exported: spec.export no longer asks for artifacts"
    # Suspension and the end
    SUSPENDED = "Suspended", "Suspended, Running, event: spec.runtime.suspend is true"
    COMPLETED = "Completed", "Running, Resuming: the job finished"
    SUCCEEDED = "Succeeded", "event: the job succeeded (phase Succeeded)"
    TTL_EXPIRED = "TTLExpired", "event: ttlSecondsAfterFinished passed; the job is deleted"
    # FineTuneSweep (also Accepted, InvalidSpec, Valid, Running, Succeeded, NotRequested)
    STORAGE_NOT_CONFIGURED = (
        "StorageNotConfigured",
        "StudyReady: the operator has no study storage (KUBETUNE_SWEEP_STORAGE); nothing runs",
    )
    STUDY_LOADED = "StudyLoaded", "StudyReady: the study is created or found again"
    PRUNER_ACTIVE = "PrunerActive", "Pruning: the pruner judges every value the trials report"
    MULTI_OBJECTIVE = (
        "MultiObjective",
        "Pruning: several objectives; Optuna's pruners judge one, so trials run to the end",
    )
    TRIAL_CREATED = "TrialCreated", "event: a trial's FineTuneJob was made (or made again)"
    TRIAL_COMPLETED = "TrialCompleted", "event: a trial succeeded and reported every objective"
    TRIAL_PRUNED = "TrialPruned", "event: the pruner stopped a trial (suspended)"
    TRIAL_FAILED = "TrialFailed", "event: a trial failed, or succeeded without its objectives"
    TRIAL_ABANDONED = (
        "TrialAbandoned",
        "event: a trial asked of the study was failed without running: the sweep had ended",
    )
    TRIAL_UNKNOWN = (
        "TrialUnknown",
        "event: a trial FineTuneJob the study does not know (a lost study) was deleted",
    )
    TOO_MANY_FAILED_TRIALS = (
        "TooManyFailedTrials",
        "Failed, event: more trials failed than spec.maxFailedTrials; running ones are stopped",
    )
    NO_TRIAL_COMPLETED = "NoTrialCompleted", "Failed, event: every trial was pruned or failed"
    BEST_TRIAL_FOUND = (
        "BestTrialFound",
        "Succeeded: every trial finished; status.bestTrial (or paretoFront) holds the best",
    )


RESTART_REASONS = (Reason.APPLICATION_FAILURE, Reason.DISRUPTION, Reason.UNSUSPENDED)
"""The values of kubetune_job_restarts_total's reason label."""


class KubernetesReason(_Documented):
    """Reasons the operator reads (never writes) on its launchers' status."""

    POD_FAILURE_POLICY = "PodFailurePolicy", "Job Failed: a podFailurePolicy rule matched"
    DEADLINE_EXCEEDED = "DeadlineExceeded", "Job or RayJob failed: its activeDeadlineSeconds"
    FAILED_CREATE = "FailedCreate", "Job event: the Job controller could not create a pod"
    UNSCHEDULABLE = "Unschedulable", "Pod PodScheduled False: the scheduler cannot place it"


def markdown() -> str:
    """The tables of docs/conditions.md."""
    lines = ["| condition type | meaning |", "|---|---|"]
    lines += [f"| `{c.value}` | {c.doc} |" for c in ConditionType]
    lines += ["", "| reason | where it appears: meaning |", "|---|---|"]
    lines += [f"| `{r.value}` | {r.doc} |" for r in Reason]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
