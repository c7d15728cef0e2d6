"""Builders: (job, plan, cluster facts) -> child manifests. Golden files for every method x
launcher, plus the properties the platform relies on (names, ownership, least privilege,
secrets by reference, storage mounts, queueing, failure policy).

Rewrite the golden files with KUBETUNE_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import FineTuneJob
from kubetune.builders import (
    POD_FAILURE_RULES,
    BuildError,
    ClusterFacts,
    build_children,
    build_export_job,
    choose_launcher,
    job_failure,
    names,
    pvc_claims,
    rayjob_failure,
    secret_env_name,
)
from kubetune.builders.export_job import EXPORT_CONTAINER
from kubetune.planner import dependency_output, make_plan
from kubetune_trainer.exit_codes import EXIT_GATE_NOT_MET, EXIT_INVALID_PLAN, EXIT_PREEMPTED
from kubetune_trainer.plan import Plan, SecretKeyRef

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KUBETUNE_UPDATE_GOLDEN") == "1"
METHODS = ["sft", "dpo", "reward", "ppo", "grpo", "eval"]
LAUNCHERS = ["job", "rayjob"]
UID = "6f1c2a4e-0d7b-4c1e-9a3f-2b5d8e9c0a11"
STORAGE = "pvc://kubetune-runs"
FACTS = {
    launcher: ClusterFacts(
        trainer_image="registry.example/kubetune/trainer:0.1.0",
        export_image="registry.example/kubetune/export:0.1.0",
        default_storage=STORAGE,
        rayjob_crd=launcher == "rayjob",
        kueue=True,
    )
    for launcher in LAUNCHERS
}


def _examples() -> dict[str, dict[str, Any]]:
    """The single-job examples, by method."""
    out = {}
    for path in sorted((REPO / "manifests" / "examples").glob("*.yaml")):
        docs = list(yaml.safe_load_all(path.read_text()))
        if len(docs) == 1 and docs[0]["kind"] == "FineTuneJob":
            out[docs[0]["spec"]["method"]] = docs[0]
    return out


EXAMPLES = _examples()


def _job(data: dict[str, Any], uid: str = UID) -> FineTuneJob:
    data = copy.deepcopy(data)
    data["metadata"]["uid"] = uid
    return FineTuneJob.model_validate(data)


def _resolver(namespace: str) -> Callable[[str], str]:
    """finetunejob:// outputs of the other examples, as the operator would resolve them."""
    jobs = {d["metadata"]["name"]: _job(d) for d in EXAMPLES.values()}

    def resolve(name: str) -> str:
        other = jobs.get(name)
        return dependency_output(STORAGE, other) if other else f"{STORAGE}/{namespace}/{name}/o"

    return resolve


def _plan(job: FineTuneJob, attempt: int = 1) -> Plan:
    return make_plan(
        job,
        attempt=attempt,
        default_storage=STORAGE,
        resolve_job_output=_resolver(job.job_ref().namespace),
    )


def _build(
    data: dict[str, Any], launcher: str = "job", attempt: int = 1, **facts: Any
) -> list[dict[str, Any]]:
    job = _job(data)
    base = FACTS[launcher]
    if facts:
        base = ClusterFacts(**{**base.__dict__, **facts})
    return build_children(job, _plan(job, attempt), base)


def _by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children}


def _pod_templates(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for child in children:
        if child["kind"] == "Job":
            out.append(child["spec"]["template"])
        elif child["kind"] == "RayJob":
            cluster = child["spec"]["rayClusterSpec"]
            out.append(cluster["headGroupSpec"]["template"])
            out += [g["template"] for g in cluster.get("workerGroupSpecs", [])]
    return out


def _containers(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for t in _pod_templates(children) for c in t["spec"]["containers"]]


class _GoldenDumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_GoldenDumper.add_representer(str, _str)


def _dump(children: list[dict[str, Any]]) -> str:
    return yaml.dump_all(children, Dumper=_GoldenDumper, sort_keys=False, width=100)


# --------------------------------------------------------------------------- golden files


def test_every_method_has_an_example() -> None:
    assert sorted(EXAMPLES) == sorted(METHODS)


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("method", METHODS)
def test_golden(method: str, launcher: str) -> None:
    children = _build(EXAMPLES[method], launcher)
    text = _dump(children)
    path = GOLDEN / f"{method}-{launcher}.yaml"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path.name} missing; run with KUBETUNE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"{path.name} differs from the builders' output; if the change is intended, "
        "rerun with KUBETUNE_UPDATE_GOLDEN=1 and review the diff"
    )
    # What is committed parses back to exactly what was built (the block scalars included).
    assert list(yaml.safe_load_all(path.read_text())) == children


