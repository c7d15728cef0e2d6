"""Launcher ``rayjob``: a KubeRay RayJob (ray.io/v1), when its CRD is installed.

KubeRay creates the Ray cluster (a head pod and a worker group of nodes-1 pods) from the pod
templates here, starts Ray in them itself (so the containers get no command), submits
``kubetune-train`` as the entrypoint, and deletes the cluster when the Ray job ends. The pods
carry the same pieces as the ``job`` launcher's: plan mount, storage, secrets by reference,
security context, placement.

backoffLimit 0: kubetune owns retries. A RayJob has no podFailurePolicy; the operator tells a
disruption from an application failure by the pods (DisruptionTarget condition) and the exit
code in the RayJob's message, see :mod:`kubetune.builders.outcome`.
"""

from __future__ import annotations

from kubetune.api import FineTuneJob
from kubetune_trainer.plan import Plan

from . import names
from .common import (
    RAY_DASHBOARD_PORT,
    TRAIN_COMMAND,
    ClusterFacts,
    Manifest,
    launcher_suspended,
    metadata,
    pod_spec,
    pod_template_metadata,
    queue_labels,
    ray_cpus,
    trainer_container,
)

WORKER_GROUP = "workers"


def _pod_template(
    job: FineTuneJob, plan: Plan, facts: ClusterFacts, configmap: str, role: str
) -> Manifest:
    container = trainer_container(job, plan, facts)
    return {
        "metadata": pod_template_metadata(job, plan.attempt, role),
        "spec": pod_spec(job, plan, container, configmap),
    }


def _start_params(job: FineTuneJob, head: bool) -> dict[str, str]:
    resources = job.spec.resources
    params = {
        "num-cpus": str(ray_cpus(resources)),
        "num-gpus": str(resources.gpus_per_node),
    }
    if head:
        params["dashboard-host"] = "0.0.0.0"
        params["dashboard-port"] = str(RAY_DASHBOARD_PORT)
    return dict(sorted(params.items()))


def rayjob(job: FineTuneJob, plan: Plan, facts: ClusterFacts, configmap: str) -> Manifest:
    job_name = job.metadata.name
    attempt = plan.attempt
    workers = job.spec.resources.nodes - 1
    cluster: Manifest = {
        "headGroupSpec": {
            "rayStartParams": _start_params(job, head=True),
            "template": _pod_template(job, plan, facts, configmap, "head"),
        },
    }
    if workers:
        cluster["workerGroupSpecs"] = [
            {
                "groupName": WORKER_GROUP,
                "replicas": workers,
                "minReplicas": workers,
                "maxReplicas": workers,
                "rayStartParams": _start_params(job, head=False),
                "template": _pod_template(job, plan, facts, configmap, "worker"),
            }
        ]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata(
            job,
            names.launcher_name(job_name, attempt),
            "launcher",
            attempt,
            queue_labels(job.spec, facts),
        ),
        "spec": {
            "entrypoint": " ".join(TRAIN_COMMAND),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "backoffLimit": 0,
            "suspend": launcher_suspended(job.spec),
            "rayClusterSpec": cluster,
        },
    }


def rayjob_launcher(
    job: FineTuneJob, plan: Plan, facts: ClusterFacts, configmap: str
) -> list[Manifest]:
    return [rayjob(job, plan, facts, configmap)]


__all__ = ["WORKER_GROUP", "rayjob", "rayjob_launcher"]
