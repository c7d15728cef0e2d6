"""Merged safetensors: the trained model as one ordinary Hugging Face directory.

A LoRA/DoRA job's output holds adapters; they are merged into their base (PEFT's
``merge_and_unload``). A full fine-tune's output is re-saved as safetensors. Either way the
directory gets the tokenizer with its chat template and a generation config, and is verified by
loading it back with ``AutoModelForCausalLM.from_pretrained`` and comparing greedy tokens and
logits with the model as training left it (the adapter model, for LoRA).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kubetune_trainer.export.errors import ExportError
from kubetune_trainer.export.verification import (
    Verification,
    compare,
    greedy_and_logits,
    verification_inputs,
)
from kubetune_trainer.models.adapters import adapter_base, is_adapter_dir

log = logging.getLogger("kubetune.export")

MERGE_TOLERANCE = 1e-3
"""fp32 merge of W + BA reorders additions; measured differences are ~1e-6."""


def _load_source(source: Path) -> tuple[Any, Any, str]:
    """The model as training left it (PEFT-wrapped for adapters), its tokenizer, and a
    description for messages."""
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(source), path=source)
    if is_adapter_dir(source):
        from peft import PeftModel

        try:
            base = adapter_base(source)
        except ValueError as err:
            raise ExportError(str(err)) from None
        model = PeftModel.from_pretrained(load_model(base, tokenizer=tokenizer), source)
        return model.eval(), tokenizer, f"adapters over {base.source}"
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    except Exception as err:  # safetensors, torch and json each raise their own types
        raise ExportError(
            f"cannot load the trained model in {source}: {type(err).__name__}: {err}"
        ) from None
    return model.eval(), tokenizer, "full model"


def merge_to_safetensors(source: Path, out_dir: Path) -> Verification:
    """Write the merged model of ``source`` (a training output directory) to ``out_dir`` and
    verify it; raises ExportError when the source is not a usable model."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    if not source.is_dir():
        raise ExportError(f"no trained model at {source}")
    model, tokenizer, kind = _load_source(source)
    prompts = verification_inputs(tokenizer)
    reference = greedy_and_logits(model, prompts)
    if is_adapter_dir(source):
        model = model.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    generation = model.generation_config or GenerationConfig()
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = generation.eos_token_id or tokenizer.eos_token_id
    generation.save_pretrained(out_dir)
    log.info("event=merged source=%s kind=%s out=%s", source, kind, out_dir)

    reloaded = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    return compare("transformers", reference, greedy_and_logits(reloaded, prompts), MERGE_TOLERANCE)
