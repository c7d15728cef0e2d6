"""The all-reduces PPO needs across ranks; every helper is the identity in a single process."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _on_backend_device(tensor: torch.Tensor) -> torch.Tensor:
    if dist.get_backend() == "nccl" and not tensor.is_cuda:
        return tensor.cuda()
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over ranks (a new tensor on ``tensor``'s device)."""
    if world_size() == 1:
        return tensor
    reduced = _on_backend_device(tensor.detach().clone())
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(tensor.device)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each metric averaged over ranks (every rank passes the same keys)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    total = all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64))
    return {k: float(v) / world_size() for k, v in zip(keys, total.tolist(), strict=True)}


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks (what DDP does, without wrapping a model
    that also has to generate). One flat all-reduce per call."""
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = all_reduce_sum(flat) / world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()
