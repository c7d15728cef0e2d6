"""Supervised fine-tuning with TRL's SFTTrainer.

Conversational rows train on assistant turns only (every assistant turn of a multi-turn
conversation, via the chat template's generation markers); prompt-completion rows train on the
completion; packing uses TRL's padding-free best-fit-decreasing strategy. A curriculum and
score conditioning are applied by :mod:`kubetune_trainer.recipes.sft_techniques`.
"""

from __future__ import annotations

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
from kubetune_trainer.recipes.sft_techniques import load_sft_data, sft_peft_config, trainer_class


def run(ctx: RunContext) -> RecipeResult:
    recipe = ctx.plan.recipe
    t = recipe.training
    tokenizer = load_tokenizer(recipe.model)
    data = load_sft_data(ctx, tokenizer)
    conversational = "messages" in data.train.column_names
    args = trl_args(ctx) | {
        "max_length": t.max_length,
        "packing": t.packing,
        "packing_strategy": "bfd",
        "assistant_only_loss": conversational,
        "dataset_num_proc": None,
    }
    args |= t.trl_args
    model = load_model(
        recipe.model,
        dtype=torch_dtype(ctx.precision),
        tokenizer=tokenizer,
        **quantization_config(recipe.peft, ctx.hardware),
    )
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
    return train_and_save(trainer, ctx, preemption)
