"""Direct preference optimisation with TRL's DPOTrainer.

The reference model is spec.dpo.referenceModel when given; otherwise the starting model — with
LoRA that is the same weights with the adapters disabled, so no second copy is loaded.
"""

from __future__ import annotations

from trl import DPOConfig, DPOTrainer

from kubetune_trainer.data import load_data
from kubetune_trainer.models import load_model, load_tokenizer
from kubetune_trainer.plan import DpoSpec
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


def run(ctx: RunContext) -> RecipeResult:
    recipe = ctx.plan.recipe
    options = recipe.dpo or DpoSpec()
    tokenizer = load_tokenizer(recipe.model)
    data = load_data(recipe.data, kind="preference")
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
    ref_model = None
    if options.reference_model is not None:
        ref_model = load_model(
            options.reference_model, dtype=dtype, tokenizer=tokenizer, **quantization
        )
    found, preemption = callbacks(ctx, skipped_rows=data.skipped_rows)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=DPOConfig(**args),
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=peft_config(recipe.peft),
        callbacks=found,
    )
    return train_and_save(trainer, ctx, preemption)
