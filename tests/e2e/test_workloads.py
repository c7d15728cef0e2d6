"""Fake GPU nodes and kwok pod outcomes: scheduling respects nvidia.com/gpu, Jobs complete or
fail with the chosen exit code, evicted pods carry DisruptionTarget."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from e2e_support import kc, wait_for

pytestmark = pytest.mark.e2e


def _group() -> str:
    return f"g-{uuid.uuid4().hex[:6]}"


def _pod_spec(group: str, gpus: int) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "nodeSelector": {kc.NODE_GROUP_LABEL: group},
        "containers": [
            {
                "name": "trainer",
                "image": "kubetune/trainer:e2e",
                "resources": {
                    "requests": {"cpu": "1", "memory": "1Gi"},
                    "limits": {kc.GPU_RESOURCE: str(gpus)},
                },
            }
        ],
    }


def _indexed_job(
    name: str, group: str, *, pods: int, gpus: int, annotations: dict[str, str], backoff: int = 0
):
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": pods,
            "parallelism": pods,
            "backoffLimit": backoff,
            "template": {
                "metadata": {"annotations": annotations, "labels": {"e2e-job": name}},
                "spec": _pod_spec(group, gpus),
            },
        },
    }


def _job_condition(cluster, namespace: str, name: str) -> str | None:
    job = cluster.get_json("job", name, "-n", namespace)
    for cond in job.get("status", {}).get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return cond["type"]
    return None


def _pods(cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]


def test_gpu_nodes_advertise_gpus(cluster):
    group = _group()
    names = cluster.add_gpu_nodes(2, group=group)
    for node in cluster.get_json("nodes", "-l", f"{kc.NODE_GROUP_LABEL}={group}")["items"]:
        assert node["metadata"]["name"] in names
        assert node["status"]["allocatable"][kc.GPU_RESOURCE] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == kc.DEFAULT_GPU_PRODUCT
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert ready["Ready"] == "True"


def test_indexed_gpu_job_respects_capacity_and_completes(cluster, namespace):
    group = _group()
    cluster.add_gpu_nodes(4, group=group)  # 4 x 8 GPUs
    # 5 pods x 8 GPUs: 4 fit at once, the 5th waits until one finishes.
    # Each pod runs 8 s: a wide window to observe 4 bound + 1 Unschedulable on a busy machine.
    job = _indexed_job("gpu-job", group, pods=5, gpus=8, annotations={kc.DELAY: "8s"})
    cluster.apply(job, "-n", namespace)

    def four_running_one_pending():
        pods = _pods(cluster, namespace, "e2e-job=gpu-job")
        bound = [p for p in pods if p["spec"].get("nodeName")]
        unschedulable = [
            p
            for p in pods
            if any(
                c["type"] == "PodScheduled"
                and c["status"] == "False"
                and c.get("reason") == "Unschedulable"
                for c in p.get("status", {}).get("conditions") or []
            )
        ]
        if len(pods) == 5 and len(bound) == 4 and len(unschedulable) == 1:
            return bound, unschedulable[0]
        return None

    bound, pending = wait_for(
        four_running_one_pending, timeout=60, what="4 pods bound and 1 Unschedulable"
    )
    per_node = Counter(p["spec"]["nodeName"] for p in bound)
    assert len(per_node) == 4 and set(per_node.values()) == {1}, per_node
    message = next(
        c["message"] for c in pending["status"]["conditions"] if c["type"] == "PodScheduled"
    )
    assert f"Insufficient {kc.GPU_RESOURCE}" in message, message

    assert (
        wait_for(
            lambda: _job_condition(cluster, namespace, "gpu-job"), timeout=90, what="job to finish"
        )
        == "Complete"
    )
    job_status = cluster.get_json("job", "gpu-job", "-n", namespace)["status"]
    assert job_status["succeeded"] == 5
    assert job_status.get("completedIndexes") == "0-4"


def test_job_pod_failing_with_exit_code_fails_the_job(cluster, namespace):
    group = _group()
    cluster.add_gpu_nodes(1, group=group)
    annotations = {kc.OUTCOME: "fail", kc.EXIT_CODE: "1", kc.DELAY: "1s"}
    cluster.apply(
        _indexed_job("fail-job", group, pods=1, gpus=8, annotations=annotations), "-n", namespace
    )
    assert (
        wait_for(
            lambda: _job_condition(cluster, namespace, "fail-job"), timeout=60, what="job to finish"
        )
        == "Failed"
    )
    (pod,) = _pods(cluster, namespace, "e2e-job=fail-job")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1


def test_outcome_from_label_and_custom_exit_code(cluster, namespace):
    group = _group()
    cluster.add_gpu_nodes(1, group=group)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "labelled",
            "labels": {kc.OUTCOME: "fail"},
            "annotations": {kc.EXIT_CODE: "42"},
        },
        "spec": _pod_spec(group, 1),
    }
    cluster.apply(pod, "-n", namespace)

    def terminated():
        p = cluster.get_json("pod", "labelled", "-n", namespace)
        if p["status"].get("phase") == "Failed":
            return p["status"]["containerStatuses"][0]["state"]["terminated"]
        return None

    assert wait_for(terminated, timeout=60, what="pod to fail")["exitCode"] == 42


def test_evicted_pod_carries_disruption_target(cluster, namespace):
    group = _group()
    cluster.add_gpu_nodes(1, group=group)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "evicted", "annotations": {kc.OUTCOME: "evict", kc.DELAY: "1s"}},
        "spec": _pod_spec(group, 8),
    }
    cluster.apply(pod, "-n", namespace)

    def failed():
        p = cluster.get_json("pod", "evicted", "-n", namespace)
        return p if p["status"].get("phase") == "Failed" else None

    p = wait_for(failed, timeout=60, what="pod to be evicted")
    conditions = {c["type"]: c for c in p["status"]["conditions"]}
    assert conditions["DisruptionTarget"]["status"] == "True"
    assert conditions["DisruptionTarget"]["reason"] == "TerminationByKubelet"
    assert p["status"].get("reason") == "Evicted"


def test_running_pod_stays_until_deleted(cluster, namespace):
    group = _group()
    cluster.add_gpu_nodes(1, group=group)
    job = _indexed_job("run-job", group, pods=1, gpus=8, annotations={kc.OUTCOME: "run"})
    cluster.apply(job, "-n", namespace)

    def running():
        pods = _pods(cluster, namespace, "e2e-job=run-job")
        return pods if pods and pods[0]["status"].get("phase") == "Running" else None

    wait_for(running, timeout=60, what="pod Running")
    import time

    time.sleep(3)
    (pod,) = _pods(cluster, namespace, "e2e-job=run-job")
    assert pod["status"]["phase"] == "Running"
    assert _job_condition(cluster, namespace, "run-job") is None
    cluster.kubectl(
        "delete", "job", "run-job", "-n", namespace, "--cascade=foreground", "--timeout=60s"
    )
    wait_for(lambda: not _pods(cluster, namespace, "e2e-job=run-job"), timeout=60, what="pods gone")
