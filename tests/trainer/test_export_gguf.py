"""GGUF export: convert the builtin architectures, read them back with transformers' GGUF loader,
and prove the verification catches a broken file.

The builtin models are freshly initialised (std 0.02): their logits are nearly uniform, so a
layout bug would barely move them. Every test therefore converts a deterministically re-drawn
copy with larger weights (peaked next-token distributions, attention far from uniform).
"""

from __future__ import annotations

import re
import shutil
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune_trainer.export import gguf_export
from kubetune_trainer.export.errors import (
    ExportError,
    UnsupportedArchitecture,
    VerificationFailed,
)
from kubetune_trainer.export.gguf_export import (
    OUT_TYPES,
    TOLERANCES,
    convert_to_gguf,
    storage_type,
    verify_gguf,
)
from kubetune_trainer.models import ensure_builtin
from kubetune_trainer.plan import GgufSpec

pytestmark = pytest.mark.trainer

ARCHITECTURES = {"tiny-llama": "llama", "tiny-qwen2": "qwen2", "tiny-mistral": "llama"}
"""Builtin -> the llama.cpp architecture its GGUF declares (Mistral is llama.cpp's llama)."""


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Matmuls this small gain nothing from threads, and on a shared CPU thread hand-offs made
    each verification ~5x slower (measured 3.6 s vs 0.8 s of CPU per verification)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sharp_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each builtin with its matrices re-drawn as N(0, 4 / fan_in), saved as a full model dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("gguf-sources")
    dirs = {}
    generator = torch.Generator().manual_seed(1234)
    for name in ARCHITECTURES:
        source = ensure_builtin(name)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim == 2:
                    fan_in = parameter.shape[1]
                    parameter.copy_(torch.randn(parameter.shape, generator=generator))
                    parameter.mul_(2.0 / fan_in**0.5)
        tokenizer = AutoTokenizer.from_pretrained(source)
        ids = tokenizer("What is 41 + 1?", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            probabilities = model(ids).logits[0, -1].softmax(-1)
        assert probabilities.max() > 20 / len(tokenizer), "the re-drawn model is still near-uniform"
        out = root / name
        model.save_pretrained(out)
        model.generation_config.save_pretrained(out)
        tokenizer.save_pretrained(out)
        dirs[name] = out
    return dirs


def read_gguf(path: Path) -> tuple[dict[str, object], dict[str, str]]:
    """(metadata values, tensor name -> GGML type name) of a GGUF file, read with gguf-py."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {
        key: field.contents()
        for key, field in reader.fields.items()
        if key
        not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
    }
    return fields, {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}


CASES = [(name, out_type) for name in ARCHITECTURES for out_type in ("f32", "f16", "q8_0")] + [
    ("tiny-llama", "q4_0"),
    ("tiny-qwen2", "q5_1"),
]


@pytest.mark.parametrize(("name", "out_type"), CASES)
def test_gguf_round_trips_through_transformers(
    sharp_models: dict[str, Path], tmp_path: Path, name: str, out_type: str
) -> None:
    path = convert_to_gguf(sharp_models[name], tmp_path / f"{name}.{out_type}.gguf", out_type)

    verification = verify_gguf(sharp_models[name], path, out_type)
    print(f"{name} {out_type} {path.stat().st_size} bytes: {verification.to_dict()}")
    assert verification.loader == "transformers-gguf"
    assert verification.tokens_match, verification.detail
    assert verification.greedy_match, verification.detail
    assert verification.max_abs_logit_diff <= TOLERANCES[out_type]
    assert verification.ok and verification.prompts >= 2
    if out_type == "f32":  # f32 is compared with the source itself: nothing may drift
        assert "unrounded source: max |logit diff| 0," in verification.detail

    metadata, tensors = read_gguf(path)
    assert metadata["general.architecture"] == ARCHITECTURES[name]
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    assert metadata["tokenizer.ggml.pre"] == "qwen2"  # the builtins' split regex is Qwen2's
    assert "generation %}" not in metadata["tokenizer.chat_template"]
    assert metadata["tokenizer.ggml.add_bos_token"] is (name != "tiny-qwen2")
    matrix_type = out_type.upper()
    assert tensors["blk.0.attn_norm.weight"] == "F32"
    assert tensors["blk.1.ffn_down.weight"] == matrix_type
    assert tensors["blk.0.attn_k.weight"] == matrix_type
    assert tensors["output.weight"] == ("Q8_0" if out_type in ("q4_0", "q5_1") else matrix_type)
    if name == "tiny-qwen2":
        assert tensors["blk.0.attn_q.bias"] == "F32"


def test_tied_embeddings_write_one_matrix(sharp_models: dict[str, Path], tmp_path: Path) -> None:
    """Like Qwen2-0.5B: no lm_head in the checkpoint, so the GGUF has no output.weight and its
    token embedding, doubling as the output projection, keeps q8_0 in a 4-bit file."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = sharp_models["tiny-qwen2"]
    config = AutoConfig.from_pretrained(source, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    weights = load_file(source / "model.safetensors")
    del weights["lm_head.weight"]
    model.load_state_dict(weights, strict=False)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tied = tmp_path / "tied"
    model.save_pretrained(tied)
    AutoTokenizer.from_pretrained(source).save_pretrained(tied)

    path = convert_to_gguf(tied, tmp_path / "tied.gguf", "q4_0")
    verification = verify_gguf(tied, path, "q4_0")
    assert verification.ok, verification
    _, tensors = read_gguf(path)
    assert "output.weight" not in tensors
    assert tensors["token_embd.weight"] == "Q8_0" and tensors["blk.0.ffn_up.weight"] == "Q4_0"


def test_verification_catches_unpermuted_qk(
    sharp_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A converter that forgets llama.cpp's q/k row order writes a file that loads fine.
    monkeypatch.setattr(gguf_export, "permute_qk", lambda weights, n_head: weights)
    path = convert_to_gguf(sharp_models["tiny-llama"], tmp_path / "broken.gguf", "f16")

    verification = verify_gguf(sharp_models["tiny-llama"], path, "f16")
    assert verification.tokens_match
    assert not verification.ok
    assert verification.max_abs_logit_diff > 100 * TOLERANCES["f16"]


def test_verification_catches_special_tokens_written_as_text(
    sharp_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Control tokens typed NORMAL load, but "<|im_start|>" in a prompt is then cut into pieces.
    real_token_list = gguf_export.token_list

    def all_normal(*args: object) -> list[tuple[str, object]]:
        import gguf

        return [(token, gguf.TokenType.NORMAL) for token, _ in real_token_list(*args)]

    monkeypatch.setattr(gguf_export, "token_list", all_normal)
    path = convert_to_gguf(sharp_models["tiny-qwen2"], tmp_path / "no-specials.gguf", "f32")

    verification = verify_gguf(sharp_models["tiny-qwen2"], path, "f32")
    assert not verification.tokens_match and not verification.ok
    assert "What is 41 + 1?" in verification.detail  # a chat prompt tokenized differently
    # The weights are fine: the logits on the source's token ids still agree.
    assert verification.max_abs_logit_diff <= TOLERANCES["f32"]


def test_unreadable_gguf_fails_verification(sharp_models: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(VerificationFailed, match=r"garbage\.gguf"):
        verify_gguf(sharp_models["tiny-qwen2"], path, "f16")


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitecture, match=r"'gpt2'.*llama, mistral, qwen2"):
        convert_to_gguf(tmp_path, tmp_path / "out.gguf", "f16")


def test_truncated_weights_name_the_file(sharp_models: dict[str, Path], tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(sharp_models["tiny-mistral"], model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError, match=f"cannot read weights file {re.escape(str(weights))}"):
        convert_to_gguf(model_dir, out / "model.gguf", "q8_0")
    assert not any(out.iterdir()), "a failed conversion must leave no partial file"


def test_missing_weights_and_sentencepiece_tokenizers_are_refused(
    sharp_models: dict[str, Path], tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(sharp_models["tiny-llama"], model_dir)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="no safetensors weights"):
        convert_to_gguf(model_dir, tmp_path / "out.gguf", "f16")

    shutil.copy(sharp_models["tiny-llama"] / "model.safetensors", model_dir)
    (model_dir / "tokenizer.json").unlink()
    (model_dir / "tokenizer.model").write_bytes(b"sentencepiece")
    with pytest.raises(ExportError, match="SentencePiece"):
        convert_to_gguf(model_dir, tmp_path / "out.gguf", "f16")


def test_every_planned_type_is_supported_and_unknown_ones_refused(
    sharp_models: dict[str, Path], tmp_path: Path
) -> None:
    (literal,) = typing.get_args(GgufSpec.model_fields["types"].annotation)
    assert set(typing.get_args(literal)) == set(OUT_TYPES) == set(TOLERANCES)
    with pytest.raises(ExportError, match="unknown GGUF type 'q3_k'"):
        convert_to_gguf(sharp_models["tiny-llama"], tmp_path / "out.gguf", "q3_k")


def test_storage_types_follow_llama_cpp() -> None:
    import gguf

    q = gguf.GGMLQuantizationType
    assert storage_type("blk.0.attn_norm.weight", (128,), "q4_0", tied=False) == q.F32
    assert storage_type("blk.0.attn_q.bias", (128,), "bf16", tied=False) == q.F32
    assert storage_type("blk.0.ffn_up.weight", (384, 128), "bf16", tied=False) == q.BF16
    assert storage_type("blk.0.ffn_up.weight", (384, 128), "q5_0", tied=False) == q.Q5_0
    # A row that is not a whole number of 32-element blocks falls back to f16.
    assert storage_type("blk.0.ffn_down.weight", (128, 100), "q8_0", tied=False) == q.F16
    # 4/5-bit files keep the output projection (the embedding, when tied) at q8_0.
    assert storage_type("output.weight", (2048, 128), "q4_1", tied=False) == q.Q8_0
    assert storage_type("token_embd.weight", (2048, 128), "q4_1", tied=False) == q.Q4_1
    assert storage_type("token_embd.weight", (2048, 128), "q4_1", tied=True) == q.Q8_0
    assert storage_type("output.weight", (2048, 128), "q8_0", tied=False) == q.Q8_0
