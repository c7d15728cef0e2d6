"""Proximal policy optimisation, kubetune's own (TRL 1.16 removed PPOTrainer).

One PPO step:

1. rollout: each rank takes its share of ``ppo.rolloutBatchSize`` prompts and samples one
   response per prompt from the policy (``ppo.temperature``, at most ``ppo.responseLength``
   tokens, stopping at end-of-sequence);
2. score: the reward sources (:mod:`kubetune_trainer.evaluation.rewards`) score the decoded
   responses;
3. KL penalty: every response token is charged ``klCoef * (log pi - log pi_ref)`` against the
   frozen reference (``ppo.referenceModel``; default the starting model, with LoRA the policy
   with its adapters disabled); the score lands on the response's last token;
4. advantages: GAE (``gamma``, ``lam``) over a separate value model's estimates (see
   :mod:`kubetune_trainer.ppo.value_head`), optionally whitened;
5. update: ``ppoEpochs`` passes over the rollout in shuffled mini-batches of ``miniBatchSize``
   responses (micro-batches of ``training.perDeviceBatchSize``), minimising the clipped policy
   loss plus ``vfCoef`` times the clipped value loss with one AdamW over both models;
   gradients are averaged over ranks;
6. KL control: the adaptive controller moves ``klCoef`` toward ``adaptiveKl.target``.

The learning-rate schedule advances once per PPO step; ``training.maxSteps`` (or epochs over the
prompts) counts PPO steps. Dropout stays off throughout (models in eval mode), so the first
update's probability ratio is exactly 1. Checkpoints (:mod:`kubetune_trainer.ppo.state`) are
taken every ``checkpoint.everySteps`` / ``checkpoint.every`` and when a stop is requested
(SIGTERM, or the Ray driver's stop flag); a resumed run continues at the same step with the same
weights, optimizer, KL coefficient, RNG and data position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import TrainerControl, TrainerState, get_scheduler, set_seed

from kubetune_trainer.data import load_data
from kubetune_trainer.evaluation.rewards import build_reward
from kubetune_trainer.models import load_model, load_tokenizer
from kubetune_trainer.plan import PpoSpec
from kubetune_trainer.ppo import state as checkpoint_state
from kubetune_trainer.ppo.advantages import (
    gae,
    masked_mean,
    masked_moments,
    masked_whiten,
    token_rewards,
)
from kubetune_trainer.ppo.distributed import average_gradients, mean_over_ranks
from kubetune_trainer.ppo.kl import kl_controller
from kubetune_trainer.ppo.losses import policy_loss, token_logprobs, value_loss
from kubetune_trainer.ppo.prompts import PromptFeed
from kubetune_trainer.ppo.rollout import (
    Batch,
    generate,
    response_logits,
    response_values,
    score_tokens,
    score_values,
)
from kubetune_trainer.ppo.value_head import ValueModel, value_model_from
from kubetune_trainer.recipes.common import (
    RecipeResult,
    RunContext,
    callbacks,
    peft_config,
    quantization_config,
    torch_dtype,
)
from kubetune_trainer.training.callbacks import any_rank

log = logging.getLogger("kubetune.trainer")


# --------------------------------------------------------------------------- models


@dataclasses.dataclass
class Models:
    policy: Any
    reference: Any | None
    """The frozen reference, or None when it is the policy with its adapters disabled."""
    value: ValueModel

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[Any]:
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy

    def trainable(self) -> list[torch.nn.Parameter]:
        return [
            p for model in (self.policy, self.value) for p in model.parameters() if p.requires_grad
        ]


def build_models(ctx: RunContext, tokenizer: Any, device: torch.device) -> Models:
    recipe = ctx.plan.recipe
    options = recipe.ppo or PpoSpec()
    dtype = torch_dtype(ctx.precision) if ctx.hardware.cuda else torch.float32
    quantization = quantization_config(recipe.peft, ctx.hardware)
    lora = peft_config(recipe.peft)
    resume_policy = ctx.resume_from / checkpoint_state.POLICY_DIR if ctx.resume_from else None

    def load(spec: Any, path: Path | None = None) -> Any:
        model = load_model(spec, dtype=dtype, tokenizer=tokenizer, path=path, **quantization)
        return model if quantization else model.to(device)

    if resume_policy is not None and lora is None:
        policy = load(recipe.model, resume_policy)
    else:
        policy = load(recipe.model)
    if lora is not None:
        from peft import PeftModel, get_peft_model

        if resume_policy is not None:
            policy = PeftModel.from_pretrained(policy, resume_policy, is_trainable=True)
        else:
            policy = get_peft_model(policy, lora)

    reference = None
    if options.reference_model is not None:
        reference = load(options.reference_model)
    elif lora is None:
        reference = load(recipe.model)
    if reference is not None:
        reference.requires_grad_(False).eval()

    value = value_model_from(load(options.value_model or recipe.model)).to(device)
    if lora is not None:
        from peft import get_peft_model

        # A fresh config: get_peft_model resolved the first one's targets to the policy's names.
        value_lora = dataclasses.replace(peft_config(recipe.peft), task_type=None)
        value.trunk = get_peft_model(value.trunk, value_lora)
    policy.eval()
    value.eval()
    return Models(policy, reference, value)


# --------------------------------------------------------------------------- data


def prompt_ids(tokenizer: Any, prompt: Any, limit: int) -> list[int]:
    """Token ids of a prompt rendered with the chat template and the assistant header; the
    oldest tokens are dropped beyond ``limit``."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-limit:]


