"""Rollouts: sample responses from the policy, cut them at the end-of-sequence token, and score
each response token under a model (log-probabilities, entropies, values).

Prompts are left-padded to a common width ``Q`` so every response starts at column ``Q``; the
logits that predict response token ``t`` sit at column ``Q - 1 + t``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch

from kubetune_trainer.ppo.losses import entropy, token_logprobs


@dataclass
class Batch:
    """Prompts and sampled responses, plus what PPO computes about them."""

    queries: torch.Tensor
    """[B, Q] prompt token ids, left-padded."""
    query_mask: torch.Tensor
    responses: torch.Tensor
    """[B, R] response token ids; after a response's end, padding."""
    response_mask: torch.Tensor
    """[B, R] float, 1 on response tokens (up to and including end-of-sequence)."""
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.queries.shape[0]

    def select(self, index: torch.Tensor | slice) -> Batch:
        """The rows at ``index`` (every tensor field)."""
        return Batch(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                for f in fields(self)
            }
        )

    def chunks(self, size: int) -> Iterator[Batch]:
        for start in range(0, self.size, size):
            yield self.select(slice(start, start + size))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask and position_ids of prompt + response (left padding
        shifts positions, so they are given explicitly)."""
        attention = torch.cat([self.query_mask, self.response_mask.long()], dim=1)
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        return {
            "input_ids": torch.cat([self.queries, self.responses], dim=1),
            "attention_mask": attention,
            "position_ids": positions,
        }


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, tokens in enumerate(sequences):
        ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        mask[row, width - len(tokens) :] = 1
    return ids.to(device), mask.to(device)


def response_mask(responses: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 up to and including each row's first end-of-sequence token (all 1 without one)."""
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device))
    length = responses.shape[1]
    positions = torch.arange(length, device=responses.device).expand_as(responses)
    first_eos = torch.where(is_eos, positions, torch.full_like(positions, length)).min(dim=1).values
    return (positions <= first_eos.unsqueeze(1)).float()


@torch.no_grad()
def generate(
    policy: torch.nn.Module,
    prompts: list[list[int]],
    *,
    pad_id: int,
    eos_ids: list[int],
    response_length: int,
    temperature: float,
    micro_batch: int,
    device: torch.device,
) -> Batch:
    """Sample one response per prompt (pure temperature sampling: no top-k/top-p), at most
    ``response_length`` tokens, stopping at end-of-sequence."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=response_length,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )
    queries, query_mask = left_pad(prompts, pad_id, device)
    width = queries.shape[1]
    responses = torch.full((len(prompts), response_length), pad_id, dtype=torch.long, device=device)
    for start in range(0, len(prompts), micro_batch):
        rows = slice(start, start + micro_batch)
        out = policy.generate(
            input_ids=queries[rows], attention_mask=query_mask[rows], generation_config=config
        )
        generated = out[:, width:]
        responses[rows, : generated.shape[1]] = generated
    mask = response_mask(responses, eos_ids)
    responses = torch.where(mask.bool(), responses, torch.full_like(responses, pad_id))
    return Batch(queries, query_mask, responses, mask)


def response_logits(model: Callable[..., object], batch: Batch, temperature: float) -> torch.Tensor:
    """The temperature-scaled logits that predict each response token ([B, R, vocab])."""
    width = batch.queries.shape[1]
    logits = model(**batch.model_inputs(), use_cache=False).logits
    return logits[:, width - 1 : -1] / temperature


def response_values(value_model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
    width = batch.queries.shape[1]
    return value_model(**batch.model_inputs())[:, width - 1 : -1].float()


@torch.no_grad()
def score_tokens(
    model: Callable[..., object], batch: Batch, temperature: float, micro_batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the response tokens and the entropies of their distributions."""
    logprobs, entropies = [], []
    for part in batch.chunks(micro_batch):
        logits = response_logits(model, part, temperature)
        logprobs.append(token_logprobs(logits, part.responses))
        entropies.append(entropy(logits))
    return torch.cat(logprobs), torch.cat(entropies)


@torch.no_grad()
def score_values(value_model: Callable[..., torch.Tensor], batch: Batch, micro_batch: int):
    return torch.cat([response_values(value_model, part) for part in batch.chunks(micro_batch)])
