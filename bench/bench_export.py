"""Export benchmark: conversion throughput of GGUF and ONNX on a ~100M-parameter Llama; one JSON
line on stdout (progress on stderr).

The baseline, measured in the same run, is transformers' own ``save_pretrained`` to
safetensors of the same model: every figure a target applies to is a ratio against it, so
compare ratios, not MB/s, across machines. Throughput is source megabytes (fp32 safetensors) per
second of conversion; verification (loading the artifact back and comparing logits and greedy
tokens) is timed separately.

Run: ``python bench/bench_export.py [--layers N]`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kubetune_trainer.export.gguf_export import convert_to_gguf, verify_gguf
from kubetune_trainer.export.onnx_export import export_onnx, verify_onnx
from kubetune_trainer.models import load_tokenizer


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def build_model(directory: Path, layers: int) -> float:
    """A randomly initialised Llama with the builtin tokenizer; its parameter count in millions."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer("builtin://tiny-llama")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters()) / 1e6


def megabytes(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def timed(action) -> tuple[Any, float]:
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def figure(
    source_mb: float,
    baseline: float,
    convert: float,
    verify: float,
    artifact: Path,
    verification: Any,
) -> dict[str, Any]:
    return {
        "MBps": round(source_mb / convert, 1),
        "ratioToBaseline": round(source_mb / convert / baseline, 3),
        "outputMB": round(megabytes(artifact), 1),
        "verifySeconds": round(verify, 1),
        "verified": verification.ok,
        "maxAbsLogitDiff": verification.max_abs_logit_diff,
    }


def baseline_seconds(source: Path, target: Path) -> float:
    """Seconds transformers takes to write the same model as safetensors."""
    model = LlamaForCausalLM.from_pretrained(source)
    _, seconds = timed(lambda: model.save_pretrained(target))
    shutil.rmtree(target)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=8, help="8 layers ≈ 94M parameters")
    parser.add_argument("--gguf-types", default="f16,q8_0")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kubetune-bench-export-"))
    try:
        source = work / "source"
        params = build_model(source, args.layers)
        source_mb = megabytes(source / "model.safetensors")
        say(f"model: {params:.0f}M parameters, {source_mb:.0f} MB fp32 safetensors")

        baseline = source_mb / baseline_seconds(source, work / "resaved")
        say(f"baseline save_pretrained: {baseline:.0f} MB/s")

        figures: dict[str, Any] = {
            "paramsMillions": round(params, 1),
            "sourceMB": round(source_mb, 1),
            "baselineSafetensorsMBps": round(baseline, 1),
        }
        for out_type in args.gguf_types.split(","):
            path = work / f"model-{out_type}.gguf"
            _, convert = timed(lambda t=out_type, p=path: convert_to_gguf(source, p, t))
            verification, verify = timed(lambda t=out_type, p=path: verify_gguf(source, p, t))
            say(f"gguf {out_type}: {convert:.1f}s convert, {verify:.1f}s verify")
            figures[f"gguf_{out_type}"] = figure(
                source_mb, baseline, convert, verify, path, verification
            )
            path.unlink()

        onnx_dir = work / "onnx"
        onnx_file, convert = timed(lambda: export_onnx(source, onnx_dir))
        verification, verify = timed(lambda: verify_onnx(source, onnx_file))
        say(f"onnx: {convert:.1f}s export, {verify:.1f}s verify")
        figures["onnx"] = figure(source_mb, baseline, convert, verify, onnx_dir, verification)
        print(json.dumps(figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
