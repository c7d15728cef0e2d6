"""Pure pieces of the trainer: precision from hardware, DeepSpeed configs, progress throttling."""

from __future__ import annotations

import json

import pytest

from kubetune_trainer.plan import DeepSpeedSpec
from kubetune_trainer.reporting.progress import FileReporter, ProgressRecord, Throttled
from kubetune_trainer.training.deepspeed_config import deepspeed_config
from kubetune_trainer.training.hardware import Hardware, PrecisionError, choose_precision

CPU = Hardware(cuda=False, bf16_supported=False, device_count=0)
A100 = Hardware(cuda=True, bf16_supported=True, device_count=8)
T4 = Hardware(cuda=True, bf16_supported=False, device_count=1)


@pytest.mark.parametrize(
    ("requested", "hardware", "expected"),
    [
        ("auto", CPU, "fp32"),
        ("auto", A100, "bf16"),
        ("auto", T4, "fp16"),
        ("fp32", A100, "fp32"),
        ("fp16", T4, "fp16"),
    ],
)
def test_precision(requested, hardware, expected) -> None:
    assert choose_precision(requested, hardware) == expected


@pytest.mark.parametrize(
    ("requested", "hardware", "message"),
    [("bf16", CPU, "needs a GPU"), ("fp16", CPU, "needs a GPU"), ("bf16", T4, "use fp16")],
)
def test_impossible_precision_is_an_error(requested, hardware, message) -> None:
    with pytest.raises(PrecisionError, match=message):
        choose_precision(requested, hardware)


def test_deepspeed_off_at_stage_zero() -> None:
    assert deepspeed_config(DeepSpeedSpec(), "fp32") is None


def test_deepspeed_zero3_offload() -> None:
    config = deepspeed_config(
        DeepSpeedSpec(zero_stage=3, offload_params=True, offload_optimizer=True), "bf16"
    )
    zero = config["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_param"]["device"] == "cpu"
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    # Values the HF Trainer owns stay "auto" so they cannot disagree with its arguments.
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_clipping"):
        assert config[key] == "auto"


def test_raw_deepspeed_config_is_used_as_given() -> None:
    raw = {"zero_optimization": {"stage": 1}, "train_batch_size": 64}
    assert deepspeed_config(DeepSpeedSpec(zero_stage=2, config=raw), "fp32") == raw


def test_progress_is_throttled_but_forced_reports_pass(tmp_path) -> None:
    path = tmp_path / "progress.json"
    throttled = Throttled(FileReporter(path), interval_seconds=3600)
    assert throttled.report(ProgressRecord(step=1)) is True
    assert throttled.report(ProgressRecord(step=2)) is False
    assert json.loads(path.read_text())["step"] == 1
    assert throttled.report(ProgressRecord(step=3), force=True) is True
    assert json.loads(path.read_text())["step"] == 3


def test_qlora_without_cuda_is_a_clear_error() -> None:
    from kubetune_trainer.plan import PeftSpec
    from kubetune_trainer.recipes.common import quantization_config

    assert quantization_config(PeftSpec(type="lora"), CPU) == {}
    with pytest.raises(RuntimeError, match="qlora needs a CUDA GPU"):
        quantization_config(PeftSpec(type="qlora"), CPU)
