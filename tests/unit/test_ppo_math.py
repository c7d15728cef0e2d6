"""PPO's math on tiny tensors: GAE against hand-computed values, whitening, per-token rewards,
the KL controllers, the clipped losses, response masks and the prompt feed."""

from __future__ import annotations

import math

import pytest
import torch

from kubetune_trainer.plan import PpoSpec
from kubetune_trainer.ppo.advantages import gae, masked_moments, masked_whiten, token_rewards
from kubetune_trainer.ppo.kl import AdaptiveKLController, FixedKLController, kl_controller
from kubetune_trainer.ppo.losses import entropy, policy_loss, token_logprobs, value_loss
from kubetune_trainer.ppo.prompts import PromptFeed
from kubetune_trainer.ppo.rollout import response_mask


def test_gae_matches_hand_computed_values() -> None:
    # One response of 3 tokens: r = (0, 0, 1), V = (0.5, 0.2, 0.4), gamma 0.9, lambda 0.8.
    # delta_2 = 1 - 0.4 = 0.6                      (V after the last token is 0)
    # delta_1 = 0 + 0.9*0.4 - 0.2 = 0.16
    # delta_0 = 0 + 0.9*0.2 - 0.5 = -0.32
    # A_2 = 0.6; A_1 = 0.16 + 0.72*0.6 = 0.592; A_0 = -0.32 + 0.72*0.592 = 0.10624
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert advantages.tolist()[0] == pytest.approx([0.10624, 0.592, 0.6])
    assert returns.tolist()[0] == pytest.approx([0.60624, 0.792, 1.0])


def test_gae_ignores_padding_after_a_response_ends() -> None:
    # The same response padded to 5 tokens with garbage beyond its end gives the same numbers.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0, 7.0]])
    values = torch.tensor([[0.5, 0.2, 0.4, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert advantages.tolist()[0] == pytest.approx([0.10624, 0.592, 0.6, 0.0, 0.0])
    assert returns.tolist()[0][3:] == [0.0, 0.0]


def test_gae_with_lambda_one_is_the_discounted_return_minus_value() -> None:
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.0]])
    values = torch.tensor([[0.3, 0.1, -0.4, 0.2]])
    advantages, returns = gae(rewards, values, torch.ones(1, 4), gamma=0.5, lam=1.0)
    expected_returns = [0.1 - 0.1 + 0.075 + 0.125, -0.2 + 0.15 + 0.25, 0.3 + 0.5, 1.0]
    assert returns.tolist()[0] == pytest.approx(expected_returns)
    assert advantages.tolist()[0] == pytest.approx(
        [r - v for r, v in zip(expected_returns, values.tolist()[0], strict=True)]
    )


def test_whitening_uses_only_masked_entries() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    whitened = masked_whiten(values, mask)
    kept = whitened[mask.bool()]
    assert float(kept.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(kept.std()) == pytest.approx(1.0, abs=1e-4)  # unbiased, like masked_moments
    assert whitened[~mask.bool()].tolist() == [0.0, 0.0, 0.0]
    # 1..5 has mean 3 and unbiased variance 2.5
    mean, variance = masked_moments(values, mask)
    assert (float(mean), float(variance)) == pytest.approx((3.0, 2.5))


def test_whitening_rewards_keeps_their_mean() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0]])
    whitened = masked_whiten(values, torch.ones(1, 3), shift_mean=False)
    assert float(whitened.mean()) == pytest.approx(2.0)
    assert float(whitened.std()) == pytest.approx(1.0, abs=1e-4)


