"""GGUF: the merged model as one llama.cpp file per requested type, verified by transformers.

``gguf`` (the llama.cpp project's Python package) writes the file but has no Hugging Face
converter, so this module maps a merged ``llama``, ``mistral`` or ``qwen2`` directory onto the
layout llama.cpp's own ``convert_hf_to_gguf.py`` produces:

- **Architecture.** ``llama`` and ``mistral`` are written as llama.cpp's ``llama`` architecture
  (as llama.cpp does for Hugging Face Mistral checkpoints), ``qwen2`` as ``qwen2``. A sliding
  attention window has no place in either and is dropped with a warning (results agree within
  the window). Only the default RoPE is supported; another ``rope_type`` is refused rather than
  silently dropped. A checkpoint without ``lm_head.weight`` is tied: no ``output.weight``.
- **Weights.** Tensors are streamed from safetensors one at a time: tensor infos are written
  first from the headers, then each tensor is read, converted and appended, so memory holds one
  tensor rather than the model. ``q_proj``/``k_proj`` rows of ``llama``/``mistral`` are permuted
  from Hugging Face's rotate-half RoPE layout to llama.cpp's interleaved one; ``qwen2`` uses
  llama.cpp's NeoX RoPE, which is Hugging Face's layout, so it is written unpermuted (its q/k/v
  biases too).
- **Storage types** (:func:`storage_type`). 1-D tensors (norms, biases) stay f32, as in
  llama.cpp. ``f32``/``f16``/``bf16`` store every matrix in that type. The block types (q8_0,
  q4_0, q4_1, q5_0, q5_1, blocks of 32 along a row) store every matrix whose row length is a
  multiple of 32 in that type, and fall back to f16 otherwise (llama.cpp's converter does the
  same). For the 4/5-bit types the output projection (the token embedding when tied) is kept at
  q8_0, as ``llama-quantize`` keeps it at higher precision (it picks q6_K, which gguf-py cannot
  write).
- **Tokenizer.** Byte-level BPE tokenizers (``tokenizer.json`` with a ``BPE`` model and a
  ``ByteLevel`` decoder) are written as ``tokenizer.ggml.model = gpt2`` with merges, token types
  (added special tokens are CONTROL), special ids, add-bos flag and the chat template (through
  ``gguf.SpecialVocab``). ``tokenizer.ggml.pre`` names the pre-tokenizer whose split regex equals
  the source's, looked up in the table transformers' GGUF loader uses (whose names are
  llama.cpp's); a regex neither knows is refused. The training-only ``{% generation %}`` markers
  are stripped from the chat template (they render nothing). Unicode normalization (NFC in the
  builtin tokenizers) has no GGUF field; text already in NFC tokenizes identically.
  SentencePiece tokenizers (``tokenizer.model``) are not supported yet and raise ExportError.

Verification (:func:`verify_gguf`) loads the file back with transformers' GGUF loader, from a
directory holding nothing but the file, so config, tokenizer and chat template all come from the
GGUF. It checks:

1. tokenization: the fixed chat prompts rendered with each tokenizer's own chat template, and a
   few plain strings (digits, whitespace, non-ASCII, special tokens), give identical ids;
2. logits and greedy tokens on the fixed prompts, against a **storage reference**: the source
   model whose weights went through the same storage round trip (``gguf.quants.quantize`` then
   ``dequantize``, per tensor type as :func:`storage_type` chooses; identity for f32). The
   GGUF loader must reproduce that reference: quantization works along rows, and llama.cpp's
   q/k permutation moves whole rows, so the reference holds exactly the values the file holds,
   and any layout, permutation, name, metadata or tokenizer bug shows as a large difference,
   while the rounding a lossy type brings by design does not (on a small random model low-bit
   types legitimately change greedy tokens against the unrounded source).
   Measured differences to the reference are 0 for every type (same weights, same modeling
   code); :data:`TOLERANCES` leaves headroom for other hardware and kernels.

How far the stored model drifts from the unrounded source (the cost of the type the user chose)
is measured too and reported in ``Verification.detail``, not gated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from kubetune_trainer.export.errors import ExportError, UnsupportedArchitecture, VerificationFailed
from kubetune_trainer.export.verification import Verification

log = logging.getLogger("kubetune.export")

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
PERMUTED_QK = frozenset({"llama", "mistral"})
"""Architectures whose q/k rows llama.cpp expects in its interleaved RoPE order."""
LOADER = "transformers-gguf"
OUTPUT_WEIGHT = "lm_head.weight"

TOLERANCES: dict[str, float] = {
    "f32": 1e-4,
    "f16": 1e-3,
    "bf16": 1e-3,
    "q8_0": 1e-2,
    "q4_0": 1e-2,
    "q4_1": 1e-2,
    "q5_0": 1e-2,
    "q5_1": 1e-2,
}
"""Max |logit difference| between the GGUF model and the storage reference, per type.

