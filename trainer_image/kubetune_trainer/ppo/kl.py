"""KL coefficient controllers: a fixed coefficient, or the adaptive proportional controller of
Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", §2.2.

The adaptive controller moves the coefficient toward the value that keeps the measured KL (per
response, in nats) at ``target``: ``e = clip(KL / target - 1, -0.2, 0.2)`` and
``beta <- beta * (1 + e * n / horizon)`` after ``n`` more responses. Too much KL raises the
penalty; too little lowers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_trainer.plan import PpoSpec

ERROR_CLIP = 0.2


@dataclass
class FixedKLController:
    value: float

    def update(self, measured_kl: float, responses: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"type": "fixed", "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    value: float
    target: float
    horizon: int

    def update(self, measured_kl: float, responses: int) -> None:
        error = min(max(measured_kl / self.target - 1.0, -ERROR_CLIP), ERROR_CLIP)
        self.value *= 1.0 + error * responses / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {
            "type": "adaptive",
            "value": self.value,
            "target": self.target,
            "horizon": self.horizon,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The coefficient carries over; target and horizon come from the (possibly edited) plan.
        self.value = float(state["value"])


KLController = FixedKLController | AdaptiveKLController


def kl_controller(spec: PpoSpec) -> KLController:
    if spec.adaptive_kl is None:
        return FixedKLController(spec.kl_coef)
    return AdaptiveKLController(spec.kl_coef, spec.adaptive_kl.target, spec.adaptive_kl.horizon)
