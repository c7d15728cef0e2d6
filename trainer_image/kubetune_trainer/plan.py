"""The trainer's input contract: the sections of a FineTuneJob the trainer consumes, and the Plan.

Everything here is importable without torch. The operator composes these sections into the
FineTuneJob API (``kubetune.api``); the trainer receives one resolved :class:`Plan` as JSON and
needs nothing else to run. Field docstrings become CRD descriptions, so they are written for the
person reading ``kubectl explain``.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kubetune_trainer.trl_fields import CONFIG_FOR_METHOD, check_trl_args

PLAN_VERSION = "kubetune.io/plan/v1"

MODEL_SCHEMES = ("hf", "s3", "pvc", "finetunejob", "builtin", "file")
DATA_SCHEMES = ("hf", "s3", "pvc", "file")
STORAGE_SCHEMES = ("s3", "pvc", "file")
BUILTIN_MODELS = ("tiny-llama", "tiny-qwen2", "tiny-mistral")
CHAT_TEMPLATES = ("llama3", "chatml", "mistral")

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class Section(BaseModel):
    """Base for every API section: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """This section as the camelCase JSON the API and the plan use."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


Name = Annotated[str, StringConstraints(min_length=1, max_length=253)]
ShortText = Annotated[str, StringConstraints(max_length=1024)]


def uri_scheme(uri: str) -> str:
    """The scheme of a kubetune URI; a bare path (absolute or relative) is ``file``."""
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0]


def check_uri(uri: str, allowed: tuple[str, ...], what: str) -> str:
    if not uri.strip():
        raise ValueError(f"{what} must not be empty")
    scheme = uri_scheme(uri)
    if scheme not in allowed:
        kinds = ", ".join(f"{s}://" for s in allowed if s != "file")
        raise ValueError(f"unsupported scheme '{scheme}://' in '{uri}'; use {kinds} or a path")
    rest = uri.split("://", 1)[1] if "://" in uri else uri
    if scheme != "file" and not rest.strip("/"):
        raise ValueError(f"'{uri}' names no location after '{scheme}://'")
    if scheme == "pvc" and "/" not in rest.strip("/") and not rest:
        raise ValueError(f"'{uri}' must be pvc://CLAIM/PATH")
    if scheme == "builtin" and rest not in BUILTIN_MODELS:
        raise ValueError(
            f"unknown builtin model '{rest}'; choose one of {', '.join(BUILTIN_MODELS)}"
        )
    return uri


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``90s``, ``15m`` or ``1h30m``."""
    match = _DURATION.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"'{text}' is not a duration like 90s, 15m or 1h30m")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


# --------------------------------------------------------------------------- shared pieces


class SecretKeyRef(Section):
    """A key of a Secret in the job's namespace. Its value reaches the trainer as an environment
    variable; it is never written into the plan, a ConfigMap or a log."""

    name: Name
    """Name of the Secret."""
    key: Name
    """Key inside the Secret."""


# --------------------------------------------------------------------------- model


