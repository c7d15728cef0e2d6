"""The Exporting phase on the real control plane: after training, the export stage runs as its
own Job and its exit code decides (issue 7 §5).

kwok cannot run the stage, so the test plays both kubelet and stage: every pod is created with
outcome ``run`` and the test annotates each one with its outcome when the story needs it; what the
stage writes into ``status.artifacts`` is written with a client holding the per-job
ServiceAccount's token, the identity the stage has in its pod.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import kc, wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from test_operator import (
    Operator,
    _token,
    condition,
    create,
    events,
    ftj,
    outcome,
    status,
    wait_phase,
)

from kubetune.builders import names
from kubetune_trainer.exit_codes import EXIT_GATE_NOT_MET
from kubetune_trainer.reporting.kube_status import ApiTarget, KubernetesReporter

pytestmark = pytest.mark.e2e

NODE_GROUP = f"exp-{uuid.uuid4().hex[:6]}"
EXPORT = {"formats": ["safetensors", "gguf"]}
ARTIFACTS = [
    {
        "format": "safetensors",
        "uri": "s3://kubetune-e2e/exports/model",
        "bytes": 1024,
        "sha256": "ab" * 32,
        "verified": True,
    },
    {
        "format": "gguf-f16",
        "uri": "s3://kubetune-e2e/exports/model-f16.gguf",
        "bytes": 512,
        "sha256": "cd" * 32,
        "verified": True,
    },
]


@pytest.fixture(scope="module")
def api(cluster) -> k8s.ApiClient:
    cluster.add_gpu_nodes(2, group=NODE_GROUP)
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="module")
def operator(cluster, api, tmp_path_factory) -> Iterator[Operator]:
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator-export"))
    op.start()
    yield op
    op.stop()


def export_ftj(name: str, **spec: Any) -> dict[str, Any]:
    """A job whose pods all wait for the test to choose their outcome."""
    body = ftj(name, pods=outcome("run"), export=spec.pop("export", EXPORT), **spec)
    body["spec"]["resources"]["nodeSelector"] = {kc.NODE_GROUP_LABEL: NODE_GROUP}
    return body


def end_pods(
    api: k8s.ApiClient, ns: str, selector: str, kind: str, exit_code: int | None = None
) -> None:
    """Choose the outcome of the (running) pods matching selector, as kwok reads it."""
    core = k8s.CoreV1Api(api)
    pods = wait_for(
        lambda: [
            p
            for p in core.list_namespaced_pod(ns, label_selector=selector).items
            if p.status.phase == "Running"
        ],
        timeout=30,
        what=f"running pods {selector}",
    )
    annotations = {kc.OUTCOME: kind, kc.DELAY: "0s"}
    if exit_code is not None:
        annotations[kc.EXIT_CODE] = str(exit_code)
    for pod in pods:
        core.patch_namespaced_pod(pod.metadata.name, ns, {"metadata": {"annotations": annotations}})


def end_training(api: k8s.ApiClient, ns: str, name: str) -> None:
    selector = f"{names.LABEL_JOB}={name},{names.LABEL_COMPONENT}=trainer"
    end_pods(api, ns, selector, "succeed")


def end_export(
    api: k8s.ApiClient, ns: str, name: str, n: int, kind: str, exit_code: int | None = None
) -> None:
    selector = f"{names.LABEL_JOB}={name},{names.LABEL_EXPORT_ATTEMPT}={n}"
    end_pods(api, ns, selector, kind, exit_code)


def stopped_message(api: k8s.ApiClient, ns: str, name: str, n: int) -> str:
    """The termination message of export attempt n's container."""
    selector = f"{names.LABEL_JOB}={name},{names.LABEL_EXPORT_ATTEMPT}={n}"
    (pod,) = k8s.CoreV1Api(api).list_namespaced_pod(ns, label_selector=selector).items
    return pod.status.container_statuses[0].state.terminated.message


def report_artifacts(api: k8s.ApiClient, ns: str, name: str) -> None:
    """What the export stage does before it exits 0, through the job's own identity."""
    conf = api.configuration
    token = _token(api, ns, names.trainer_account_name(name))
    target = ApiTarget(conf.host, token, conf.ssl_ca_cert, namespace=ns, name=name)
    KubernetesReporter(target).patch({"status": {"artifacts": ARTIFACTS}})


def jobs(api: k8s.ApiClient, ns: str, name: str) -> dict[str, str]:
    """Job name -> app.kubernetes.io/component, for the job's children."""
    items = k8s.BatchV1Api(api).list_namespaced_job(ns, label_selector=f"{names.LABEL_JOB}={name}")
    return {j.metadata.name: j.metadata.labels[names.LABEL_COMPONENT] for j in items.items}


def wait_status(api: k8s.ApiClient, ns: str, name: str, what: str, check) -> dict[str, Any]:
    return wait_for(lambda: (s := status(api, ns, name)) and check(s) and s, timeout=30, what=what)


# --------------------------------------------------------------------------- proofs


