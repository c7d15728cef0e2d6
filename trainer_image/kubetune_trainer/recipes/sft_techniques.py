"""SFT's techniques: self-critique's revisions (spec.selfCritique), curriculum order
(spec.training.curriculum) and score conditioning (spec.training.scoreConditioning), applied to
the loaded data and the tokenizer before the SFTTrainer is built, and the contrastive term
(spec.training.contrastive) in its loss."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from kubetune_trainer.data import LoadedData, load_data
from kubetune_trainer.data.score_conditioning import (
    conditioned_template,
    default_score,
    with_score_kwargs,
)
from kubetune_trainer.evaluation.difficulty import difficulties
from kubetune_trainer.models.templates import FORMAT_TOKENS
from kubetune_trainer.plan import RecipeSpec
from kubetune_trainer.recipes.common import RunContext, peft_config
from kubetune_trainer.recipes.self_critique import with_revisions
from kubetune_trainer.training.contrastive import with_contrastive
from kubetune_trainer.training.curriculum import DIFFICULTY, STAGE, CurriculumMixin, stage_labels

log = logging.getLogger("kubetune.trainer")


def load_sft_data(ctx: RunContext, tokenizer: Any, policy: Any = None) -> LoadedData:
    """The SFT data, with the kept revisions of self-critique mixed in (``policy`` answers the
    prompts; the steps file is ``generated``), each training row's difficulty and stage when
    there is a curriculum, and each row's score in its chat template arguments (the
    tokenizer's template wrapped to render it) under score conditioning."""
    recipe = ctx.plan.recipe
    t = recipe.training
    assert recipe.data is not None  # the plan requires data for sft
    curriculum, conditioning = t.curriculum, t.score_conditioning
    column = curriculum.column if curriculum and curriculum.difficulty == "column" else None
    data = load_data(
        recipe.data,
        kind="sft",
        numeric_columns=[column] if column else [],
        require_score=conditioning is not None,
    )
    if recipe.self_critique is not None:
        assert policy is not None  # the stage's answers come from the starting model
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if ctx.hardware.cuda else "cpu"
        data.generated = with_revisions(ctx, policy, tokenizer, data, device=device)
    if conditioning is not None:
        highest = default_score(data.train["score"])
        tokenizer.chat_template = conditioned_template(
            tokenizer.chat_template, conditioning, highest
        )
        data.train = data.train.map(with_score_kwargs)
        if data.eval is not None:
            data.eval = data.eval.map(with_score_kwargs)
        log.info("event=score_conditioning default_score=%s", highest)
    if curriculum is not None:
        rows = [dict(row) for row in data.train]
        found = difficulties(
            curriculum,
            rows,
            tokenizer=tokenizer,
            max_length=t.max_length,
            starting_model=recipe.model,
            cache_dir=cache_dir_of(ctx),
            is_main=ctx.is_main,
            device="cuda" if ctx.hardware.cuda else "cpu",
        )
        data.train = data.train.add_column(DIFFICULTY, found).add_column(
            STAGE, stage_labels(found, curriculum.stages, t.seed)
        )
        log.info(
            "event=curriculum difficulty=%s pacing=%s rows=%d easiest=%.4g hardest=%.4g",
            curriculum.difficulty,
            curriculum.pacing,
            len(found),
            min(found),
            max(found),
        )
    return data


def trainer_class(base: type, ctx: RunContext) -> type:
    """``base`` (a TRL trainer class), in curriculum order when the plan has a curriculum, with
    the contrastive term when it has one."""
    t = ctx.plan.recipe.training
    if t.curriculum is not None:
        base = type(
            f"Curriculum{base.__name__}", (CurriculumMixin, base), {"curriculum": t.curriculum}
        )
    return with_contrastive(base, t.contrastive, "single")


def cache_dir_of(ctx: RunContext) -> Path:
    """Where the reference losses are cached: the run directory (node-local staging with S3
    storage)."""
    return (ctx.run_dir or ctx.staging_dir.parent) / "curriculum"


def sft_peft_config(recipe: RecipeSpec, tokenizer: Any) -> Any:
    """The adapters' config; with a conversation format's markers, their rows of the input
    and output embeddings are trained too (new tokens start untrained, and adapters alone leave
    embeddings frozen)."""
    config = peft_config(recipe.peft)
    markers = FORMAT_TOKENS.get(recipe.model.conversation_format, ())
    if config is None or not markers:
        return config
    ids = tokenizer.convert_tokens_to_ids(list(markers))
    return dataclasses.replace(
        config, trainable_token_indices={"embed_tokens": ids, "lm_head": ids}
    )