class ModelSpec(Section):
    """The model to start from."""

    source: ShortText
    """Where the weights come from: hf://ORG/NAME (Hugging Face Hub), s3://BUCKET/PREFIX,
    pvc://CLAIM/PATH (a PersistentVolumeClaim in the job's namespace), finetunejob://NAME (the
    output of another FineTuneJob in the same namespace; the job waits until that one has
    succeeded), builtin://tiny-llama | tiny-qwen2 | tiny-mistral (tiny models for demos and
    tests), or a local path (local runs only)."""
    revision: ShortText | None = None
    """Branch, tag or commit of an hf:// model. Default: the repository's main branch."""
    chat_template: ShortText | None = None
    """Chat template override: llama3, chatml or mistral (kubetune's templates, with generation
    markers for assistant-only loss), or a Jinja template string. Default: the tokenizer's own
    template, or kubetune's template for the architecture when the tokenizer has none."""
    token_secret: SecretKeyRef | None = None
    """Secret holding an access token for a gated hf:// model or private s3:// bucket."""
    trust_remote_code: bool = Field(default=False)
    """Allow model code shipped with the checkpoint to run. Default: false."""
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Attention kernel: auto picks flash_attention_2 on GPUs where it is installed, else sdpa."""

    @field_validator("source")
    @classmethod
    def _source_uri(cls, value: str) -> str:
        return check_uri(value, MODEL_SCHEMES, "model source")

    @field_validator("chat_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None and value not in CHAT_TEMPLATES and "{%" not in value:
            raise ValueError(
                f"'{value}' is neither a known template ({', '.join(CHAT_TEMPLATES)}) "
                "nor a Jinja template"
            )
        return value


# --------------------------------------------------------------------------- data


class DataFormat(StrEnum):
    messages = "messages"
    prompt_completion = "prompt-completion"
    text = "text"
    preference = "preference"
    prompt_only = "prompt-only"
    hh_rlhf = "hh-rlhf"


class ColumnMapping(Section):
    """Names of the columns to read, when the dataset does not use kubetune's defaults."""

    messages: ShortText = "messages"
    """Column holding a list of {role, content} turns (format messages)."""
    prompt: ShortText = "prompt"
    """Column holding the prompt (prompt-completion, explicit preference, prompt-only)."""
    completion: ShortText = "completion"
    """Column holding the completion (format prompt-completion)."""
    text: ShortText = "text"
    """Column holding raw text (format text)."""
    chosen: ShortText = "chosen"
    """Column holding the preferred response or conversation (preference, hh-rlhf)."""
    rejected: ShortText = "rejected"
    """Column holding the dispreferred response or conversation (preference, hh-rlhf)."""
    answer: ShortText = "answer"
    """Column holding a reference answer, used by answer-match rewards and accuracy evals."""
    score: ShortText = "score"
    """Column holding an external reward score, used by externalColumn reward sources."""


class DataSource(Section):
    """One dataset; several sources with weights form a mixture."""

    uri: ShortText
    """A jsonl, json or parquet file or directory, a dataset saved with datasets'
    save_to_disk, hf://ORG/NAME, s3://BUCKET/PREFIX or pvc://CLAIM/PATH."""
    format: DataFormat = DataFormat.messages
    """Row format: messages, prompt-completion, text, preference (chosen/rejected with an
    explicit prompt column, or implicit: the shared conversation prefix becomes the prompt),
    prompt-only, or hh-rlhf (raw "\\n\\nHuman: … \\n\\nAssistant: …" text)."""
    split: ShortText = "train"
    """Split to read from a hub or saved dataset."""
    subset: ShortText | None = None
    """Configuration (subset) name of a hub dataset."""
    weight: float = Field(default=1.0, gt=0)
    """Relative share of this source in the mixture."""
    max_samples: int | None = Field(default=None, ge=1)
    """Read at most this many rows from this source."""
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    """Column names, when they differ from the defaults."""

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return check_uri(value, DATA_SCHEMES, "data uri")


class DataSpec(Section):
    """Training data: one or more sources mixed by weight."""

    sources: list[DataSource] = Field(min_length=1, max_length=64)
    """The datasets. With several, each epoch samples them in proportion to their weights."""
    eval_sources: list[DataSource] = Field(default_factory=list, max_length=64)
    """Held-out datasets for evaluation. Default: none; see evalRatio."""
    eval_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Fraction of the training mixture held out for evaluation when evalSources is empty."""
    max_samples: int | None = Field(default=None, ge=1)
    """Use at most this many rows of the whole mixture."""
    bad_rows: Literal["fail", "skip"] = Field(default="fail")
    """What a malformed row does: fail stops with its source and row index; skip drops it and
    counts it in the log and the metrics."""
    seed: int = Field(default=42, ge=0)
    """Seed for mixing, shuffling and the eval split."""


# --------------------------------------------------------------------------- training


class TrainingSpec(Section):
    """Optimisation hyper-parameters, common to every method."""

    epochs: float = Field(default=1.0, gt=0)
    """Passes over the training data (fractions allowed). Ignored when maxSteps is set."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps."""
    learning_rate: float = Field(default=2e-5, gt=0, le=1)
    """Peak learning rate."""
    scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Fraction of the steps spent warming up linearly from zero."""
    warmup_steps: int = Field(default=0, ge=0)
    """Warmup steps; overrides warmupRatio when above zero."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradient clipping norm."""
    per_device_batch_size: int = Field(default=8, ge=1, le=4096)
    """Sequences per device per micro-step."""
    gradient_accumulation: int = Field(default=1, ge=1, le=4096)
    """Micro-steps accumulated per optimizer step. Global batch = perDeviceBatchSize ×
    gradientAccumulation × devices."""
    max_length: int = Field(default=2048, ge=8, le=1_048_576)
    """Longest sequence in tokens; longer rows are truncated."""
    packing: bool = False
    """Pack several short rows into each sequence (padding-free where the attention supports
    it) to spend less compute on padding."""
    seed: int = Field(default=42, ge=0)
    """Seed for initialisation, dropout and data order."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Numeric precision. auto: bf16 on GPUs that support it, else fp16 on GPUs, fp32 on CPU."""
    gradient_checkpointing: bool = Field(default=False)
    """Recompute activations in the backward pass to save memory."""
    log_every_steps: int = Field(default=10, ge=1)
    """Log metrics every this many optimizer steps."""
    eval_every_steps: int | None = Field(default=None, ge=1)
    """Evaluate on the held-out data every this many steps. Default: at the end of each epoch
    when there is held-out data."""
    trl_args: dict[str, Any] = Field(default_factory=dict)
    """Extra arguments for the method's TRL config (e.g. SFTConfig, DPOConfig), checked against
    that config's fields when the plan is made. Arguments kubetune sets from other fields are
    refused here."""


