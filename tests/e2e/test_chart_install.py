"""The Helm chart against a real control plane: `helm install` is accepted (Pod Security
"restricted" admits the operator pod), the rendered objects pass kubeconform with schemas
read from the live server, and the operator, run with the chart's ServiceAccount token and
nothing else, takes a FineTuneJob from apply to Succeeded: the chart's RBAC is sufficient.

The operator Deployment's pod never really runs (kwok has no container runtime); the operator
process runs here instead, as the same identity (test_operator.Operator, with a kubeconfig
holding only the ServiceAccount's token)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import REPO_ROOT, kc, wait_for
from kubernetes import config as k8s_config
from test_operator import (
    STORAGE,
    TRAINER_IMAGE,
    Operator,
    _token,
    children,
    create,
    events,
    ftj,
    get,
    launcher,
    outcome,
    predicted,
    wait_phase,
)
from test_tooling import _kubeconform, _tool

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "charts" / "kubetune"
NODE_GROUP = f"chart-{uuid.uuid4().hex[:6]}"
# What a permission problem looks like in the operator's log (kubernetes client, kopf).
DENIED = re.compile(r"Forbidden|forbidden|(?<![\d,.:])403(?!\d)|Not enough permissions")
"""A refusal in the operator's log: a bare 403, not a port such as 40369 nor the
milliseconds of a timestamp such as 08:00:13,403."""
CLAIM = "kubetune-runs"
STATIC_CLASS = "kubetune-e2e-static"


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str


@pytest.fixture(scope="module")
def api(cluster) -> Any:
    cluster.add_gpu_nodes(2, group=NODE_GROUP)
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


def helm(cluster, tmp_path: Path, *args: str) -> str:
    out = _tool(cluster, tmp_path, "helm", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def install(cluster, tmp_path: Path, *sets: str) -> Release:
    """helm install into a fresh namespace that enforces Pod Security "restricted"."""
    suffix = uuid.uuid4().hex[:6]
    name, namespace = f"kt-{suffix}", f"kubetune-{suffix}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    args = ["install", name, str(CHART), "--namespace", namespace]
    for value in (f"trainer.image={TRAINER_IMAGE}", f"storage.default={STORAGE}", *sets):
        args += ["--set", value]
    helm(cluster, tmp_path, *args)
    return Release(name, namespace, service_account=f"{name}-kubetune")


def uninstall(cluster, tmp_path: Path, release: Release) -> None:
    _tool(cluster, tmp_path, "helm", "uninstall", release.name, "--namespace", release.namespace)
    cluster.kubectl("delete", "namespace", release.namespace, "--wait=false", "--ignore-not-found")


def service_account_kubeconfig(cluster, api, release: Release, path: Path) -> Path:
    """A kubeconfig for the cluster whose only credential is the chart ServiceAccount's token."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    server = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    user = "kubetune-operator"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [server],
        "users": [
            {
                "name": user,
                "user": {"token": _token(api, release.namespace, release.service_account)},
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": server["name"], "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def can_i(cluster, kubeconfig: Path, *args: str) -> bool:
    out = cluster.kubectl_proc("--kubeconfig", str(kubeconfig), "auth", "can-i", *args)
    assert out.stdout.strip() in ("yes", "no"), out.stdout + out.stderr
    return out.stdout.strip() == "yes"


@dataclass(frozen=True)
class ClusterWide:
    release: Release
    jobs_namespace: str
    """Where the chart created the default-storage claim (bound to a static volume)."""


@pytest.fixture(scope="module")
def cluster_wide(cluster, tmp_path_factory) -> Iterator[ClusterWide]:
    """A cluster-wide release that also creates the checkpoint claim in a jobs namespace. The
    claim binds to a static PersistentVolume made here (no provisioner in this cluster), so
    trainer pods that mount it can be scheduled."""
    tmp = tmp_path_factory.mktemp("helm")
    jobs = f"jobs-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", jobs)
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": jobs},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "storageClassName": STATIC_CLASS,
            "hostPath": {"path": f"/tmp/{jobs}"},
            "claimRef": {"namespace": jobs, "name": CLAIM},
        },
    }
    cluster.apply(volume)
    release = install(
        cluster,
        tmp,
        f"storage.default=pvc://{CLAIM}",
        "storage.pvc.create=true",
        f"storage.pvc.namespaces={{{jobs}}}",
        f"storage.pvc.storageClassName={STATIC_CLASS}",
        "storage.pvc.size=1Gi",
    )
    yield ClusterWide(release, jobs)
    uninstall(cluster, tmp, release)
    cluster.kubectl("delete", "namespace", jobs, "--wait=false", "--ignore-not-found")
    cluster.kubectl("delete", "persistentvolume", jobs, "--wait=false", "--ignore-not-found")