def test_no_stale_golden_files() -> None:
    expected = {f"{m}-{launcher}.yaml" for m in METHODS for launcher in LAUNCHERS}
    expected.add(EXPORT_GOLDEN)
    assert {p.name for p in GOLDEN.glob("*.yaml")} == expected


def test_builders_are_deterministic_and_json_able() -> None:
    for method in METHODS:
        for launcher in LAUNCHERS:
            first = _build(EXAMPLES[method], launcher)
            assert first == _build(EXAMPLES[method], launcher)
            assert json.loads(json.dumps(first)) == first


# --------------------------------------------------------------------------- names, ownership


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_child_is_owned_by_the_job(launcher: str) -> None:
    for data in EXAMPLES.values():
        for child in _build(data, launcher):
            meta = child["metadata"]
            assert meta["namespace"] == data["metadata"]["namespace"]
            assert meta["ownerReferences"] == [
                {
                    "apiVersion": "kubetune.io/v1alpha1",
                    "kind": "FineTuneJob",
                    "name": data["metadata"]["name"],
                    "uid": UID,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
            assert meta["labels"][names.LABEL_NAME] == "kubetune"
            assert meta["labels"][names.LABEL_JOB] == data["metadata"]["name"]


def test_a_job_without_uid_cannot_own_children(job: dict[str, Any]) -> None:
    ftj = FineTuneJob.model_validate(job)
    with pytest.raises(BuildError, match=r"metadata\.uid"):
        build_children(ftj, make_plan(ftj), FACTS["job"])


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_names_fit_and_are_stable_for_the_longest_job_name(
    job: dict[str, Any], launcher: str
) -> None:
    job["metadata"]["name"] = "j" * 49
    job["spec"]["resources"] = {"nodes": 3, "gpusPerNode": 0}
    first = _build(job, launcher, attempt=9_999_999)
    assert first == _build(job, launcher, attempt=9_999_999)
    for child in first:
        assert len(child["metadata"]["name"]) <= names.MAX_NAME
    # Indexed Job pods are named <job>-<index>: the hostname must fit a DNS label too.
    assert len(names.head_pod_hostname("j" * 49, 9_999_999)) <= names.MAX_NAME
    for value in (v for c in first for v in c["metadata"]["labels"].values()):
        assert len(value) <= names.MAX_NAME


def test_name_helpers() -> None:
    assert names.launcher_name("demo", 3) == "demo-a3"
    assert names.plan_configmap_name("demo", 3) == "demo-plan-a3"
    assert names.trainer_account_name("demo") == "demo-trainer"
    assert names.service_name("demo", 3) == "demo-a3"
    assert names.service_name("7b-run", 1) == "kt-7b-run-a1"  # RFC 1035: starts with a letter
    assert names.head_address("demo", 3, "team-a") == "demo-a3-0.demo-a3.team-a.svc"
    with pytest.raises(ValueError):
        names.launcher_name("demo", 0)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_attempt_two_gets_new_launcher_names_but_the_same_identity(
    job: dict[str, Any], launcher: str
) -> None:
    first = {(c["kind"], c["metadata"]["name"]) for c in _build(job, launcher, attempt=1)}
    second = {(c["kind"], c["metadata"]["name"]) for c in _build(job, launcher, attempt=2)}
    same = {("ServiceAccount", "demo-trainer"), ("Role", "demo-trainer")}
    same.add(("RoleBinding", "demo-trainer"))
    assert same <= first & second
    assert ("ConfigMap", "demo-plan-a1") in first and ("ConfigMap", "demo-plan-a2") in second
    kind = "Job" if launcher == "job" else "RayJob"
    assert (kind, "demo-a1") in first and (kind, "demo-a2") in second
    assert first - same and not (first - same) & (second - same)
    templates = _pod_templates(_build(job, launcher, attempt=2))
    assert {t["metadata"]["labels"][names.LABEL_ATTEMPT] for t in templates} == {"2"}


# --------------------------------------------------------------------------- least privilege


def test_the_trainer_role_can_only_report_its_own_progress(job: dict[str, Any]) -> None:
    children = _by_kind(_build(job))
    role = children["Role"]
    assert role["rules"] == [
        {
            "apiGroups": ["kubetune.io"],
            "resources": ["finetunejobs/status"],
            "resourceNames": ["demo"],
            "verbs": ["get", "patch"],
        }
    ]
    text = json.dumps(role["rules"])
    assert "*" not in text and "secrets" not in text and "pods" not in text
    binding = children["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "demo-trainer",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "demo-trainer", "namespace": "team-a"}
    ]
    for template in _pod_templates(_build(job)):
        assert template["spec"]["serviceAccountName"] == "demo-trainer"


def test_a_named_service_account_is_bound_not_created(job: dict[str, Any]) -> None:
    job["spec"]["runtime"] = {"serviceAccountName": "cloud-identity"}
    for launcher in LAUNCHERS:
        children = _build(job, launcher)
        kinds = [c["kind"] for c in children]
        assert "ServiceAccount" not in kinds
        binding = _by_kind(children)["RoleBinding"]
        assert binding["subjects"][0]["name"] == "cloud-identity"
        for template in _pod_templates(children):
            assert template["spec"]["serviceAccountName"] == "cloud-identity"


# --------------------------------------------------------------------------- secrets


def _secret_job(job: dict[str, Any]) -> dict[str, Any]:
    job["spec"]["model"]["tokenSecret"] = {"name": "hf", "key": "token"}
    job["spec"]["tracking"] = {"backend": "wandb", "apiKeySecret": {"name": "wb", "key": "k"}}
    job["spec"]["envSecrets"] = {
        "AWS_SECRET_ACCESS_KEY": {"name": "s3-creds", "key": "secret"},
        "AWS_ACCESS_KEY_ID": {"name": "s3-creds", "key": "id"},
    }
    return job


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_secrets_reach_the_trainer_only_by_reference(job: dict[str, Any], launcher: str) -> None:
    children = _build(_secret_job(job), launcher)
    assert "Secret" not in {c["kind"] for c in children}
    for container in _containers(children):
        env = {e["name"]: e for e in container["env"]}
        expected = {
            "KUBETUNE_MODEL_TOKEN": ("hf", "token"),
            "HF_TOKEN": ("hf", "token"),
            "WANDB_API_KEY": ("wb", "k"),
            "AWS_SECRET_ACCESS_KEY": ("s3-creds", "secret"),
            "AWS_ACCESS_KEY_ID": ("s3-creds", "id"),
            secret_env_name(SecretKeyRef(name="hf", key="token")): ("hf", "token"),
            secret_env_name(SecretKeyRef(name="wb", key="k")): ("wb", "k"),
        }
        for name, (secret, key) in expected.items():
            assert env[name] == {
                "name": name,
                "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
            }
        for entry in container["env"]:
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                assert "value" not in entry
        assert len(env) == len(container["env"]), "duplicate variable names"
    # The plan keeps references to the recipe's secrets (never values) and nothing of the
    # platform's envSecrets.
    plan_text = _by_kind(children)["ConfigMap"]["data"]["plan.json"]
    assert "s3-creds" not in plan_text and "AWS_" not in plan_text
    assert json.loads(plan_text)["recipe"]["model"]["tokenSecret"] == {"name": "hf", "key": "token"}


def test_mlflow_token_and_judge_keys(job: dict[str, Any]) -> None:
    job["spec"]["tracking"] = {"backend": "mlflow", "apiKeySecret": {"name": "ml", "key": "t"}}
    job["spec"]["method"] = "eval"
    del job["spec"]["data"]
    job["spec"]["eval"] = {
        "metrics": [
            {
                "name": "judged",
                "type": "judge",
                "dataset": {"uri": "builtin://arithmetic-sft"},
                "judge": {
                    "endpoint": "http://judge:8000/v1",
                    "model": "j",
                    "apiKeySecret": {"name": "judge", "key": "api-key"},
                },
            }
        ]
    }
    env = {e["name"]: e for e in _containers(_build(job))[0]["env"]}
    assert env["MLFLOW_TRACKING_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ml", "key": "t"}
    judge = secret_env_name(SecretKeyRef(name="judge", key="api-key"))
    assert judge.startswith("KUBETUNE_SECRET_JUDGE_API_KEY_")
    assert env[judge]["valueFrom"]["secretKeyRef"] == {"name": "judge", "key": "api-key"}
    assert "WANDB_API_KEY" not in env


def test_secret_env_names_keep_distinct_refs_apart() -> None:
    a = secret_env_name(SecretKeyRef(name="a-b", key="c"))
    b = secret_env_name(SecretKeyRef(name="a", key="b-c"))
    assert a != b and a.rsplit("_", 1)[0] == b.rsplit("_", 1)[0]


def test_env_secrets_win_over_well_known_names_but_not_kubetune_ones(job: dict[str, Any]) -> None:
    job["spec"]["model"]["tokenSecret"] = {"name": "hf", "key": "token"}
    job["spec"]["envSecrets"] = {"HF_TOKEN": {"name": "other", "key": "tok"}}
    env = {e["name"]: e for e in _containers(_build(job))[0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "other", "key": "tok"}
    assert env["KUBETUNE_MODEL_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf"
    job["spec"]["envSecrets"] = {"KUBETUNE_PVC_ROOT": {"name": "x", "key": "y"}}
    with pytest.raises(BuildError, match=r"spec\.envSecrets\.KUBETUNE_PVC_ROOT"):
        _build(job)


# --------------------------------------------------------------------------- storage


_PVC = re.compile(r'"pvc://([^/"]+)')


def _pvc_job(job: dict[str, Any]) -> dict[str, Any]:
    job["spec"].update(
        {
            "method": "dpo",
            "model": {"source": "pvc://models/base"},
            "dpo": {"referenceModel": {"source": "pvc://ref-models/r"}},
            "data": {
                "sources": [{"uri": "pvc://data-a/train.jsonl", "format": "preference"}],
                "evalSources": [{"uri": "pvc://data-b/eval.jsonl", "format": "preference"}],
            },
            "checkpoint": {"storage": "pvc://ckpt/runs"},
            "export": {"destination": "pvc://exports/out"},
        }
    )
    return job


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_referenced_claim_is_mounted(job: dict[str, Any], launcher: str) -> None:
    children = _build(_pvc_job(job), launcher)
    claims = ["ckpt", "data-a", "data-b", "exports", "models", "ref-models"]
    plan_text = _by_kind(children)["ConfigMap"]["data"]["plan.json"]
    # Every pvc:// string anywhere in the plan names one of these claims.
    mentioned = set(_PVC.findall(plan_text))
    assert mentioned == set(claims)
    for template in _pod_templates(children):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        container = template["spec"]["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        for claim in claims:
            volume = volumes[mounts[f"/mnt/pvc/{claim}"]]
            assert volume["persistentVolumeClaim"] == {"claimName": claim}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["KUBETUNE_PVC_ROOT"] == "/mnt/pvc"


@pytest.mark.parametrize("method", METHODS)
def test_examples_mount_every_claim_their_plan_names(method: str) -> None:
    children = _build(EXAMPLES[method])
    plan_text = _by_kind(children)["ConfigMap"]["data"]["plan.json"]
    mentioned = set(_PVC.findall(plan_text))
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in _pod_templates(children)[0]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == sorted(mentioned)


def test_default_storage_and_eval_datasets_are_mounted(job: dict[str, Any]) -> None:
    job["spec"]["method"] = "eval"
    del job["spec"]["data"]
    job["spec"]["eval"] = {
        "metrics": [
            {"name": "ppl", "type": "perplexity", "dataset": {"uri": "pvc://held/x"}},
            {
                "name": "mmlu",
                "type": "lmEval",
                "task": "mmlu",
                "dataDir": "pvc://bench/staged",
                "taskDirs": ["pvc://tasks/mine", "builtin://arithmetic"],
            },
        ],
        "models": [{"name": "prod", "source": "pvc://models/prod"}],
    }
    ftj = _job(job)
    assert pvc_claims(_plan(ftj)) == ["bench", "held", "kubetune-runs", "models", "tasks"]


def test_s3_only_jobs_mount_no_claims(job: dict[str, Any]) -> None:
    job["spec"]["checkpoint"] = {"storage": "s3://bucket/runs"}
    templates = _pod_templates(_build(job))
    assert not [v for v in templates[0]["spec"]["volumes"] if "persistentVolumeClaim" in v]


# --------------------------------------------------------------------------- pod template


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_pods_are_locked_down_and_have_the_plan_and_scratch_space(
    job: dict[str, Any], launcher: str
) -> None:
    job["spec"]["resources"] = {"nodes": 2, "gpusPerNode": 4, "sharedMemory": "32Gi"}
    for template in _pod_templates(_build(job, launcher)):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        container = spec["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
        assert volumes[mounts["/etc/kubetune"]]["configMap"] == {"name": "demo-plan-a1"}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert "emptyDir" in volumes[mounts["/var/cache/kubetune"]]
        assert container["resources"] == {
            "requests": {"cpu": "32", "memory": "256Gi"},
            "limits": {"nvidia.com/gpu": "4"},
        }
        labels = template["metadata"]["labels"]
        assert labels[names.LABEL_NAME] == "kubetune"
        assert labels[names.LABEL_JOB] == "demo"
        assert labels[names.LABEL_ATTEMPT] == "1"


def test_cpu_only_defaults_and_explicit_requests(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"gpusPerNode": 0}
    container = _containers(_build(job))[0]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}}
    job["spec"]["resources"] = {"gpusPerNode": 2, "cpu": "1500m", "memory": "100Gi"}
    container = _containers(_build(job))[0]
    assert container["resources"]["requests"] == {"cpu": "1500m", "memory": "100Gi"}
    assert "--num-cpus=1 --num-gpus=2" in container["command"][2]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_placement_is_passed_through(job: dict[str, Any], launcher: str) -> None:
    job["spec"]["resources"] = {
        "nodes": 2,
        "nodeSelector": {"pool": "h100", "nvidia.com/gpu.product": "H100"},
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "spot", "value": "true", "effect": "NoExecute", "tolerationSeconds": 30},
        ],
        "priorityClassName": "training-low",
    }
    templates = _pod_templates(_build(job, launcher))
    assert len(templates) == (1 if launcher == "job" else 2)
    for template in templates:
        spec = template["spec"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "H100", "pool": "h100"}
        assert spec["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {
                "key": "spot",
                "operator": "Equal",
                "value": "true",
                "effect": "NoExecute",
                "tolerationSeconds": 30,
            },
        ]
        assert spec["priorityClassName"] == "training-low"


# --------------------------------------------------------------------------- launchers


def test_auto_picks_rayjob_only_when_its_crd_exists(job: dict[str, Any]) -> None:
    spec = _job(job).spec
    assert choose_launcher(spec, FACTS["rayjob"]) == "rayjob"
    assert choose_launcher(spec, FACTS["job"]) == "job"
    job["spec"]["runtime"] = {"launcher": "job"}
    assert choose_launcher(_job(job).spec, FACTS["rayjob"]) == "job"
    job["spec"]["runtime"] = {"launcher": "rayjob"}
    with pytest.raises(BuildError, match=r"spec\.runtime\.launcher"):
        choose_launcher(_job(job).spec, FACTS["job"])


def test_job_launcher_shape(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"nodes": 4, "gpusPerNode": 8}
    children = _build(job, "job")
    assert [c["kind"] for c in children] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "Job",
    ]
    kinds = _by_kind(children)
    spec = kinds["Job"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimit"] == 0
    assert spec["suspend"] is False
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    service = kinds["Service"]
    assert pod["subdomain"] == service["metadata"]["name"] == "demo-a1"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"kubetune.io/job": "demo", "kubetune.io/attempt": "1"}
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETUNE_RAY_HEAD"] == "demo-a1-0.demo-a1.team-a.svc"
    script = container["command"][2]
    head, _, worker = script.partition("\nfi\n")
    assert (
        "ray start --head" in head and "exec kubetune-train --plan /etc/kubetune/plan.json" in head
    )
    assert 'ray start --address="$head"' in worker and "--block" in worker
    assert "kubetune-train" not in worker


