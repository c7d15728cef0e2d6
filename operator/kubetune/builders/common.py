"""Pieces shared by every builder: cluster facts, metadata and ownership, and the trainer pod
template (resources, volumes, secrets by reference, security context, placement).

Pure: nothing here reads the cluster; what the operator learned about it arrives as
:class:`ClusterFacts`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel

from kubetune.api import API_VERSION, KIND, FineTuneJob, FineTuneJobSpec, ResourcesSpec
from kubetune_trainer.plan import Plan, SecretKeyRef, secret_env_name, uri_scheme

from . import names

Manifest = dict[str, Any]
Launcher = Literal["job", "rayjob"]

# --------------------------------------------------------------------------- constants

PLAN_MOUNT = "/etc/kubetune"
PLAN_KEY = "plan.json"
PLAN_PATH = f"{PLAN_MOUNT}/{PLAN_KEY}"
TRAIN_COMMAND = ["kubetune-train", "--plan", PLAN_PATH]

PVC_ROOT = "/mnt/pvc"
CACHE_DIR = "/var/cache/kubetune"
TMP_DIR = "/tmp"
SHM_DIR = "/dev/shm"

CONTAINER = "trainer"
"""Name of the trainer container in every pod (podFailurePolicy rules match on it)."""

RUN_AS_USER = 1000
TERMINATION_GRACE_SECONDS = 300
"""Time between SIGTERM and SIGKILL: the trainer saves a checkpoint in it (then exits
EXIT_PREEMPTED). Exposed to the trainer as KUBETUNE_GRACE_SECONDS."""

GPU_RESOURCE = "nvidia.com/gpu"

PROGRESS_KUBERNETES = "kubernetes"
"""KUBETUNE_PROGRESS value selecting the trainer's status reporter
(kubetune_trainer.reporting.kube_status)."""

POD_ANNOTATIONS = "kubetune.io/pod-annotations"
"""Opt-in annotation of a FineTuneJob: a JSON object of annotations copied onto every trainer
pod template of the attempts built after it is set (sidecar opt-outs, test stage selectors)."""

# Ray ports of the head (GCS, dashboard / job API, client).
RAY_GCS_PORT = 6379
RAY_DASHBOARD_PORT = 8265
RAY_CLIENT_PORT = 10001
METRICS_PORT_NAME = "trainer-metrics"

# Well-known variables a secret is also exposed as, besides its kubetune name.
MODEL_TOKEN_ENV = ("KUBETUNE_MODEL_TOKEN", "HF_TOKEN")
TRACKING_KEY_ENV = {"wandb": "WANDB_API_KEY", "mlflow": "MLFLOW_TRACKING_TOKEN"}


class BuildError(ValueError):
    """A job the builders cannot turn into children, naming the spec field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, kw_only=True)
class ClusterFacts:
    """What the operator knows about the cluster and its own configuration."""

    trainer_image: str
    """Trainer image, used when spec.runtime.image is not set."""
    export_image: str = ""
    """Export-stage image, used when spec.runtime.exportImage is not set."""
    default_storage: str = ""
    """Storage root for jobs without spec.checkpoint.storage (the plan already carries the
    resolved root; kept here so one object describes the operator's configuration)."""
    rayjob_crd: bool = False
    """The KubeRay RayJob CRD (rayjobs.ray.io, v1) is installed."""
    kueue: bool = False
    """Kueue is installed (spec.runtime.queueName can be honoured)."""


# --------------------------------------------------------------------------- metadata


def owner_reference(job: FineTuneJob) -> Manifest:
    """The controller reference every child carries, so deleting the job deletes them."""
    uid = job.job_ref().uid
    if not uid:
        raise BuildError("metadata.uid", "the job has no uid; children need it as their owner")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def base_labels(job: FineTuneJob, component: str, attempt: int | None = None) -> dict[str, str]:
    labels = {
        names.LABEL_NAME: names.APP,
        names.LABEL_COMPONENT: component,
        names.LABEL_MANAGED_BY: names.MANAGER,
        names.LABEL_JOB: job.metadata.name,
    }
    if attempt is not None:
        labels[names.LABEL_ATTEMPT] = str(attempt)
    return labels


