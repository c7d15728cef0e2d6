"""Online RL from rewards with TRL's GRPOTrainer (variant grpo: advantages relative to the group
of completions of the same prompt) or RLOOTrainer (variant rloo: leave-one-out baseline).

Each prompt of the data (kind "prompt": conversations ending with a user turn, plus the
answer/score columns) is completed spec.grpo.numGenerations times; the completions are scored by
the spec's reward sources (:func:`kubetune_trainer.evaluation.rewards.build_reward`, blended by
blendAlpha) and the policy is updated toward the better ones, with a KL penalty of strength beta
against the starting model (beta 0 loads no reference).
"""

from __future__ import annotations

from kubetune_trainer.data import load_data
from kubetune_trainer.evaluation.rewards import TrlReward, build_reward
from kubetune_trainer.models import load_model, load_tokenizer
from kubetune_trainer.plan import GrpoSpec
from kubetune_trainer.recipes.common import (
    RecipeResult,
    RunContext,
    callbacks,
    peft_config,
    quantization_config,
    torch_dtype,
    train_and_save,
    trl_args,
)


def check_batch(ctx: RunContext, options: GrpoSpec) -> None:
    """TRL samples whole groups: the completions generated per step must be a multiple of
    numGenerations. Checked here to name the spec's fields rather than TRL's."""
    t = ctx.plan.recipe.training
    if {"generation_batch_size", "steps_per_generation"} & t.trl_args.keys():
        return  # TRL checks what the user set
    per_step = t.per_device_batch_size * t.gradient_accumulation * ctx.world_size
    if per_step % options.num_generations:
        raise ValueError(
            f"spec.training.perDeviceBatchSize × gradientAccumulation × workers = {per_step} "
            f"completions per step is not a multiple of spec.grpo.numGenerations "
            f"({options.num_generations})"
        )


def run(ctx: RunContext) -> RecipeResult:
    recipe = ctx.plan.recipe
    options = recipe.grpo
    if options is None:  # the plan requires the section for method grpo
        raise ValueError("spec.grpo: method grpo needs this section with at least one reward")
    check_batch(ctx, options)
    if options.variant == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    tokenizer = load_tokenizer(recipe.model)
    data = load_data(recipe.data, kind="prompt")
    device = "cuda" if ctx.hardware.cuda else "cpu"
    reward = build_reward(
        options.rewards,
        options.blend_alpha,
        tokenizer=tokenizer,
        device=device,
        field_path="spec.grpo.rewards",
    )
    args = trl_args(ctx) | {
        "num_generations": options.num_generations,
        "max_completion_length": options.max_completion_length,
        "temperature": options.temperature,
        "beta": options.beta,
    }
    args |= recipe.training.trl_args
    model = load_model(
        recipe.model,
        dtype=torch_dtype(ctx.precision),
        tokenizer=tokenizer,
        **quantization_config(recipe.peft, ctx.hardware),
    )
    found, preemption = callbacks(ctx, skipped_rows=data.skipped_rows)
    trainer = Trainer(
        model=model,
        reward_funcs=[TrlReward(reward)],
        args=Config(**args),
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=peft_config(recipe.peft),
        callbacks=found,
    )
    return train_and_save(trainer, ctx, preemption)
