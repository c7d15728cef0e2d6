"""LoRA for SFT and DPO (DPO's reference is the adapter-disabled model), skipped bad rows
reported in progress, and a final model published to S3."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from trainer_support import run_dir, run_job

pytestmark = pytest.mark.trainer


def logged(directory: Path) -> list[dict]:
    lines = (directory / "history.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if "loss" in entry]


@pytest.fixture(scope="module")
def lora_sft(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lora")
    bad = tmp / "bad.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "What is 4 + 1?"},
                      {"role": "assistant", "content": "5"}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "assistant", "content": "6"}, {"role": "user", "content": "?"}]},
    ]  # fmt: skip
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    spec = {
        "data": {
            "sources": [
                {"uri": "builtin://arithmetic-sft", "maxSamples": 320},
                {"uri": str(bad), "weight": 0.01},
            ],
            "badRows": "skip",
        },
        "training": {"maxSteps": 20, "learningRate": 5e-3, "perDeviceBatchSize": 16,
                     "maxLength": 96, "logEverySteps": 1},
        "peft": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
    }  # fmt: skip
    return run_dir(run_job(tmp, "lora-sft", "sft", spec))


def test_lora_sft_learns_and_saves_an_adapter(lora_sft: Path) -> None:
    from safetensors.torch import load_file

    losses = [e["loss"] for e in logged(lora_sft)]
    # Adapters over a random (untrained) tiny base can only do so much; the claim is a clear
    # drop, carried by the adapters alone.
    assert sum(losses[-5:]) / 5 < sum(losses[:3]) / 3 - 0.3
    output = lora_sft / "output"
    assert json.loads((output / "adapter_config.json").read_text())["r"] == 8
    weights = load_file(output / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    # PEFT starts every B matrix at zero; trained adapters moved away from it.
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)
    assert not any("lora" not in name for name in weights), "base weights saved with adapters"


def test_skipped_bad_rows_are_counted_in_progress(lora_sft: Path) -> None:
    progress = json.loads((lora_sft / "progress.json").read_text())
    assert progress["skippedRows"] == 3  # missing assistant turn, wrong role order, bad JSON


def test_lora_dpo_uses_the_adapter_disabled_model_as_reference(tmp_path: Path) -> None:
    spec = {
        "data": {"sources": [{"uri": "builtin://arithmetic-preference", "maxSamples": 64}]},
        "training": {"maxSteps": 4, "learningRate": 1e-3, "perDeviceBatchSize": 16,
                     "maxLength": 96, "logEverySteps": 1},
        "peft": {"type": "lora", "r": 8},
        "dpo": {"beta": 0.1},
    }  # fmt: skip
    dpo_dir = run_dir(run_job(tmp_path, "lora-dpo", "dpo", spec))
    first = logged(dpo_dir)[0]
    # No reference model was loaded: at step 0 the adapters are zero, policy == reference.
    assert abs(first["loss"] - math.log(2)) < 1e-3
    assert (dpo_dir / "output" / "adapter_config.json").is_file()


def test_final_model_is_published_to_s3(tmp_path: Path, s3_env: str, s3_upload) -> None:
    from kubetune_trainer.uris import fetch_s3, upload_dir

    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 100)
    s3_upload("models", "placeholder", model / "config.json")  # creates the bucket
    keys = upload_dir(model, "s3://models/team/run/output")
    assert keys == ["team/run/output/config.json", "team/run/output/sub/weights.bin"]
    fetched = fetch_s3("s3://models/team/run/output")
    assert (fetched / "sub" / "weights.bin").read_bytes() == b"\x00\x01" * 100
    assert json.loads((fetched / "config.json").read_text()) == {"a": 1}
