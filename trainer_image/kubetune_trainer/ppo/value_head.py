"""The value model: a transformer trunk with a scalar head giving V(s_t) at every position.

kubetune's PPO keeps the value model apart from the policy (as TRL's last PPOTrainer did): its
trunk comes from ``ppo.valueModel`` (default: a second copy of the starting model, its LM head
dropped), so value regression never pulls on the policy's weights and a reward model's trunk can
seed it. The price is a second trunk in memory; with LoRA both trunks stay frozen under their own
adapters.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class ValueModel(nn.Module):
    def __init__(self, trunk: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(hidden_size, 1)
        # Small random weights and zero bias: the first value estimates are near zero.
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, **inputs: Any) -> torch.Tensor:
        """Values ``[batch, length]`` for the same inputs as the trunk takes."""
        hidden = self.trunk(**inputs, use_cache=False).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)


def value_model_from(causal_lm: nn.Module) -> ValueModel:
    """A value model on the trunk of a causal LM (its LM head is discarded)."""
    trunk = getattr(causal_lm, causal_lm.base_model_prefix)
    return ValueModel(trunk, causal_lm.config.hidden_size)
