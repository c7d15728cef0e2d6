"""A PPO checkpoint: everything an interrupted run needs to continue exactly where it stopped.

Layout of one checkpoint directory::

    policy/               the policy (save_pretrained: full weights or LoRA adapter), tokenizer
    value.safetensors     the value model's trainable parameters (head, trunk or its adapter)
    optimizer.pt          optimizer and learning-rate scheduler state
    rng-rank-<N>.pt       python, numpy and torch RNG states of rank N (ranks sample differently)
    ppo_state.json        step, prompts consumed, KL controller, world size, running moments
                          of the normalised reward terms (the same on every rank)

Rank 0 writes everything but the RNG files, which each rank writes for itself (the ranks of a
node share the staging directory, as with HF Trainer's per-rank RNG files).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger("kubetune.trainer")

POLICY_DIR = "policy"
VALUE_FILE = "value.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "ppo_state.json"


def rng_file(rank: int) -> str:
    return f"rng-rank-{rank}.pt"


@dataclass
class LoopState:
    step: int
    prompts_seen: int
    kl_controller: dict[str, Any]
    world_size: int
    reward_moments: dict[str, dict[str, float]] = field(default_factory=dict)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    directory: Path,
    *,
    rank: int,
    policy: Any,
    tokenizer: Any,
    value_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loop: LoopState,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), directory / rng_file(rank))
    if rank != 0:
        return
    policy.save_pretrained(directory / POLICY_DIR, safe_serialization=True)
    tokenizer.save_pretrained(directory / POLICY_DIR)
    save_file(trainable_state(value_model), str(directory / VALUE_FILE))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        directory / OPTIMIZER_FILE,
    )
    (directory / STATE_FILE).write_text(json.dumps(loop.__dict__, indent=1))


def load_loop_state(directory: Path) -> LoopState:
    return LoopState(**json.loads((directory / STATE_FILE).read_text()))


def restore(
    directory: Path,
    *,
    rank: int,
    value_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> LoopState:
    """Load the value model, optimizer, scheduler and this rank's RNG state (the policy is
    loaded from ``policy/`` when it is built). Returns the loop position."""
    loop = load_loop_state(directory)
    saved = load_file(str(directory / VALUE_FILE))
    expected = set(trainable_state(value_model))
    if set(saved) != expected:
        raise RuntimeError(
            f"{directory / VALUE_FILE}: value model parameters do not match this run's "
            "(was ppo.valueModel or spec.peft changed?)"
        )
    value_model.load_state_dict(saved, strict=False)
    states = torch.load(directory / OPTIMIZER_FILE, weights_only=False)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    rng_path = directory / rng_file(rank)
    if rng_path.exists():
        set_rng_state(torch.load(rng_path, weights_only=False))
    else:
        log.warning(
            "event=rng_not_restored rank=%d saved_world_size=%d note='sampling continues from a "
            "fresh seed'",
            rank,
            loop.world_size,
        )
    return loop
