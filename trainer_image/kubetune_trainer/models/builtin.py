"""kubetune's builtin tiny models: builtin://tiny-llama, tiny-qwen2, tiny-mistral.

Real Llama, Qwen2 and Mistral architectures at about four million parameters, with a byte-level
BPE tokenizer trained by ``tokenizers`` on :func:`kubetune_trainer.data.synthetic.tokenizer_corpus`,
the family's control tokens, and kubetune's chat template for the family. Demos and tests use
them without any download.

A model is built once per content hash into ``$KUBETUNE_CACHE/builtin/<name>-<hash>`` (the hash
covers everything the build depends on, so a change to the recipe lands in a new directory) and
reused afterwards. The build runs under a file lock, in a temporary directory renamed into place
when complete, so concurrent processes neither race nor see half a model. Weights are seeded, so
every build of the same hash is identical.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubetune_trainer.models.templates import TEMPLATES
from kubetune_trainer.plan import BUILTIN_MODELS
from kubetune_trainer.uris import cache_root, content_hash, file_lock

log = logging.getLogger(__name__)

BUILD_VERSION = "1"
"""Bump when the build changes in a way the hashed recipe does not capture."""
VOCAB_SIZE = 2048
SEED = 0
MARKER = "kubetune-builtin.json"

_SHAPE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}


@dataclass(frozen=True)
class Family:
    """What differs between the builtin architectures."""

    model_type: str
    template: str
    bos: str | None
    eos: str
    pad: str
    unk: str | None = None
    specials: tuple[str, ...] = ()
    """Control tokens besides bos/eos/pad/unk, in vocabulary order."""
    add_bos: bool = False
    """Whether plain encoding prepends bos (as Llama and Mistral tokenizers do)."""
    eos_ids: tuple[str, ...] = ()
    """Extra tokens that also end generation."""
    config: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "tiny-llama": Family(
        model_type="llama",
        template="llama3",
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        specials=("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"),
        add_bos=True,
        eos_ids=("<|end_of_text|>",),
    ),
    "tiny-qwen2": Family(
        model_type="qwen2",
        template="chatml",
        # Like Qwen2: no bos is prepended; <|endoftext|> pads and ends plain text.
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        specials=("<|im_start|>",),
        eos_ids=("<|endoftext|>",),
        config={"use_sliding_window": False},
    ),
    "tiny-mistral": Family(
        model_type="mistral",
        template="mistral",
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        specials=("[INST]", "[/INST]"),
        add_bos=True,
        config={"sliding_window": None},
    ),
}
assert set(FAMILIES) == set(BUILTIN_MODELS)


def _special_tokens(family: Family) -> list[str]:
    ordered = [family.unk, family.bos, family.eos, family.pad, *family.specials, *family.eos_ids]
    seen: list[str] = []
    for token in ordered:
        if token and token not in seen:
            seen.append(token)
    return seen


def _pretokenize_regex() -> str:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    return PRETOKENIZE_REGEX


@functools.cache
def recipe_hash(name: str) -> str:
    """The content hash of a builtin's recipe: family, shape, corpus, template, versions."""
    import tokenizers

    from kubetune_trainer.data.synthetic import tokenizer_corpus

    family = FAMILIES[name]
    recipe = {
        "build": BUILD_VERSION,
        "name": name,
        "family": asdict(family),
        "shape": _SHAPE,
        "vocab": VOCAB_SIZE,
        "seed": SEED,
        "template": TEMPLATES[family.template],
        "tokenizers": tokenizers.__version__.split(".")[0],
        "pretokenize": _pretokenize_regex(),
    }
    return content_hash(json.dumps(recipe, sort_keys=True), "\n".join(tokenizer_corpus()))


def builtin_dir(name: str) -> Path:
    """Where a builtin model lives (built or not)."""
    _check_name(name)
    return cache_root() / "builtin" / f"{name}-{recipe_hash(name)}"


def ensure_builtin(name: str) -> Path:
    """The directory of builtin model ``name``, building it first if it is not cached."""
    target = builtin_dir(name)
    if (target / MARKER).is_file():
        log.debug("event=builtin_cache_hit model=%s path=%s", name, target)
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / MARKER).is_file():  # another process built it while we waited
            return target
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        staging.chmod(0o755)
        try:
            _build(name, staging)
            (staging / MARKER).write_text(
                json.dumps({"name": name, "hash": target.name.rsplit("-", 1)[1]}) + "\n"
            )
            if target.exists():  # a leftover without its marker: incomplete, replace it
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        log.info(
            "event=builtin_built model=%s path=%s seconds=%.2f",
            name,
            target,
            time.monotonic() - started,
        )
    return target


def _check_name(name: str) -> None:
    if name not in FAMILIES:
        raise ValueError(f"unknown builtin model '{name}'; choose one of {', '.join(FAMILIES)}")


def build_tokenizer(name: str):
    """Train the builtin's byte-level BPE tokenizer and wrap it for transformers."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    from kubetune_trainer.data.synthetic import tokenizer_corpus

    family = FAMILIES[name]
    specials = _special_tokens(family)
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    # Qwen2's pre-tokenizer for every family: digits are split one by one (sums are learnt digit
    # by digit), and transformers rebuilds a qwen2 tokenizer with exactly this pipeline when
    # AutoTokenizer loads it, so what we train is what every loader sees.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_pretokenize_regex()), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    if family.add_bos and family.bos:
        bos_id = tok.token_to_id(family.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A",
            pair=f"{family.bos} $A {family.bos} $B",
            special_tokens=[(family.bos, bos_id)],
        )
    else:
        # Keep offsets untrimmed: assistant masks map template characters to tokens.
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    extra = [t for t in specials if t not in (family.bos, family.eos, family.pad, family.unk)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        unk_token=family.unk,
        extra_special_tokens=extra,
        model_input_names=["input_ids", "attention_mask"],
        chat_template=TEMPLATES[family.template],
        model_max_length=_SHAPE["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def _build(name: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    family = FAMILIES[name]
    tokenizer = build_tokenizer(name)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _special_tokens(family)}
    eos_ids = [ids[family.eos], *(ids[t] for t in family.eos_ids)]
    config = AutoConfig.for_model(
        family.model_type,
        vocab_size=len(tokenizer),
        bos_token_id=ids.get(family.bos) if family.bos else None,
        eos_token_id=ids[family.eos],
        pad_token_id=ids[family.pad],
        **_SHAPE,
        **family.config,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=ids[family.pad],
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