def test_job_launcher_failure_policy_tells_disruptions_from_failures(job: dict[str, Any]) -> None:
    spec = _by_kind(_build(job, "job"))["Job"]["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    assert rules == [rule for _, rule in POD_FAILURE_RULES]
    assert [kind for kind, _ in POD_FAILURE_RULES] == ["disruption", "disruption", "application"]
    assert rules[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert rules[1]["onExitCodes"] == {
        "containerName": "trainer",
        "operator": "In",
        "values": [EXIT_PREEMPTED],
    }
    assert rules[2]["onExitCodes"]["operator"] == "NotIn"
    assert {r["action"] for r in rules} == {"FailJob"}
    assert spec["podReplacementPolicy"] == "Failed"


def test_rayjob_launcher_shape(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"nodes": 3, "gpusPerNode": 2}
    children = _build(job, "rayjob")
    assert [c["kind"] for c in children] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "RayJob",
    ]
    rayjob = children[-1]
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "kubetune-train --plan /etc/kubetune/plan.json"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] == 0
    assert spec["suspend"] is False
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["template"]["metadata"]["labels"][names.LABEL_ROLE] == "head"
    assert head["rayStartParams"]["num-gpus"] == "2"
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert group["template"]["metadata"]["labels"][names.LABEL_ROLE] == "worker"
    for template in (head["template"], group["template"]):
        container = template["spec"]["containers"][0]
        assert "command" not in container  # KubeRay starts Ray, under its own port names
        assert container["ports"] == [{"name": "trainer-metrics", "containerPort": 9400}]
    job["spec"]["resources"] = {"nodes": 1}
    single = _build(job, "rayjob")[-1]
    assert "workerGroupSpecs" not in single["spec"]["rayClusterSpec"]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_kueue_queue_label_and_suspend(job: dict[str, Any], launcher: str) -> None:
    kind = "Job" if launcher == "job" else "RayJob"
    job["spec"]["runtime"] = {"queueName": "team-a-queue"}
    launched = _by_kind(_build(job, launcher))[kind]
    assert launched["metadata"]["labels"][names.KUEUE_QUEUE_LABEL] == "team-a-queue"
    assert launched["spec"]["suspend"] is True
    with pytest.raises(BuildError, match=r"spec\.runtime\.queueName"):
        _build(job, launcher, kueue=False)
    job["spec"]["runtime"] = {"suspend": True}
    launched = _by_kind(_build(job, launcher))[kind]
    assert launched["spec"]["suspend"] is True
    assert names.KUEUE_QUEUE_LABEL not in launched["metadata"]["labels"]