def pod_annotations(job: FineTuneJob) -> dict[str, str]:
    """The annotations kubetune.io/pod-annotations asks for on trainer pods (string values
    only; anything else in it is ignored rather than failing the job)."""
    raw = ((job.metadata.model_extra or {}).get("annotations") or {}).get(POD_ANNOTATIONS)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in sorted(value.items()) if isinstance(v, str)}


def pod_template_metadata(job: FineTuneJob, attempt: int, role: str | None) -> Manifest:
    meta: Manifest = {"labels": pod_labels(job, attempt, role)}
    annotations = pod_annotations(job)
    if annotations:
        meta["annotations"] = annotations
    return meta


def pod_labels(job: FineTuneJob, attempt: int, role: str | None) -> dict[str, str]:
    labels = base_labels(job, "trainer", attempt)
    if role is not None:
        labels[names.LABEL_ROLE] = role
    return labels


def metadata(
    job: FineTuneJob,
    name: str,
    component: str,
    attempt: int | None = None,
    extra_labels: dict[str, str] | None = None,
) -> Manifest:
    labels = base_labels(job, component, attempt)
    labels.update(extra_labels or {})
    return {
        "name": name,
        "namespace": job.job_ref().namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }


# --------------------------------------------------------------------------- launcher choice


def choose_launcher(spec: FineTuneJobSpec, facts: ClusterFacts) -> Launcher:
    """``auto`` picks ``rayjob`` when the RayJob CRD is installed, else ``job``."""
    wanted = spec.runtime.launcher
    if wanted == "auto":
        return "rayjob" if facts.rayjob_crd else "job"
    if wanted == "rayjob" and not facts.rayjob_crd:
        raise BuildError(
            "spec.runtime.launcher",
            "rayjob needs the KubeRay RayJob CRD (rayjobs.ray.io), which is not installed; "
            "use job or auto",
        )
    return wanted


def queue_labels(spec: FineTuneJobSpec, facts: ClusterFacts) -> dict[str, str]:
    queue = spec.runtime.queue_name
    if queue is None:
        return {}
    if not facts.kueue:
        raise BuildError(
            "spec.runtime.queueName",
            "Kueue is not installed; the launcher would stay suspended forever",
        )
    return {names.KUEUE_QUEUE_LABEL: queue}


def launcher_suspended(spec: FineTuneJobSpec) -> bool:
    """Launchers start suspended when Kueue admits them, or when the job is suspended."""
    return spec.runtime.suspend or spec.runtime.queue_name is not None


# --------------------------------------------------------------------------- resources

_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")


def quantity_value(quantity: str) -> Decimal:
    match = _QUANTITY.match(quantity)
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"'{quantity}' is not a quantity")
    return Decimal(match.group(1)) * _SUFFIX[match.group(2)]


def cpu_request(resources: ResourcesSpec) -> str:
    """The pod's CPU request: as given, else 8 per GPU (2 on CPU-only pods)."""
    if resources.cpu is not None:
        return resources.cpu
    return str(8 * resources.gpus_per_node) if resources.gpus_per_node else "2"


def memory_request(resources: ResourcesSpec) -> str:
    """The pod's memory request: as given, else 64Gi per GPU (8Gi on CPU-only pods)."""
    if resources.memory is not None:
        return resources.memory
    return f"{64 * resources.gpus_per_node}Gi" if resources.gpus_per_node else "8Gi"


def ray_cpus(resources: ResourcesSpec) -> int:
    """Whole CPUs Ray advertises on a node: the CPU request rounded down, at least 1."""
    return max(1, int(quantity_value(cpu_request(resources))))


def container_resources(resources: ResourcesSpec) -> Manifest:
    out: Manifest = {
        "requests": {"cpu": cpu_request(resources), "memory": memory_request(resources)}
    }
    if resources.gpus_per_node:
        out["limits"] = {GPU_RESOURCE: str(resources.gpus_per_node)}
    return out


# --------------------------------------------------------------------------- storage