def test_export_runs_after_training_and_its_artifacts_reach_status(
    cluster, api, operator, namespace
):
    create(api, namespace, export_ftj("exp"))
    wait_phase(api, namespace, "exp", "Running", timeout=30)
    end_training(api, namespace, "exp")
    s = wait_phase(api, namespace, "exp", "Exporting", timeout=30)
    assert s["exportAttempt"] == 1 and s["attempt"] == 1
    assert s["output"].endswith("/exp/output") and "completionTime" not in s
    assert jobs(api, namespace, "exp") == {"exp-a1": "launcher", "exp-export-a1": "export"}
    export = k8s.BatchV1Api(api).read_namespaced_job("exp-export-a1", namespace)
    pod = export.spec.template.spec
    assert pod.containers[0].command[-2:] == ["--stage", "export"]
    assert pod.service_account_name == "exp-trainer"
    assert {v.config_map.name for v in pod.volumes if v.config_map} == {"exp-plan-a1"}
    table = wait_for(
        lambda: (
            "ExportRunning" in (out := cluster.kubectl("get", "ftj", "exp", "-n", namespace))
            and out
        ),
        timeout=20,
        what="kubectl get ftj to show the export running",
    )
    assert "Exporting" in table

    report_artifacts(api, namespace, "exp")
    end_export(api, namespace, "exp", 1, "succeed")
    s = wait_phase(api, namespace, "exp", "Succeeded", timeout=30)
    assert s["artifacts"] == ARTIFACTS
    exported = condition(s, "Exported")
    assert (exported["status"], exported["reason"]) == ("True", "Exported")
    assert "2 artifact(s) (safetensors, gguf-f16), 2 verified" in exported["message"]
    assert condition(s, "Succeeded")["reason"] == "Exported"
    reasons = set(events(api, namespace, "exp"))
    assert {"TrainingSucceeded", "ExportLaunched", "Exported", "Succeeded"} <= reasons, reasons
    row = cluster.kubectl("get", "ftj", "exp", "-n", namespace, "--no-headers").split()
    assert row[1:3] == ["sft", "Succeeded"] and "Exported" in row


def test_export_failure_retries_the_export_alone(api, operator, namespace):
    create(api, namespace, export_ftj("expretry"))
    wait_phase(api, namespace, "expretry", "Running", timeout=30)
    end_training(api, namespace, "expretry")
    wait_phase(api, namespace, "expretry", "Exporting", timeout=30)
    end_export(api, namespace, "expretry", 1, "fail", exit_code=1)
    s = wait_status(
        api,
        namespace,
        "expretry",
        "export attempt 2 running",
        lambda st: (
            st.get("exportAttempt") == 2 and condition(st, "Exported")["reason"] == "ExportRunning"
        ),
    )
    assert s["phase"] == "Exporting"
    assert (s["attempt"], s.get("restarts") or 0, s["exportRestarts"]) == (1, 0, 1)
    # Training is not relaunched: one launcher, two export Jobs (the failed one kept).
    assert jobs(api, namespace, "expretry") == {
        "expretry-a1": "launcher",
        "expretry-export-a1": "export",
        "expretry-export-a2": "export",
    }
    assert "ExportFailure" in events(api, namespace, "expretry")

    report_artifacts(api, namespace, "expretry")
    end_export(api, namespace, "expretry", 2, "succeed")
    s = wait_phase(api, namespace, "expretry", "Succeeded", timeout=30)
    assert (s["attempt"], s["exportAttempt"], s["exportRestarts"]) == (1, 2, 1)
    assert s["artifacts"] == ARTIFACTS
    assert condition(s, "Exported")["status"] == "True"


def test_export_gate_not_met_ends_succeeded_without_artifacts(api, operator, namespace):
    gate = {"formats": ["safetensors"], "gate": {"metric": "add_accuracy", "min": 0.9}}
    metric = {
        "name": "add_accuracy",
        "type": "accuracy",
        "dataset": {"uri": "builtin://arithmetic-sft"},
        "extractor": "lastNumber",
    }
    create(api, namespace, export_ftj("expgate", export=gate, eval={"metrics": [metric]}))
    wait_phase(api, namespace, "expgate", "Running", timeout=30)
    end_training(api, namespace, "expgate")
    wait_phase(api, namespace, "expgate", "Exporting", timeout=30)
    end_export(api, namespace, "expgate", 1, "fail", exit_code=EXIT_GATE_NOT_MET)
    s = wait_phase(api, namespace, "expgate", "Succeeded", timeout=30)
    exported = condition(s, "Exported")
    assert (exported["status"], exported["reason"]) == ("False", "ExportGateNotMet")
    # The stage's word (its container's termination message, here written by kwok) is the why.
    said = stopped_message(api, namespace, "expgate", 1)
    assert said and exported["message"].endswith(f"nothing was exported: {said}")
    assert condition(s, "Succeeded")["reason"] == "ExportGateNotMet"
    assert not s.get("artifacts") and s["exportAttempt"] == 1 and not s.get("exportRestarts")
    assert "expgate-export-a2" not in jobs(api, namespace, "expgate")