def test_runtime_image_overrides_the_operator_default(job: dict[str, Any]) -> None:
    assert {c["image"] for c in _containers(_build(job))} == {FACTS["job"].trainer_image}
    job["spec"]["runtime"] = {"image": "my/trainer:dev"}
    for launcher in LAUNCHERS:
        assert {c["image"] for c in _containers(_build(job, launcher))} == {"my/trainer:dev"}


def test_plan_configmap_holds_this_attempts_plan(job: dict[str, Any]) -> None:
    configmap = _by_kind(_build(job, attempt=4))["ConfigMap"]
    assert configmap["immutable"] is True
    plan = Plan.from_json(configmap["data"]["plan.json"])
    assert plan.attempt == 4
    assert (plan.job.name, plan.job.namespace, plan.job.uid) == ("demo", "team-a", UID)


def test_a_plan_for_another_job_is_refused(job: dict[str, Any]) -> None:
    other = copy.deepcopy(job)
    other["metadata"]["name"] = "other"
    with pytest.raises(ValueError, match="not team-a/demo"):
        build_children(_job(job), _plan(_job(other)), FACTS["job"])


# --------------------------------------------------------------------------- API shapes


def _round_trip(obj: dict[str, Any], model: str) -> dict[str, Any]:
    """Deserialize into the kubernetes client's model and back: a misspelt or misplaced field
    is dropped on the way and shows up as a difference; a missing required one raises."""
    client = pytest.importorskip("kubernetes.client").ApiClient()
    return client.sanitize_for_serialization(client._ApiClient__deserialize(obj, model))