def _plan_uris(plan: Plan) -> list[str]:
    """Every location the plan reads or writes: storage, models, data, export."""
    recipe = plan.recipe
    uris = [plan.storage.root, plan.storage.output_dir, plan.storage.export_dir]
    if recipe.checkpoint.storage:
        uris.append(recipe.checkpoint.storage)
    if recipe.export and recipe.export.destination:
        uris.append(recipe.export.destination)
    uris += [model.source for _, model in recipe.model_sources()]
    if recipe.data:
        uris += [s.uri for s in [*recipe.data.sources, *recipe.data.eval_sources]]
    if recipe.eval:
        uris += [metric.dataset.uri for metric in recipe.eval.metrics]
    return uris


def pvc_claims(plan: Plan) -> list[str]:
    """Every PersistentVolumeClaim a pvc:// URI in the plan names, sorted."""
    claims = set()
    for uri in _plan_uris(plan):
        if uri_scheme(uri) == "pvc":
            claim = uri.split("://", 1)[1].strip("/").split("/", 1)[0]
            if claim:
                claims.add(claim)
    return sorted(claims)


def pvc_mount_path(claim: str) -> str:
    return f"{PVC_ROOT}/{claim}"


# --------------------------------------------------------------------------- secrets


def _walk_refs(value: Any, found: list[SecretKeyRef]) -> None:
    if isinstance(value, SecretKeyRef):
        if value not in found:
            found.append(value)
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            _walk_refs(getattr(value, field), found)
    elif isinstance(value, list | tuple):
        for item in value:
            _walk_refs(item, found)
    elif isinstance(value, dict):
        for key in sorted(value):
            _walk_refs(value[key], found)


def secret_refs(plan: Plan) -> list[SecretKeyRef]:
    """Every Secret key the plan's recipe references, in the order they appear."""
    found: list[SecretKeyRef] = []
    _walk_refs(plan.recipe, found)
    return found


def _secret_env(name: str, ref: SecretKeyRef) -> Manifest:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def secret_env(spec: FineTuneJobSpec, plan: Plan) -> list[Manifest]:
    """Secrets as environment variables, by reference only: every ref in the plan under its
    kubetune name, the model token and the tracking key under their well-known names too, then
    spec.envSecrets (which win over a well-known name they repeat)."""
    env: dict[str, SecretKeyRef] = {}
    for ref in secret_refs(plan):
        env[secret_env_name(ref)] = ref
    token = plan.recipe.model.token_secret
    if token is not None:
        for name in MODEL_TOKEN_ENV:
            env[name] = token
    tracking = plan.recipe.tracking
    if tracking.api_key_secret is not None and tracking.backend in TRACKING_KEY_ENV:
        env[TRACKING_KEY_ENV[tracking.backend]] = tracking.api_key_secret
    for name in sorted(spec.env_secrets):
        env[name] = spec.env_secrets[name]
    return [_secret_env(name, ref) for name, ref in env.items()]


# --------------------------------------------------------------------------- pod template