def eos_ids(tokenizer: Any, policy: Any) -> list[int]:
    found = {tokenizer.eos_token_id}
    configured = getattr(getattr(policy, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        found.add(configured)
    elif configured:
        found.update(configured)
    return sorted(i for i in found if i is not None)


# --------------------------------------------------------------------------- checks


def check_batch_sizes(options: PpoSpec, world: int) -> None:
    for field, value in (
        ("spec.ppo.rolloutBatchSize", options.rollout_batch_size),
        ("spec.ppo.miniBatchSize", options.mini_batch_size),
    ):
        if value % world:
            raise ValueError(f"{field} ({value}) must be a multiple of the workers ({world})")


# --------------------------------------------------------------------------- the loop


def rollout_step(
    models: Models,
    rows: list[dict[str, Any]],
    *,
    ctx: RunContext,
    tokenizer: Any,
    reward: Any,
    kl_coef: float,
    device: torch.device,
) -> tuple[Batch, dict[str, float]]:
    """Sample, score, penalise and estimate advantages for one rollout batch."""
    options = ctx.plan.recipe.ppo
    assert options is not None
    micro = ctx.plan.recipe.training.per_device_batch_size
    limit = max(1, ctx.plan.recipe.training.max_length - options.response_length)
    prompts = [prompt_ids(tokenizer, row["prompt"], limit) for row in rows]
    batch = generate(
        models.policy,
        prompts,
        pad_id=tokenizer.pad_token_id,
        eos_ids=eos_ids(tokenizer, models.policy),
        response_length=options.response_length,
        temperature=options.temperature,
        micro_batch=micro,
        device=device,
    )
    mask = batch.response_mask
    batch.logprobs, entropies = score_tokens(models.policy, batch, options.temperature, micro)
    with models.reference_model() as reference:
        batch.ref_logprobs, _ = score_tokens(reference, batch, options.temperature, micro)
    batch.values = score_values(models.value, batch, micro)

    completions = tokenizer.batch_decode(batch.responses, skip_special_tokens=True)
    terms = reward.terms([row["prompt"] for row in rows], completions, rows)
    scores = torch.tensor(reward.score(terms), dtype=torch.float32, device=device)

    kl = (batch.logprobs - batch.ref_logprobs) * mask
    rewards = token_rewards(scores, kl, mask, kl_coef)
    if options.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False, across_ranks=True)
    batch.advantages, batch.returns = gae(rewards, batch.values, mask, options.gamma, options.lam)
    if options.whiten_advantages:
        batch.advantages = masked_whiten(batch.advantages, mask, across_ranks=True)

    ones = torch.ones_like(scores)
    reward_mean, reward_var = masked_moments(scores, ones, across_ranks=True)
    stats = {
        "kl": float(kl.sum(dim=1).mean()),
        "non_score_reward": float((-kl_coef * kl).sum(dim=1).mean()),
        "entropy": float(masked_mean(entropies, mask)),
        "response_length": float(mask.sum(dim=1).mean()),
        "value_mean": float(masked_mean(batch.values, mask)),
        **reward.log_means(terms, term_prefix="reward_"),
    }
    stats = mean_over_ranks(stats)
    stats["reward_mean"] = float(reward_mean)
    stats["reward_std"] = float(reward_var.sqrt())
    return batch, stats


def update(
    models: Models,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    *,
    ctx: RunContext,
    autocast: Any,
) -> dict[str, float]:
    """ppoEpochs passes of clipped policy + value updates over shuffled mini-batches."""
    options = ctx.plan.recipe.ppo
    assert options is not None
    training = ctx.plan.recipe.training
    local_mini = options.mini_batch_size // ctx.world_size
    micro = min(training.per_device_batch_size, local_mini)
    params = models.trainable()
    totals: dict[str, float] = defaultdict(float)
    updates = 0
    for _ in range(options.ppo_epochs):
        order = torch.randperm(batch.size)
        for start in range(0, batch.size, local_mini):
            mini = batch.select(order[start : start + local_mini].to(batch.queries.device))
            tokens = mini.response_mask.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            for part in mini.chunks(micro):
                weight = part.response_mask.sum() / tokens
                with autocast():
                    logits = response_logits(models.policy, part, options.temperature)
                    values = response_values(models.value, part)
                logprobs = token_logprobs(logits, part.responses)
                pl = policy_loss(
                    logprobs,
                    part.logprobs,
                    part.advantages,
                    part.response_mask,
                    options.clip_range,
                )
                vl = value_loss(
                    values,
                    part.values,
                    part.returns,
                    part.response_mask,
                    options.clip_range_value,
                )
                loss = pl.loss + options.vf_coef * vl.loss
                (loss * weight).backward()
                for name, value in (
                    ("loss", loss),
                    ("policy_loss", pl.loss),
                    ("value_loss", vl.loss),
                    ("policy_clipfrac", pl.clip_fraction),
                    ("value_clipfrac", vl.clip_fraction),
                    ("approx_kl", pl.approx_kl),
                ):
                    totals[name] += float(value.detach()) * float(weight)
            average_gradients(params)
            totals["grad_norm"] += float(
                torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
            )
            optimizer.step()
            updates += 1
    optimizer.zero_grad(set_to_none=True)
    return mean_over_ranks({k: v / updates for k, v in totals.items()})


def total_steps(ctx: RunContext, prompts: int) -> int:
    training = ctx.plan.recipe.training
    if training.max_steps:
        return training.max_steps
    options = ctx.plan.recipe.ppo
    assert options is not None
    return max(1, math.ceil(training.epochs * prompts / options.rollout_batch_size))


def run(ctx: RunContext) -> RecipeResult:
    recipe = ctx.plan.recipe
    options = recipe.ppo
    assert recipe.data is not None and options is not None  # plan validation
    training = recipe.training
    check_batch_sizes(options, ctx.world_size)
    if training.gradient_checkpointing:
        log.warning("event=ignored field=spec.training.gradientCheckpointing method=ppo")
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if ctx.hardware.cuda
        else torch.device("cpu")
    )
    set_seed(training.seed)  # identical initial weights (value head) on every rank
    tokenizer = load_tokenizer(recipe.model)
    data = load_data(recipe.data, kind="prompt")
    reward = build_reward(
        options.rewards,
        options.blend_alpha,
        tokenizer=tokenizer,
        device=str(device),
        field_path="spec.ppo.rewards",
    )
    models = build_models(ctx, tokenizer, device)
    steps = total_steps(ctx, len(data.train))
    optimizer = torch.optim.AdamW(
        models.trainable(), lr=training.learning_rate, weight_decay=training.weight_decay
    )
    warmup = training.warmup_steps or math.ceil(training.warmup_ratio * steps)
    scheduler = get_scheduler(training.scheduler, optimizer, warmup, steps)
    kl = kl_controller(options)
    set_seed(training.seed + ctx.rank)  # ranks sample different responses
    step = 0
    if ctx.resume_from is not None:
        log.info("event=resume checkpoint=%s", ctx.resume_from)
        loop = checkpoint_state.restore(
            ctx.resume_from,
            rank=ctx.rank,
            value_model=models.value,
            optimizer=optimizer,
            scheduler=scheduler,
        )
        kl.load_state_dict(loop.kl_controller)
        reward.load_state_dict(loop.reward_moments)
        step = loop.step
    feed = PromptFeed(
        data.train, options.rollout_batch_size, training.seed, ctx.world_size, ctx.rank
    )
    precision = ctx.precision
    use_autocast = ctx.hardware.cuda and precision != "fp32"

    def autocast() -> Any:
        if not use_autocast:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch_dtype(precision))

    found, preemption = callbacks(ctx, skipped_rows=data.skipped_rows)
    args = SimpleNamespace(
        output_dir=str(ctx.staging_dir), process_index=ctx.rank, world_size=ctx.world_size
    )
    state = TrainerState()
    state.global_step, state.max_steps, state.epoch = step, steps, feed.epoch_of(step)
    control = TrainerControl()

    def event(name: str, **kwargs: Any) -> None:
        for callback in found:
            getattr(callback, name)(args, state, control, **kwargs)

    def save() -> None:
        path = ctx.staging_dir / f"checkpoint-{step}"
        loop = checkpoint_state.LoopState(
            step=step,
            prompts_seen=step * options.rollout_batch_size,
            kl_controller=kl.state_dict(),
            world_size=ctx.world_size,
            reward_moments=reward.state_dict(),
        )
        checkpoint_state.save(
            path,
            rank=ctx.rank,
            policy=models.policy,
            tokenizer=tokenizer,
            value_model=models.value,
            optimizer=optimizer,
            scheduler=scheduler,
            loop=loop,
        )
        event("on_save")

    event("on_train_begin")
    logs: dict[str, float] = {}
    while step < steps:
        started = time.monotonic()
        rows = feed.rows_for(step)
        batch, rollout_stats = rollout_step(
            models,
            rows,
            ctx=ctx,
            tokenizer=tokenizer,
            reward=reward,
            kl_coef=kl.value,
            device=device,
        )
        update_stats = update(models, batch, optimizer, ctx=ctx, autocast=autocast)
        logs = {
            **rollout_stats,
            **update_stats,
            "kl_coef": kl.value,
            "learning_rate": scheduler.get_last_lr()[0],
            "epoch": feed.epoch_of(step + 1),
            "step_seconds": time.monotonic() - started,
        }
        kl.update(rollout_stats["kl"], options.rollout_batch_size)
        scheduler.step()
        step += 1
        state.global_step, state.epoch = step, feed.epoch_of(step)
        if step == 1 or step % training.log_every_steps == 0 or step == steps:
            event("on_log", logs=logs)
        control.should_save = bool(
            recipe.checkpoint.every_steps and step % recipe.checkpoint.every_steps == 0
        )
        event("on_step_end")
        if any_rank(control.should_save) or preemption.preempted:
            save()
            control.should_save = False
        if preemption.preempted:
            break
    event("on_train_end")
    metrics = {k: float(v) for k, v in logs.items()}
    if preemption.preempted:
        log.info("event=preempted step=%d", step)
        return RecipeResult(step, True, metrics, None)
    if ctx.is_main:
        save_final(models.policy, tokenizer, ctx.output_dir)
    return RecipeResult(step, False, metrics, ctx.output_dir)


def save_final(policy: Any, tokenizer: Any, output_dir: Path) -> None:
    """The policy as a plain model directory (LoRA adapters merged) with its tokenizer."""
    model = policy.merge_and_unload() if hasattr(policy, "merge_and_unload") else policy
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
