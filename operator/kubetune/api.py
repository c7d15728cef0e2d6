"""The FineTuneJob API (kubetune.io/v1alpha1): the trainer's recipe sections plus what only the
platform knows. This is the only definition of FineTuneJob; the CRD is generated from it."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from kubetune.reasons import ConditionType, Reason
from kubetune_trainer.plan import (
    FieldError,
    JobRef,
    ModelSpec,
    Name,
    RecipeSpec,
    SecretKeyRef,
    Section,
    ShortText,
)

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]

Quantity = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P|E|Ei)?$"),
]


class Toleration(Section):
    """A Kubernetes toleration for the training pods."""

    key: ShortText | None = None
    """Taint key; empty with operator Exists tolerates every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""
    value: ShortText | None = None
    """Taint value (operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; empty tolerates every effect."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """How long a NoExecute taint is tolerated."""


class ResourcesSpec(Section):
    """Compute for the training pods."""

    nodes: int = Field(default=1, ge=1, le=1024)
    """Nodes (pods) the job spreads over; pod 0 runs the Ray head and the driver."""
    gpus_per_node: int = Field(default=1, ge=0, le=64)
    """GPUs requested by each pod (nvidia.com/gpu); 0 trains on CPU."""
    cpu: Quantity | None = None
    """CPU request per pod, e.g. 16. Default: 8 per GPU (2 on CPU-only pods)."""
    memory: Quantity | None = None
    """Memory request per pod, e.g. 200Gi. Default: 64Gi per GPU (8Gi on CPU-only pods)."""
    shared_memory: Quantity = "16Gi"
    """Size of the in-memory /dev/shm volume (NCCL and data loaders need more than the
    container default)."""
    node_selector: dict[str, ShortText] = Field(default_factory=dict)
    """Labels a node must carry, e.g. nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Taints the pods tolerate."""
    priority_class_name: ShortText | None = None
    """PriorityClass of the pods (preemption order)."""


class RuntimeSpec(Section):
    """How the job is launched."""

    launcher: Literal["auto", "job", "rayjob"] = "auto"
    """job: an Indexed Job and a headless Service (any cluster); rayjob: a KubeRay RayJob;
    auto: rayjob when the RayJob CRD is installed, else job."""
    image: ShortText | None = None
    """Trainer image. Default: the operator's configured trainer image."""
    export_image: ShortText | None = None
    """Export-stage image. Default: the operator's configured export image."""
    service_account_name: Name | None = None
    """ServiceAccount the training pods run as (e.g. for cloud storage identity). Default: a
    per-job account that can only report this job's progress."""
    queue_name: Name | None = None
    """Kueue LocalQueue; the launcher is created suspended for Kueue to admit."""
    suspend: bool = False
    """Suspend the job: its pods are removed, checkpoints kept; unsuspend resumes."""


class ResumeSpec(Section):
    """Recovery after failures. Disruptions (eviction, preemption, node loss) always resume
    and do not count against maxRestarts."""

    max_restarts: int = Field(default=3, ge=0, le=1000)
    """Application failures tolerated before the job fails."""
    backoff_seconds: int = Field(default=10, ge=0, le=86400)
    """Delay before the first restart; doubles with each restart."""
    max_backoff_seconds: int = Field(default=600, ge=0, le=86400)
    """Longest delay between restarts."""


class FineTuneJobSpec(RecipeSpec):
    """A fine-tuning, alignment or evaluation job."""

    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Nodes, GPUs, CPU and memory, placement."""
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    """Launcher, images, identity, queueing and suspension."""
    resume: ResumeSpec = Field(default_factory=ResumeSpec)
    """Restart policy."""
    env_secrets: dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=253)],
        SecretKeyRef,
    ] = Field(default_factory=dict)
    """Extra environment variables for the trainer, each from a Secret key (e.g. a storage
    credential)."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the job and its children this long after it succeeds or fails. Default: keep."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the job when it has been active this long, counted from its first start."""

    @model_validator(mode="after")
    def _platform_rules(self) -> FineTuneJobSpec:
        if self.peft.type == "qlora" and self.resources.gpus_per_node == 0:
            raise FieldError(
                ("peft", "type"),
                "qlora needs GPUs (resources.gpusPerNode > 0): bitsandbytes "
                "4-bit kernels do not run on CPU",
            )
        if self.resume.max_backoff_seconds < self.resume.backoff_seconds:
            raise FieldError(
                ("resume", "maxBackoffSeconds"), "must be at least resume.backoffSeconds"
            )
        return self

    def recipe(self) -> RecipeSpec:
        """The trainer's part of this spec."""
        return RecipeSpec.model_validate(self.model_dump(include=set(RecipeSpec.model_fields)))


# --------------------------------------------------------------------------- status


class Phase(StrEnum):
    pending = "Pending"
    waiting_for_dependencies = "WaitingForDependencies"
    running = "Running"
    exporting = "Exporting"
    suspended = "Suspended"
    succeeded = "Succeeded"
    failed = "Failed"


class Condition(Section):
    """One aspect of the job's state, Kubernetes-style."""

    type: ShortText
    """InvalidSpec, DependenciesReady, Running, Checkpointed, Resuming, Exported, Succeeded,
    Failed or Suspended."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: ShortText | None = None
    """One-word CamelCase reason."""
    message: Annotated[str, StringConstraints(max_length=32768)] | None = None
    """Human-readable detail."""
    last_transition_time: ShortText | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The spec generation the condition was computed from."""


