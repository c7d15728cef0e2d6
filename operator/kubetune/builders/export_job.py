"""The export stage: a Job ``<job>-export-a<N>`` that runs after training succeeded.

One pod, no GPU, running ``kubetune-train --plan /etc/kubetune/plan.json --stage export`` with
what the trainer's pod 0 had: the plan ConfigMap of the training attempt whose output it
exports, the storage mounts, the per-job ServiceAccount (the stage patches ``status.artifacts``
of its own job through it) and the secrets by reference. Export attempts are numbered apart
from training attempts (``N`` is ``status.exportAttempt``): a failed export is retried alone.

backoffLimit 0 (kubetune owns retries) and the launcher's podFailurePolicy rules for the
``export`` container, so :func:`kubetune.builders.outcome.job_failure` reads the outcome and the
exit code the same way: 0 exported, EXIT_GATE_NOT_MET the eval gate was not met, EXIT_INVALID_PLAN
no retry can help, anything else an application failure. The container reports why it stopped
in its termination message (``/dev/termination-log``, else the tail of its log on an error).
"""

from __future__ import annotations

from kubetune.api import FineTuneJob, FineTuneJobSpec
from kubetune_trainer.plan import Plan

from . import names
from .common import (
    TRAIN_COMMAND,
    ClusterFacts,
    Manifest,
    base_labels,
    container_env,
    container_security_context,
    launcher_suspended,
    metadata,
    pod_annotations,
    pod_spec,
    queue_labels,
    trainer_image,
    volume_mounts,
)
from .job_launcher import pod_failure_rules

EXPORT_CONTAINER = "export"
EXPORT_COMMAND = [*TRAIN_COMMAND, "--stage", "export"]
EXPORT_POD_FAILURE_RULES = pod_failure_rules(EXPORT_CONTAINER)

DEFAULT_EXPORT_CPU = "4"
DEFAULT_EXPORT_MEMORY = "32Gi"
"""Requests when spec.resources sets none: merging adapters and converting holds the model in
memory once or twice (a 7B model in bf16 is ~14 GiB). An explicit spec.resources.cpu / memory
applies to the export pod too, so it fits the nodes the job was sized for."""

_NOT_FOR_EXPORT = {"shm"}
"""Pod volumes the export stage does not need (shared memory is for NCCL and data loaders)."""


def export_image(spec: FineTuneJobSpec, facts: ClusterFacts) -> str:
    """spec.runtime.exportImage, else the operator's export image, else the trainer image (one
    image can carry both stages when the dependency pins allow)."""
    return spec.runtime.export_image or facts.export_image or trainer_image(spec, facts)


def export_resources(spec: FineTuneJobSpec) -> Manifest:
    resources = spec.resources
    return {
        "requests": {
            "cpu": resources.cpu or DEFAULT_EXPORT_CPU,
            "memory": resources.memory or DEFAULT_EXPORT_MEMORY,
        }
    }


def export_job(
    job: FineTuneJob, plan: Plan, facts: ClusterFacts, export_attempt: int, configmap: str
) -> Manifest:
    """The export Job of export attempt ``export_attempt``; ``plan`` is the plan of the training
    attempt it exports (its ConfigMap ``configmap`` is mounted, not rebuilt)."""
    job_name = job.metadata.name
    attempt_labels = {names.LABEL_EXPORT_ATTEMPT: str(export_attempt)}
    container: Manifest = {
        "name": EXPORT_CONTAINER,
        "image": export_image(job.spec, facts),
        "command": list(EXPORT_COMMAND),
        "env": container_env(
            job.spec,
            plan,
            [{"name": "KUBETUNE_EXPORT_ATTEMPT", "value": str(export_attempt)}],
        ),
        "resources": export_resources(job.spec),
        "volumeMounts": [m for m in volume_mounts(plan) if m["name"] not in _NOT_FOR_EXPORT],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    spec = pod_spec(job, plan, container, configmap)
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in _NOT_FOR_EXPORT]
    spec["restartPolicy"] = "Never"
    template_meta: Manifest = {
        "labels": {**base_labels(job, "export", plan.attempt), **attempt_labels}
    }
    annotations = pod_annotations(job)
    if annotations:
        template_meta["annotations"] = annotations
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            job,
            names.export_job_name(job_name, export_attempt),
            "export",
            plan.attempt,
            {**attempt_labels, **queue_labels(job.spec, facts)},
        ),
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": 0,
            "podReplacementPolicy": "Failed",
            "suspend": launcher_suspended(job.spec),
            "podFailurePolicy": {"rules": [rule for _, rule in EXPORT_POD_FAILURE_RULES]},
            "template": {"metadata": template_meta, "spec": spec},
        },
    }


__all__ = [
    "DEFAULT_EXPORT_CPU",
    "DEFAULT_EXPORT_MEMORY",
    "EXPORT_COMMAND",
    "EXPORT_CONTAINER",
    "EXPORT_POD_FAILURE_RULES",
    "export_image",
    "export_job",
    "export_resources",
]