# --------------------------------------------------------------------------- peft


class PeftSpec(Section):
    """Parameter-efficient fine-tuning."""

    type: Literal["none", "lora", "qlora"] = "none"
    """none trains every weight; lora trains low-rank adapters; qlora trains adapters over a
    4-bit base model (needs GPUs)."""
    r: int = Field(default=16, ge=1, le=1024)
    """Adapter rank."""
    alpha: float = Field(default=32, gt=0)
    """Adapter scaling numerator (scale = alpha / r)."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: list[ShortText] = Field(
        default_factory=lambda: ["all-linear"], min_length=1, max_length=64
    )
    """Module names to adapt, or all-linear."""
    dora: bool = False
    """Use weight-decomposed adapters (DoRA)."""


# --------------------------------------------------------------------------- methods


class DpoSpec(Section):
    """Direct preference optimisation (method dpo)."""

    beta: float = Field(default=0.1, gt=0)
    """Strength of the implicit KL constraint to the reference model."""
    loss_type: Literal[
        "sigmoid",
        "hinge",
        "ipo",
        "robust",
        "bco_pair",
        "exo_pair",
        "nca_pair",
        "apo_zero",
        "apo_down",
        "sppo_hard",
        "aot",
        "aot_pair",
        "discopop",
        "sft",
    ] = Field(default="sigmoid")
    """DPO loss variant."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    """Assumed fraction of flipped preference labels (robust/cDPO losses)."""
    reference_model: ModelSpec | None = None
    """Reference model. Default: the starting model itself (with LoRA, the model with its
    adapters disabled, so no second copy is loaded)."""


class RewardSpec(Section):
    """Reward model training (method reward) on preference pairs."""

    margin_column: ShortText | None = None
    """Column with a per-pair margin the chosen reward must exceed the rejected one by."""
    center_rewards_coefficient: float | None = Field(default=None, ge=0)
    """Weight of a penalty keeping rewards centred on zero."""


class RewardSourceType(StrEnum):
    model = "model"
    length = "length"
    regex = "regex"
    answer_match = "answerMatch"
    external_column = "externalColumn"


class RewardSource(Section):
    """One term of the reward. Terms are summed by weight; see blendAlpha for external scores."""

    type: RewardSourceType
    """model: a reward model scores the prompt and response; length: penalty on the distance
    from targetLength tokens; regex: 1 when the response matches pattern; answerMatch: 1 when
    the response's answer equals the row's answer column; externalColumn: the row's score
    column."""
    weight: float = 1.0
    """Weight of this term."""
    model: ModelSpec | None = None
    """The reward model (type model), e.g. finetunejob://my-reward-job."""
    target_length: int | None = Field(default=None, ge=1)
    """Target response length in tokens (type length)."""
    pattern: ShortText | None = None
    """Regular expression the response should match (type regex)."""
    match: Literal["exact", "numeric"] = "exact"
    """How answers are compared (type answerMatch): exact text or numeric value of the last
    number in the response."""
    column: ShortText | None = None
    """Data column holding the answer (answerMatch) or the score (externalColumn). Default:
    the data section's answer or score column."""

    @model_validator(mode="after")
    def _fields_for_type(self) -> RewardSource:
        needs = {
            RewardSourceType.model: ("model", self.model),
            RewardSourceType.length: ("targetLength", self.target_length),
            RewardSourceType.regex: ("pattern", self.pattern),
        }
        if self.type in needs and needs[self.type][1] is None:
            raise ValueError(f"a {self.type.value} reward needs '{needs[self.type][0]}'")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"pattern is not a valid regular expression: {err}") from None
        return self


