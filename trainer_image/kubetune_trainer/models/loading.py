"""Load a ModelSpec's tokenizer and model, ready for the TRL trainers.

The tokenizer always leaves here with a chat template (``ModelSpec.chat_template``, else its own,
else kubetune's for the architecture), a pad token, and ``model_input_names`` of
``input_ids``/``attention_mask`` (decoder models take no ``token_type_ids``; GRPO/RLOO fail on
them).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kubetune_trainer.models.adapters import adapter_base, is_adapter_dir
from kubetune_trainer.models.sources import model_spec, resolve_model_dir
from kubetune_trainer.models.templates import (
    CONTROL_TOKENS,
    END_OF_TURN,
    FORMAT_TOKENS,
    TEMPLATES,
    resolve_template,
    template_for_architecture,
)
from kubetune_trainer.plan import ModelSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Task = Literal["causal-lm", "sequence-classification"]


def _spec(spec: ModelSpec | str) -> ModelSpec:
    return model_spec(spec)


def model_type(path: Path) -> str | None:
    """``config.model_type`` of a resolved model directory."""
    import json

    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def choose_chat_template(
    tokenizer: PreTrainedTokenizerBase, spec: ModelSpec, architecture: str | None
) -> tuple[str, str]:
    """The chat template to use and where it came from (``spec``, ``tokenizer`` or ``kubetune``).

    ``ModelSpec.conversation_format`` other than standard wins (its marker template); then
    ``ModelSpec.chat_template`` (a kubetune template name or Jinja text); then the tokenizer's
    own template; then kubetune's template for the architecture.
    """
    if spec.conversation_format != "standard":
        return TEMPLATES[spec.conversation_format], "spec"
    if spec.chat_template:
        return resolve_template(spec.chat_template), "spec"
    own = tokenizer.chat_template
    if isinstance(own, dict):
        own = own.get("default")
    if own:
        return own, "tokenizer"
    return TEMPLATES[template_for_architecture(architecture)], "kubetune"


def load_tokenizer(spec: ModelSpec | str, *, path: Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of ``spec``, with chat template, pad token and input names set.

    ``path`` skips resolution when the caller already has the model directory.
    """
    from transformers import AutoTokenizer

    spec = _spec(spec)
    path = path or resolve_model_dir(spec)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    architecture = model_type(path)
    template, origin = choose_chat_template(tokenizer, spec, architecture)
    tokenizer.chat_template = template
    added = add_format_tokens(tokenizer, spec.conversation_format)
    if added:
        log.info(
            "event=format_tokens_added model=%s format=%s added=%d",
            spec.source,
            spec.conversation_format,
            added,
        )
    name = template_name(template)
    if name is not None:
        vocab = tokenizer.get_vocab()
        missing = [t for t in CONTROL_TOKENS[name] if t not in vocab]
        if missing:
            log.warning(
                "event=chat_template_tokens_missing model=%s template=%s missing=%s "
                "note='these render as plain text; the model must learn them'",
                spec.source,
                name,
                ",".join(missing),
            )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        log.info("event=pad_token_set model=%s pad=%s", spec.source, tokenizer.pad_token)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    log.info(
        "event=tokenizer_loaded model=%s template=%s origin=%s vocab=%d",
        spec.source,
        name or "custom",
        origin,
        len(tokenizer),
    )
    return tokenizer


def template_name(template: str | None) -> str | None:
    """The name of a kubetune template from its text (None for any other template)."""
    return next((n for n, text in TEMPLATES.items() if text == template), None)


def add_format_tokens(tokenizer: PreTrainedTokenizerBase, conversation_format: str) -> int:
    """Add a conversation format's markers to the tokenizer as special tokens (those it lacks);
    how many were added."""
    markers = FORMAT_TOKENS.get(conversation_format, ())
    vocab = tokenizer.get_vocab()
    missing = [t for t in markers if t not in vocab]
    if not missing:
        return 0
    return tokenizer.add_tokens(missing, special_tokens=True)


