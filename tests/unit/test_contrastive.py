"""The contrastive auxiliary loss on tiny tensors: InfoNCE against a closed form computed with
numpy, pooling that sees response tokens only, the batch layouts of DPO and SFT, and the trainer
mixin (the first forward's hidden states, the weighted term, what is logged)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import torch

from kubetune_trainer.plan import ContrastiveSpec
from kubetune_trainer.training.contrastive import (
    ContrastiveMixin,
    candidate_logits,
    contrastive_terms,
    info_nce,
    pooled,
    split_representations,
    with_contrastive,
)

ANCHORS = [[1.0, 0.0], [0.0, 2.0]]
POSITIVES = [[2.0, 1.0], [-1.0, 1.0]]
NEGATIVES = [[0.0, 1.0], [1.0, 1.0]]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def closed_form(anchor: np.ndarray, candidates: list[np.ndarray], positive: int, t: float) -> float:
    logits = np.array([cosine(anchor, c) / t for c in candidates])
    return float(-(logits[positive] - np.log(np.exp(logits).sum())))


def tensors(*rows: list[list[float]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(r) for r in rows)


def test_pair_info_nce_is_the_two_way_softmax_of_chosen_against_rejected() -> None:
    a, p, n = (np.array(x) for x in (ANCHORS, POSITIVES, NEGATIVES))
    expected = np.mean([closed_form(a[i], [p[i], n[i]], 0, 0.5) for i in range(2)])
    logits, target = candidate_logits(
        *tensors(ANCHORS, POSITIVES, NEGATIVES), in_batch=False, temperature=0.5
    )
    assert target.tolist() == [0, 0]
    assert info_nce(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_in_batch_info_nce_scores_every_response_of_the_batch() -> None:
    a, p, n = (np.array(x) for x in (ANCHORS, POSITIVES, NEGATIVES))
    candidates = [p[0], p[1], n[0], n[1]]
    expected = np.mean([closed_form(a[i], candidates, i, 0.07) for i in range(2)])
    logits, target = candidate_logits(
        *tensors(ANCHORS, POSITIVES, NEGATIVES), in_batch=True, temperature=0.07
    )
    assert logits.shape == (2, 4) and target.tolist() == [0, 1]
    assert info_nce(logits, target).item() == pytest.approx(expected, rel=1e-5)
    # Without negatives (SFT) the candidates are the batch's responses alone.
    logits, target = candidate_logits(
        *tensors(ANCHORS, POSITIVES), torch.zeros(0, 2), in_batch=True, temperature=0.07
    )
    expected = np.mean([closed_form(a[i], [p[0], p[1]], i, 0.07) for i in range(2)])
    assert info_nce(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_pooling_reads_the_masked_positions_only() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]])
    mean = pooled(hidden, mask, "mean")
    last = pooled(hidden, mask, "last")
    assert mean[0].tolist() == ((hidden[0, 1] + hidden[0, 2]) / 2).tolist()
    assert last[0].tolist() == hidden[0, 2].tolist()
    assert mean[1].tolist() == [0, 0, 0] and last[1].tolist() == [0, 0, 0]
    noisy = hidden.clone()
    noisy[:, 0] += 100.0
    noisy[:, 3] -= 50.0
    noisy[1] = 7.0
    assert torch.equal(pooled(noisy, mask, "mean"), mean)
    assert torch.equal(pooled(noisy, mask, "last"), last)


def dpo_batch() -> dict[str, torch.Tensor]:
    """TRL's DPO layout for two pairs: chosen rows, then rejected rows, right-padded."""
    return {
        "input_ids": torch.tensor(
            [[1, 2, 3, 4, 5], [7, 8, 9, 0, 0], [1, 2, 3, 6, 0], [7, 8, 10, 11, 0]]
        ),
        "attention_mask": torch.tensor(
            [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
        ),
        "completion_mask": torch.tensor(
            [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 1, 1, 0]]
        ),
    }


def test_the_dpo_layout_splits_prompts_chosen_and_rejected() -> None:
    hidden = torch.randn(4, 5, 3)
    for how in ("mean", "last"):
        anchors, positives, negatives = split_representations(
            hidden, dpo_batch(), "preference", how
        )
        pick = (lambda rows: rows.mean(0)) if how == "mean" else (lambda rows: rows[-1])
        expected_anchors = [pick(hidden[0, 0:3]), pick(hidden[1, 0:2])]
        expected_positives = [pick(hidden[0, 3:5]), pick(hidden[1, 2:3])]
        expected_negatives = [pick(hidden[2, 3:4]), pick(hidden[3, 2:4])]
        for found, expected in (
            (anchors, expected_anchors),
            (positives, expected_positives),
            (negatives, expected_negatives),
        ):
            assert torch.allclose(found, torch.stack(expected))


