"""DeepSpeed ZeRO configs generated from the plan.

Values the HF Trainer knows better (batch sizes, learning rate, gradient clipping, precision)
are left as "auto" so the Trainer fills them in consistently with its own arguments.
"""

from __future__ import annotations

from typing import Any

from kubetune_trainer.plan import DeepSpeedSpec
from kubetune_trainer.training.hardware import Precision


def deepspeed_config(spec: DeepSpeedSpec, precision: Precision) -> dict[str, Any] | None:
    """The DeepSpeed config for a plan, or None when DeepSpeed is off (zeroStage 0)."""
    if spec.config is not None:
        return spec.config
    if spec.zero_stage == 0:
        return None
    zero: dict[str, Any] = {
        "stage": spec.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if spec.zero_stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if spec.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
