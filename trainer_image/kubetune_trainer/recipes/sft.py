"""Supervised fine-tuning with TRL's SFTTrainer.

Conversational rows train on assistant turns only (every assistant turn of a multi-turn
conversation, via the chat template's generation markers); prompt-completion rows train on the
completion; packing uses TRL's padding-free best-fit-decreasing strategy. Self-critique's
revisions, a curriculum and score conditioning are applied by
:mod:`kubetune_trainer.recipes.sft_techniques`.
"""

from __future__ import annotations

from typing import Any

from trl import SFTConfig, SFTTrainer

from kubetune_trainer.models import load_model, load_tokenizer
from kubetune_trainer.recipes.common import (
    RecipeResult,
    RunContext,
    callbacks,
    quantization_config,
    torch_dtype,
    train_and_save,
    trl_args,
)
from kubetune_trainer.recipes.self_critique import save_with_model
from kubetune_trainer.recipes.sft_techniques import load_sft_data, sft_peft_config, trainer_class


def run(ctx: RunContext) -> RecipeResult:
    recipe = ctx.plan.recipe
    t = recipe.training
    tokenizer = load_tokenizer(recipe.model)

    def starting_model() -> Any:
        return load_model(
            recipe.model,
            dtype=torch_dtype(ctx.precision),
            tokenizer=tokenizer,
            **quantization_config(recipe.peft, ctx.hardware),
        )

    # Self-critique's policy answers before training; otherwise the model loads after the data
    # (a curriculum's reference model is then done with).
    model = starting_model() if recipe.self_critique is not None else None
    data = load_sft_data(ctx, tokenizer, policy=model)
    if model is None:
        model = starting_model()
    conversational = "messages" in data.train.column_names
    args = trl_args(ctx) | {
        "max_length": t.max_length,
        "packing": t.packing,
        "packing_strategy": "bfd",
        "assistant_only_loss": conversational,
        "dataset_num_proc": None,
    }
    args |= t.trl_args
    found, preemption = callbacks(ctx, skipped_rows=data.skipped_rows)
    trainer = trainer_class(SFTTrainer, ctx)(
        model=model,
        args=SFTConfig(**args),
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=sft_peft_config(recipe, tokenizer),
        callbacks=found,
    )
    result = train_and_save(trainer, ctx, preemption)
    if data.generated is not None and ctx.is_main and not result.preempted:
        save_with_model(data.generated, ctx.output_dir)
    return result
