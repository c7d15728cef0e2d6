"""ONNX export with a KV cache, verified by onnxruntime against the torch model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubetune_trainer.export.errors import ExportError, UnsupportedArchitecture
from kubetune_trainer.export.onnx_export import (
    ONNX_FILE,
    export_onnx,
    input_names,
    logit_tolerance,
    output_names,
    verify_onnx,
)
from kubetune_trainer.models import ensure_builtin

pytestmark = pytest.mark.trainer

ARCHITECTURES = ("tiny-llama", "tiny-mistral", "tiny-qwen2")
NOISE = 0.2
"""Seeded noise added to every weight: the builtins' initial logits are near-uniform (std ~0.03),
with it they spread over about ±10, so a wrong graph cannot hide in rounding."""
EXTERNAL_DATA = "tiny-llama"
"""Exported as a model over protobuf's 2 GB limit would be: weights in ``model.onnx.data``."""
SLIDING_WINDOW = 4
"""Given to the Mistral model: shorter than every prompt, so the window shapes the logits."""


@dataclass(frozen=True)
class Exported:
    name: str
    model_dir: Path
    onnx_path: Path


def nontrivial_model(name: str, out: Path, *, changed_weight: str | None = None) -> Path:
    """A copy of builtin ``name`` in ``out`` with seeded noise on every weight (and, if given,
    ``changed_weight`` scaled by 1.05)."""
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(ensure_builtin(name), out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    if name == "tiny-mistral":
        model.config.sliding_window = SLIDING_WINDOW
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * NOISE)
            if parameter_name == changed_weight:
                parameter.mul_(1.05)
        logits = model(torch.arange(1, 17).unsqueeze(0)).logits
    assert logits.std() > 1.5, "the model must not be near-uniform, or the checks prove nothing"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def export_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Exported]:
    """``export_of(name)``: the non-trivial model ``name`` and its ONNX export, made once per
    module (exports are the slow part)."""
    made: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in made:
            from torch.onnx._internal.exporter import _onnx_program

            root = tmp_path_factory.mktemp(f"onnx-{name}")
            model_dir = nontrivial_model(name, root / "model")
            with pytest.MonkeyPatch.context() as patch:
                if name == EXTERNAL_DATA:  # torch's size threshold for external data
                    patch.setattr(_onnx_program, "_LARGE_MODEL_THRESHOLD", 0)
                made[name] = Exported(name, model_dir, export_onnx(model_dir, root / "onnx"))
        return made[name]

    return get


@pytest.fixture
def exported_llama(export_of: Callable[[str], Exported]) -> Exported:
    return export_of("tiny-llama")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_export_has_the_kv_cache_contract_and_verifies(
    name: str, export_of: Callable[[str], Exported]
) -> None:
    import onnxruntime
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    exported = export_of(name)
    assert exported.onnx_path == exported.onnx_path.parent / ONNX_FILE
    assert exported.onnx_path.is_file()
    weights = exported.onnx_path.with_name(f"{ONNX_FILE}.data")
    assert weights.is_file() == (name == EXTERNAL_DATA)
    # Self-contained: tokenizer, config and generation config load from the ONNX directory.
    out = exported.onnx_path.parent
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == exported.name.removeprefix("tiny-")
    assert AutoTokenizer.from_pretrained(out).chat_template
    assert GenerationConfig.from_pretrained(out).eos_token_id is not None

    session = onnxruntime.InferenceSession(
        str(exported.onnx_path), providers=["CPUExecutionProvider"]
    )
    layers = config.num_hidden_layers
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert list(inputs) == input_names(layers)
    assert list(outputs) == output_names(layers)
    assert inputs["past_key_values.0.key"][1] == config.num_key_value_heads
    # Batch, sequence and past axes are symbolic, not fixed at the traced sizes.
    for shape in (inputs["input_ids"], inputs["attention_mask"], outputs["logits"][:2]):
        assert all(isinstance(axis, str) for axis in shape), shape
    for past_name in input_names(layers)[3:]:
        assert isinstance(inputs[past_name][0], str) and isinstance(inputs[past_name][2], str)

    verification = verify_onnx(exported.model_dir, exported.onnx_path)
    assert verification.loader == "onnxruntime"
    assert verification.greedy_match, verification.detail
    assert verification.tokens_match, verification.detail
    assert verification.max_abs_logit_diff <= verification.tolerance
    # The bound follows the logits' scale: tight for these ~±10 logits, not a catch-all.
    assert 1e-4 < verification.tolerance < 1e-3
    assert verification.ok and verification.prompts == 3


