"""Reading a finished launcher back: was it a disruption or an application failure?

Pure functions over the objects the handler already read (a Job, a RayJob, pods), so the
decision that drives restarts is unit-tested next to the manifests that make it possible.

* ``job`` launcher: the Job's Failed (or FailureTarget) condition. Reason ``PodFailurePolicy``
  carries the index of the matched rule in its message ("... matching FailJob rule at index
  N", the Job controller's wording), which :data:`~kubetune.builders.job_launcher.
  POD_FAILURE_RULES` maps to a kind; the exit code is read from the same message. Reason
  ``DeadlineExceeded`` is the Job's activeDeadlineSeconds; anything else (BackoffLimitExceeded)
  is an application failure.
* ``rayjob`` launcher: any pod of the attempt failed with a DisruptionTarget condition, or the
  driver's exit code in the RayJob message is EXIT_PREEMPTED: a disruption. Otherwise an
  application failure (deadline for reason DeadlineExceeded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from kubetune.reasons import KubernetesReason
from kubetune_trainer.exit_codes import DISRUPTION_EXIT_CODES, EXIT_INVALID_PLAN

from .job_launcher import POD_FAILURE_RULES

Kind = Literal["disruption", "application", "deadline"]

_RULE_INDEX = re.compile(r"rule at index (\d+)")
_EXIT_CODE = re.compile(r"failed with exit code (-?\d+)")


@dataclass(frozen=True)
class LauncherFailure:
    kind: Kind
    """disruption: restart, not counted; application: restart, counted against
    resume.maxRestarts; deadline: the launcher ran out of time."""
    reason: str
    """The launcher's reason (PodFailurePolicy, DeadlineExceeded, AppFailed, ...)."""
    message: str = ""
    """The launcher's message, for the job's condition."""
    exit_code: int | None = None
    """The trainer's exit code, when known."""

    @property
    def counts_as_restart(self) -> bool:
        return self.kind == "application"

    @property
    def retryable(self) -> bool:
        """False when a new attempt cannot help (the trainer refused the plan)."""
        return self.exit_code != EXIT_INVALID_PLAN


def _exit_code(message: str) -> int | None:
    match = _EXIT_CODE.search(message)
    return int(match.group(1)) if match else None


def job_failure(job: dict[str, Any]) -> LauncherFailure | None:
    """The failure of a ``job``-launcher Job, or None while it has not failed."""
    conditions = (job.get("status") or {}).get("conditions") or []
    for wanted in ("Failed", "FailureTarget"):
        for cond in conditions:
            if cond.get("type") == wanted and cond.get("status") == "True":
                return _classify_job_condition(cond)
    return None


def _classify_job_condition(cond: dict[str, Any]) -> LauncherFailure:
    reason = cond.get("reason") or ""
    message = cond.get("message") or ""
    code = _exit_code(message)
    if reason == KubernetesReason.DEADLINE_EXCEEDED:
        return LauncherFailure("deadline", reason, message, code)
    if reason == KubernetesReason.POD_FAILURE_POLICY:
        match = _RULE_INDEX.search(message)
        if match and int(match.group(1)) < len(POD_FAILURE_RULES):
            kind = POD_FAILURE_RULES[int(match.group(1))][0]
            return LauncherFailure(kind, reason, message, code)
    return LauncherFailure("application", reason, message, code)


def pod_disrupted(pod: dict[str, Any]) -> bool:
    """Whether a pod carries DisruptionTarget=True (evicted, preempted, drained, node lost)."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conditions
    )


def rayjob_failure(
    rayjob: dict[str, Any], pods: list[dict[str, Any]] | None = None
) -> LauncherFailure | None:
    """The failure of a ``rayjob``-launcher RayJob (with the attempt's pods, when the handler
    still sees them), or None while it has not failed."""
    status = rayjob.get("status") or {}
    failed = status.get("jobDeploymentStatus") == "Failed" or status.get("jobStatus") == "FAILED"
    if not failed:
        return None
    reason = status.get("reason") or ""
    message = status.get("message") or ""
    code = _exit_code(message)
    if any(pod_disrupted(p) for p in pods or []) or code in DISRUPTION_EXIT_CODES:
        return LauncherFailure("disruption", reason, message, code)
    if reason == KubernetesReason.DEADLINE_EXCEEDED:
        return LauncherFailure("deadline", reason, message, code)
    return LauncherFailure("application", reason, message, code)


__all__ = ["LauncherFailure", "job_failure", "pod_disrupted", "rayjob_failure"]