class AdaptiveKl(Section):
    """Adaptive KL controller: adjusts the KL coefficient so the measured KL tracks a target."""

    target: float = Field(gt=0)
    """Target KL divergence per response (nats)."""
    horizon: int = Field(default=10000, ge=1)
    """Responses over which the coefficient adapts."""


class PpoSpec(Section):
    """Proximal policy optimisation with a learned value head (method ppo)."""

    rewards: list[RewardSource] = Field(default_factory=list, max_length=16)
    """Reward terms; at least one."""
    blend_alpha: float = Field(default=1.0, ge=0, le=1)
    """α in reward = (1-α)·external + α·internal, where external is the externalColumn terms
    and internal the others."""
    kl_coef: float = Field(default=0.05, ge=0)
    """KL penalty coefficient (the starting value when adaptiveKl is set)."""
    adaptive_kl: AdaptiveKl | None = None
    """Adapt klCoef toward a target KL. Default: fixed coefficient."""
    reference_model: ModelSpec | None = None
    """Reference for the KL penalty. Default: the starting model."""
    value_model: ModelSpec | None = None
    """Model whose trunk initialises the value head. Default: the starting model."""
    rollout_batch_size: int = Field(default=64, ge=1)
    """Prompts per rollout."""
    mini_batch_size: int = Field(default=8, ge=1)
    """Responses per PPO update mini-batch."""
    ppo_epochs: int = Field(default=4, ge=1)
    """Passes over each rollout."""
    clip_range: float = Field(default=0.2, gt=0)
    """Policy ratio clip range."""
    clip_range_value: float = Field(default=0.2, gt=0)
    """Value prediction clip range."""
    vf_coef: float = Field(default=0.1, ge=0)
    """Weight of the value loss."""
    gamma: float = Field(default=1.0, ge=0, le=1)
    """Discount factor."""
    lam: float = Field(default=0.95, ge=0, le=1)
    """GAE λ."""
    whiten_advantages: bool = Field(default=True)
    """Normalise advantages per batch."""
    whiten_rewards: bool = Field(default=False)
    """Normalise rewards per batch."""
    response_length: int = Field(default=64, ge=1)
    """Longest generated response in tokens."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature of rollouts."""

    @model_validator(mode="after")
    def _minibatch_fits(self) -> PpoSpec:
        if self.mini_batch_size > self.rollout_batch_size:
            raise ValueError(
                f"miniBatchSize ({self.mini_batch_size}) exceeds rolloutBatchSize "
                f"({self.rollout_batch_size})"
            )
        return self


class GrpoSpec(Section):
    """Group-relative policy optimisation (method grpo), or RLOO with variant rloo."""

    variant: Literal["grpo", "rloo"] = "grpo"
    """grpo: advantages relative to the group mean (TRL GRPOTrainer); rloo: leave-one-out
    baseline (TRL RLOOTrainer)."""
    rewards: list[RewardSource] = Field(default_factory=list, max_length=16)
    """Reward terms; at least one."""
    blend_alpha: float = Field(default=1.0, ge=0, le=1)
    """α in reward = (1-α)·external + α·internal (see ppo.blend_alpha)."""
    num_generations: int = Field(default=8, ge=2)
    """Completions sampled per prompt."""
    max_completion_length: int = Field(default=64, ge=1)
    """Longest completion in tokens."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature."""
    beta: float = Field(default=0.0, ge=0)
    """KL coefficient against the reference model (0 loads no reference)."""