def run_job_to_success(
    api, operator: Operator, namespace: str, name: str, **spec: Any
) -> dict[str, Any]:
    """apply -> Running with the predicted children -> Succeeded, with no permission error.
    Returns the launcher Job."""
    body = ftj(
        name,
        pods=outcome("succeed", "2s"),
        resources={"nodeSelector": {kc.NODE_GROUP_LABEL: NODE_GROUP}},
        **spec,
    )
    create(api, namespace, body)
    wait_phase(api, namespace, name, "Running", timeout=60)
    job = get(api, namespace, name)
    expected = {(m["kind"], m["metadata"]["name"]) for m in predicted(job, 1)}
    assert {kind for kind, _ in expected} == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "Job",
    }
    wait_for(lambda: children(api, namespace, name) == expected, timeout=20, what="children")
    status = wait_phase(api, namespace, name, "Succeeded", timeout=90)
    assert status["attempt"] == 1
    reasons = wait_for(
        lambda: (r := events(api, namespace, name)) and "Succeeded" in r and r,
        timeout=20,
        what="events",
    )
    assert {"Launched", "Succeeded"} <= set(reasons), reasons
    log = operator.logs(tail=100_000)
    assert not [line for line in log.splitlines() if DENIED.search(line)], log
    return launcher(api, namespace, name, 1)


# --------------------------------------------------------------------------- proofs


def test_install_is_accepted_and_the_pod_passes_restricted_pod_security(
    cluster, cluster_wide, tmp_path
):
    release = cluster_wide.release
    manifest = helm(
        cluster,
        tmp_path,
        "get",
        "manifest",
        release.name,
        "-n",
        release.namespace,
    )
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "PersistentVolumeClaim",
            "Service",
            "ServiceAccount",
        ]
    )
    for doc in docs:
        namespace = doc["metadata"].get("namespace")
        args = ["get", doc["kind"], doc["metadata"]["name"], "-o", "name"]
        assert cluster.kubectl(*args, *(["-n", namespace] if namespace else [])).strip()
    # The ReplicaSet's pod is admitted by the "restricted" Pod Security level of its namespace
    # (a non-compliant one is refused and the ReplicaSet reports FailedCreate instead).
    selector = f"app.kubernetes.io/instance={release.name}"
    wait_for(
        lambda: cluster.kubectl(
            "get", "pods", "-n", release.namespace, "-l", selector, "-o", "name"
        ).strip(),
        timeout=60,
        what="the operator pod to be admitted",
    )
    failed = cluster.kubectl(
        "get",
        "events",
        "-n",
        release.namespace,
        "--field-selector",
        "reason=FailedCreate",
        "-o",
        "name",
    )
    assert not failed.strip(), failed


def test_chart_service_account_holds_no_more_than_it_needs(cluster, api, cluster_wide, tmp_path):
    release = cluster_wide.release
    kubeconfig = service_account_kubeconfig(cluster, api, release, tmp_path / "sa")
    for verb in ("get", "list", "watch"):
        assert not can_i(cluster, kubeconfig, verb, "secrets", "--all-namespaces")
    assert not can_i(cluster, kubeconfig, "create", "pods", "-n", "default")
    assert not can_i(cluster, kubeconfig, "update", "finetunejobs.kubetune.io", "-n", "default")
    assert not can_i(cluster, kubeconfig, "*", "*", "--all-namespaces")
    assert can_i(cluster, kubeconfig, "create", "jobs.batch", "-n", "any-namespace")
    status = ("finetunejobs.kubetune.io", "--subresource=status", "-n", "x")
    assert can_i(cluster, kubeconfig, "patch", *status)
    # A sweep stops a trial by a merge patch of its spec.runtime.suspend (kopf itself writes
    # nothing on jobs); it never replaces one.
    assert can_i(cluster, kubeconfig, "patch", "finetunejobs.kubetune.io", "-n", "x")
    role = cluster.get_json("clusterrole", release.service_account)
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert "secrets" not in rule["resources"], rule