def plain_env(plan: Plan) -> list[Manifest]:
    """Variables every trainer container gets (not secrets)."""
    values = [
        ("KUBETUNE_PLAN", PLAN_PATH),
        ("KUBETUNE_JOB", plan.job.name),
        ("KUBETUNE_NAMESPACE", plan.job.namespace),
        ("KUBETUNE_ATTEMPT", str(plan.attempt)),
        ("KUBETUNE_PROGRESS", PROGRESS_KUBERNETES),
        ("KUBETUNE_PVC_ROOT", PVC_ROOT),
        ("KUBETUNE_CACHE", CACHE_DIR),
        ("KUBETUNE_GRACE_SECONDS", str(TERMINATION_GRACE_SECONDS)),
        ("HOME", TMP_DIR),
        ("XDG_CACHE_HOME", CACHE_DIR),
        ("HF_HOME", f"{CACHE_DIR}/huggingface"),
        ("TRITON_CACHE_DIR", f"{CACHE_DIR}/triton"),
        ("PYTHONUNBUFFERED", "1"),
        ("RAY_USAGE_STATS_ENABLED", "0"),
    ]
    env: list[Manifest] = [{"name": k, "value": v} for k, v in values]
    env.append(
        {"name": "KUBETUNE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    )
    return env


def container_env(
    spec: FineTuneJobSpec, plan: Plan, extra: list[Manifest] | None = None
) -> list[Manifest]:
    plain = plain_env(plan) + (extra or [])
    reserved = {e["name"] for e in plain}
    for name in sorted(spec.env_secrets):
        if name in reserved:
            raise BuildError(f"spec.envSecrets.{name}", "is set by kubetune; choose another name")
    return plain + secret_env(spec, plan)


def volumes(plan: Plan, configmap: str, resources: ResourcesSpec) -> list[Manifest]:
    out: list[Manifest] = [
        {"name": "plan", "configMap": {"name": configmap}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": resources.shared_memory}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]
    for i, claim in enumerate(pvc_claims(plan)):
        out.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}})
    return out


def volume_mounts(plan: Plan) -> list[Manifest]:
    out: list[Manifest] = [
        {"name": "plan", "mountPath": PLAN_MOUNT, "readOnly": True},
        {"name": "shm", "mountPath": SHM_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    for i, claim in enumerate(pvc_claims(plan)):
        out.append({"name": f"pvc-{i}", "mountPath": pvc_mount_path(claim)})
    return out


def container_security_context() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security_context() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def trainer_image(spec: FineTuneJobSpec, facts: ClusterFacts) -> str:
    return spec.runtime.image or facts.trainer_image


def pod_service_account(job: FineTuneJob) -> str:
    """The account the pods run as: spec.runtime.serviceAccountName, else the per-job one."""
    return job.spec.runtime.service_account_name or names.trainer_account_name(job.metadata.name)


def metrics_ports(plan: Plan) -> list[Manifest]:
    """The trainer's Prometheus port on rank 0 (named apart from Ray's own "metrics")."""
    if not plan.metrics_port:
        return []
    return [{"name": METRICS_PORT_NAME, "containerPort": plan.metrics_port}]


def ray_head_ports() -> list[Manifest]:
    return [
        {"name": "gcs", "containerPort": RAY_GCS_PORT},
        {"name": "dashboard", "containerPort": RAY_DASHBOARD_PORT},
        {"name": "client", "containerPort": RAY_CLIENT_PORT},
    ]


def trainer_container(
    job: FineTuneJob,
    plan: Plan,
    facts: ClusterFacts,
    *,
    command: list[str] | None = None,
    extra_env: list[Manifest] | None = None,
    ray_ports: bool = False,
) -> Manifest:
    """The trainer container. ray_ports declares the Ray head's ports (the ``job`` launcher;
    KubeRay adds its own under its own names)."""
    container: Manifest = {"name": CONTAINER, "image": trainer_image(job.spec, facts)}
    if command is not None:
        container["command"] = command
    container["env"] = container_env(job.spec, plan, extra_env)
    ports = (ray_head_ports() if ray_ports else []) + metrics_ports(plan)
    if ports:
        container["ports"] = ports
    container["resources"] = container_resources(job.spec.resources)
    container["volumeMounts"] = volume_mounts(plan)
    container["securityContext"] = container_security_context()
    return container


def pod_spec(job: FineTuneJob, plan: Plan, container: Manifest, configmap: str) -> Manifest:
    """The pod spec every launcher shares: identity, placement, security, volumes."""
    resources = job.spec.resources
    spec: Manifest = {
        "serviceAccountName": pod_service_account(job),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes(plan, configmap, resources),
    }
    if resources.node_selector:
        spec["nodeSelector"] = dict(sorted(resources.node_selector.items()))
    if resources.tolerations:
        spec["tolerations"] = [t.to_wire() for t in resources.tolerations]
    if resources.priority_class_name:
        spec["priorityClassName"] = resources.priority_class_name
    return spec


def check_plan(job: FineTuneJob, plan: Plan) -> None:
    ref = job.job_ref()
    if (plan.job.name, plan.job.namespace) != (ref.name, ref.namespace):
        raise ValueError(
            f"plan is for {plan.job.namespace}/{plan.job.name}, not {ref.namespace}/{ref.name}"
        )
