"""`kubetune run --local` and `kubetune export` as a user runs them: a LoRA job trains, its
export runs right after, the artifact table is printed, a second job starts from the LoRA job's
output, and a later `kubetune export --format` re-exports the finished runs (dependencies
resolved from storage) in another format without retraining."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

JOB = """\
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata:
  name: tiny-lora
  namespace: cli
spec:
  method: sft
  model:
    source: builtin://tiny-qwen2
  data:
    sources:
      - uri: builtin://arithmetic-sft
        maxSamples: 64
  training:
    maxSteps: 4
    perDeviceBatchSize: 16
    maxLength: 64
    logEverySteps: 1
  peft:
    type: lora
    r: 4
  export:
    formats: [safetensors, gguf]
    gguf:
      types: [q8_0]
---
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata:
  name: tiny-next
  namespace: cli
spec:
  method: sft
  model:
    source: finetunejob://tiny-lora
  data:
    sources:
      - uri: builtin://arithmetic-sft
        maxSamples: 32
  training:
    maxSteps: 2
    perDeviceBatchSize: 16
    maxLength: 64
"""


def kubetune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kubetune.cli", *args]
    env = os.environ | {"KUBETUNE_METRICS_PORT": "0"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_run_local_exports_and_export_reexports(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(JOB)
    run = kubetune("run", "job.yaml", "--local", "--storage", "runs", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = run.stdout
    assert "tiny-lora" in summary and "done" in summary, summary
    # The LoRA job's output (adapters + base record) served as the next job's model.
    assert (tmp_path / "runs" / "cli" / "tiny-next" / "output" / "config.json").is_file()

    export_dir = tmp_path / "runs" / "cli" / "tiny-lora" / "export"
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert [a["format"] for a in manifest["artifacts"]] == ["safetensors", "gguf-q8_0"]
    assert manifest["checkpoint"] is None or manifest["checkpoint"]["step"] <= 4

    again = kubetune("export", "job.yaml", "--format", "onnx", "--storage", "runs", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "tiny-lora: export done" in again.stdout
    assert "tiny-next: export done" in again.stdout, "--format exports jobs without spec.export"
    assert "onnx" in again.stdout and "onnxruntime" in again.stdout, again.stdout
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert [a["format"] for a in manifest["artifacts"]] == ["onnx"]
    assert manifest["artifacts"][0]["verification"]["ok"]
    steps = [json.loads(line) for line in (export_dir.parent / "history.jsonl").open()]
    assert max(s.get("step", 0) for s in steps) == 4, "export must not retrain"


def test_export_before_training_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(JOB)
    result = kubetune("export", "job.yaml", "--storage", "runs", cwd=tmp_path)
    assert result.returncode != 0
    assert "no trained model" in result.stderr and "kubetune run --local" in result.stderr