class EvalMetricType(StrEnum):
    perplexity = "perplexity"
    accuracy = "accuracy"
    pass_at_k = "passAtK"
    win_rate = "winRate"
    judge = "judge"


class JudgeSpec(Section):
    """An LLM judge behind an OpenAI-compatible chat-completions endpoint."""

    endpoint: ShortText
    """Base URL, e.g. http://judge.models.svc:8000/v1."""
    model: ShortText
    """Model name sent to the endpoint."""
    mode: Literal["single", "pairwise"] = "single"
    """single: a 1–5 score per response; pairwise: A/B preference against the baseline, asked
    in both orders."""
    api_key_secret: SecretKeyRef | None = None
    """Secret holding the endpoint's API key."""
    timeout_seconds: float = Field(default=60, gt=0)
    """Per-request timeout."""
    retries: int = Field(default=3, ge=0, le=20)
    """Retries per request on errors and timeouts."""


class EvalMetric(Section):
    """One evaluation."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=63)]
    """Metric name in the results and in export gates, e.g. gsm_accuracy."""
    type: EvalMetricType
    """perplexity (token-weighted), accuracy (answers extracted from generations), passAtK
    (code run in a sandbox), winRate (reward model, against baselineModel) or judge."""
    dataset: DataSource
    """Data the metric is computed on."""
    extractor: Literal["exact", "regex", "lastNumber"] = "exact"
    """How an answer is read from a generation (accuracy)."""
    pattern: ShortText | None = None
    """Regular expression whose first group is the answer (extractor regex)."""
    k: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=8)
    """k values for passAtK."""
    samples: int = Field(default=1, ge=1, le=1024)
    """Generations per prompt (passAtK needs samples ≥ max k)."""
    max_new_tokens: int = Field(default=128, ge=1)
    """Longest generation in tokens."""
    timeout_seconds: float = Field(default=10, gt=0)
    """Wall-clock limit for one sandboxed program (passAtK)."""
    memory_mb: int = Field(default=512, ge=16)
    """Memory limit for one sandboxed program (passAtK)."""
    baseline_model: ModelSpec | None = None
    """Model compared against (winRate, pairwise judge)."""
    reward_model: ModelSpec | None = None
    """Reward model scoring both sides (winRate)."""
    judge: JudgeSpec | None = None
    """The judge (type judge)."""

    @model_validator(mode="after")
    def _fields_for_type(self) -> EvalMetric:
        if self.extractor == "regex" and self.pattern is None:
            raise ValueError("extractor regex needs 'pattern'")
        if self.type == EvalMetricType.pass_at_k and self.samples < max(self.k):
            raise ValueError(f"samples ({self.samples}) must be at least max(k) ({max(self.k)})")
        if self.type == EvalMetricType.win_rate:
            missing = [
                alias
                for alias, value in (
                    ("baselineModel", self.baseline_model),
                    ("rewardModel", self.reward_model),
                )
                if value is None
            ]
            if missing:
                raise ValueError(f"a winRate metric needs {' and '.join(missing)}")
        if self.type == EvalMetricType.judge:
            if self.judge is None:
                raise ValueError("a judge metric needs 'judge'")
            if self.judge.mode == "pairwise" and self.baseline_model is None:
                raise ValueError("a pairwise judge needs 'baselineModel'")
        return self


class EvalSpec(Section):
    """Evaluation (method eval, or the eval gate of a training job)."""

    metrics: list[EvalMetric] = Field(default_factory=list, max_length=32)
    """Metrics to compute; at least one."""

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, metrics: list[EvalMetric]) -> list[EvalMetric]:
        names = [m.name for m in metrics]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"metric names must be unique; repeated: {', '.join(duplicated)}")
        return metrics


# --------------------------------------------------------------------------- deepspeed


class DeepSpeedSpec(Section):
    """DeepSpeed ZeRO. kubetune generates the config (with 'auto' values filled by the trainer)
    unless a raw config is given."""

    zero_stage: Literal[0, 1, 2, 3] = Field(default=0)
    """ZeRO stage; 0 disables DeepSpeed and uses plain data parallelism."""
    offload_optimizer: bool = Field(default=False)
    """Keep optimizer state in CPU memory (stage 2 and 3)."""
    offload_params: bool = Field(default=False)
    """Keep parameters in CPU memory (stage 3)."""
    config: dict[str, Any] | None = None
    """A complete DeepSpeed config used as given (overrides the fields above)."""

    @model_validator(mode="after")
    def _offload_needs_stage(self) -> DeepSpeedSpec:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offloadParams needs zeroStage 3")
        if self.offload_optimizer and self.zero_stage < 2:
            raise ValueError("offloadOptimizer needs zeroStage 2 or 3")
        return self


# --------------------------------------------------------------------------- checkpoint/export


class CheckpointSpec(Section):
    """Where and how often training state is saved. A job resumes from its latest complete
    checkpoint after failures and preemptions."""

    storage: ShortText | None = None
    """s3://BUCKET/PREFIX or pvc://CLAIM/PATH (a path for local runs). Default: the platform's
    default storage (operator setting); ./runs for local runs."""
    every_steps: int | None = Field(default=None, ge=1)
    """Save every this many optimizer steps."""
    every: ShortText | None = None
    """Save when this much time passed since the last save, e.g. 30m. With everySteps,
    whichever comes first. Default when neither is set: 30m."""
    keep_last: int = Field(default=2, ge=1, le=100)
    """Complete checkpoints kept; older ones are deleted."""

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value, STORAGE_SCHEMES, "checkpoint storage")

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) < 1:
            raise ValueError("must be at least 1s")
        return value

    @property
    def every_seconds(self) -> int | None:
        if self.every is None and self.every_steps is None:
            return 1800
        return None if self.every is None else parse_duration(self.every)


class GgufSpec(Section):
    """GGUF output."""

    types: list[Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]] = Field(
        default_factory=lambda: ["f16"], min_length=1, max_length=8
    )
    """One GGUF file per type."""


class ExportGate(Section):
    """Export only when an evaluation metric reaches a threshold."""

    metric: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=63)]
    """Name of a metric in spec.eval.metrics."""
    min: float | None = None
    """Export when the metric is at least this."""
    max: float | None = None
    """Export when the metric is at most this (e.g. perplexity)."""

    @model_validator(mode="after")
    def _one_bound(self) -> ExportGate:
        if self.min is None and self.max is None:
            raise ValueError("an export gate needs 'min' or 'max'")
        return self


class ExportSpec(Section):
    """Artifacts produced after training, each verified by an independent loader."""

    formats: list[Literal["safetensors", "gguf", "onnx"]] = Field(
        default_factory=lambda: ["safetensors"], max_length=3
    )
    """safetensors (adapters merged into the base model), gguf, onnx (with KV cache)."""
    gguf: GgufSpec = Field(default_factory=GgufSpec)
    """GGUF options."""
    destination: ShortText | None = None
    """s3://BUCKET/PREFIX or pvc://CLAIM/PATH. Default: beside the checkpoints."""
    gate: ExportGate | None = None
    """Evaluate with spec.eval first and export only if this metric passes."""

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value, STORAGE_SCHEMES, "export destination")

    @field_validator("formats")
    @classmethod
    def _unique(cls, formats: list[str]) -> list[str]:
        if len(set(formats)) != len(formats):
            raise ValueError("each format may appear once")
        return formats