def fit_to_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embeddings to the tokenizer when tokens were added to it, and make the token
    that ends an assistant turn in the tokenizer's template end generation too."""
    embeddings = model.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        import torch

        # The new rows are drawn around the old embeddings' mean: seeded, so every run (and
        # every rank) starts from the same weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model.resize_token_embeddings(len(tokenizer))
        log.info("event=embeddings_resized rows=%d", len(tokenizer))
    name = template_name(tokenizer.chat_template)
    config = getattr(model, "generation_config", None)
    if name is None or config is None:
        return
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN[name])
    if end is None or end == tokenizer.unk_token_id:
        return
    ids = config.eos_token_id
    found = list(ids) if isinstance(ids, list) else [] if ids is None else [ids]
    if end not in found:
        config.eos_token_id = [*found, end] if found else end


def attention_implementation(spec: ModelSpec) -> str | None:
    """The ``attn_implementation`` for ``spec.attention``; None lets transformers choose (SDPA
    where the architecture supports it)."""
    if spec.attention != "auto":
        return spec.attention
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


def load_model(
    spec: ModelSpec | str,
    *,
    dtype: torch.dtype | Literal["auto"] | None = None,
    task: Task = "causal-lm",
    num_labels: int = 1,
    tokenizer: PreTrainedTokenizerBase | None = None,
    path: Path | None = None,
    quantization: Any | None = None,
) -> PreTrainedModel:
    """The model of ``spec`` for ``task``.

    ``dtype`` None means float32 (mixed precision is the trainer's business); ``"auto"`` keeps
    the checkpoint's dtype. ``sequence-classification`` gives a ``num_labels``-output head
    (1 for a reward model) and needs a pad token id, taken from ``tokenizer`` when given.
    ``quantization`` (e.g. a ``BitsAndBytesConfig`` for QLoRA) is passed as
    ``quantization_config``, and the weights are placed on this process's GPU (``LOCAL_RANK``),
    as quantized weights must be loaded onto their device.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    spec = _spec(spec)
    path = path or resolve_model_dir(spec)
    if is_adapter_dir(path):
        return _load_merged_adapters(
            path,
            dtype=dtype,
            task=task,
            num_labels=num_labels,
            tokenizer=tokenizer,
            quantization=quantization,
        )
    kwargs: dict[str, Any] = {
        "dtype": torch.float32 if dtype is None else dtype,
        "trust_remote_code": spec.trust_remote_code,
    }
    attention = attention_implementation(spec)
    if attention is not None:
        kwargs["attn_implementation"] = attention
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    if task == "causal-lm":
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    elif task == "sequence-classification":
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, **kwargs
        )
    else:
        raise ValueError(f"unknown task '{task}'; use causal-lm or sequence-classification")
    if tokenizer is not None:
        fit_to_tokenizer(model, tokenizer)
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None and task == "causal-lm":
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    if task == "sequence-classification" and model.config.pad_token_id is None:
        raise ValueError(
            f"model '{spec.source}' has no pad token id; pass its tokenizer so the "
            "classification head can find the last token of padded rows"
        )
    log.info(
        "event=model_loaded model=%s task=%s params=%d dtype=%s",
        spec.source,
        task,
        sum(p.numel() for p in model.parameters()),
        next(model.parameters()).dtype,
    )
    return model


def _load_merged_adapters(path: Path, **load_args: Any) -> PreTrainedModel:
    """A LoRA job's output as a full model: its base with the adapters merged in, so a later
    job trains (or a user serves) ordinary weights."""
    from peft import PeftModel

    base = adapter_base(path)
    model = load_model(base, **load_args)
    merged = PeftModel.from_pretrained(model, path).merge_and_unload()
    # PEFT froze the base weights when it loaded the adapters for inference; the merged model
    # is an ordinary model that the next job trains.
    merged.requires_grad_(True)
    log.info("event=adapters_merged adapters=%s base=%s", path, base.source)
    return merged


def load_model_and_tokenizer(
    spec: ModelSpec | str,
    *,
    dtype: torch.dtype | Literal["auto"] | None = None,
    task: Task = "causal-lm",
    num_labels: int = 1,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Both, resolving the source once."""
    spec = _spec(spec)
    path = resolve_model_dir(spec)
    tokenizer = load_tokenizer(spec, path=path)
    model = load_model(
        spec, dtype=dtype, task=task, num_labels=num_labels, tokenizer=tokenizer, path=path
    )
    return model, tokenizer
