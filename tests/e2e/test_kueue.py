"""Kueue pass-through: with Kueue installed, a job naming a queue gets a launcher that carries
Kueue's queue-name label and starts suspended; Kueue's admission (un-suspending the Job) lets it
run to success. Without Kueue the same spec is refused with the field named (test_operator).

Kueue's controller does not run here, and the operator only asks whether Kueue's Workload CRD
exists, so the module installs a minimal stand-in for that CRD and plays Kueue's admission step
itself, as test_rayjob plays KubeRay's status updates.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_support import wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from test_operator import NODE_GROUP, Operator, create, ftj, launcher, outcome, wait_phase

from kubetune.builders import names

pytestmark = pytest.mark.e2e

WORKLOAD_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "workloads.kueue.x-k8s.io"},
    "spec": {
        "group": "kueue.x-k8s.io",
        "names": {"kind": "Workload", "plural": "workloads", "singular": "workload"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1beta1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def api(cluster) -> Iterator[k8s.ApiClient]:
    client = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    extensions = k8s.ApiextensionsV1Api(client)
    extensions.create_custom_resource_definition(WORKLOAD_CRD)
    cluster.add_gpu_nodes(1, group=NODE_GROUP)  # where ftj() places its pods
    yield client
    extensions.delete_custom_resource_definition(WORKLOAD_CRD["metadata"]["name"])


@pytest.fixture(scope="module")
def operator(cluster, api, tmp_path_factory) -> Iterator[Operator]:
    # Started after the CRD exists: it sees Kueue on its first reconcile.
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator-kueue"))
    op.start()
    yield op
    op.stop()


def test_queued_job_waits_for_admission_then_runs(api, operator, namespace):
    body = ftj("queued", pods=outcome("succeed", "1s"), runtime={"queueName": "team-a"})
    create(api, namespace, body)
    made = wait_for(
        lambda: launcher(api, namespace, "queued", 1), timeout=30, what="launcher queued-a1"
    )
    assert made["metadata"]["labels"][names.KUEUE_QUEUE_LABEL] == "team-a"
    assert made["spec"]["suspend"] is True
    pods = k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="job-name=queued-a1")
    assert pods.items == [], "a suspended launcher must not start pods before admission"

    # Kueue admits the workload: it un-suspends the Job.
    k8s.BatchV1Api(api).patch_namespaced_job("queued-a1", namespace, {"spec": {"suspend": False}})
    s = wait_phase(api, namespace, "queued", "Succeeded", timeout=90)
    assert s["attempt"] == 1 and s.get("restarts") in (None, 0)