MODELS = {
    "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "ConfigMap": "V1ConfigMap",
    "Service": "V1Service",
    "Job": "V1Job",
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_children_match_the_kubernetes_models(launcher: str) -> None:
    for data in EXAMPLES.values():
        children = _build(_secret_job(copy.deepcopy(data)), launcher)
        for child in children:
            if child["kind"] == "RayJob":
                for template in _pod_templates([child]):
                    assert _round_trip(template, "V1PodTemplateSpec") == template
                assert _round_trip(child["metadata"], "V1ObjectMeta") == child["metadata"]
                continue
            assert _round_trip(child, MODELS[child["kind"]]) == child


# --------------------------------------------------------------------------- outcomes


def _failed_job(reason: str, message: str) -> dict[str, Any]:
    return {
        "status": {
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
                {"type": "Failed", "status": "True", "reason": reason, "message": message},
            ]
        }
    }


def test_job_failures_are_classified_by_the_matched_rule() -> None:
    assert job_failure({"status": {}}) is None
    disrupted = job_failure(
        _failed_job(
            "PodFailurePolicy",
            "Pod team-a/demo-a1-1-x7k2p has condition DisruptionTarget matching FailJob rule "
            "at index 0",
        )
    )
    assert disrupted is not None and disrupted.kind == "disruption"
    assert not disrupted.counts_as_restart
    preempted = job_failure(
        _failed_job(
            "PodFailurePolicy",
            f"Container trainer for pod team-a/demo-a1-0-abcde failed with exit code "
            f"{EXIT_PREEMPTED} matching FailJob rule at index 1",
        )
    )
    assert preempted is not None
    assert (preempted.kind, preempted.exit_code) == ("disruption", EXIT_PREEMPTED)
    crashed = job_failure(
        _failed_job(
            "PodFailurePolicy",
            "Container trainer for pod team-a/demo-a1-0-abcde failed with exit code 1 matching "
            "FailJob rule at index 2",
        )
    )
    assert crashed is not None and (crashed.kind, crashed.exit_code) == ("application", 1)
    assert crashed.counts_as_restart and crashed.retryable
    invalid = job_failure(
        _failed_job(
            "PodFailurePolicy",
            f"Container trainer for pod team-a/demo-a1-0-abcde failed with exit code "
            f"{EXIT_INVALID_PLAN} matching FailJob rule at index 2",
        )
    )
    assert invalid is not None and not invalid.retryable
    deadline = job_failure(_failed_job("DeadlineExceeded", "Job was active longer than ..."))
    assert deadline is not None and deadline.kind == "deadline"
    backoff = job_failure(_failed_job("BackoffLimitExceeded", "Job has reached the limit"))
    assert backoff is not None and backoff.kind == "application"


