"""Masked statistics, whitening, per-token rewards and generalised advantage estimation.

Tensors are ``[batch, response_length]``; ``mask`` is 1 on response tokens and 0 on the padding
after a response's end. Statistics are over the masked tokens of every rank when
``across_ranks`` is set, so whitening in a distributed run matches one process on the whole batch.
"""

from __future__ import annotations

import torch

from kubetune_trainer.ppo.distributed import all_reduce_sum


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_moments(
    values: torch.Tensor, mask: torch.Tensor, *, across_ranks: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased (Bessel-corrected) variance of the masked entries."""
    sums = torch.stack([(values * mask).sum(), (values.square() * mask).sum(), mask.sum()]).double()
    if across_ranks:
        sums = all_reduce_sum(sums)
    total, total_sq, count = sums.unbind()
    mean = total / count.clamp(min=1)
    variance = (total_sq / count.clamp(min=1) - mean.square()).clamp(min=0)
    if count > 1:
        variance = variance * count / (count - 1)
    return mean.to(values.dtype), variance.to(values.dtype)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    shift_mean: bool = True,
    across_ranks: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Scale the masked entries to unit variance (and zero mean when ``shift_mean``); masked-out
    entries come back as zero. Rewards keep their mean (``shift_mean=False``): shifting it would
    change which responses end well."""
    mean, variance = masked_moments(values, mask, across_ranks=across_ranks)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards: the KL penalty ``-kl_coef * kl`` on every response token, plus the
    response's score on its last token (the end-of-sequence token, or the last one generated)."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over each response.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` zero after a response's last token, and
    ``A_t = delta_t + gamma * lam * A_{t+1}``. Returns (advantages, returns = advantages + V),
    both zero on padding.
    """
    rewards = rewards * mask
    values = values * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask
