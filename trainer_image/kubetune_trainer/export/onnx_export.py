"""ONNX export of a merged causal LM (llama, mistral, qwen2) with a KV cache, verified by
onnxruntime.

Route. optimum-onnx would do this, but its newest release pins ``transformers<4.58`` and we run
transformers 5.x (STACK.md), so kubetune exports with torch's own exporter:
``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript, torch's default and
recommended route; the TorchScript route is deprecated) of a small wrapper module
(:func:`_flat_cache_module`) that turns the flat ``past_key_values.{i}.key/.value`` tensors into a
transformers ``DynamicCache``, runs the model, and returns the logits and the grown cache as flat
``present.{i}.key/.value`` tensors. The graph thus has the input and output names optimum and
onnxruntime-genai use, with dynamic batch, sequence and past axes; an empty past (length 0)
serves the prefill. The model is exported in float32 with SDPA attention on CPU; weights go to
ONNX external data (``model.onnx.data``) once the graph would pass protobuf's 2 GB limit. The cache
is built without the model config, so every layer keeps its full history and a sliding window
(Mistral) is applied by the attention mask, as in the model's own forward. The tokenizer (with
its chat template), config and generation config are written beside ``model.onnx``, so the
directory is self-contained.

Verification (:func:`verify_onnx`) runs the graph in onnxruntime's CPUExecutionProvider against
the torch model on fixed chat-template prompts: prefill logits at every position, then greedy
decoding that feeds each step's ``present.*`` outputs back as the next step's ``past_key_values.*``
inputs, compared token by token with torch's greedy ``generate`` and logit by logit at every
step the two agree on.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer.export.errors import (
    ExportError,
    UnsupportedArchitecture,
    VerificationFailed,
)
from kubetune_trainer.export.verification import Verification

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
ONNX_FILE = "model.onnx"

RELATIVE_LOGIT_TOLERANCE = 5e-5
"""|onnxruntime - torch| logit differences must stay under this fraction of the largest |torch
logit| (float32; see :func:`logit_tolerance`). Measured on the builtin models made non-trivial
(|logits| up to ~11): at most 2.6e-5 absolute over prefill and cached decode steps, i.e. 2.4e-6
relative; the bound leaves 20x for deeper and wider models, whose float32 rounding grows with
depth and width. Wrong graphs land far above it: one weight matrix scaled by 1.05 gave 0.27, a
value cache scaled by 0.99 gave 0.49, though greedy tokens still matched in both."""


def logit_tolerance(largest_logit: float) -> float:
    """The bound on |logit diff| for a model whose largest |logit| is ``largest_logit``."""
    return RELATIVE_LOGIT_TOLERANCE * max(1.0, largest_logit)


GREEDY_TOKENS = 8
"""Tokens decoded greedily per prompt through the KV cache."""

PROMPTS: tuple[str, ...] = (
    "What is 2 + 3?",
    "Write a short sentence about the sea.",
    "List three colours.",
)
"""Fixed user turns, rendered with the model's chat template for verification."""

_EXAMPLE_BATCH, _EXAMPLE_SEQUENCE, _EXAMPLE_PAST = 2, 3, 4
"""Trace shapes: each above 1 and distinct, so torch.export keeps every axis symbolic."""


def input_names(num_layers: int) -> list[str]:
    """The graph inputs, in order: ids, mask, positions, then key and value per layer."""
    return [
        "input_ids",
        "attention_mask",
        "position_ids",
        *(f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")),
    ]


def output_names(num_layers: int) -> list[str]:
    """The graph outputs, in order: logits, then the grown key and value per layer."""
    return [
        "logits",
        *(f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")),
    ]


def export_onnx(model_dir: Path, out_dir: Path) -> Path:
    """Export the model in ``model_dir`` to ``out_dir/model.onnx`` with its tokenizer, config and
    generation config beside it; returns the path of the ``.onnx`` file."""
    import torch
    from torch.export import Dim

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    architecture = check_architecture(model_dir)
    started = time.monotonic()
    model = _load_torch_model(model_dir)
    tokenizer = _load_tokenizer(model_dir)
    config = model.config
    layers = config.num_hidden_layers
    heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    batch, sequence, past = _EXAMPLE_BATCH, _EXAMPLE_SEQUENCE, _EXAMPLE_PAST
    example = (
        torch.zeros(batch, sequence, dtype=torch.long),
        torch.ones(batch, past + sequence, dtype=torch.long),
        torch.arange(past, past + sequence).expand(batch, sequence),
        *(torch.zeros(batch, heads, past, head_dim) for _ in range(2 * layers)),
    )
    batch_axis = Dim("batch_size")
    sequence_axis = Dim("sequence_length")
    past_axis = Dim("past_sequence_length")
    dynamic_shapes = {
        "input_ids": {0: batch_axis, 1: sequence_axis},
        "attention_mask": {0: batch_axis, 1: Dim("total_sequence_length")},
        "position_ids": {0: batch_axis, 1: sequence_axis},
        "past": tuple({0: batch_axis, 2: past_axis} for _ in range(2 * layers)),
    }
    with warnings.catch_warnings():
        # Axes tied by the model (e.g. logits' and input_ids' sequence) keep one name; torch
        # warns for each tied pair, which says nothing about the graph.
        warnings.filterwarnings("ignore", message=r".*shares the same shape constraints")
        try:
            program = torch.onnx.export(
                _flat_cache_module(model),
                example,
                dynamo=True,
                input_names=input_names(layers),
                output_names=output_names(layers),
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
        except Exception as error:
            raise ExportError(
                f"torch.onnx.export failed for {architecture} model {model_dir}: {error}"
            ) from error

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / ONNX_FILE
    # external_data=None: weights move to model.onnx.data only when the graph exceeds 2 GB.
    program.save(onnx_path)
    tokenizer.save_pretrained(out_dir)
    config.save_pretrained(out_dir)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out_dir)
    log.info(
        "event=onnx_exported model=%s architecture=%s path=%s layers=%d bytes=%d seconds=%.1f",
        model_dir,
        architecture,
        onnx_path,
        layers,
        sum(p.stat().st_size for p in out_dir.glob(f"{ONNX_FILE}*")),
        time.monotonic() - started,
    )
    return onnx_path


def verify_onnx(model_dir: Path, onnx_path: Path) -> Verification:
    """Compare the ONNX graph in onnxruntime with the torch model of ``model_dir``: prefill
    logits on :data:`PROMPTS`, then :data:`GREEDY_TOKENS` greedy tokens through the KV cache."""
    import numpy as np
    import torch
    from transformers import GenerationConfig

    model_dir, onnx_path = Path(model_dir), Path(onnx_path)
    check_architecture(model_dir)
    model = _load_torch_model(model_dir)
    tokenizer = _load_tokenizer(model_dir)
    session = _CachedSession(onnx_path)
    eos = _eos_token_ids(model, tokenizer)
    greedy = GenerationConfig(
        do_sample=False,
        max_new_tokens=GREEDY_TOKENS,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )

    exported_tokenizer = _exported_tokenizer(onnx_path)
    worst, worst_at, largest_logit = 0.0, "", 0.0
    mismatches: list[str] = []
    tokenizer_mismatches: list[int] = []
    for index, prompt in enumerate(PROMPTS):
        ids = _chat_prompt_ids(tokenizer, prompt)
        if exported_tokenizer is None or not torch.equal(
            _chat_prompt_ids(exported_tokenizer, prompt), ids
        ):
            tokenizer_mismatches.append(index)
        with torch.no_grad():
            reference = model(input_ids=ids).logits[0].numpy()
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=greedy,
            )
        torch_tokens = generated.sequences[0, ids.shape[1] :].tolist()
        torch_step_logits = [step[0].numpy() for step in generated.logits]

        largest_logit = max(largest_logit, float(np.abs(reference).max()))
        prefill_logits, onnx_tokens, onnx_step_logits = session.greedy(ids.numpy(), eos)
        diffs = [(_max_abs_diff(prefill_logits, reference), "prefill")]
        # Step 0's logits are the prefill's last row; later steps ran on the fed-back cache.
        # Steps after the first disagreement see different inputs; compare only the shared ones.
        agreed = _common_prefix(onnx_tokens, torch_tokens)
        for step in range(1, min(agreed + 1, len(onnx_step_logits), len(torch_step_logits))):
            diff = _max_abs_diff(onnx_step_logits[step], torch_step_logits[step])
            diffs.append((diff, f"cached decode step {step}"))
        diff, where = max(diffs)
        if index == 0 or diff > worst:
            worst, worst_at = diff, f"prompt {index} {where}"
        if onnx_tokens != torch_tokens:
            mismatches.append(f"prompt {index}: onnxruntime {onnx_tokens} vs torch {torch_tokens}")

    detail = f"largest |logit diff| {worst:.3g} at {worst_at}; " + (
        "; ".join(mismatches)
        if mismatches
        else f"greedy tokens match on all {len(PROMPTS)} prompts"
    )
    if tokenizer_mismatches:
        detail += (
            f"; the tokenizer written beside {onnx_path.name} encodes prompts "
            f"{tokenizer_mismatches} differently from the source"
        )
    verification = Verification(
        loader="onnxruntime",
        max_abs_logit_diff=worst,
        tolerance=logit_tolerance(largest_logit),
        greedy_match=not mismatches,
        prompts=len(PROMPTS),
        detail=detail,
        tokens_match=not tokenizer_mismatches,
    )
    log.info(
        "event=onnx_verified model=%s path=%s ok=%s max_abs_logit_diff=%.3g greedy_match=%s",
        model_dir,
        onnx_path,
        verification.ok,
        worst,
        verification.greedy_match,
    )
    return verification


def check_architecture(model_dir: Path) -> str:
    """``model_type`` of ``model_dir``'s config, if the ONNX exporter supports it."""
    config_file = Path(model_dir) / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise ExportError(f"cannot read {config_file}: {error}") from error
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"ONNX export does not support model_type '{model_type}' ({config_file}); "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return model_type


def _flat_cache_module(model: PreTrainedModel) -> torch.nn.Module:
    """``model`` with flat cache tensors in and out (see the module docstring). Defined here so
    that importing this module does not import torch."""
    import torch
    from transformers import DynamicCache

    class FlatCacheLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            position_ids: torch.Tensor,
            *past: torch.Tensor,
        ) -> tuple[torch.Tensor, ...]:
            # No config: plain full-history layers, whatever sliding window the model has.
            cache = DynamicCache(list(zip(past[0::2], past[1::2], strict=True)))
            output = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            layers = output.past_key_values.layers
            return (output.logits, *(t for layer in layers for t in (layer.keys, layer.values)))

    return FlatCacheLM().eval()


