"""The Helm chart, the rendered install manifest and the container images, checked without a
cluster or a Docker engine.

Rendering needs the helm binary built with the e2e control plane (tests/cluster/build.sh);
those tests skip when it is missing (and fail under KUBETUNE_REQUIRE_E2E=1). The rest (CRD
copy, dashboard and alert metric names, the Dockerfiles' dependency sets against uv.lock) need
nothing but the repository and uv."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from prometheus_client import Counter, Gauge, Histogram

from kubetune.controller import api_client
from kubetune.controller.metrics import OperatorMetrics
from kubetune.controller.sweep_lifecycle import CreateTrial, DeleteTrial, StopTrial
from kubetune.crd import render as render_crd
from kubetune.crd import render_sweep

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
INSTALL_MANIFEST = REPO / "manifests" / "install.yaml"
RENDER_SCRIPT = REPO / "scripts" / "render-install.sh"

# --------------------------------------------------------------------------- helm


@cache
def _helm() -> Path | None:
    if os.environ.get("HELM"):
        return Path(os.environ["HELM"])
    out = subprocess.run(
        ["bash", str(REPO / "tests" / "cluster" / "build.sh"), "bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    path = Path(out.stdout.strip()) / "helm"
    return path if os.access(path, os.X_OK) else None


@pytest.fixture(scope="module")
def helm(tmp_path_factory) -> Any:
    """Run helm (cache and config in a temporary directory); skips when helm is not built."""
    binary = _helm()
    if binary is None:
        reason = "helm is not built: run `make cluster-build` (tests/cluster/build.sh)"
        if os.environ.get("KUBETUNE_REQUIRE_E2E") == "1":
            pytest.fail(reason + " [KUBETUNE_REQUIRE_E2E=1]", pytrace=False)
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("helm")
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=env, timeout=120
        )

    return run


def render(helm: Any, *sets: str, namespace: str = "kubetune-system") -> list[dict[str, Any]]:
    args = ["template", "kubetune", str(CHART), "--namespace", namespace]
    for value in sets:
        args += ["--set", value]
    out = helm(*args)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def rules_of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [rule for d in docs if d["kind"] == kind for rule in d["rules"]]


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def _group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def _plural(kind: str) -> str:
    return kind.lower() + ("es" if kind.endswith("s") else "s")


# --------------------------------------------------------------------------- chart: static


def test_chart_crds_are_the_generated_crds():
    copied = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert copied == sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert (CHART / "crds" / "finetunejob.yaml").read_text() == render_crd(), (
        "charts/kubetune/crds is stale: run `make install-manifest`"
    )
    assert (CHART / "crds" / "finetunesweep.yaml").read_text() == render_sweep(), (
        "charts/kubetune/crds is stale: run `make install-manifest`"
    )


def _exported_metric_names() -> set[str]:
    """Every series name the operator's registry can expose, suffixes included."""
    names: set[str] = set()
    for collector in OperatorMetrics().registry._collector_to_names:
        name = collector._name
        if isinstance(collector, Counter):
            names |= {f"{name}_total", f"{name}_created"}
        elif isinstance(collector, Histogram):
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
        elif isinstance(collector, Gauge):
            names.add(name)
    return names


def test_dashboard_and_alerts_query_only_metrics_the_operator_exports():
    exported = _exported_metric_names()
    assert {"kubetune_jobs", "kubetune_job_step", "kubetune_job_restarts_total"} <= exported
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    alerts = (CHART / "templates" / "prometheusrule.yaml").read_text()
    used_in_dashboard = set(re.findall(r"kubetune_[a-z_]+", " ".join(exprs)))
    used_in_alerts = set(re.findall(r"kubetune_[a-z_]+", alerts))
    assert used_in_dashboard - exported == set()
    assert used_in_alerts - exported == set()
    # What a platform team watches: phases, progress, loss, throughput, restarts, latency.
    for metric in (
        "kubetune_jobs",
        "kubetune_job_step",
        "kubetune_job_loss",
        "kubetune_job_tokens_per_second",
        "kubetune_job_restarts_total",
        "kubetune_reconcile_duration_seconds_bucket",
    ):
        assert metric in used_in_dashboard, metric
    for metric in ("kubetune_jobs", "kubetune_job_step", "kubetune_job_restarts_total"):
        assert metric in used_in_alerts, metric


