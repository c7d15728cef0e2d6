"""The ``rayjob`` launcher against KubeRay's own CRDs (issue 6).

The RayJob and RayCluster CRDs come from KubeRay's Go module (tests/cluster/fetch-kuberay-crds.sh,
pinned in versions.env), not hand-written, so the API server validates the operator's RayJobs
against KubeRay's real schema. No KubeRay controller runs: the test drives each RayJob's
``status.jobDeploymentStatus`` / ``jobStatus`` the way KubeRay would, and the FineTuneJob follows.

The CRDs are removed again when the module ends (waiting until the API server no longer serves
them), so the ``auto`` launcher of the other e2e modules keeps choosing ``job``.
"""

from __future__ import annotations

import copy
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import REPO_ROOT, kc, wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from test_operator import (
    TRAINER_IMAGE,
    Operator,
    condition,
    create,
    events,
    ftj,
    get,
    status,
    wait_phase,
)

from kubetune.api import FineTuneJob
from kubetune.builders import ClusterFacts, build_children, names
from kubetune.planner import make_plan

pytestmark = pytest.mark.e2e

FETCH_SCRIPT = REPO_ROOT / "tests" / "cluster" / "fetch-kuberay-crds.sh"
RAY = ("ray.io", "v1", "rayjobs")
RAY_CRDS = ("rayjobs.ray.io", "rayclusters.ray.io")
EXAMPLES = REPO_ROOT / "manifests" / "examples"