class _CachedSession:
    """An onnxruntime session of the exported graph, driven the way a serving loop would."""

    def __init__(self, onnx_path: Path) -> None:
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(
                str(onnx_path), providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            raise VerificationFailed(f"onnxruntime cannot load {onnx_path}: {error}") from error
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self.layers = sum(1 for name in inputs if name.endswith(".key"))
        missing = [n for n in input_names(self.layers) if n not in inputs]
        missing += [n for n in output_names(self.layers) if n not in outputs]
        if missing:
            raise VerificationFailed(f"{onnx_path} lacks graph inputs/outputs {missing}")
        _, self.heads, _, self.head_dim = inputs["past_key_values.0.key"].shape

    def run(
        self, input_ids: np.ndarray, past: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        import numpy as np

        batch, length = input_ids.shape
        past_length = past[0].shape[2]
        feed: dict[str, Any] = {
            "input_ids": input_ids.astype(np.int64),
            "attention_mask": np.ones((batch, past_length + length), dtype=np.int64),
            "position_ids": np.tile(np.arange(past_length, past_length + length), (batch, 1)),
        }
        feed.update(zip(input_names(self.layers)[3:], past, strict=True))
        logits, *present = self.session.run(output_names(self.layers), feed)
        return logits, present

    def greedy(
        self, input_ids: np.ndarray, eos: Sequence[int]
    ) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
        """Prefill logits of the one prompt in ``input_ids``, then up to :data:`GREEDY_TOKENS`
        greedy tokens and the logits each was chosen from, each step fed the previous
        step's ``present.*`` outputs as its past."""
        import numpy as np

        empty = np.zeros((1, self.heads, 0, self.head_dim), dtype=np.float32)
        logits, past = self.run(input_ids, [empty] * (2 * self.layers))
        prefill = logits[0]
        tokens: list[int] = []
        step_logits: list[np.ndarray] = []
        while True:
            last = logits[0, -1]
            token = int(last.argmax())
            tokens.append(token)
            step_logits.append(last)
            if token in eos or len(tokens) == GREEDY_TOKENS:
                return prefill, tokens, step_logits
            logits, past = self.run(np.array([[token]]), past)


def _load_torch_model(model_dir: Path) -> PreTrainedModel:
    """The model on CPU in float32 with SDPA attention: exportable, and the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    _check_weight_files(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="sdpa"
        )
    except Exception as error:
        raise ExportError(f"cannot load the model in {model_dir}: {error}") from error
    return model.eval()


def _check_weight_files(model_dir: Path) -> None:
    """Every safetensors file in ``model_dir`` has a readable header covering the file."""
    from safetensors import SafetensorError, safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files and not any(model_dir.glob("*.bin")):
        raise ExportError(f"no weights (*.safetensors or *.bin) in {model_dir}")
    for file in files:
        try:
            with safe_open(file, framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as error:
            raise ExportError(f"corrupt weights file {file}: {error}") from error


def _load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    from kubetune_trainer.models import load_tokenizer

    return load_tokenizer(str(model_dir), path=model_dir)


def _exported_tokenizer(onnx_path: Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer written beside the graph, as a consumer of the directory would load it;
    None if it cannot be loaded or has no chat template."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(onnx_path.parent)
    except (OSError, ValueError) as error:
        log.warning("event=onnx_tokenizer_unreadable path=%s error=%s", onnx_path.parent, error)
        return None
    return tokenizer if tokenizer.chat_template else None


def _chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> torch.Tensor:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config else None
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return [i for i in ids if i is not None]


def _max_abs_diff(first: np.ndarray, second: np.ndarray) -> float:
    """max |first - second|; infinite if either holds NaN or infinity, which no bound admits."""
    import numpy as np

    diff = np.abs(first - second)
    return float(diff.max()) if np.isfinite(diff).all() else float("inf")


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    return next(
        (i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
        min(len(first), len(second)),
    )
