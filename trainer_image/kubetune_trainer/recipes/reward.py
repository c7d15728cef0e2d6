"""Reward-model training with TRL's RewardTrainer on preference pairs (explicit, implicit or
hh-rlhf rows, as the data layer reads them).

The model is the starting model with a one-output classification head on the last token; the
loss is -log σ(r_chosen - r_rejected - margin), with spec.reward.marginColumn supplying per-pair
margins and centerRewardsCoefficient adding a penalty on (r_chosen + r_rejected)². The output
directory is an ordinary sequence-classification model (or LoRA adapters with their base
record) that :class:`kubetune_trainer.evaluation.rewards.RewardModelScorer` loads: reward sources
of ppo and grpo jobs name it with finetunejob://JOB or its path.
"""

from __future__ import annotations

from datasets import Dataset
from transformers import set_seed
from trl import RewardConfig, RewardTrainer

from kubetune_trainer.data import DataError, load_data
from kubetune_trainer.models import load_model, load_tokenizer
from kubetune_trainer.plan import RewardSpec
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

MARGIN = "margin"
"""The column RewardTrainer reads per-pair margins from."""


def run(ctx: RunContext) -> RecipeResult:
    recipe = ctx.plan.recipe
    options = recipe.reward or RewardSpec()
    tokenizer = load_tokenizer(recipe.model)
    extra = [options.margin_column] if options.margin_column else []
    data = load_data(recipe.data, kind="preference", extra_columns=extra)
    train, held_out = data.train, data.eval
    if options.margin_column and options.margin_column != MARGIN:
        train = train.rename_column(options.margin_column, MARGIN)
        held_out = held_out.rename_column(options.margin_column, MARGIN) if held_out else None
    if options.margin_column:
        _check_margins(train, options.margin_column)
    args = trl_args(ctx) | {
        "max_length": recipe.training.max_length,
        "center_rewards_coefficient": options.center_rewards_coefficient,
        "dataset_num_proc": None,
    }
    args |= recipe.training.trl_args
    # The score head is new: seed its initialisation so runs repeat.
    set_seed(recipe.training.seed)
    model = load_model(
        recipe.model,
        dtype=torch_dtype(ctx.precision),
        task="sequence-classification",
        num_labels=1,
        tokenizer=tokenizer,
        **quantization_config(recipe.peft, ctx.hardware),
    )
    adapters = peft_config(recipe.peft)
    if adapters is not None:
        # Sequence classification: PEFT then trains and saves the new score head in full.
        adapters.task_type = "SEQ_CLS"
    found, preemption = callbacks(ctx, skipped_rows=data.skipped_rows)
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(**args),
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=adapters,
        callbacks=found,
    )
    return train_and_save(trainer, ctx, preemption)


def _check_margins(train: Dataset, column: str) -> None:
    for index, value in enumerate(train[MARGIN]):
        if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
            raise DataError(
                f"spec.reward.marginColumn: column '{column}' of training row {index} holds "
                f"{value!r}, not a number"
            )