class TrackingSpec(Section):
    """Experiment tracking."""

    backend: Literal["none", "wandb", "mlflow", "tensorboard"] = "none"
    """Where training metrics are sent, besides kubetune's own metrics."""
    project: ShortText | None = None
    """Project (wandb) or experiment (mlflow) name. Default: the job's namespace."""
    uri: ShortText | None = None
    """Tracking server URL (mlflow, self-hosted wandb)."""
    api_key_secret: SecretKeyRef | None = None
    """Secret holding the backend's API key or token."""


# --------------------------------------------------------------------------- the recipe

Method = Literal["sft", "dpo", "reward", "ppo", "grpo", "eval"]
METHOD_SECTIONS = {"dpo": "dpo", "reward": "reward", "ppo": "ppo", "grpo": "grpo", "eval": "eval"}

# TRL config fields that kubetune sets from its own sections; trlArgs may not override them.
TRL_ARGS_OWNED = {
    "output_dir": "spec.checkpoint.storage",
    "num_train_epochs": "spec.training.epochs",
    "max_steps": "spec.training.max_steps",
    "learning_rate": "spec.training.learning_rate",
    "lr_scheduler_type": "spec.training.scheduler",
    "warmup_ratio": "spec.training.warmup_ratio",
    "warmup_steps": "spec.training.warmup_steps",
    "weight_decay": "spec.training.weight_decay",
    "max_grad_norm": "spec.training.max_grad_norm",
    "per_device_train_batch_size": "spec.training.per_device_batch_size",
    "gradient_accumulation_steps": "spec.training.gradient_accumulation",
    "max_length": "spec.training.max_length",
    "packing": "spec.training.packing",
    "seed": "spec.training.seed",
    "bf16": "spec.training.precision",
    "fp16": "spec.training.precision",
    "gradient_checkpointing": "spec.training.gradient_checkpointing",
    "logging_steps": "spec.training.log_every_steps",
    "eval_steps": "spec.training.eval_every_steps",
    "save_steps": "spec.checkpoint.every_steps",
    "save_total_limit": "spec.checkpoint.keep_last",
    "deepspeed": "spec.deepspeed",
    "report_to": "spec.tracking.backend",
    "beta": "spec.dpo.beta / spec.grpo.beta",
    "loss_type": "spec.dpo.loss_type",
    "num_generations": "spec.grpo.num_generations",
    "use_cpu": "spec.resources",
}


