"""What the trainer runs on, and the numeric precision that follows from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["bf16", "fp16", "fp32"]


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    bf16_supported: bool
    device_count: int

    @classmethod
    def detect(cls) -> Hardware:
        import torch

        cuda = torch.cuda.is_available()
        return cls(
            cuda=cuda,
            bf16_supported=cuda and torch.cuda.is_bf16_supported(),
            device_count=torch.cuda.device_count() if cuda else 0,
        )


class PrecisionError(ValueError):
    pass


def choose_precision(requested: str, hardware: Hardware) -> Precision:
    """The precision to train in: `auto` picks bf16 on GPUs that support it, fp16 on other GPUs
    and fp32 on CPU. An explicit request the hardware cannot honour is an error, never a silent
    downgrade (TRL's own default of bf16 crashes on CPU)."""
    if requested == "auto":
        if not hardware.cuda:
            return "fp32"
        return "bf16" if hardware.bf16_supported else "fp16"
    if requested in ("bf16", "fp16") and not hardware.cuda:
        raise PrecisionError(
            f"spec.training.precision {requested} needs a GPU; this worker has none "
            "(use auto or fp32)"
        )
    if requested == "bf16" and not hardware.bf16_supported:
        raise PrecisionError("spec.training.precision bf16 is not supported by this GPU; use fp16")
    return requested  # type: ignore[return-value]


def precision_args(precision: Precision) -> dict[str, bool]:
    """The transformers TrainingArguments flags for a precision."""
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}
