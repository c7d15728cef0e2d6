"""Pieces every TRL-based recipe composes: the run context, TRL arguments from the plan, PEFT,
and the train-resume-save sequence."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_trainer.evaluation.tracking import tracking_environment
from kubetune_trainer.models.adapters import is_adapter_dir, write_base_record
from kubetune_trainer.plan import PeftSpec, Plan
from kubetune_trainer.reporting.progress import Throttled
from kubetune_trainer.reporting.train_metrics import TrainMetrics
from kubetune_trainer.training.callbacks import (
    DataTraceCallback,
    HeldOutCallback,
    IntervalSaveCallback,
    PreemptionCallback,
    ProgressCallback,
    Publisher,
    TrainingDisplay,
    replace_hf_display,
)
from kubetune_trainer.training.deepspeed_config import deepspeed_config
from kubetune_trainer.training.hardware import Hardware, Precision, choose_precision, precision_args

log = logging.getLogger("kubetune.trainer")


@dataclass
class RunContext:
    """What a recipe needs besides the plan, assembled by kubetune_trainer.runtime.context for
    the single-process and the Ray path alike."""

    plan: Plan
    hardware: Hardware
    staging_dir: Path
    """Local directory the HF Trainer writes checkpoints into before they are published."""
    output_dir: Path
    """Where the final model is written (a local or mounted path)."""
    publish: Publisher
    progress: Throttled
    metrics: TrainMetrics | None
    resume_from: Path | None = None
    """A complete checkpoint to resume from."""
    world_size: int = 1
    rank: int = 0
    local_run: bool = False
    """Interactive local run: show a progress bar instead of log lines."""
    history: Path | None = None
    """Append every logged step (loss, learning rate, ...) to this JSONL file."""
    run_dir: Path | None = None
    """The run directory (stable across attempts) on local or PVC storage; None on S3."""
    stop_requested: Callable[[], bool] | None = None
    """Polled every step: True when the run must save and stop (the Ray driver got SIGTERM)."""
    extra_callbacks: list[Any] = field(default_factory=list)

    @property
    def precision(self) -> Precision:
        return choose_precision(self.plan.recipe.training.precision, self.hardware)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class RecipeResult:
    final_step: int
    preempted: bool
    metrics: dict[str, float]
    output_dir: Path | None


def trl_args(ctx: RunContext) -> dict[str, Any]:
    """TRL/HF TrainingArguments shared by every method, from the plan's training section."""
    recipe = ctx.plan.recipe
    t = recipe.training
    checkpoint = recipe.checkpoint
    has_eval = bool(recipe.data and (recipe.data.eval_sources or recipe.data.eval_ratio > 0))
    args: dict[str, Any] = {
        "output_dir": str(ctx.staging_dir),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.scheduler,
        # transformers 5 folds the warmup ratio into warmup_steps (a float below 1 is a ratio).
        "warmup_steps": t.warmup_steps or t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "per_device_train_batch_size": t.per_device_batch_size,
        "per_device_eval_batch_size": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation,
        "seed": t.seed,
        "data_seed": t.seed,
        **checkpointing_arg(t.gradient_checkpointing),
        "logging_steps": t.log_every_steps,
        "logging_first_step": True,
        "eval_strategy": ("steps" if t.eval_every_steps else "epoch") if has_eval else "no",
        "eval_steps": t.eval_every_steps,
        "save_strategy": "steps" if checkpoint.every_steps else "no",
        "save_steps": checkpoint.every_steps or 500,
        "save_total_limit": None,  # checkpoints are moved out and pruned by the publisher
        "report_to": [] if recipe.tracking.backend == "none" else [recipe.tracking.backend],
        # Without use_cpu, HF Trainer under Ray or torchrun on CPU trains un-distributed.
        "use_cpu": not ctx.hardware.cuda,
        "deepspeed": deepspeed_setup(ctx),
        "disable_tqdm": True,  # TrainingDisplay shows progress
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": True,
        "restore_callback_states_from_checkpoint": False,
        **precision_args(ctx.precision),
    }
    for name, value in tracking_environment(recipe.tracking, ctx.plan.job.namespace).items():
        os.environ.setdefault(name, value)
    return args