class RecipeSpec(Section):
    """What to train and how: every section of a FineTuneJob that the trainer consumes."""

    method: Method
    """Training method: sft, dpo, reward, ppo, grpo (also RLOO) or eval."""
    model: ModelSpec
    """The starting model."""
    data: DataSpec | None = None
    """Training data (required for every method except eval)."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Optimisation hyper-parameters."""
    peft: PeftSpec = Field(default_factory=PeftSpec)
    """LoRA / QLoRA adapters. Default: full fine-tuning."""
    dpo: DpoSpec | None = None
    """Options of method dpo."""
    reward: RewardSpec | None = None
    """Options of method reward."""
    ppo: PpoSpec | None = None
    """Options of method ppo (required: at least one reward)."""
    grpo: GrpoSpec | None = None
    """Options of method grpo (required: at least one reward)."""
    eval: EvalSpec | None = None
    """Metrics of method eval, or of the export gate."""
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    """DeepSpeed ZeRO sharding."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpoint storage and interval."""
    export: ExportSpec | None = None
    """Artifacts to produce after training. Default: none."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Experiment tracking."""

    @model_validator(mode="after")
    def _method_sections(self) -> RecipeSpec:
        for method, section in METHOD_SECTIONS.items():
            if (
                getattr(self, section) is not None
                and method != self.method
                and not (
                    section == "eval" and self.export is not None and self.export.gate is not None
                )
            ):
                raise _FieldError(
                    (section,), f"section given but method is '{self.method}'; remove it"
                )
        if self.method != "eval" and self.data is None:
            raise _FieldError(("data",), f"method {self.method} needs training data")
        if self.method in ("ppo", "grpo"):
            section = getattr(self, self.method)
            if section is None or not section.rewards:
                raise _FieldError(
                    (self.method, "rewards"), f"method {self.method} needs at least one reward"
                )
        if self.method == "eval" and (self.eval is None or not self.eval.metrics):
            raise _FieldError(("eval", "metrics"), "method eval needs at least one metric")
        gate = self.export.gate if self.export else None
        if gate is not None:
            names = [m.name for m in self.eval.metrics] if self.eval else []
            if gate.metric not in names:
                raise _FieldError(
                    ("export", "gate", "metric"),
                    f"'{gate.metric}' is not a metric in spec.eval.metrics "
                    f"({', '.join(names) or 'none defined'})",
                )
        self._check_trl_args()
        return self

    def _check_trl_args(self) -> None:
        args = self.training.trl_args
        if not args:
            return
        for key in args:
            if key in TRL_ARGS_OWNED:
                raise _FieldError(
                    ("training", "trlArgs", key),
                    f"set by kubetune; use {TRL_ARGS_OWNED[key]} instead",
                )
        config_key = self.method
        if self.method == "grpo" and self.grpo is not None:
            config_key = self.grpo.variant
        if config_key not in CONFIG_FOR_METHOD:
            raise _FieldError(
                ("training", "trlArgs"),
                f"method {self.method} is kubetune's own trainer; trlArgs does not apply",
            )
        for key, message in check_trl_args(config_key, args):
            raise _FieldError(("training", "trlArgs", key), message)

    def method_section(self) -> BaseModel | None:
        """The options section of this recipe's method (None for sft)."""
        section = METHOD_SECTIONS.get(self.method)
        return getattr(self, section) if section else None

    def model_sources(self) -> list[tuple[tuple[str, ...], ModelSpec]]:
        """Every model this recipe loads, with its path in the spec: the starting model,
        references, value and reward models, eval baselines."""
        found: list[tuple[tuple[str, ...], ModelSpec]] = [(("model",), self.model)]
        if self.dpo and self.dpo.reference_model:
            found.append((("dpo", "referenceModel"), self.dpo.reference_model))
        for section in ("ppo", "grpo"):
            options = getattr(self, section)
            if options is None:
                continue
            for alias, model in (
                ("referenceModel", getattr(options, "reference_model", None)),
                ("valueModel", getattr(options, "value_model", None)),
            ):
                if model is not None:
                    found.append(((section, alias), model))
            for i, reward in enumerate(options.rewards):
                if reward.model is not None:
                    found.append(((section, "rewards", str(i), "model"), reward.model))
        if self.eval:
            for i, metric in enumerate(self.eval.metrics):
                for alias, model in (
                    ("baselineModel", metric.baseline_model),
                    ("rewardModel", metric.reward_model),
                ):
                    if model is not None:
                        found.append((("eval", "metrics", str(i), alias), model))
        return found


