"""Direct preference optimisation with TRL's DPOTrainer.

The reference model is spec.dpo.referenceModel when given; otherwise the starting model — with
LoRA that is the same weights with the adapters disabled, so no second copy is loaded. With
spec.dpo.onPolicy the pairs are made from the starting model's own wrong answers to the data's
prompts (:mod:`kubetune_trainer.recipes.on_policy`). spec.training.contrastive adds an InfoNCE
term on the responses' representations (:mod:`kubetune_trainer.training.contrastive`).
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from kubetune_trainer.data import DataError, load_data
from kubetune_trainer.models import load_model, load_tokenizer
from kubetune_trainer.plan import DpoSpec, OnPolicyPairs
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
from kubetune_trainer.recipes.on_policy import on_policy_pairs
from kubetune_trainer.training.contrastive import with_contrastive


def run(ctx: RunContext) -> RecipeResult:
    recipe = ctx.plan.recipe
    options = recipe.dpo or DpoSpec()
    tokenizer = load_tokenizer(recipe.model)
    data = load_data(recipe.data, kind="prompt" if options.on_policy else "preference")
    args = trl_args(ctx) | {
        "max_length": recipe.training.max_length,
        "beta": options.beta,
        "loss_type": [options.loss_type],
        "label_smoothing": options.label_smoothing,
        "dataset_num_proc": None,
    }
    args |= recipe.training.trl_args
    dtype = torch_dtype(ctx.precision)
    quantization = quantization_config(recipe.peft, ctx.hardware)
    model = load_model(recipe.model, dtype=dtype, tokenizer=tokenizer, **quantization)
    train, held_out = data.train, data.eval
    if options.on_policy is not None:
        train, held_out = _on_policy(model, tokenizer, options, recipe.training.seed, data)
    ref_model = None
    if options.reference_model is not None:
        ref_model = load_model(
            options.reference_model, dtype=dtype, tokenizer=tokenizer, **quantization
        )
    found, preemption = callbacks(ctx, skipped_rows=data.skipped_rows)
    trainer_class = with_contrastive(DPOTrainer, recipe.training.contrastive, "preference")
    trainer = trainer_class(
        model=model,
        ref_model=ref_model,
        args=DPOConfig(**args),
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=peft_config(recipe.peft),
        callbacks=found,
    )
    return train_and_save(trainer, ctx, preemption)


def _on_policy(
    model: Any, tokenizer: Any, options: DpoSpec, seed: int, data: Any
) -> tuple[Dataset, Dataset | None]:
    """Pairs from the starting model's own wrong answers, for training and held-out data."""
    settings: OnPolicyPairs = options.on_policy  # type: ignore[assignment]
    train = on_policy_pairs(model, tokenizer, list(data.train), settings, seed)
    if not train:
        raise DataError(
            "spec.dpo.onPolicy: the model answered every training prompt right in "
            f"{settings.samples} samples; there is no mistake to learn from"
        )
    held = on_policy_pairs(model, tokenizer, list(data.eval), settings, seed) if data.eval else []
    return Dataset.from_list(train), Dataset.from_list(held) if held else None
