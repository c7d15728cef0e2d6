"""Decisions on held-out metrics during training, apart from the trainer's callbacks (which
act on them): torch-free and pure."""

from __future__ import annotations

import math
from typing import Any

from kubetune_trainer.plan import MetricGoal


def derived_held_out_metrics(method: str, logs: dict[str, Any]) -> dict[str, float]:
    """Held-out metrics computed from the ones the trainer logs: SFT's perplexity is exp of its
    held-out loss (the mean loss per scored token)."""
    loss = logs.get("eval_loss")
    if method == "sft" and isinstance(loss, int | float) and math.isfinite(loss):
        return {"eval_perplexity": math.exp(min(loss, 700.0))}
    return {}


def improved(best: float | None, value: float, goal: MetricGoal, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in the goal's direction."""
    if best is None:
        return True
    return value < best - min_delta if goal.lower_is_better else value > best + min_delta