def test_operator_as_the_chart_service_account_runs_a_job_to_success(
    cluster, api, cluster_wide, tmp_path
):
    kubeconfig = service_account_kubeconfig(cluster, api, cluster_wide.release, tmp_path / "sa")
    operator = Operator(kubeconfig, tmp_path)
    operator.start()
    try:
        # Checkpoints on the claim the chart created: its pods mount it, so they only run
        # because the claim exists in the job's namespace and is bound.
        launched = run_job_to_success(
            api,
            operator,
            cluster_wide.jobs_namespace,
            "chart-sft",
            checkpoint={"storage": f"pvc://{CLAIM}/e2e"},
        )
    finally:
        operator.stop()
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in launched["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [CLAIM]


def test_namespaced_install_serves_its_namespace_only(cluster, api, namespace, tmp_path):
    release = install(cluster, tmp_path, f"watchNamespace={namespace}")
    try:
        kubeconfig = service_account_kubeconfig(cluster, api, release, tmp_path / "sa")
        assert can_i(cluster, kubeconfig, "create", "jobs.batch", "-n", namespace)
        assert not can_i(cluster, kubeconfig, "create", "jobs.batch", "-n", "default")
        assert not can_i(cluster, kubeconfig, "list", "finetunejobs.kubetune.io", "-A")
        operator = Operator(kubeconfig, tmp_path)
        operator.start(KUBETUNE_NAMESPACE=namespace)
        try:
            run_job_to_success(api, operator, namespace, "ns-sft")
        finally:
            operator.stop()
    finally:
        uninstall(cluster, tmp_path, release)


def test_high_availability_release_peers_and_acts(cluster, api, namespace, tmp_path):
    """kopf peering CRDs and the peering object come with the release (the object as a hook,
    after its CRD); the operator in HA mode joins it with the chart's permissions."""
    release = install(cluster, tmp_path, "highAvailability.enabled=true")
    try:
        peering = cluster.get_json("clusterkopfpeering.kopf.dev", "kubetune")
        assert peering["metadata"]["name"] == "kubetune"
        kubeconfig = service_account_kubeconfig(cluster, api, release, tmp_path / "sa")
        operator = Operator(kubeconfig, tmp_path)
        operator.start(KUBETUNE_HA="1")
        try:
            run_job_to_success(api, operator, namespace, "ha-sft")
            # The operator announced itself in the peering object (kopf's keep-alive).
            status = cluster.get_json("clusterkopfpeering.kopf.dev", "kubetune").get("status")
            assert status, "no peer registered"
        finally:
            operator.stop()
    finally:
        uninstall(cluster, tmp_path, release)


def test_helm_install_rejects_a_bad_value_before_touching_the_cluster(cluster, tmp_path):
    namespace = f"kubetune-{uuid.uuid4().hex[:6]}"
    out = _tool(
        cluster,
        tmp_path,
        "helm",
        "install",
        "bad",
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--set",
        "metrics.port=0",
    )
    assert out.returncode != 0
    assert "/metrics/port" in out.stderr and "minimum" in out.stderr, out.stderr
    assert cluster.kubectl_proc("get", "namespace", namespace).returncode != 0


@pytest.fixture(scope="module")
def schemas(cluster, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kubeconform-schemas")
    kc.write_kubeconform_schemas(cluster, out)
    return out


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["storage.pvc.create=true", "watchNamespace=team-a"],
        ["highAvailability.enabled=false", "logLevel=debug", "image.digest=sha256:" + "0" * 64],
    ],
    ids=["defaults", "namespaced-with-claim", "debug-digest"],
)
def test_rendered_chart_and_examples_pass_kubeconform_offline(cluster, schemas, tmp_path, values):
    args = ["template", "kubetune", str(CHART), "--namespace", "kubetune-system", "--include-crds"]
    for value in values:
        args += ["--set", value]
    rendered = helm(cluster, tmp_path, *args)
    # The FineTuneJob examples are checked against the CRD schema the server serves.
    examples = [
        (REPO_ROOT / "manifests" / "examples" / name).read_text()
        for name in ("sft.yaml", "dpo.yaml")
    ]
    stream = "\n---\n".join([rendered, *examples])
    out = _kubeconform(cluster, tmp_path, schemas, stream)
    assert out.returncode == 0, out.stdout + out.stderr
    count = len([d for d in yaml.safe_load_all(stream) if d])
    assert f"Valid: {count}" in out.stdout, out.stdout