def test_the_sft_layout_reads_responses_from_the_labels() -> None:
    hidden = torch.randn(2, 4, 3)
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8], [5, 9, 10, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "labels": torch.tensor([[-100, -100, 7, 8], [-100, 9, 10, -100]]),
    }
    anchors, positives, negatives = split_representations(hidden, batch, "single", "mean")
    assert negatives.shape == (0, 3)
    assert torch.allclose(anchors, torch.stack([hidden[0, :2].mean(0), hidden[1, 0]]))
    assert torch.allclose(positives, torch.stack([hidden[0, 2:].mean(0), hidden[1, 1:3].mean(0)]))


def test_what_is_logged_of_a_dpo_batch() -> None:
    hidden = torch.randn(4, 5, 3)
    spec = ContrastiveSpec(negatives="pair", pooling="last", temperature=0.1)
    term, logged = contrastive_terms(hidden, dpo_batch(), "preference", spec)
    anchors, positives, negatives = split_representations(hidden, dpo_batch(), "preference", "last")
    closeness = torch.nn.functional.cosine_similarity
    margin = closeness(anchors, positives, dim=-1) - closeness(anchors, negatives, dim=-1)
    assert set(logged) == {"contrastive_loss", "contrastive_accuracy", "contrastive_margin"}
    assert logged["contrastive_loss"] == pytest.approx(term.item())
    assert logged["contrastive_margin"] == pytest.approx(margin.mean().item(), abs=1e-6)
    assert logged["contrastive_accuracy"] == pytest.approx((margin > 0).float().mean().item())


class Backbone(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 4)

    def forward(self, input_ids: torch.Tensor, **_: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(last_hidden_state=self.embed(input_ids))


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base_model = Backbone()


class FakeTrainer:
    """The parts of a TRL trainer the mixin uses: its compute_loss runs the policy forward and
    then (like a PEFT reference with adapters off) the same backbone again."""

    model_accepts_loss_kwargs = False
    compute_loss_func = None
    current_gradient_accumulation_steps = 4

    def __init__(self) -> None:
        self.model = Model()
        self.accelerator = type("Accelerator", (), {"unwrap_model": staticmethod(lambda m: m)})
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self.forwards: list[torch.Tensor] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        policy = model.base_model(inputs["input_ids"]).last_hidden_state
        with torch.no_grad():
            model.base_model(inputs["input_ids"] + 1)
        self.forwards.append(policy)
        return torch.tensor(0.25, requires_grad=True)


def test_the_mixin_adds_the_weighted_term_of_the_policy_forward_and_logs_it() -> None:
    spec = ContrastiveSpec(weight=0.5, negatives="inBatch")
    trainer = with_contrastive(FakeTrainer, spec, "preference")()
    assert isinstance(trainer, ContrastiveMixin)
    assert with_contrastive(FakeTrainer, None, "preference") is FakeTrainer
    batch = dpo_batch()
    loss = trainer.compute_loss(trainer.model, batch)
    term, _ = contrastive_terms(trainer.forwards[0], batch, "preference", spec)
    assert loss.item() == pytest.approx(0.25 + 0.5 * term.item(), rel=1e-5)
    assert trainer._metrics["train"]["contrastive_loss"] == [pytest.approx(term.item())]
    loss.backward()
    assert trainer.model.base_model.embed.weight.grad.abs().sum() > 0
    # Hooks are removed: a forward outside compute_loss captures nothing.
    assert not trainer.model.base_model._forward_hooks


def test_under_loss_scaled_accumulation_the_term_is_divided_by_the_steps() -> None:
    spec = ContrastiveSpec(weight=0.5)
    trainer = with_contrastive(FakeTrainer, spec, "preference")()
    trainer.model_accepts_loss_kwargs = True
    loss = trainer.compute_loss(trainer.model, dpo_batch(), num_items_in_batch=8)
    term, _ = contrastive_terms(trainer.forwards[0], dpo_batch(), "preference", spec)
    assert loss.item() == pytest.approx(0.25 + 0.5 * term.item() / 4, rel=1e-5)


def test_a_forward_that_skips_the_backbone_is_an_error_naming_the_field() -> None:
    class Headless(FakeTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return torch.tensor(0.25)

    trainer = with_contrastive(Headless, ContrastiveSpec(), "preference")()
    with pytest.raises(RuntimeError, match=r"^spec.training.contrastive: the forward did not"):
        trainer.compute_loss(trainer.model, dpo_batch())
    assert not trainer.model.base_model._forward_hooks