class Progress(Section):
    """Training progress, reported by the trainer."""

    step: int | None = None
    """Optimizer steps done."""
    total_steps: int | None = None
    """Optimizer steps planned."""
    epoch: float | None = None
    """Epochs done (fractional)."""
    percent: int | None = None
    """Percent of the planned steps done."""
    eta_seconds: int | None = None
    """Estimated seconds left."""
    loss: ShortText | None = None
    """Latest training loss (a string so it prints unrounded in kubectl)."""
    tokens_per_second: float | None = None
    """Training throughput over the last interval, all workers together."""
    updated: ShortText | None = None
    """When the trainer last reported (RFC 3339)."""
    eval_metrics: dict[str, ShortText] | None = None
    """The latest held-out metrics (at training.evalEverySteps), e.g. eval_loss."""
    objectives: dict[str, ShortText] | None = None
    """The latest batch mean of each reward objective (a named ppo/grpo reward source)."""


class EvaluationSummary(Section):
    """An eval job's outcome, reported by the trainer."""

    models: list[ShortText] = Field(default_factory=list)
    """The models evaluated side by side, in order."""
    baseline: ShortText | None = None
    """The model the others are compared with."""
    summary: Annotated[str, StringConstraints(max_length=16384)] | None = None
    """One line per metric: the evaluated model's value with its 95% interval and sample
    count, and its difference to the baseline (paired on the same examples)."""
    results: ShortText | None = None
    """Where eval_results.json, the per-example samples and the HTML report are."""


class CheckpointRef(Section):
    """The latest complete checkpoint."""

    uri: ShortText
    """Where it is."""
    step: int
    """Optimizer step it was taken at."""
    attempt: int | None = None
    """Attempt that wrote it."""
    time: ShortText | None = None
    """When it was completed (RFC 3339)."""


class Artifact(Section):
    """One exported file."""

    format: ShortText
    """safetensors, gguf-TYPE or onnx."""
    uri: ShortText
    """Where it is."""
    bytes: int | None = None
    """Size."""
    sha256: ShortText | None = None
    """SHA-256 of the file (or of the manifest for multi-file formats)."""
    verified: bool = False
    """Whether an independent loader reproduced the source model's outputs."""


class FineTuneJobStatus(Section):
    """Observed state, written by the operator (phase, conditions) and the trainer (progress,
    lastCheckpoint)."""

    phase: Phase | None = Field(default=None, strict=False)
    """Pending, WaitingForDependencies, Running, Exporting, Suspended, Succeeded or Failed."""
    conditions: list[Condition] = Field(default_factory=list)
    """Detailed conditions."""
    attempt: int | None = None
    """Current attempt (1 for the first run)."""
    restarts: int | None = None
    """Application failures restarted so far (counts against resume.maxRestarts)."""
    disruptions: int | None = None
    """Disruptions (evictions, preemptions) recovered so far."""
    export_attempt: int | None = None
    """Current attempt of the export stage (1 for its first run), numbered apart from training
    attempts: a failed export is retried alone, never retraining."""
    export_restarts: int | None = None
    """Export failures retried so far (counted against resume.maxRestarts apart from
    restarts)."""
    progress: Progress | None = None
    """Training progress."""
    last_checkpoint: CheckpointRef | None = None
    """Latest complete checkpoint."""
    artifacts: list[Artifact] = Field(default_factory=list)
    """Exported artifacts."""
    evaluation: EvaluationSummary | None = None
    """An eval job's results (method eval)."""
    output: ShortText | None = None
    """Where the trained model is (what finetunejob://NAME resolves to)."""
    start_time: ShortText | None = None
    """When the first attempt started (RFC 3339)."""
    completion_time: ShortText | None = None
    """When the job succeeded or failed (RFC 3339)."""
    observed_generation: int | None = None
    """The spec generation the operator last acted on."""
    next_attempt_time: ShortText | None = None
    """When the pending attempt (status.attempt; status.exportAttempt while Exporting) will be
    launched, after the restart backoff (RFC 3339); unset once it is launched."""


class ObjectMeta(Section):
    """The part of metadata the schema checks; everything else is passed through."""

    model_config = Section.model_config | {"extra": "allow"}

    name: Annotated[
        str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=49)
    ]
    """Job name: a DNS label of at most 49 characters, so child names fit their limits."""
    namespace: Name | None = None
    """Namespace."""


class FineTuneJob(Section):
    """A FineTuneJob as written by users (apiVersion, kind, metadata, spec, status)."""

    model_config = Section.model_config | {"extra": "forbid"}

    api_version: Literal["kubetune.io/v1alpha1"]
    """kubetune.io/v1alpha1."""
    kind: Literal["FineTuneJob"]
    """FineTuneJob."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: FineTuneJobSpec
    """Desired state."""
    status: FineTuneJobStatus | None = None
    """Observed state."""

    def job_ref(self) -> JobRef:
        extra = self.metadata.model_extra or {}
        return JobRef(
            name=self.metadata.name,
            namespace=self.metadata.namespace or "default",
            uid=extra.get("uid"),
        )


def model_dependencies(spec: FineTuneJobSpec) -> list[tuple[tuple[str, ...], str]]:
    """The finetunejob:// jobs this spec depends on, with the field path naming each."""
    found = []
    for path, model in spec.model_sources():
        if model.source.startswith("finetunejob://"):
            found.append((path, model.source.removeprefix("finetunejob://").strip("/")))
    return found


__all__ = [
    "API_VERSION",
    "KIND",
    "Artifact",
    "CheckpointRef",
    "Condition",
    "ConditionType",
    "EvaluationSummary",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "ModelSpec",
    "Phase",
    "Progress",
    "Reason",
    "ResourcesSpec",
    "ResumeSpec",
    "RuntimeSpec",
    "Toleration",
    "model_dependencies",
]