def test_rayjob_failures_are_classified_by_pods_and_exit_code() -> None:
    running = {"status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}}
    assert rayjob_failure(running) is None
    failed = {
        "status": {
            "jobDeploymentStatus": "Failed",
            "jobStatus": "FAILED",
            "reason": "AppFailed",
            "message": "Job entrypoint command failed with exit code 1",
        }
    }
    app = rayjob_failure(failed, [])
    assert app is not None and (app.kind, app.exit_code) == ("application", 1)
    evicted = {"status": {"conditions": [{"type": "DisruptionTarget", "status": "True"}]}}
    disrupted = rayjob_failure(failed, [{"status": {}}, evicted])
    assert disrupted is not None and disrupted.kind == "disruption"
    preempted = copy.deepcopy(failed)
    preempted["status"]["message"] = f"failed with exit code {EXIT_PREEMPTED}"
    result = rayjob_failure(preempted)
    assert result is not None and result.kind == "disruption"


# --------------------------------------------------------------------------- export stage

EXPORT_GOLDEN = "sft-export.yaml"


def _export(
    data: dict[str, Any], attempt: int = 1, export_attempt: int = 1, **facts: Any
) -> dict[str, Any]:
    job = _job(data)
    base = ClusterFacts(**{**FACTS["job"].__dict__, **facts})
    return build_export_job(job, _plan(job, attempt), base, export_attempt)


def test_export_golden() -> None:
    """The sft example asks for safetensors, GGUF and ONNX: its export Job after attempt 1."""
    export = _export(EXAMPLES["sft"])
    text = _dump([export])
    path = GOLDEN / EXPORT_GOLDEN
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), (
        f"{path.name} differs from the builders' output; if the change is intended, "
        "rerun with KUBETUNE_UPDATE_GOLDEN=1 and review the diff"
    )
    assert list(yaml.safe_load_all(path.read_text())) == [export]


