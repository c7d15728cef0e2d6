"""Deterministic names and labels of a FineTuneJob's children.

Every name derives from the job name and the attempt number only, so a handler that crashed
half-way finds what it made on the next pass instead of making it twice. Job names are at most
49 characters (see ``kubetune.api.ObjectMeta``); every name here then fits a 63-character DNS
label for attempts below 10,000,000 (export attempts below 100,000).
"""

from __future__ import annotations

MAX_NAME = 63
"""Longest name of any child (a DNS label: Service names, pod hostnames, label values)."""

# Labels every child (and every pod) carries.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB = "kubetune.io/job"
LABEL_ATTEMPT = "kubetune.io/attempt"
LABEL_ROLE = "kubetune.io/role"
LABEL_EXPORT_ATTEMPT = "kubetune.io/export-attempt"
APP = "kubetune"
MANAGER = "kubetune-operator"

# Kueue's label naming the LocalQueue a workload is submitted to.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# Label the Job controller puts on each pod of an Indexed Job (Kubernetes 1.28+).
JOB_COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


def _checked(name: str) -> str:
    if len(name) > MAX_NAME:
        raise ValueError(f"child name '{name}' is longer than {MAX_NAME} characters")
    return name


def _check_attempt(attempt: int) -> None:
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, got {attempt}")


def launcher_name(job: str, attempt: int) -> str:
    """The launcher (Job or RayJob) of an attempt: ``<job>-a<attempt>``."""
    _check_attempt(attempt)
    return _checked(f"{job}-a{attempt}")


def export_job_name(job: str, export_attempt: int) -> str:
    """The Job running the export stage: ``<job>-export-a<export attempt>`` (export attempts are
    numbered apart from training attempts; a retried export never retrains)."""
    _check_attempt(export_attempt)
    return _checked(f"{job}-export-a{export_attempt}")


def service_name(job: str, attempt: int) -> str:
    """The headless Service of a ``job``-launcher attempt. The launcher's name, except that a
    Service name must start with a letter (RFC 1035), so a job name starting with a digit gets
    a ``kt-`` prefix."""
    name = launcher_name(job, attempt)
    return _checked(name if name[0].isalpha() else f"kt-{name}")


def plan_configmap_name(job: str, attempt: int) -> str:
    """The ConfigMap holding an attempt's plan: ``<job>-plan-a<attempt>``."""
    _check_attempt(attempt)
    return _checked(f"{job}-plan-a{attempt}")


def trainer_account_name(job: str) -> str:
    """The per-job ServiceAccount, Role and RoleBinding: ``<job>-trainer``. The same for every
    attempt, so the trainer's identity does not change across restarts."""
    return _checked(f"{job}-trainer")


def head_pod_hostname(job: str, attempt: int) -> str:
    """Hostname of pod 0 of a ``job`` launcher (the Job controller names Indexed Job pods'
    hostnames ``<job-name>-<index>``)."""
    return _checked(f"{launcher_name(job, attempt)}-0")


def head_address(job: str, attempt: int, namespace: str) -> str:
    """Stable DNS name of pod 0 (the Ray head) of a ``job`` launcher:
    ``<hostname>.<service>.<namespace>.svc``."""
    return f"{head_pod_hostname(job, attempt)}.{service_name(job, attempt)}.{namespace}.svc"


__all__ = [
    "APP",
    "JOB_COMPLETION_INDEX_LABEL",
    "KUEUE_QUEUE_LABEL",
    "LABEL_ATTEMPT",
    "LABEL_COMPONENT",
    "LABEL_EXPORT_ATTEMPT",
    "LABEL_JOB",
    "LABEL_MANAGED_BY",
    "LABEL_NAME",
    "LABEL_ROLE",
    "MANAGER",
    "MAX_NAME",
    "export_job_name",
    "head_address",
    "head_pod_hostname",
    "launcher_name",
    "plan_configmap_name",
    "service_name",
    "trainer_account_name",
]
