"""Launcher ``job``: an Indexed Job and a headless Service; works on any cluster.

Pod 0 starts the Ray head and runs the driver (``kubetune-train``); pods 1..N-1 wait for the
head by its stable DNS name (``<job>-a<n>-0.<service>.<ns>.svc``; the pods' subdomain is the
Service) and join it as Ray workers. The Job succeeds when index 0 succeeds (successPolicy);
the workers are then stopped by the Job controller.

backoffLimit is 0: kubetune owns retries (a new attempt, a new launcher). Every failure fails
the Job at once, and the podFailurePolicy rule that matched tells why. The Job controller
writes it into the Failed condition (reason ``PodFailurePolicy``, message ending "matching
FailJob rule at index N"), which :mod:`kubetune.builders.outcome` reads back:

* rule 0, pod condition DisruptionTarget (eviction, preemption, node drain or loss, taint):
  a disruption;
* rule 1, trainer exit code EXIT_PREEMPTED (SIGTERM arrived and a checkpoint was saved): a
  disruption;
* rule 2, any other non-zero exit of the trainer container: an application failure.

Disruptions fail the Job rather than being ignored: an ignored failure makes the Job controller
replace the pod inside the same attempt, and a replaced pod 0 would start a new Ray head that
the surviving workers are not connected to.
"""

from __future__ import annotations

from typing import Literal

from kubetune.api import FineTuneJob
from kubetune_trainer.exit_codes import EXIT_PREEMPTED
from kubetune_trainer.plan import Plan

from . import names
from .common import (
    CONTAINER,
    RAY_CLIENT_PORT,
    RAY_DASHBOARD_PORT,
    RAY_GCS_PORT,
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

FailureKind = Literal["disruption", "application"]


def pod_failure_rules(container: str) -> list[tuple[FailureKind, Manifest]]:
    """(what a match means, the rule), in the order the Job controller evaluates them, for a
    Job whose main container is ``container``. The Job controller skips exit code 0, so the
    last rule matches every other non-zero exit. The export Job uses the same rules (same
    indices), so :mod:`kubetune.builders.outcome` reads both alike."""
    return [
        (
            "disruption",
            {
                "action": "FailJob",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ),
        (
            "disruption",
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "In",
                    "values": [EXIT_PREEMPTED],
                },
            },
        ),
        (
            "application",
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "NotIn",
                    "values": [EXIT_PREEMPTED],
                },
            },
        ),
    ]


POD_FAILURE_RULES = pod_failure_rules(CONTAINER)
"""The launcher's rules (see :func:`pod_failure_rules`)."""

HEAD_ENV = "KUBETUNE_RAY_HEAD"


def node_script(plan: Plan, job: FineTuneJob) -> str:
    """The shell script every pod runs: pod 0 is the head and the driver, the others workers.

    ``exec`` makes the trainer (or the Ray worker) the container's main process, so SIGTERM
    reaches it and its exit code is the container's."""
    resources = job.spec.resources
    node = f"--num-cpus={ray_cpus(resources)} --num-gpus={resources.gpus_per_node}"
    train = " ".join(TRAIN_COMMAND)
    return "\n".join(
        [
            "set -eu",
            f'head="${HEAD_ENV}:{RAY_GCS_PORT}"',
            'if [ "${JOB_COMPLETION_INDEX:-0}" = "0" ]; then',
            f"  ray start --head --port={RAY_GCS_PORT} --dashboard-host=0.0.0.0"
            f" --dashboard-port={RAY_DASHBOARD_PORT} --ray-client-server-port={RAY_CLIENT_PORT}"
            f" {node} --disable-usage-stats",
            "  export RAY_ADDRESS=auto",
            f"  exec {train}",
            "fi",
            'until ray health-check --address="$head" >/dev/null 2>&1; do sleep 5; done',
            f'exec ray start --address="$head" {node} --block --disable-usage-stats',
            "",
        ]
    )


def headless_service(job: FineTuneJob, plan: Plan) -> Manifest:
    """Gives pod 0 a stable DNS name before it is ready (publishNotReadyAddresses)."""
    job_name = job.metadata.name
    name = names.service_name(job_name, plan.attempt)
    ports = [
        {"name": "gcs", "port": RAY_GCS_PORT, "targetPort": RAY_GCS_PORT},
        {"name": "dashboard", "port": RAY_DASHBOARD_PORT, "targetPort": RAY_DASHBOARD_PORT},
        {"name": "client", "port": RAY_CLIENT_PORT, "targetPort": RAY_CLIENT_PORT},
    ]
    if plan.metrics_port:
        ports.append(
            {"name": "metrics", "port": plan.metrics_port, "targetPort": plan.metrics_port}
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(job, name, "launcher", plan.attempt),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {names.LABEL_JOB: job_name, names.LABEL_ATTEMPT: str(plan.attempt)},
            "ports": ports,
        },
    }


def indexed_job(job: FineTuneJob, plan: Plan, facts: ClusterFacts, configmap: str) -> Manifest:
    job_name = job.metadata.name
    attempt = plan.attempt
    nodes = job.spec.resources.nodes
    head = names.head_address(job_name, attempt, plan.job.namespace)
    container = trainer_container(
        job,
        plan,
        facts,
        command=["/bin/sh", "-c", node_script(plan, job)],
        extra_env=[{"name": HEAD_ENV, "value": head}],
        ray_ports=True,
    )
    spec = pod_spec(job, plan, container, configmap)
    spec["restartPolicy"] = "Never"
    spec["subdomain"] = names.service_name(job_name, attempt)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            job,
            names.launcher_name(job_name, attempt),
            "launcher",
            attempt,
            queue_labels(job.spec, facts),
        ),
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            "backoffLimit": 0,
            "podReplacementPolicy": "Failed",
            "suspend": launcher_suspended(job.spec),
            "successPolicy": {"rules": [{"succeededIndexes": "0"}]},
            "podFailurePolicy": {"rules": [rule for _, rule in POD_FAILURE_RULES]},
            "template": {
                # No kubetune.io/role: all pods share one template; the head is the pod whose
                # batch.kubernetes.io/job-completion-index label is "0".
                "metadata": pod_template_metadata(job, attempt, None),
                "spec": spec,
            },
        },
    }


def job_launcher(
    job: FineTuneJob, plan: Plan, facts: ClusterFacts, configmap: str
) -> list[Manifest]:
    """The headless Service, then the Indexed Job."""
    return [headless_service(job, plan), indexed_job(job, plan, facts, configmap)]


__all__ = [
    "HEAD_ENV",
    "POD_FAILURE_RULES",
    "headless_service",
    "indexed_job",
    "job_launcher",
    "pod_failure_rules",
]