def test_export_job_runs_the_export_stage_with_pod_zeros_identity_and_storage(
    job: dict[str, Any],
) -> None:
    job = _pvc_job(_secret_job(job))
    job["spec"]["export"] = {"formats": ["safetensors", "gguf"]}
    job["spec"]["resources"] = {"gpusPerNode": 4, "nodeSelector": {"pool": "gpu"}}
    export = _export(job, attempt=3, export_attempt=2)
    head = next(c for c in _build(job, attempt=3) if c["kind"] == "Job")["spec"]["template"]
    pod = export["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (trainer,) = head["spec"]["containers"]
    assert export["metadata"]["name"] == "demo-export-a2"
    assert export["metadata"]["labels"][names.LABEL_COMPONENT] == "export"
    assert export["metadata"]["labels"][names.LABEL_ATTEMPT] == "3"
    assert export["metadata"]["labels"][names.LABEL_EXPORT_ATTEMPT] == "2"
    assert container["name"] == EXPORT_CONTAINER
    assert container["command"] == [
        "kubetune-train",
        "--plan",
        "/etc/kubetune/plan.json",
        "--stage",
        "export",
    ]
    assert container["image"] == "registry.example/kubetune/export:0.1.0"
    # The plan of the training attempt it exports, the same identity, secrets and storage.
    assert {"name": "plan", "configMap": {"name": "demo-plan-a3"}} in pod["volumes"]
    assert pod["serviceAccountName"] == head["spec"]["serviceAccountName"] == "demo-trainer"
    secret_env = [e for e in container["env"] if "valueFrom" in e and "secretKeyRef" in str(e)]
    assert secret_env == [e for e in trainer["env"] if "secretKeyRef" in str(e)]
    assert {e["name"] for e in secret_env} >= {"WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETUNE_ATTEMPT"] == "3" and env["KUBETUNE_EXPORT_ATTEMPT"] == "2"
    assert env["KUBETUNE_PROGRESS"] == "kubernetes"  # the stage patches status.artifacts
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "pvc" in v["name"]}
    assert claims == set(pvc_claims(_plan(_job(job), 3))) and claims
    assert {m["name"] for m in container["volumeMounts"]} == {v["name"] for v in pod["volumes"]}
    assert "shm" not in {v["name"] for v in pod["volumes"]}
    # No GPU, but the job's placement (the nodes its storage and pools are reachable from).
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "32Gi"}}
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    spec = export["spec"]
    assert (spec["backoffLimit"], spec["completions"], pod["restartPolicy"]) == (0, 1, "Never")
    rules = spec["podFailurePolicy"]["rules"]
    assert [r.get("onExitCodes", {}).get("containerName") for r in rules] == [
        None,
        EXPORT_CONTAINER,
        EXPORT_CONTAINER,
    ]
    assert _round_trip(export, "V1Job") == export