def checkpointing_arg(enabled: bool) -> dict[str, bool]:
    """Activation (gradient) checkpointing under the name this transformers knows: 5.x renamed
    gradient_checkpointing to activation_checkpointing and warns about the old name."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    key = (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )
    return {key: enabled}


def deepspeed_setup(ctx: RunContext) -> dict[str, Any] | None:
    """The DeepSpeed config for the run. On CPU, DeepSpeed must use its CPU accelerator
    (DS_ACCELERATOR=cpu, read when deepspeed is first imported) and gloo; ZeRO-3 needs its
    communication layer set up before the Trainer's arguments (and with them the config) are
    built, so it is initialised here on the process group the runtime made."""
    config = deepspeed_config(ctx.plan.recipe.deepspeed, ctx.precision)
    if config is None or ctx.hardware.cuda:
        return config
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    return config


def peft_config(spec: PeftSpec) -> Any:
    """A peft LoraConfig for lora/qlora, None for full fine-tuning."""
    if spec.type == "none":
        return None
    from peft import LoraConfig

    targets: str | list[str] = spec.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        use_dora=spec.dora,
        task_type="CAUSAL_LM",
    )


def quantization_config(spec: PeftSpec, hardware: Hardware) -> dict[str, Any]:
    """load_model arguments for 4-bit quantization (qlora); a clear error where bitsandbytes
    cannot run; nothing for other adapters."""
    if spec.type != "qlora":
        return {}
    if not hardware.cuda:
        raise RuntimeError("spec.peft.type qlora needs a CUDA GPU (bitsandbytes 4-bit kernels)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            "spec.peft.type qlora needs bitsandbytes, which is not installed in this image"
        ) from err
    import torch
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if hardware.bf16_supported else torch.float16,
    )
    return {"quantization": config}


def torch_dtype(precision: Precision) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def callbacks(ctx: RunContext, *, skipped_rows: int = 0) -> tuple[list[Any], PreemptionCallback]:
    """The callbacks every recipe uses; skipped_rows (malformed rows dropped under
    badRows: skip) goes to the progress record and the metrics."""
    if skipped_rows and ctx.metrics:
        ctx.metrics.skipped_rows.labels(**ctx.metrics.labels).inc(skipped_rows)
    preemption = PreemptionCallback(ctx.stop_requested)
    found = [
        preemption,
        IntervalSaveCallback(ctx.plan.recipe.checkpoint.every_seconds),
        ProgressCallback(
            metrics=ctx.metrics,
            progress=ctx.progress,
            publish=ctx.publish,
            is_reporter=ctx.is_main,
            attempt=ctx.plan.attempt,
            history=ctx.history,
            skipped_rows=skipped_rows,
            method=ctx.plan.recipe.method,
        ),
        TrainingDisplay(bar=ctx.local_run, is_main=ctx.is_main, job=ctx.plan.storage.run_name),
        *ctx.extra_callbacks,
    ]
    t = ctx.plan.recipe.training
    if t.early_stopping is not None or t.best_model is not None:
        found.append(
            HeldOutCallback(
                early_stopping=t.early_stopping,
                best_model=t.best_model,
                best_dir=best_model_dir(ctx),
                is_main=ctx.is_main,
            )
        )
    trace = os.environ.get("KUBETUNE_DATA_TRACE")
    if trace:
        found.append(DataTraceCallback(Path(trace)))
    return found, preemption


def best_model_dir(ctx: RunContext) -> Path | None:
    """Where the best evaluated weights are kept (training.bestModel): beside the run's
    checkpoints, so a resumed attempt finds them; in staging on S3 storage."""
    if ctx.plan.recipe.training.best_model is None:
        return None
    return (ctx.history.parent if ctx.history is not None else ctx.staging_dir) / "best-model"


def train_and_save(trainer: Any, ctx: RunContext, preemption: PreemptionCallback) -> RecipeResult:
    """Train (resuming when there is a checkpoint); then, unless preempted, save the final
    model with its tokenizer to the output directory: the last step's weights, or with
    training.bestModel the best evaluation's. With LoRA that is the adapters and a record of
    their base (see models.adapters); the export stage merges them."""
    resume = str(ctx.resume_from) if ctx.resume_from else None
    replace_hf_display(trainer)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    if preemption.preempted:
        return RecipeResult(trainer.state.global_step, True, metrics, None)
    best = best_model_dir(ctx)
    record = HeldOutCallback.read_record(best)
    if record is not None and best is not None:
        if ctx.is_main:
            shutil.rmtree(ctx.output_dir, ignore_errors=True)
            shutil.copytree(best, ctx.output_dir)
            (ctx.output_dir / HeldOutCallback.RECORD).unlink()
            log.info(
                "event=output_best_model step=%d metric=%s value=%.6g",
                record["step"],
                record["metric"],
                record["value"],
            )
        metrics |= {"best_step": float(record["step"]), "best_value": float(record["value"])}
    else:
        trainer.save_model(str(ctx.output_dir))
    if ctx.is_main:
        trainer.processing_class.save_pretrained(str(ctx.output_dir))
        if is_adapter_dir(ctx.output_dir):
            write_base_record(ctx.output_dir, ctx.plan.recipe.model)
    return RecipeResult(trainer.state.global_step, False, metrics, ctx.output_dir)