Measured: exactly 0 for every type on the three builtin architectures (with logits spanning
~14), because transformers 5.23 dequantizes these architectures to float32 with gguf-py, which
is what the reference does. The bounds leave room for a loader that computes differently:
transformers already keeps the blocks packed and multiplies with block kernels for some
architectures, which reorders float32 sums (relative errors of ~1e-6 for f32/f16 storage, up to
~1e-4 of the logit scale with on-the-fly block dequantization). A layout bug is orders of
magnitude larger: skipping the q/k permutation moved logits by 12."""

TOKENIZER_PROBES = (
    "Hello, world! 12345 + 678 = 13023",
    "  two  spaces,\ttab and\nnewlines\n\n",
    "café naïve – “quotes” 日本語 🙂",
    "don't won't I'll",
)
"""Plain strings both tokenizers must encode identically, besides the chat prompts."""

_GENERATION_MARKER = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


_Q, _F = gguf.GGMLQuantizationType, gguf.LlamaFileType
OUT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (_Q.F32, _F.ALL_F32),
    "f16": (_Q.F16, _F.MOSTLY_F16),
    "bf16": (_Q.BF16, _F.MOSTLY_BF16),
    "q8_0": (_Q.Q8_0, _F.MOSTLY_Q8_0),
    "q4_0": (_Q.Q4_0, _F.MOSTLY_Q4_0),
    "q4_1": (_Q.Q4_1, _F.MOSTLY_Q4_1),
    "q5_0": (_Q.Q5_0, _F.MOSTLY_Q5_0),
    "q5_1": (_Q.Q5_1, _F.MOSTLY_Q5_1),
}
"""``out_type`` -> (the type matrices are stored in, the file type llama.cpp reports)."""
_LOW_BIT = frozenset({_Q.Q4_0, _Q.Q4_1, _Q.Q5_0, _Q.Q5_1})


def storage_type(
    gguf_name: str, shape: tuple[int, ...], out_type: str, tied: bool
) -> gguf.GGMLQuantizationType:
    """The GGML type tensor ``gguf_name`` of ``shape`` (Hugging Face order: rows, row length) is
    stored in for ``out_type``; ``tied`` says the token embedding doubles as the output."""
    matrix_type = _matrix_type(out_type)
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return _Q.F32
    if matrix_type in (_Q.F32, _Q.F16, _Q.BF16):
        return matrix_type
    block_size = gguf.GGML_QUANT_SIZES[matrix_type][0]
    if shape[-1] % block_size != 0:
        return _Q.F16
    is_output = gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight")
    if is_output and matrix_type in _LOW_BIT:
        return _Q.Q8_0
    return matrix_type


def _matrix_type(out_type: str) -> gguf.GGMLQuantizationType:
    if out_type not in OUT_TYPES:
        raise ExportError(f"unknown GGUF type '{out_type}'; choose one of {', '.join(OUT_TYPES)}")
    return OUT_TYPES[out_type][0]


def round_trip(weights: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """``weights`` (float32) as they read back after being stored as ``qtype``."""
    if qtype == _Q.F32:
        return weights
    return gguf.quants.dequantize(gguf.quants.quantize(weights, qtype), qtype).astype(np.float32)


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection (weight or bias) from Hugging Face's rotate-half RoPE order to
    llama.cpp's interleaved order (the inverse of transformers' ``_reverse_permute_weights``)."""
    head_dim = weights.shape[0] // n_head
    return (
        weights.reshape(n_head, 2, head_dim // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


# ---------------------------------------------------------------------------------------------
# conversion


def convert_to_gguf(model_dir: Path, out_path: Path, out_type: str) -> Path:
    """Write ``model_dir`` (a merged Hugging Face causal LM) as a GGUF file of ``out_type`` at
    ``out_path`` (atomically: the file appears only when complete) and return its path."""
    _matrix_type(out_type)  # refuses an unknown type before any work
    file_type = OUT_TYPES[out_type][1]
    config = _load_config(model_dir)
    tokenizer_json = _load_byte_level_bpe(model_dir)
    weight_files = _weight_files(model_dir)

    model_type = config.model_type
    arch = gguf.MODEL_ARCH.QWEN2 if model_type == "qwen2" else gguf.MODEL_ARCH.LLAMA
    n_layers = config.num_hidden_layers
    name_map = gguf.get_tensor_name_map(arch, n_layers)
    plan = list(_tensor_plan(weight_files, name_map, out_type))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}-", dir=out_path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp_path, gguf.MODEL_ARCH_NAMES[arch])
        _add_model_metadata(writer, config, model_dir, file_type)
        _add_tokenizer_metadata(writer, model_dir, tokenizer_json, config.vocab_size)
        for entry in plan:
            writer.add_tensor_info(
                entry.gguf_name, entry.shape, np.dtype(np.float32), entry.nbytes, entry.qtype
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for weight_file, entries in itertools.groupby(plan, key=lambda entry: entry.file):
            with _safe_open(weight_file) as handle:
                for entry in entries:
                    weights = _read_tensor(handle, weight_file, entry.hf_name)
                    if model_type in PERMUTED_QK:
                        weights = _to_llama_cpp_rope_order(weights, entry.hf_name, config)
                    data = gguf.quants.quantize(weights, entry.qtype)
                    writer.write_tensor_data(np.ascontiguousarray(data))
        writer.close()
        tmp_path.chmod(0o644)  # mkstemp's 0600 would keep a serving pod of another user out
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    log.info(
        "event=gguf_written model=%s out=%s type=%s tensors=%d bytes=%d",
        model_dir,
        out_path,
        out_type,
        len(plan),
        out_path.stat().st_size,
    )
    return out_path


def _to_llama_cpp_rope_order(weights: np.ndarray, hf_name: str, config: Any) -> np.ndarray:
    if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return permute_qk(weights, config.num_attention_heads)
    if hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        return permute_qk(weights, config.num_key_value_heads or config.num_attention_heads)
    return weights


def _load_config(model_dir: Path) -> Any:
    config_file = model_dir / "config.json"
    try:
        raw = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise ExportError(f"no model at {model_dir}: {config_file.name} is missing") from None
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot read {config_file}: {err}") from None
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"cannot convert {model_dir} to GGUF: model_type '{model_type}' is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    rope_type = (config.rope_parameters or {}).get("rope_type", "default")
    if rope_type != "default":
        raise ExportError(
            f"cannot convert {config_file} to GGUF: rope_parameters.rope_type '{rope_type}' is "
            "not supported (only the default RoPE)"
        )
    window = getattr(config, "sliding_window", None)
    if window and (model_type == "mistral" or getattr(config, "use_sliding_window", False)):
        log.warning(
            "event=gguf_sliding_window_dropped model=%s sliding_window=%d "
            "detail=llama.cpp's %s architecture attends to the whole context",
            model_dir,
            window,
            "qwen2" if model_type == "qwen2" else "llama",
        )
    return config


def _weight_files(model_dir: Path) -> list[Path]:
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as err:
            raise ExportError(f"cannot read {index}: {err}") from None
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    raise ExportError(
        f"no safetensors weights in {model_dir} (model.safetensors or its index); "
        "export the merged model first"
    )


@dataclasses.dataclass(frozen=True)
class _PlannedTensor:
    file: Path
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    nbytes: int


def _tensor_shapes(weight_files: list[Path]) -> dict[Path, dict[str, tuple[int, ...]]]:
    """Each weights file's tensor names and shapes, from the headers alone."""
    shapes = {}
    for path in weight_files:
        with _safe_open(path) as handle:
            names = handle.keys()  # a safetensors handle is not iterable
            shapes[path] = {name: tuple(handle.get_slice(name).get_shape()) for name in names}
    return shapes


def _is_tied(shapes: dict[Path, dict[str, tuple[int, ...]]]) -> bool:
    """Whether the token embedding doubles as the output projection: as for llama.cpp and
    transformers' GGUF loader, that is whether the checkpoint has no separate ``lm_head``."""
    return not any(OUTPUT_WEIGHT in names for names in shapes.values())


def _tensor_plan(
    weight_files: list[Path], name_map: gguf.TensorNameMap, out_type: str
) -> Iterator[_PlannedTensor]:
    """What each safetensors tensor becomes, from the headers alone."""
    all_shapes = _tensor_shapes(weight_files)
    tied = _is_tied(all_shapes)
    for path, shapes in all_shapes.items():
        for hf_name in sorted(shapes):
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ExportError(f"{path}: tensor '{hf_name}' has no GGUF equivalent")
            shape = shapes[hf_name]
            qtype = storage_type(gguf_name, shape, out_type, tied)
            block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
            nbytes = int(np.prod(shape, dtype=np.int64)) // block_size * type_size
            yield _PlannedTensor(path, hf_name, gguf_name, shape, qtype, nbytes)


@contextlib.contextmanager
def _safe_open(path: Path) -> Iterator[Any]:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(path, framework="pt")
    except (SafetensorError, OSError, ValueError) as err:
        raise ExportError(f"cannot read weights file {path}: {err}") from None
    with handle:
        yield handle


def _read_tensor(handle: Any, path: Path, name: str) -> np.ndarray:
    from safetensors import SafetensorError

    try:
        tensor = handle.get_tensor(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ExportError(f"cannot read tensor '{name}' from {path}: {err}") from None
    return tensor.float().numpy()


def _add_model_metadata(
    writer: gguf.GGUFWriter, config: Any, model_dir: Path, file_type: gguf.LlamaFileType
) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(model_dir.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _load_byte_level_bpe(model_dir: Path) -> dict[str, Any]:
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        if (model_dir / "tokenizer.model").is_file():
            raise ExportError(
                f"{model_dir}: SentencePiece tokenizers (tokenizer.model) are not supported by "
                "kubetune's GGUF export yet; only byte-level BPE (tokenizer.json)"
            )
        raise ExportError(f"no tokenizer.json in {model_dir}")
    try:
        tokenizer = json.loads(tokenizer_file.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot read {tokenizer_file}: {err}") from None
    model = tokenizer.get("model") or {}
    decoder = tokenizer.get("decoder") or {}
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or decoder.get("type") != "ByteLevel"
    ):
        raise ExportError(
            f"{tokenizer_file}: only byte-level BPE tokenizers can be exported to GGUF "
            f"(found model {model.get('type')!r}, decoder {decoder.get('type')!r})"
        )
    return tokenizer


def pre_tokenizer_name(tokenizer_json: dict[str, Any], source: Path) -> str:
    """The ``tokenizer.ggml.pre`` name whose split regex is the tokenizer's own."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    patterns = [
        step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"
    ]
    # A ByteLevel step with its own (GPT-2) regex would split a second time.
    splits_again = any(s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps)
    if len(patterns) == 1 and not splits_again:
        for name, split in GGUF_PRE_TOKENIZER_SPLITS.items():
            if split == patterns[0]:
                return name
    raise ExportError(
        f"{source}: the tokenizer's pre-tokenizer matches none GGUF loaders know "
        f"(known: {', '.join(sorted(GGUF_PRE_TOKENIZER_SPLITS))})"
    )


def token_list(
    tokenizer_json: dict[str, Any], vocab_size: int, model_dir: Path
) -> list[tuple[str, gguf.TokenType]]:
    """(token, gguf.TokenType) for every id below ``vocab_size``: added special tokens are
    CONTROL, other added tokens USER_DEFINED, the BPE vocabulary NORMAL."""
    tokens: dict[int, tuple[str, gguf.TokenType]] = {
        index: (token, gguf.TokenType.NORMAL)
        for token, index in tokenizer_json["model"]["vocab"].items()
    }
    for added in tokenizer_json.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        tokens[added["id"]] = (added["content"], kind)
    if max(tokens) >= vocab_size:
        raise ExportError(
            f"{model_dir}: the tokenizer has token id {max(tokens)} but config.json says "
            f"vocab_size {vocab_size}"
        )
    # Embedding rows past the tokenizer (padding to a multiple) get placeholder names, as in
    # llama.cpp's converter.
    return [tokens.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED)) for i in range(vocab_size)]


def _add_tokenizer_metadata(
    writer: gguf.GGUFWriter, model_dir: Path, tokenizer_json: dict[str, Any], vocab_size: int
) -> None:
    listed = token_list(tokenizer_json, vocab_size, model_dir)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer_json, model_dir / "tokenizer.json"))
    writer.add_token_list([token for token, _ in listed])
    writer.add_token_types([kind for _, kind in listed])

    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise ExportError(f"{model_dir / 'tokenizer.json'}: the BPE tokenizer lists no merges")
    special.add_special_token.setdefault("bos", False)
    special.add_special_token.setdefault("eos", False)
    if isinstance(special.chat_template, str):
        special.chat_template = _GENERATION_MARKER.sub("", special.chat_template)
    special.add_to_gguf(writer, quiet=True)


# ---------------------------------------------------------------------------------------------
# verification


def verify_gguf(model_dir: Path, gguf_path: Path, out_type: str) -> Verification:
    """Load ``gguf_path`` with transformers' GGUF loader and compare it with ``model_dir`` (see
    the module docstring); raises VerificationFailed when the loader cannot read the file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.export.verification import (
        compare,
        greedy_and_logits,
        verification_inputs,
    )

    _matrix_type(out_type)  # refuses an unknown type
    tolerance = TOLERANCES[out_type]
    config = _load_config(model_dir)
    tied = _is_tied(_tensor_shapes(_weight_files(model_dir)))

    source_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    generation_config = model.generation_config
    prompts = verification_inputs(source_tokenizer)
    source = greedy_and_logits(model, prompts)
    if out_type == "f32":
        reference = source
    else:
        _round_trip_parameters(model, config.num_hidden_layers, out_type, tied)
        reference = greedy_and_logits(model, prompts)
    del model

    with _lone_file_dir(gguf_path) as (directory, file_name):
        try:
            gguf_tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file_name)
            loaded = AutoModelForCausalLM.from_pretrained(
                directory, gguf_file=file_name, dtype=torch.float32
            ).eval()
        except Exception as err:  # the loader's failures have no common base class
            raise VerificationFailed(
                f"transformers' GGUF loader cannot read {gguf_path}: {type(err).__name__}: {err}"
            ) from err
    # The GGUF stores one eos id; decode with the source's full stopping rule on both sides.
    loaded.generation_config = generation_config
    candidate = greedy_and_logits(loaded, prompts)

    mismatched = _tokenization_mismatches(source_tokenizer, gguf_tokenizer, prompts)
    verification = compare(LOADER, reference, candidate, tolerance)
    drift = compare(LOADER, source, candidate, tolerance)
    detail = (
        f"type {out_type}; vs the unrounded source: max |logit diff| "
        f"{drift.max_abs_logit_diff:.3g}, greedy {'same' if drift.greedy_match else 'differs'}"
    )
    if mismatched:
        detail += "; tokenization differs on: " + " | ".join(repr(text) for text in mismatched)
    result = dataclasses.replace(verification, tokens_match=not mismatched, detail=detail)
    log.info(
        "event=gguf_verified file=%s type=%s ok=%s max_abs_logit_diff=%.3g tolerance=%g %s",
        gguf_path,
        out_type,
        result.ok,
        result.max_abs_logit_diff,
        tolerance,
        detail,
    )
    return result


def _round_trip_parameters(model: Any, n_layers: int, out_type: str, tied: bool) -> None:
    """Replace each weight of ``model`` by its value after storage as ``out_type``."""
    import torch

    arch = gguf.MODEL_ARCH.QWEN2 if model.config.model_type == "qwen2" else gguf.MODEL_ARCH.LLAMA
    name_map = gguf.get_tensor_name_map(arch, n_layers)
    with torch.no_grad():
        for hf_name, parameter in model.named_parameters():  # tied weights are listed once
            gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                continue
            weights = parameter.detach().float().numpy()
            qtype = storage_type(gguf_name, tuple(weights.shape), out_type, tied)
            parameter.copy_(torch.from_numpy(round_trip(weights, qtype)))


@contextlib.contextmanager
def _lone_file_dir(gguf_path: Path) -> Iterator[tuple[str, str]]:
    """A directory holding only a link to ``gguf_path``: nothing but the file can be read."""
    with tempfile.TemporaryDirectory(prefix="kubetune-gguf-verify-") as directory:
        link = Path(directory) / gguf_path.name
        link.symlink_to(gguf_path.resolve())
        yield directory, gguf_path.name


def _tokenization_mismatches(
    source_tokenizer: Any, gguf_tokenizer: Any, prompts: list[list[int]]
) -> list[str]:
    """Texts the two tokenizers encode differently: the chat prompts, rendered by each side's
    own template, and the probe strings."""
    from kubetune_trainer.export.verification import VERIFY_QUESTIONS, verification_inputs

    mismatched = []
    if gguf_tokenizer.chat_template is None:
        mismatched.append("<chat template missing>")
    else:
        rendered = verification_inputs(gguf_tokenizer)
        mismatched += [
            q for q, a, b in zip(VERIFY_QUESTIONS, prompts, rendered, strict=True) if a != b
        ]
    for text in TOKENIZER_PROBES:
        if source_tokenizer(text)["input_ids"] != gguf_tokenizer(text)["input_ids"]:
            mismatched.append(text)
    specials = "".join(source_tokenizer.all_special_tokens) + " after"
    if source_tokenizer(specials)["input_ids"] != gguf_tokenizer(specials)["input_ids"]:
        mismatched.append(specials)
    return mismatched
