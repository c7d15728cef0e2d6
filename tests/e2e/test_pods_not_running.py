"""Pending is not Running: a job whose pods cannot run says so, in the words of whoever knows
why (the scheduler, the Job controller), on its PodsReady condition, in an event and in
``kubectl get ftj``; the condition clears once the pods run.

The operator runs with a 2 s grace (KUBETUNE_PODS_GRACE_SECONDS) so the proofs are quick.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import kc, wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from test_operator import Operator, create, ftj, status

pytestmark = pytest.mark.e2e

NODE_GROUP = f"pods-{uuid.uuid4().hex[:6]}"
GRACE_SECONDS = 2


@pytest.fixture(scope="module")
def api(cluster) -> k8s.ApiClient:
    cluster.add_gpu_nodes(2, group=NODE_GROUP)
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="module")
def operator(cluster, api, tmp_path_factory) -> Iterator[Operator]:
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator"))
    op.start(KUBETUNE_PODS_GRACE_SECONDS=str(GRACE_SECONDS))
    yield op
    op.stop()


def job(name: str, **spec: Any) -> dict[str, Any]:
    body = ftj(name, pods={kc.OUTCOME: "run"}, **spec)
    body["spec"]["resources"]["nodeSelector"] = {kc.NODE_GROUP_LABEL: NODE_GROUP}
    return body


def pods_ready(api: k8s.ApiClient, ns: str, name: str, value: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        for cond in status(api, ns, name).get("conditions") or []:
            if cond["type"] == "PodsReady" and cond["status"] == value:
                return cond
        return None

    return wait_for(check, timeout=60, interval=0.5, what=f"{name}: PodsReady={value}")


def warnings(api: k8s.ApiClient, ns: str, name: str) -> dict[str, str]:
    about = f"involvedObject.name={name},involvedObject.kind=FineTuneJob"
    items = k8s.CoreV1Api(api).list_namespaced_event(ns, field_selector=about).items
    return {e.reason: e.message for e in items if e.type == "Warning"}


def get_ftj(cluster, ns: str, name: str) -> str:
    return cluster.kubectl("get", "ftj", name, "-n", ns)


def test_missing_claim_is_unschedulable_until_the_claim_exists(cluster, api, operator, namespace):
    claim = "runs-missing"
    create(api, namespace, job("noclaim", checkpoint={"storage": f"pvc://{claim}/e2e"}))
    cond = pods_ready(api, namespace, "noclaim", "False")
    assert cond["reason"] == "Unschedulable"
    assert f'persistentvolumeclaim "{claim}" not found' in cond["message"]
    assert status(api, namespace, "noclaim")["phase"] == "Running"
    assert "Unschedulable" in warnings(api, namespace, "noclaim")
    table = get_ftj(cluster, namespace, "noclaim")
    assert "PODS" in table.splitlines()[0] and "Unschedulable" in table, table

    cluster.add_checkpoint_claim(namespace, claim=claim, size="1Gi")
    cond = pods_ready(api, namespace, "noclaim", "True")
    assert cond["reason"] == "PodsRunning"
    assert "Unschedulable" not in get_ftj(cluster, namespace, "noclaim")


def test_more_gpus_than_any_node_has_until_a_big_node_joins(cluster, api, operator, namespace):
    create(api, namespace, job("huge", resources={"gpusPerNode": 16}))
    cond = pods_ready(api, namespace, "huge", "False")
    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert "Insufficient nvidia.com/gpu" in warnings(api, namespace, "huge")["Unschedulable"]

    (big,) = cluster.add_gpu_nodes(1, gpus=16, group=NODE_GROUP, prefix="kwok-gpu16")
    try:
        assert pods_ready(api, namespace, "huge", "True")["reason"] == "PodsRunning"
    finally:
        cluster.kubectl("delete", "node", big, "--wait=false")


def test_exceeded_quota_is_the_job_controllers_failed_create(cluster, api, operator, namespace):
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "gpus", "namespace": namespace},
        "spec": {"hard": {"requests.nvidia.com/gpu": "1"}},
    }
    cluster.apply(quota)
    create(api, namespace, job("quota", resources={"gpusPerNode": 2}))
    cond = pods_ready(api, namespace, "quota", "False")
    assert cond["reason"] == "FailedCreate"
    assert "exceeded quota: gpus" in cond["message"]
    assert "FailedCreate" in warnings(api, namespace, "quota")
    assert "FailedCreate" in get_ftj(cluster, namespace, "quota")