def test_values_file_satisfies_its_own_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)
    # Every object of the schema is closed, except the pass-through Kubernetes ones.
    open_ok = {"global", "affinity", "tolerations[]", "extraEnv[].valueFrom"}
    open_ok |= {f"studio.{path}" for path in open_ok - {"global"}}

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False or path in open_ok, path
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}".lstrip("."))
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")


# --------------------------------------------------------------------------- chart: rendered


def test_helm_lint_strict(helm):
    out = helm("lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr


def test_install_manifest_is_current(helm):
    out = subprocess.run(
        ["bash", str(RENDER_SCRIPT), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "HELM": str(_helm())},
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    docs = [d for d in yaml.safe_load_all(INSTALL_MANIFEST.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"]
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"} <= set(
        kinds
    )
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] == "Deployment"} == {
        "kubetune-system"
    }


def test_cluster_role_grants_exactly_what_the_operator_uses(helm):
    rules = rules_of(render(helm), "ClusterRole")
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "*" not in rule["apiGroups"], rule
        assert not rule.get("nonResourceURLs"), rule
    granted = grants(rules)
    assert not [key for key in granted if key[1] in ("secrets", "pods/exec", "nodes")]
    # No power over RBAC beyond creating the trainer's Role/RoleBinding.
    assert not {"escalate", "bind", "impersonate"} & set().union(*granted.values())
    # Every child kind the operator observes is created, listed, read and deleted.
    for api_version, kind in [*api_client.CHILD_KINDS, api_client.RAYJOB]:
        verbs = granted[(_group(api_version), _plural(kind))]
        assert {"create", "list", "get", "delete"} <= verbs, (kind, verbs)
    # The trainer's per-job Role is only grantable if the operator holds what it grants.
    from kubetune.builders.rbac import STATUS_RESOURCE, TRAINER_VERBS

    assert set(TRAINER_VERBS) <= granted[("kubetune.io", STATUS_RESOURCE)]
    # kopf writes nothing on jobs (event handlers only): the lifecycle deletes a job past its
    # TTL; a sweep's trials are FineTuneJobs it creates, stops (a merge patch of
    # spec.runtime.suspend) and deletes (a trial its study does not know). kopf's handlers on
    # sweeps patch their annotations.
    trial_verbs = {CreateTrial: "create", StopTrial: "patch", DeleteTrial: "delete"}
    assert granted[("kubetune.io", "finetunejobs")] == {"get", "list", "watch", "delete"} | set(
        trial_verbs.values()
    )
    assert granted[("kubetune.io", "finetunesweeps")] == {"get", "list", "watch", "patch"}
    assert granted[("kubetune.io", "finetunesweeps/status")] == {"patch"}
    assert granted[("", "events")] == {"create", "list"}
    assert granted[("", "pods")] == {"list"}  # no get/watch/create, no exec, no logs
    assert granted[("apiextensions.k8s.io", "customresourcedefinitions")] == {
        "get",
        "list",
        "watch",
    }
    # Nothing written anywhere the operator does not own: no update, no deletecollection.
    assert not {"update", "deletecollection"} & set().union(*granted.values())


def test_namespaced_install_renders_role_and_only_reads_cluster_wide(helm):
    docs = render(helm, "watchNamespace=team-a")
    role, binding = one(docs, "Role"), one(docs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "team-a"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubetune", "namespace": "kubetune-system"}
    ]
    crds = ("apiextensions.k8s.io", "customresourcedefinitions")
    cluster_wide = grants(rules_of(render(helm), "ClusterRole"))
    # The same powers as the cluster-wide install, held in team-a only.
    assert grants(role["rules"]) == {k: v for k, v in cluster_wide.items() if k != crds}
    assert grants(rules_of(docs, "ClusterRole")) == {
        crds: {"get", "list", "watch"},
        ("", "namespaces"): {"list", "watch"},
    }
    assert [d["kind"] for d in docs if d["kind"] == "ClusterRoleBinding"] == ["ClusterRoleBinding"]
    assert operator_env(docs)["KUBETUNE_NAMESPACE"] == "team-a"


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_operator_pod_is_locked_down_and_configured_from_values(helm):
    docs = render(
        helm,
        "trainer.image=registry.example/trainer:1.2.3",
        "storage.default=s3://ckpt/runs",
        "metrics.port=9090",
    )
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert container["ports"] == [
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        {"name": "health", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    expected = {
        "KUBETUNE_TRAINER_IMAGE": "registry.example/trainer:1.2.3",
        "KUBETUNE_DEFAULT_STORAGE": "s3://ckpt/runs",
        "KUBETUNE_METRICS_PORT": "9090",
        "KUBETUNE_NAMESPACE": "",
        "KUBETUNE_HA": "0",
    }
    assert expected.items() <= operator_env(docs).items()
    assert one(docs, "Deployment")["spec"]["replicas"] == 1
    assert one(docs, "Service")["spec"]["ports"][0]["targetPort"] == "metrics"
    assert container["image"] == "ghcr.io/kubetune/operator:0.1.0"
    digest = "sha256:" + "a" * 64
    pinned = one(render(helm, f"image.digest={digest}"), "Deployment")
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@" + digest)


def test_sweep_storage_url_comes_from_a_secret(helm):
    def storage_env(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        return [e for e in container["env"] if e["name"] == "KUBETUNE_SWEEP_STORAGE"]

    assert storage_env(render(helm)) == []  # sweeps then wait with StudyReady=False
    docs = render(helm, "sweeps.storage.secretName=studio-db", "sweeps.storage.secretKey=uri")
    assert storage_env(docs) == [
        {
            "name": "KUBETUNE_SWEEP_STORAGE",
            "valueFrom": {"secretKeyRef": {"name": "studio-db", "key": "uri"}},
        }
    ]
    # The pod gets the URL from the kubelet: the operator itself still reads no Secret.
    assert not [k for k in grants(rules_of(docs, "ClusterRole")) if k[1] == "secrets"]


def test_optional_monitoring_objects(helm):
    assert not {"ServiceMonitor", "PrometheusRule"} & {d["kind"] for d in render(helm)}
    docs = render(
        helm,
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prom",
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.stuckFor=45m",
    )
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = one(docs, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True, "per-job series keep `job`"
    rules = {r["alert"]: r for r in one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert {"KubetuneJobsFailed", "KubetuneJobsWithoutProgress", "KubetuneRestartsClimbing"} <= (
        set(rules)
    )
    assert rules["KubetuneJobsWithoutProgress"]["for"] == "45m"
    assert "kubetune_job_step[45m]" in rules["KubetuneJobsWithoutProgress"]["expr"]
    # Prometheus' own templates survive Helm's.
    assert "{{ $labels.method }}" in rules["KubetuneJobsFailed"]["annotations"]["summary"]
    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["kubetune.json"])["uid"] == "kubetune-operator"


def test_high_availability_runs_a_peered_pair(helm):
    docs = render(helm, "highAvailability.enabled=true")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert operator_env(docs)["KUBETUNE_HA"] == "1"
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert crds == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    # The peering object kubetune.controller.peering joins (settings.peering.name).
    peering = one(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "kubetune"
    assert grants(rules_of(docs, "ClusterRole"))[("kopf.dev", "clusterkopfpeerings")] == {
        "get",
        "list",
        "watch",
        "patch",
    }
    namespaced = render(helm, "highAvailability.enabled=true", "watchNamespace=team-a")
    assert one(namespaced, "KopfPeering")["metadata"]["namespace"] == "team-a"
    assert ("kopf.dev", "kopfpeerings") in grants(one(namespaced, "Role")["rules"])
    without_crds = render(
        helm, "highAvailability.enabled=true", "highAvailability.installPeeringCRDs=false"
    )
    assert "CustomResourceDefinition" not in {d["kind"] for d in without_crds}


def test_default_storage_claim_is_created_where_jobs_run(helm):
    assert "PersistentVolumeClaim" not in {d["kind"] for d in render(helm)}
    docs = render(
        helm,
        "storage.default=pvc://ckpts/kubetune",
        "storage.pvc.create=true",
        "storage.pvc.storageClassName=nfs-rwx",
        "storage.pvc.size=2Ti",
        "storage.pvc.namespaces={team-a,team-b}",
    )
    claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert [(c["metadata"]["namespace"], c["metadata"]["name"]) for c in claims] == [
        ("team-a", "ckpts"),
        ("team-b", "ckpts"),
    ]
    for claim in claims:
        assert claim["spec"] == {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "nfs-rwx",
            "resources": {"requests": {"storage": "2Ti"}},
        }
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    watched = render(helm, "storage.pvc.create=true", "watchNamespace=team-c")
    assert one(watched, "PersistentVolumeClaim")["metadata"]["namespace"] == "team-c"
    assert operator_env(watched)["KUBETUNE_DEFAULT_STORAGE"] == "pvc://kubetune-runs"


def test_notes_tell_the_user_their_next_commands(helm):
    def notes(*sets: str) -> str:
        args = ["install", "kubetune", str(CHART), "-n", "ml", "--dry-run=client"]
        for value in sets:
            args += ["--set", value]
        out = helm(*args)
        assert out.returncode == 0, out.stderr
        return out.stdout.split("NOTES:", 1)[1]

    default = notes()
    assert "kubectl -n ml rollout status deployment/kubetune" in default
    assert "kubectl get ftj -A -w" in default
    assert 'PersistentVolumeClaim "kubetune-runs"' in default
    namespaced = notes("watchNamespace=team-a", "storage.pvc.create=true")
    assert "serving FineTuneJobs in namespace team-a only" in namespaced
    assert "kubectl get ftj -n team-a -w" in namespaced
    assert "This release created it in: team-a." in namespaced
    s3 = notes("storage.default=s3://bucket/runs")
    assert "PersistentVolumeClaim" not in s3 and "s3://bucket/runs" in s3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("metrics.port=0", "/metrics/port"),
        ("imagee.tag=1", "imagee"),
        ("storage.pvc.accessModes={ReadWriteAlways}", "/storage/pvc/accessModes/0"),
        ("storage.default=gs://bucket", "/storage/default"),
        ("watchNamespace=Team_A", "/watchNamespace"),
        ("highAvailability.replicas=1", "/highAvailability/replicas"),
        ("metrics.prometheusRule.stuckFor=soon", "/metrics/prometheusRule/stuckFor"),
        ("studio.snapshots.root=relative/dir", "/studio/snapshots/root"),
        ("studio.database.existingSecret=Not_A_Name", "/studio/database/existingSecret"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(helm, value, message):
    out = helm("template", "kubetune", str(CHART), "--set", value)
    assert out.returncode != 0, f"{value} was accepted"
    assert message in out.stderr, out.stderr


def test_pvc_creation_needs_pvc_default_storage(helm):
    out = helm(
        "template",
        "kubetune",
        str(CHART),
        "--set",
        "storage.default=s3://b/p",
        "--set",
        "storage.pvc.create=true",
    )
    assert out.returncode != 0
    assert "storage.pvc.create needs storage.default to be pvc://" in out.stderr


# --------------------------------------------------------------------------- chart: studio

STUDIO_OBJECTS = {"kubetune-studio", "kubetune-studio-postgresql"}
LOCKED_DOWN = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind}/{name}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_studio_is_off_by_default(helm):
    assert not [d for d in render(helm) if d["metadata"]["name"] in STUDIO_OBJECTS]


def test_studio_pod_is_locked_down_and_reads_its_secrets_by_reference(helm):
    docs = render(
        helm,
        "studio.enabled=true",
        "studio.database.existingSecret=studio-db",
        "studio.admin.existingSecret=studio-admin",
        "studio.snapshots.claim=preferences",
    )
    deployment = named(docs, "Deployment", "kubetune-studio")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (migrate,) = pod["initContainers"]
    (studio,) = pod["containers"]
    assert migrate["command"] == ["kubetune-studio", "migrate"]
    assert studio["command"][:3] == ["kubetune-studio", "serve", "--no-migrate"]
    for container in (migrate, studio):
        assert container["securityContext"] == LOCKED_DOWN, container["name"]
        assert env_of(container)["KUBETUNE_STUDIO_DATABASE_URL"] == {
            "secretKeyRef": {"name": "studio-db", "key": "url"}
        }
    env = env_of(studio)
    assert env["KUBETUNE_STUDIO_ADMIN_PASSWORD"] == {
        "secretKeyRef": {"name": "studio-admin", "key": "password"}
    }
    assert env["KUBETUNE_STUDIO_SNAPSHOT_ROOT"] == "/snapshots"
    claim = next(v for v in pod["volumes"] if v["name"] == "snapshots")
    assert claim["persistentVolumeClaim"] == {"claimName": "preferences"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert studio[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    # Its own ServiceAccount, without a token and without any Role.
    account = named(docs, "ServiceAccount", "kubetune-studio")
    assert account["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "kubetune-studio"
    bound = [
        s["name"]
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for s in d["subjects"]
    ]
    assert "kubetune-studio" not in bound
    service = named(docs, "Service", "kubetune-studio")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert studio["image"] == "ghcr.io/kubetune/studio:0.1.0"
    assert not [d for d in docs if d["kind"] == "StatefulSet"]


def test_studio_bundled_postgresql(helm):
    docs = render(helm, "studio.enabled=true", "studio.postgresql.enabled=true")
    database = named(docs, "StatefulSet", "kubetune-studio-postgresql")
    pod = database["spec"]["template"]["spec"]
    (postgres,) = pod["containers"]
    assert postgres["securityContext"] == LOCKED_DOWN
    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and pod["automountServiceAccountToken"] is False
    )
    secret = named(docs, "Secret", "kubetune-studio-postgresql")
    assert len(secret["data"]["password"]) > 20
    reference = {"secretKeyRef": {"name": "kubetune-studio-postgresql", "key": "password"}}
    assert env_of(postgres)["POSTGRES_PASSWORD"] == reference
    studio = named(docs, "Deployment", "kubetune-studio")["spec"]["template"]["spec"]
    env = studio["containers"][0]["env"]
    names = [e["name"] for e in env]
    # The URL is built from the password variable, which must come first to be expanded.
    assert names.index("KUBETUNE_STUDIO_DB_PASSWORD") < names.index("KUBETUNE_STUDIO_DATABASE_URL")
    assert env_of(studio["containers"][0])["KUBETUNE_STUDIO_DATABASE_URL"] == (
        "postgresql://studio:$(KUBETUNE_STUDIO_DB_PASSWORD)@kubetune-studio-postgresql:5432/studio"
    )
    assert named(docs, "Service", "kubetune-studio-postgresql")["spec"]["clusterIP"] == "None"
    given = render(
        helm,
        "studio.enabled=true",
        "studio.postgresql.enabled=true",
        "studio.postgresql.auth.existingSecret=pg-pass",
    )
    assert not [d for d in given if d["kind"] == "Secret"]


def test_an_ab_router_per_experiment_beside_the_studio(helm):
    docs = render(
        helm,
        "studio.enabled=true",
        "studio.database.existingSecret=studio-db",
        "studio.abRouters[0].experiment=chat-ab",
        "studio.abRouters[0].replicas=2",
        "studio.abRouters[1].experiment=tone",
    )
    router = named(docs, "Deployment", "kubetune-studio-ab-chat-ab")
    assert router["spec"]["replicas"] == 2
    pod = router["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == [
        *("kubetune-studio", "ab-serve", "chat-ab"),
        *("--host", "0.0.0.0", "--port", "8090"),
    ]
    assert container["securityContext"] == LOCKED_DOWN
    assert pod["automountServiceAccountToken"] is False
    assert env_of(container)["KUBETUNE_STUDIO_DATABASE_URL"] == {
        "secretKeyRef": {"name": "studio-db", "key": "url"}
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    named(docs, "Deployment", "kubetune-studio-ab-tone")
    # Each Service reaches its own router's pods only, and the studio's Service none of them.
    labels = router["spec"]["template"]["metadata"]["labels"]
    selects = {
        name: named(docs, "Service", name)["spec"]["selector"]
        for name in ("kubetune-studio", "kubetune-studio-ab-chat-ab", "kubetune-studio-ab-tone")
    }
    reached = {n for n, sel in selects.items() if sel.items() <= labels.items()}
    assert reached == {"kubetune-studio-ab-chat-ab"}
    assert named(docs, "Service", "kubetune-studio-ab-chat-ab")["spec"]["ports"][0]["port"] == 8090
    assert not [d for d in render(helm) if "ab-router" in str(d["metadata"].get("labels"))]


def test_an_ab_router_needs_an_experiment_slug(helm):
    args = ["template", "kubetune", str(CHART), "--set", "studio.enabled=true"]
    args += ["--set", "studio.database.existingSecret=db"]
    out = helm(*args, "--set", "studio.abRouters[0].experiment=Chat_AB")
    assert out.returncode != 0 and "abRouters" in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["studio.enabled=true"], "studio: needs a database"),
        (
            [
                "studio.enabled=true",
                "studio.postgresql.enabled=true",
                "studio.database.existingSecret=db",
            ],
            "not both",
        ),
    ],
)
def test_studio_needs_exactly_one_database(helm, sets, message):
    args = ["template", "kubetune", str(CHART)]
    for value in sets:
        args += ["--set", value]
    out = helm(*args)
    assert out.returncode != 0 and message in out.stderr, out.stderr


# --------------------------------------------------------------------------- images

# Dockerfile -> (glibc of its base, packages its extras must bring, packages they must not).
IMAGES = {
    REPO / "operator" / "Dockerfile": (
        (2, 36),  # Debian bookworm
        {"kopf", "kubernetes", "prometheus-client", "pydantic"},
        {"torch", "ray", "deepspeed"},
    ),
    REPO / "trainer_image" / "Dockerfile": (
        (2, 39),  # Ubuntu 24.04
        {"torch", "deepspeed", "trl", "ray", "transformers", "peft", "gguf", "onnxruntime"},
        {"kopf"},
    ),
    REPO / "studio" / "Dockerfile": (
        (2, 36),  # Debian bookworm
        {"fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "psycopg-binary", "openai"},
        {"torch", "ray", "kopf", "selenium"},
    ),
}
TARGET = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
    "python_full_version": "3.11.14",
}


def _uv() -> str:
    """The uv scripts/setup.sh uses: on PATH at the pinned version, else its private copy."""
    pinned = _setup_uv_version()
    found = shutil.which("uv")
    if found:
        version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
        if version.split()[1:2] == [pinned]:
            return found
    cache = Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune"))
    private = cache / "tools" / f"uv-{pinned}" / "bin" / "uv"
    if not private.exists():
        pytest.skip(f"uv {pinned} not found: run scripts/setup.sh")
    return str(private)


def _setup_uv_version() -> str:
    match = re.search(r"^UV_VERSION=(\S+)$", (REPO / "scripts" / "setup.sh").read_text(), re.M)
    assert match
    return match.group(1)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _uv_syncs(dockerfile: Path) -> list[list[str]]:
    commands = []
    for keyword, rest in _instructions(dockerfile):
        if keyword == "RUN" and "uv sync" in rest:
            words = shlex.split(rest)
            commands.append(words[words.index("uv") :])
    return commands


def _extras(command: list[str]) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == "--extra"]


def _linux_tags(glibc: tuple[int, int]) -> set[Tag]:
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc[1], 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    platforms.append("linux_x86_64")
    tags = set(cpython_tags((3, 11), platforms=platforms))
    tags |= set(compatible_tags((3, 11), interpreter="cp311", platforms=platforms))
    return tags


@cache
def _lock() -> dict[str, dict[str, Any]]:
    packages = tomllib.loads((REPO / "uv.lock").read_text())["package"]
    return {canonicalize_name(p["name"]): p for p in packages}


def _export(extras: list[str]) -> list[Requirement]:
    """What `uv sync --frozen --no-dev --extra ...` installs on linux/x86_64, Python 3.11:
    uv's own export of the lock (--locked: fails when uv.lock no longer matches pyproject)."""
    command = [_uv(), "export", "--locked", "--offline", "--no-dev", "--no-hashes"]
    command += ["--no-emit-project", "--no-header", "--no-annotate", "--format", "requirements.txt"]
    for extra in extras:
        command += ["--extra", extra]
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, (
        f"uv.lock does not satisfy pyproject.toml (run `uv lock`):\n{out.stderr}"
    )
    reqs = [Requirement(line) for line in out.stdout.splitlines() if line and line[0].isalnum()]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(TARGET)]


@pytest.mark.parametrize("dockerfile", list(IMAGES), ids=lambda p: p.parent.name)
def test_dockerfile_is_pinned_non_root_and_installs_from_the_lock(dockerfile):
    instructions = _instructions(dockerfile)
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    stages = {
        rest.split()[-1] for keyword, rest in instructions if keyword == "FROM" and " AS " in rest
    }
    for base in (b for b in bases if b not in stages):
        tag = base.partition(":")[2]
        assert "@sha256:" in base or re.match(r"^\d+\.\d+\.\d+", tag), f"{base} is not pinned"
    assert f"ghcr.io/astral-sh/uv:{_setup_uv_version()}" in bases, "uv differs from setup.sh"
    user = [rest for keyword, rest in instructions if keyword == "USER"][-1]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER {user}: numeric and not root"
    syncs = _uv_syncs(dockerfile)
    assert syncs and all("--frozen" in c and "--no-dev" in c for c in syncs), syncs
    assert len({tuple(_extras(c)) for c in syncs}) == 1, "every uv sync installs the same extras"
    # Every path COPY takes from the build context exists, and the wheel's packages are in it.
    copied = [
        rest.split()[:-1]
        for keyword, rest in instructions
        if keyword == "COPY" and "--from" not in rest
    ]
    sources = {src for srcs in copied for src in srcs}
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]) <= sources
    assert {"pyproject.toml", "uv.lock", pyproject["project"]["readme"]} <= sources


@pytest.mark.parametrize("dockerfile", list(IMAGES), ids=lambda p: p.parent.name)
def test_dockerfile_dependencies_resolve_from_the_lock_for_linux(dockerfile):
    glibc, needed, unwanted = IMAGES[dockerfile]
    (extras,) = {tuple(_extras(c)) for c in _uv_syncs(dockerfile)}
    defined = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert set(extras) <= set(defined["optional-dependencies"]), extras
    reqs = _export(list(extras))
    names = {canonicalize_name(r.name) for r in reqs}
    assert needed <= names, needed - names
    assert not unwanted & names, unwanted & names
    tags = _linux_tags(glibc)
    for req in reqs:
        package = _lock()[canonicalize_name(req.name)]
        (pinned,) = req.specifier
        assert pinned.version == package["version"]
        wheels = [
            parse_wheel_filename(w["url"].rsplit("/", 1)[1]) for w in package.get("wheels", [])
        ]
        installable = any(set(wheel[3]) & tags for wheel in wheels) or "sdist" in package
        assert installable, f"{req.name} {pinned.version}: no linux x86_64 cp311 wheel or sdist"


def test_unknown_extra_is_an_error():
    out = subprocess.run(
        [_uv(), "export", "--locked", "--offline", "--no-dev", "--extra", "gpu-drivers"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode != 0 and "gpu-drivers" in out.stderr


# --------------------------------------------------------------------------- alerts


@cache
def _promtool() -> Path | None:
    """promtool from the Prometheus package tests/cluster/fetch-prometheus.sh caches."""
    script = REPO / "tests" / "cluster" / "fetch-prometheus.sh"
    if not script.exists():
        return None
    out = subprocess.run(["bash", str(script), "bin"], capture_output=True, text=True)
    path = Path(out.stdout.strip()).with_name("promtool")
    return path if out.returncode == 0 and os.access(path, os.X_OK) else None


def _rule_groups(helm: Any) -> list[dict[str, Any]]:
    docs = render(helm, "metrics.prometheusRule.enabled=true")
    return one(docs, "PrometheusRule")["spec"]["groups"]


def test_alert_rules_behave_on_synthetic_series(helm, tmp_path):
    """promtool evaluates the rendered rules: each alert fires on the series it is for and
    stays silent on healthy ones."""
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool not cached: run tests/cluster/fetch-prometheus.sh")
    groups = _rule_groups(helm)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    checked = subprocess.run(
        [str(promtool), "check", "rules", str(tmp_path / "rules.yaml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Annotations are templates; the behaviour under test is when each alert fires.
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump({"groups": groups}))
    running = {"series": 'kubetune_jobs{phase="Running",method="sft"}', "values": "1x90"}
    step = 'kubetune_job_step{namespace="a",job="j",method="sft"}'
    warning = {"severity": "warning"}
    cases = [
        # Running for 90 minutes, step stuck at 40: fires once stuckFor (30m) has passed twice
        # (30m without a change, then 30m pending).
        (
            [running, {"series": step, "values": "40x90"}],
            [
                ("KubetuneJobsWithoutProgress", "25m", []),
                ("KubetuneJobsWithoutProgress", "65m", [warning]),
            ],
        ),
        # The same job making a step a minute: silent.
        (
            [running, {"series": step, "values": "0+1x90"}],
            [("KubetuneJobsWithoutProgress", "65m", [])],
        ),
        # Running, trainer never reported (pods Pending): fires.
        ([running], [("KubetuneJobsWithoutProgress", "65m", [warning])]),
        # Five failure restarts within the hour: fires; one: silent.
        (
            [
                {
                    "series": 'kubetune_job_restarts_total{reason="ApplicationFailure"}',
                    "values": "0 1 2 3 4 5x60",
                },
                {"series": 'kubetune_job_restarts_total{reason="Disruption"}', "values": "0 1x60"},
            ],
            [
                (
                    "KubetuneRestartsClimbing",
                    "30m",
                    [{**warning, "reason": "ApplicationFailure"}],
                )
            ],
        ),
        (
            [{"series": 'kubetune_jobs{phase="Failed",method="dpo"}', "values": "0 0 1x10"}],
            [
                ("KubetuneJobsFailed", "1m", []),
                ("KubetuneJobsFailed", "5m", [{**warning, "method": "dpo"}]),
            ],
        ),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {
                    "eval_time": at,
                    "alertname": alert,
                    "exp_alerts": [{"exp_labels": labels} for labels in expected],
                }
                for alert, at, expected in checks
            ],
        }
        for series, checks in cases
    ]
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["bare.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    result = subprocess.run(
        [str(promtool), "test", "rules", str(tmp_path / "tests.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