def test_padded_batch_and_cached_decode_match_torch(exported_llama: Exported) -> None:
    """One graph serves a left-padded batch of two prompts and a cached decode step after it."""
    import numpy as np
    import onnxruntime
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported_llama.model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(exported_llama.model_dir, dtype=torch.float32)
    session = onnxruntime.InferenceSession(
        str(exported_llama.onnx_path), providers=["CPUExecutionProvider"]
    )
    layers = model.config.num_hidden_layers
    batch = tokenizer(
        ["1 + 2 =", "a much longer input sentence here"], return_tensors="pt", padding=True
    )
    mask = batch["attention_mask"]
    assert (mask == 0).any(), "the batch must be padded"
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    next_tokens = torch.tensor([[7], [11]])
    with torch.no_grad():
        prefill = model(**batch, position_ids=positions, use_cache=True)
        step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        step = model(
            input_ids=next_tokens,
            attention_mask=step_mask,
            position_ids=positions[:, -1:] + 1,
            past_key_values=prefill.past_key_values,
        )

    heads, head_dim = session.get_inputs()[3].shape[1], session.get_inputs()[3].shape[3]
    empty = np.zeros((2, heads, 0, head_dim), dtype=np.float32)
    feed = dict(
        zip(
            input_names(layers),
            [batch["input_ids"].numpy(), mask.numpy(), positions.numpy()] + [empty] * (2 * layers),
            strict=True,
        )
    )
    logits, *present = session.run(output_names(layers), feed)
    real = mask.bool().numpy()  # padded positions attend to nothing; their logits are unused
    tolerance = logit_tolerance(float(prefill.logits.abs().max()))
    assert np.abs(logits - prefill.logits.numpy())[real].max() <= tolerance
    feed = dict(
        zip(
            input_names(layers),
            [next_tokens.numpy(), step_mask.numpy(), (positions[:, -1:] + 1).numpy(), *present],
            strict=True,
        )
    )
    step_logits, *grown = session.run(output_names(layers), feed)
    assert np.abs(step_logits - step.logits.numpy()).max() <= tolerance
    assert grown[0].shape[2] == mask.shape[1] + 1


def test_verifier_catches_a_model_with_a_changed_weight(
    exported_llama: Exported, tmp_path: Path
) -> None:
    other = nontrivial_model(
        "tiny-llama", tmp_path / "other", changed_weight="model.layers.1.mlp.down_proj.weight"
    )
    verification = verify_onnx(other, exported_llama.onnx_path)
    assert not verification.ok
    assert verification.max_abs_logit_diff > 100 * verification.tolerance, verification.detail


def test_verifier_catches_a_graph_whose_cache_outputs_are_wrong(
    exported_llama: Exported, tmp_path: Path
) -> None:
    """The graph computes its own logits right but hands out a value cache 1% off: only decoding
    that feeds ``present.*`` back as ``past_key_values.*`` can see it."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    corrupted = tmp_path / "onnx"
    shutil.copytree(exported_llama.onnx_path.parent, corrupted)
    graph_model = onnx.load(str(exported_llama.onnx_path))
    graph = graph_model.graph
    target, raw = "present.0.value", "present.0.value.raw"
    for node in graph.node:
        node.output[:] = [raw if name == target else name for name in node.output]
        node.input[:] = [raw if name == target else name for name in node.input]
    graph.initializer.append(numpy_helper.from_array(np.array(0.99, dtype=np.float32), "scale"))
    graph.node.append(helper.make_node("Mul", [raw, "scale"], [target]))
    onnx.save(graph_model, str(corrupted / ONNX_FILE))

    verification = verify_onnx(exported_llama.model_dir, corrupted / ONNX_FILE)
    assert not verification.ok
    assert verification.max_abs_logit_diff > 100 * verification.tolerance, verification.detail
    assert "cached decode step" in verification.detail  # prefill logits are untouched


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedArchitecture, match=r"'gpt2'.*llama, mistral, qwen2"):
        export_onnx(tmp_path, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_corrupt_weights_name_the_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(ensure_builtin("tiny-qwen2"), model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    with pytest.raises(ExportError, match=r"corrupt weights file .*model\.safetensors"):
        export_onnx(model_dir, tmp_path / "onnx")