def test_export_image_falls_back_to_the_operator_then_the_trainer_image(
    job: dict[str, Any],
) -> None:
    job["spec"]["export"] = {"formats": ["safetensors"]}
    image = lambda export: export["spec"]["template"]["spec"]["containers"][0]["image"]  # noqa: E731
    assert image(_export(job, export_image="")) == "registry.example/kubetune/trainer:0.1.0"
    job["spec"]["runtime"] = {"exportImage": "mine/export:1"}
    assert image(_export(job)) == "mine/export:1"


def test_export_job_requests_what_the_job_asked_for(job: dict[str, Any]) -> None:
    job["spec"]["resources"] = {"gpusPerNode": 8, "cpu": "96", "memory": "1000Gi"}
    job["spec"]["export"] = {"formats": ["onnx"]}
    container = _export(job)["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "96", "memory": "1000Gi"}}


def test_export_names_fit_for_the_longest_job_name(job: dict[str, Any]) -> None:
    job["metadata"]["name"] = "j" * 49
    job["spec"]["export"] = {"formats": ["safetensors"]}
    export = _export(job, export_attempt=99_999)
    assert len(export["metadata"]["name"]) <= names.MAX_NAME
    assert names.export_job_name("demo", 4) == "demo-export-a4"
    with pytest.raises(ValueError):
        names.export_job_name("demo", 0)


def test_export_job_outcomes_read_like_the_launchers() -> None:
    gate = _failed_job(
        "PodFailurePolicy",
        f"Container export for pod ns/demo-export-a1-x failed with exit code {EXIT_GATE_NOT_MET} "
        "matching FailJob rule at index 2",
    )
    failure = job_failure(gate)
    assert failure is not None and failure.exit_code == EXIT_GATE_NOT_MET
    evicted = _failed_job(
        "PodFailurePolicy",
        "Pod ns/demo-export-a1-x has condition DisruptionTarget matching FailJob rule at index 0",
    )
    assert job_failure(evicted).kind == "disruption"
