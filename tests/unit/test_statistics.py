"""The statistics behind every reported interval, checked against closed forms and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from kubetune_trainer.evaluation.statistics import (
    bootstrap,
    bootstrap_mean,
    from_stderr,
    paired_difference,
    wilson_interval,
    win_rate,
)


def test_bernoulli_accuracy_interval_covers_the_true_rate_at_the_nominal_rate() -> None:
    """Over seeded repetitions, the 95% interval of an accuracy contains the true accuracy
    about 95% of the time (binomial noise over 400 repetitions: ±2.2 points at 2 sigma; the
    percentile bootstrap runs a little narrow at n=120)."""
    rng = np.random.default_rng(7)
    true_rate, n, repetitions = 0.3, 120, 400
    covered = 0
    for i in range(repetitions):
        sample = (rng.random(n) < true_rate).astype(float)
        estimate = bootstrap_mean(sample, resamples=1000, seed=i)
        covered += estimate.low <= true_rate <= estimate.high
    assert 0.90 <= covered / repetitions <= 0.98


def test_bootstrap_standard_error_matches_the_binomial_closed_form() -> None:
    sample = np.array([1.0] * 60 + [0.0] * 140)
    estimate = bootstrap_mean(sample, resamples=4000, seed=1)
    closed_form = math.sqrt(0.3 * 0.7 / 200)
    assert estimate.value == pytest.approx(0.3)
    assert estimate.stderr == pytest.approx(closed_form, rel=0.08)
    assert estimate.n == 200
    assert estimate.low < 0.3 < estimate.high


def test_same_seed_same_interval_and_a_custom_statistic() -> None:
    rows = np.array([[2.0, 10], [1.0, 5], [3.0, 20], [0.5, 4], [1.5, 9]])

    def perplexity(resampled: np.ndarray) -> np.ndarray:
        return np.exp(resampled[..., 0].sum(axis=-1) / resampled[..., 1].sum(axis=-1))

    first = bootstrap(rows, perplexity, seed=3)
    assert first == bootstrap(rows, perplexity, seed=3)
    assert first.value == pytest.approx(math.exp(8.0 / 48))
    assert first.low <= first.value <= first.high


def test_wilson_interval_equals_scipy() -> None:
    for successes, n in [(0, 10), (3, 10), (57, 100), (100, 100)]:
        expected = scipy_stats.binomtest(successes, n).proportion_ci(0.95, method="wilson")
        low, high = wilson_interval(successes, n)
        assert low == pytest.approx(expected.low, abs=1e-12)
        assert high == pytest.approx(expected.high, abs=1e-12)


def test_interval_from_a_reported_standard_error_is_the_normal_one() -> None:
    estimate = from_stderr(0.62, 0.02, n=500)
    low, high = scipy_stats.norm.interval(0.95, loc=0.62, scale=0.02)
    assert (estimate.low, estimate.high) == pytest.approx((low, high))


def test_paired_comparison_finds_a_planted_difference() -> None:
    """Candidate right on 10 more of 200 examples than the baseline, otherwise the same
    answers: a paired test sees it although both accuracies' own intervals overlap."""
    rng = np.random.default_rng(0)
    baseline = (rng.random(200) < 0.6).astype(float)
    candidate = baseline.copy()
    wrong = np.flatnonzero(baseline == 0)[:20]
    candidate[wrong] = 1.0
    comparison = paired_difference(candidate, baseline, seed=0)
    assert comparison.delta.value == pytest.approx(0.1)
    assert comparison.significant
    assert comparison.p_value < 0.01
    a, b = bootstrap_mean(candidate), bootstrap_mean(baseline)
    assert a.low < b.high  # unpaired intervals overlap


def test_paired_comparison_rarely_flags_a_planted_non_difference() -> None:
    """Two models equally good (each example right with the same probability for both):
    'significant' at 95% should come up about 5% of the time."""
    rng = np.random.default_rng(11)
    flagged = 0
    repetitions = 300
    for i in range(repetitions):
        difficulty = rng.random(150)
        a = (rng.random(150) < difficulty).astype(float)
        b = (rng.random(150) < difficulty).astype(float)
        comparison = paired_difference(a, b, resamples=1000, seed=i)
        flagged += comparison.significant
        assert (comparison.p_value < 0.05) == comparison.significant or abs(
            comparison.p_value - 0.05
        ) < 0.01
    assert flagged / repetitions <= 0.09


def test_paired_p_value_agrees_with_a_sign_test_on_discordant_pairs() -> None:
    """On 0/1 scores a paired comparison is about the discordant pairs (McNemar): 30 where
    only the candidate is right, 12 where only the baseline is."""
    candidate = np.array([1.0] * 30 + [0.0] * 12 + [1.0] * 50 + [0.0] * 58)
    baseline = np.array([0.0] * 30 + [1.0] * 12 + [1.0] * 50 + [0.0] * 58)
    comparison = paired_difference(candidate, baseline, resamples=20000, seed=2)
    exact = scipy_stats.binomtest(30, 42, 0.5).pvalue
    assert comparison.significant
    assert comparison.p_value == pytest.approx(exact, abs=0.01)


def test_win_rate_counts_ties_half_and_refuses_other_values() -> None:
    estimate = win_rate([1, 1, 0.5, 0, 1, 0.5, 0, 1])
    assert estimate.value == pytest.approx(4.0 / 8 + 1.0 / 8)
    with pytest.raises(ValueError, match=r"1 \(win\), 0.5 \(tie\) or 0"):
        win_rate([1, 0.3])


def test_mismatched_or_empty_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same examples: 3 candidate scores vs 2"):
        paired_difference([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="no examples"):
        bootstrap_mean([])