def test_token_rewards_charge_kl_per_token_and_put_the_score_on_the_last_token() -> None:
    kl = torch.tensor([[0.5, 1.0, 2.0], [1.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = token_rewards(torch.tensor([3.0, -1.0]), kl, mask, kl_coef=0.1)
    assert rewards.tolist()[0] == pytest.approx([-0.05, -0.1, -0.2 + 3.0])
    assert rewards.tolist()[1] == pytest.approx([-0.1 - 1.0, 0.0, 0.0])


def test_fixed_controller_never_moves() -> None:
    controller = kl_controller(PpoSpec.model_validate({"klCoef": 0.2}))
    assert isinstance(controller, FixedKLController)
    controller.update(measured_kl=50.0, responses=1000)
    assert controller.value == 0.2


def test_adaptive_controller_moves_toward_the_target() -> None:
    spec = PpoSpec.model_validate({"klCoef": 0.1, "adaptiveKl": {"target": 6.0, "horizon": 100}})
    high = kl_controller(spec)
    assert isinstance(high, AdaptiveKLController)
    high.update(measured_kl=6.6, responses=10)  # 10% over target: e = 0.1
    assert high.value == pytest.approx(0.1 * (1 + 0.1 * 10 / 100))
    low = kl_controller(spec)
    low.update(measured_kl=3.0, responses=10)  # far under target: e clipped to -0.2
    assert low.value == pytest.approx(0.1 * (1 - 0.2 * 10 / 100))
    far = kl_controller(spec)
    far.update(measured_kl=600.0, responses=10)  # e clipped to +0.2
    assert far.value == pytest.approx(0.1 * 1.02)
    on_target = kl_controller(spec)
    on_target.update(measured_kl=6.0, responses=10)
    assert on_target.value == pytest.approx(0.1)


def test_adaptive_controller_state_round_trips() -> None:
    controller = AdaptiveKLController(0.1, target=1.0, horizon=10)
    for _ in range(5):
        controller.update(measured_kl=3.0, responses=4)
    restored = AdaptiveKLController(0.1, target=1.0, horizon=10)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value == pytest.approx(0.1 * 1.08**5)


def test_policy_loss_clips_the_ratio() -> None:
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.5, 0.75, 0.25]]))  # ratios 1.0, 1.5, 0.5
    advantages = torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.ones(1, 3)
    result = policy_loss(new, old, advantages, mask, clip_range=0.2)
    # Per token max(-A r, -A clip(r)): -1.0, -1.2 (clipped), -0.5 (unclipped is larger).
    assert float(result.loss) == pytest.approx((-1.0 - 1.2 - 0.5) / 3)
    assert float(result.clip_fraction) == pytest.approx(1 / 3)
    # (r - 1) - log r averaged: 0, 0.5 - ln 1.5, -0.5 + ln 2
    expected_kl = (0.5 - math.log(1.5) - 0.5 + math.log(2)) / 3
    assert float(result.approx_kl) == pytest.approx(expected_kl)


def test_policy_loss_gives_no_gradient_beyond_the_clip() -> None:
    old = torch.log(torch.tensor([[0.5]]))
    new = torch.log(torch.tensor([[0.9]])).requires_grad_()  # ratio 1.8 > 1.2
    policy_loss(new, old, torch.tensor([[1.0]]), torch.ones(1, 1), 0.2).loss.backward()
    assert new.grad is not None and float(new.grad) == 0.0


def test_policy_loss_ignores_masked_tokens() -> None:
    old = torch.zeros(1, 2)
    new = torch.tensor([[0.0, 5.0]])
    result = policy_loss(new, old, torch.tensor([[2.0, 2.0]]), torch.tensor([[1.0, 0.0]]), 0.2)
    assert float(result.loss) == pytest.approx(-2.0)
    assert float(result.clip_fraction) == 0.0


def test_value_loss_clips_the_prediction() -> None:
    old_values = torch.tensor([[0.0, 0.0]])
    values = torch.tensor([[0.5, 0.1]])
    returns = torch.tensor([[1.0, -1.0]])
    result = value_loss(values, old_values, returns, torch.ones(1, 2), clip_range_value=0.2)
    # Token 0: unclipped (0.5-1)^2 = 0.25, clipped (0.2-1)^2 = 0.64 -> 0.64 (clipped counted).
    # Token 1: within the range, (0.1+1)^2 = 1.21 both ways.
    assert float(result.loss) == pytest.approx(0.5 * (0.64 + 1.21) / 2)
    assert float(result.clip_fraction) == pytest.approx(0.5)


def test_token_logprobs_and_entropy() -> None:
    logits = torch.log(torch.tensor([[[0.25, 0.25, 0.5]]]))
    assert float(token_logprobs(logits, torch.tensor([[2]]))) == pytest.approx(math.log(0.5))
    assert float(entropy(logits)) == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.5)))


def test_response_mask_ends_at_the_first_end_of_sequence_token() -> None:
    responses = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [3, 5, 6, 7, 8]])
    mask = response_mask(responses, eos_ids=[2, 3])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_prompt_feed_splits_each_rollout_over_ranks_and_reshuffles_each_epoch() -> None:
    rows = [{"id": i} for i in range(6)]
    ranks = [PromptFeed(rows, rollout_batch=4, seed=1, world=2, rank=r) for r in range(2)]
    steps = [[row["id"] for feed in ranks for row in feed.rows_for(step)] for step in range(3)]
    first_epoch = steps[0] + steps[1][:2]
    assert sorted(first_epoch) == list(range(6))  # every prompt once per epoch
    assert sorted(steps[1][2:] + steps[2]) == list(range(6))
    single = PromptFeed(rows, rollout_batch=4, seed=1, world=1, rank=0)
    assert [row["id"] for row in single.rows_for(1)] == steps[1]  # same prompts, any world size