class _FieldError(ValueError):
    """A cross-field error that belongs to a specific field path (relative to the model)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


# --------------------------------------------------------------------------- the plan


class Scaling(Section):
    """How many processes the trainer runs, and on what."""

    workers: int = Field(ge=1)
    """Ray Train workers (one per device)."""
    devices_per_worker: int = Field(default=1, ge=0)
    """GPUs per worker; 0 on CPU."""
    nodes: int = Field(default=1, ge=1)
    """Nodes the workers spread over."""
    use_gpu: bool
    """Train on GPUs (NCCL) or CPUs (gloo)."""
    max_failures: int = Field(default=0, ge=0)
    """Worker failures Ray Train recovers from in place, before the attempt fails."""


class PlanStorage(Section):
    """Where the trainer writes, resolved from the checkpoint and export sections."""

    root: ShortText
    """Storage root (local path, pvc mount path, or s3:// URI)."""
    run_name: ShortText
    """Name of the run under root; stable across attempts so a new attempt resumes."""
    output_dir: ShortText
    """Where the final model is written; what finetunejob://JOB resolves to."""
    export_dir: ShortText
    """Where export artifacts and their manifest are written."""


class JobRef(Section):
    """The FineTuneJob this plan was made for."""

    name: Name
    """Job name."""
    namespace: Name = "default"
    """Job namespace."""
    uid: ShortText | None = None
    """Job UID, when made by the operator."""


class Plan(Section):
    """Everything the trainer receives: a FineTuneJob's recipe with every default filled in,
    model references resolved, plus scaling, storage and the attempt number."""

    version: Literal["kubetune.io/plan/v1"] = PLAN_VERSION
    """Version of this contract."""
    job: JobRef
    """The job the plan belongs to."""
    attempt: int = Field(default=1, ge=1)
    """Attempt number; a checkpoint written by attempt N is never overwritten by an older one."""
    recipe: RecipeSpec
    """The resolved recipe."""
    scaling: Scaling
    """Processes and devices."""
    storage: PlanStorage
    """Resolved storage locations."""
    metrics_port: int = Field(default=9400, ge=0, le=65535)
    """Port of the trainer's Prometheus endpoint on rank 0 (0 disables it)."""

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.model_validate_json(text)


def run_name(job: JobRef) -> str:
    """The run's directory name under the storage root: stable across attempts."""
    return f"{job.namespace}/{job.name}"


def join_uri(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def job_output_uri(storage_root: str, job: JobRef) -> str:
    """Where a job's final model is written: what finetunejob://NAME resolves to."""
    return join_uri(storage_root, run_name(job), "output")
