"""Token log-probabilities and entropies from logits; the clipped PPO losses (Schulman et al.,
2017) with the statistics PPO runs are judged by."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kubetune_trainer.ppo.advantages import masked_mean


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under ``logits`` ([batch, length, vocab] → [batch, length])."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logprobs, 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution ([batch, length])."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return -(logprobs.exp() * logprobs).sum(dim=-1)


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    """Share of tokens whose clipped objective was the smaller (the ratio left the range)."""
    approx_kl: torch.Tensor
    """``E[(r - 1) - log r]`` between the updated and the rollout policy: unbiased, >= 0."""


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> PolicyLoss:
    """``max(-A r, -A clip(r, 1-eps, 1+eps))`` averaged over the masked tokens."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return PolicyLoss(masked_mean(torch.max(unclipped, clipped), mask), clip_fraction, approx_kl)


@dataclass
class ValueLoss:
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    """Share of tokens whose clipped prediction gave the larger error."""


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> ValueLoss:
    """``0.5 * max((V - R)^2, (V_clip - R)^2)``, V_clip kept within ``clip_range_value`` of the
    rollout's value prediction."""
    clipped_values = old_values + torch.clamp(
        values - old_values, -clip_range_value, clip_range_value
    )
    unclipped = (values - returns).square()
    clipped = (clipped_values - returns).square()
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return ValueLoss(0.5 * masked_mean(torch.max(unclipped, clipped), mask), clip_fraction)