def _kuberay_crds_dir() -> Path:
    """The cached CRDs (fetched now when missing and the network allows)."""
    subprocess.run(["bash", str(FETCH_SCRIPT)], capture_output=True, text=True, check=False)
    out = subprocess.run(
        ["bash", str(FETCH_SCRIPT), "dir"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def kuberay(cluster) -> Iterator[Path]:
    crds = _kuberay_crds_dir()
    if not (crds.parent / ".complete").exists():
        reason = f"KubeRay CRDs not fetched into {crds}: run {FETCH_SCRIPT} (or build.sh)"
        if os.environ.get("KUBETUNE_REQUIRE_E2E") == "1":
            pytest.fail(reason + " [KUBETUNE_REQUIRE_E2E=1]", pytrace=False)
        pytest.skip(reason)
    kc.apply_crds(cluster, crds)
    yield crds
    cluster.kubectl("delete", "crd", *RAY_CRDS, "--ignore-not-found", "--wait=true")
    ext = k8s.ApiextensionsV1Api(k8s_config.new_client_from_config(str(cluster.kubeconfig)))

    def gone() -> bool:
        for name in RAY_CRDS:
            try:
                ext.read_custom_resource_definition(name)
                return False
            except ApiException as err:
                if err.status != 404:
                    raise
        return True

    wait_for(gone, timeout=60, what="KubeRay CRDs removed")


@pytest.fixture(scope="module")
def api(cluster, kuberay) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="module")
def operator(cluster, api, tmp_path_factory) -> Iterator[Operator]:
    # Started after the CRDs: it finds rayjobs.ray.io on its first reconcile.
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator-rayjob"))
    op.start()
    yield op
    op.stop()


def _custom(api: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api)


def rayjob(api: k8s.ApiClient, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return _custom(api).get_namespaced_custom_object(*RAY[:2], ns, RAY[2], name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def drive(api: k8s.ApiClient, ns: str, name: str, **fields: str) -> None:
    """Write a RayJob's status as KubeRay's controller would (the status subresource)."""
    _custom(api).patch_namespaced_custom_object_status(
        *RAY[:2], ns, RAY[2], name, {"status": fields}
    )


def predicted_rayjob(job: dict[str, Any], attempt: int) -> dict[str, Any]:
    model = FineTuneJob.model_validate(
        {k: job[k] for k in ("apiVersion", "kind", "metadata", "spec")}
    )
    plan = make_plan(model, attempt=attempt, default_storage="s3://kubetune-e2e/runs")
    facts = ClusterFacts(trainer_image=TRAINER_IMAGE, rayjob_crd=True)
    return next(c for c in build_children(model, plan, facts) if c["kind"] == "RayJob")


def contains(actual: Any, expected: Any) -> bool:
    """Every field of expected is in actual with the same value (the API server may add
    defaults from KubeRay's schema; it must not drop or change anything)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(contains(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return actual == expected


def two_node_job(name: str) -> dict[str, Any]:
    body = ftj(name, resources={"nodes": 2})
    body["spec"]["resources"].pop("nodeSelector")  # no pods: nothing runs KubeRay's clusters
    return body


# --------------------------------------------------------------------------- proofs


def test_every_examples_rayjob_passes_kuberays_schema_strictly(api, namespace):
    """Server-side dry run with fieldValidation=Strict: an unknown or misplaced field in what the
    builders emit is an error, not silently pruned."""
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs = list(yaml.safe_load_all(path.read_text()))
        if len(docs) != 1:
            continue
        data = copy.deepcopy(docs[0])
        data["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
        for nodes in (1, 3):
            data["spec"]["resources"] = {**data["spec"].get("resources", {}), "nodes": nodes}
            body = predicted_rayjob(data, attempt=1)
            created = _custom(api).create_namespaced_custom_object(
                *RAY[:2], namespace, RAY[2], body, dry_run="All", field_validation="Strict"
            )
            assert contains(created["spec"], body["spec"]), path.name
            workers = created["spec"]["rayClusterSpec"].get("workerGroupSpecs") or []
            assert [w["replicas"] for w in workers] == ([2] if nodes == 3 else [])


def test_auto_picks_rayjob_and_follows_kuberays_status_to_success(api, operator, namespace):
    create(api, namespace, two_node_job("ray"))
    s = wait_phase(api, namespace, "ray", "Running", timeout=30)
    assert s["attempt"] == 1
    made = wait_for(lambda: rayjob(api, namespace, "ray-a1"), timeout=30, what="RayJob ray-a1")
    assert contains(made["spec"], predicted_rayjob(get(api, namespace, "ray"), 1)["spec"])
    assert made["metadata"]["labels"][names.LABEL_ATTEMPT] == "1"
    (owner,) = made["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("FineTuneJob", "ray", True)
    # No Indexed Job: auto chose rayjob.
    assert not k8s.BatchV1Api(api).list_namespaced_job(namespace).items

    drive(api, namespace, "ray-a1", jobDeploymentStatus="Initializing")
    drive(api, namespace, "ray-a1", jobDeploymentStatus="Running", jobStatus="RUNNING")
    s = wait_for(
        lambda: (
            (st := status(api, namespace, "ray"))
            and condition(st, "Running").get("reason") == "Running"
            and st
        ),
        timeout=20,
        what="Running condition from the RayJob",
    )
    assert s["phase"] == "Running"
    drive(api, namespace, "ray-a1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    s = wait_phase(api, namespace, "ray", "Succeeded", timeout=30)
    assert s["attempt"] == 1 and s.get("restarts") in (None, 0)
    assert condition(s, "Succeeded")["status"] == "True"


def test_failed_rayjob_is_retried_as_attempt_two(api, operator, namespace):
    create(api, namespace, two_node_job("rayfail"))
    wait_for(lambda: rayjob(api, namespace, "rayfail-a1"), timeout=30, what="RayJob rayfail-a1")
    drive(api, namespace, "rayfail-a1", jobDeploymentStatus="Running", jobStatus="RUNNING")
    drive(
        api,
        namespace,
        "rayfail-a1",
        jobDeploymentStatus="Failed",
        jobStatus="FAILED",
        reason="AppFailed",
        message="Job entrypoint command failed with exit code 1, last available logs: boom",
    )
    a2 = wait_for(lambda: rayjob(api, namespace, "rayfail-a2"), timeout=30, what="attempt 2")
    assert a2["metadata"]["labels"][names.LABEL_ATTEMPT] == "2"
    # The RayJob is created before the status patch that reports it: wait for the patch.
    s = wait_for(
        lambda: (
            (st := status(api, namespace, "rayfail"))
            and condition(st, "Running")["status"] == "True"
            and st.get("attempt") == 2
            and st
        ),
        timeout=20,
        what="attempt 2 running",
    )
    assert (s["attempt"], s["restarts"], s["disruptions"]) == (2, 1, 0)
    assert "ApplicationFailure" in events(api, namespace, "rayfail")
    # The failed attempt's RayJob is kept for inspection; attempt 2 has its own plan.
    assert rayjob(api, namespace, "rayfail-a1")["status"]["jobStatus"] == "FAILED"
    plan = k8s.CoreV1Api(api).read_namespaced_config_map("rayfail-plan-a2", namespace)
    assert '"attempt":2' in plan.data["plan.json"].replace(" ", "")

    # A resync (every 5 s here) in between: what it keeps of a RayJob launcher must still
    # turn its next event into a pass.
    time.sleep(6)
    drive(api, namespace, "rayfail-a2", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    s = wait_phase(api, namespace, "rayfail", "Succeeded", timeout=30)
    assert (s["attempt"], s["restarts"]) == (2, 1)


def test_application_failures_exhausted_fail_with_the_exit_code(api, operator, namespace):
    body = two_node_job("rayexhaust")
    body["spec"]["resume"] = {"maxRestarts": 0, "backoffSeconds": 1, "maxBackoffSeconds": 1}
    create(api, namespace, body)
    wait_for(lambda: rayjob(api, namespace, "rayexhaust-a1"), timeout=30, what="attempt 1")
    drive(
        api,
        namespace,
        "rayexhaust-a1",
        jobDeploymentStatus="Failed",
        jobStatus="FAILED",
        reason="AppFailed",
        message="Job entrypoint command failed with exit code 1",
    )
    s = wait_phase(api, namespace, "rayexhaust", "Failed", timeout=30)
    failed = condition(s, "Failed")
    assert failed["reason"] == "RestartsExhausted"
    assert "exit code 1" in failed["message"] and "AppFailed" in failed["message"]
    assert rayjob(api, namespace, "rayexhaust-a2") is None
