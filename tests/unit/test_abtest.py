"""The live A/B decisions: the weighted split and its stickiness, the difference interval
against Newcombe's published example and a simulation, and the guard."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import binom

from kubetune_studio import abtest
from kubetune_studio.abtest import AbError, ArmFeedback, ArmShare


def test_the_split_follows_the_weights_within_a_binomial_interval() -> None:
    arms = [ArmShare("control", 3.0), ArmShare("candidate", 1.0)]
    users = 20000
    got = Counter(abtest.assign_arm("exp", f"user-{n}", arms) for n in range(users))
    low, high = binom.interval(0.999, users, 0.75)
    assert low <= got["control"] <= high


def test_three_arms_split_by_weight() -> None:
    arms = [ArmShare("a", 1.0), ArmShare("b", 2.0), ArmShare("c", 5.0)]
    users = 16000
    got = Counter(abtest.assign_arm("three", f"u{n}", arms) for n in range(users))
    for arm in arms:
        low, high = binom.interval(0.999, users, arm.weight / 8)
        assert low <= got[arm.name] <= high


def test_a_user_keeps_their_arm_and_stopping_an_arm_moves_only_its_users() -> None:
    arms = [ArmShare("a", 1.0), ArmShare("b", 1.0), ArmShare("c", 1.0)]
    before = {f"u{n}": abtest.assign_arm("sticky", f"u{n}", arms) for n in range(3000)}
    assert before == {u: abtest.assign_arm("sticky", u, arms) for u in before}
    after = {u: abtest.assign_arm("sticky", u, arms[:2]) for u in before}
    assert all(after[u] == arm for u, arm in before.items() if arm != "c")
    moved = Counter(after[u] for u, arm in before.items() if arm == "c")
    assert set(moved) == {"a", "b"}


def test_side_by_side_shows_two_different_arms_in_both_orders() -> None:
    arms = [ArmShare("a", 1.0), ArmShare("b", 1.0), ArmShare("c", 2.0)]
    pairs = [abtest.assign_pair("cmp", f"u{n}", arms) for n in range(2000)]
    assert all(first != second for first, second in pairs)
    firsts = Counter(first for first, _ in pairs)
    assert all(firsts[name] > 0 for name in ("a", "b", "c"))


def test_newcombe_interval_matches_the_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 vs 48/80; method 10
    # (score interval, no continuity correction) gives 0.0524 to 0.3339.
    found = abtest.difference(abtest.rate(56, 14), abtest.rate(48, 32))
    assert found is not None
    assert found.value == pytest.approx(56 / 70 - 48 / 80)
    assert (found.low, found.high) == (
        pytest.approx(0.0524, abs=1e-4),
        pytest.approx(0.3339, abs=1e-4),
    )
    assert found.significant


def test_difference_interval_covers_the_true_difference_at_about_95_percent() -> None:
    rng = np.random.default_rng(0)
    covered, runs = 0, 2000
    for _ in range(runs):
        up_a = int(rng.binomial(120, 0.62))
        up_b = int(rng.binomial(90, 0.48))
        found = abtest.difference(abtest.rate(up_a, 120 - up_a), abtest.rate(up_b, 90 - up_b))
        covered += found.low <= 0.62 - 0.48 <= found.high
    coverage = covered / runs
    print(f"coverage of the difference interval: {coverage:.3f} over {runs} runs")
    assert 0.93 <= coverage <= 0.97


def test_the_guard_stops_a_significantly_worse_arm_with_its_reason() -> None:
    arms = [ArmFeedback("good", 80, 20, True), ArmFeedback("bad", 40, 60, True)]
    stops = abtest.guard(arms, confidence=0.99, min_feedback=50)
    assert list(stops) == ["bad"]
    assert "below good's 0.800 (80/100)" in stops["bad"] and "at 99%" in stops["bad"]


def test_the_guard_waits_for_enough_feedback_and_for_a_real_difference() -> None:
    few = [ArmFeedback("good", 9, 1, True), ArmFeedback("bad", 1, 9, True)]
    assert abtest.guard(few, confidence=0.99, min_feedback=50) == {}
    close = [ArmFeedback("a", 52, 48, True), ArmFeedback("b", 48, 52, True)]
    assert abtest.guard(close, confidence=0.99, min_feedback=50) == {}


def test_the_guard_never_stops_the_last_running_arm() -> None:
    arms = [ArmFeedback("stopped", 95, 5, False), ArmFeedback("left", 10, 90, True)]
    assert abtest.guard(arms, confidence=0.99, min_feedback=10) == {}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: abtest.assign_arm("e", "u", []), r"^arms: no running arm"),
        (lambda: abtest.assign_arm("e", "u", [ArmShare("a", 0.0)]), r"^arms\[0\]\.weight"),
        (lambda: abtest.assign_pair("e", "u", [ArmShare("a", 1.0)]), r"^arms: a side-by-side"),
        (
            lambda: abtest.guard([], confidence=1.5, min_feedback=1),
            r"^guard_confidence: between 0 and 1",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_field(call, message: str) -> None:
    with pytest.raises(AbError, match=message):
        call()
