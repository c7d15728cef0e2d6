"""Uncertainty for every figure kubetune reports: torch-free, numpy only.

Used by the eval recipe (intervals on accuracy, pass@k, win rate, judge scores; paired
comparisons against a baseline), by the export gate, by sweeps and by the studio (human win
rates). Every function is pure: the same inputs and seed give the same result.

Intervals are percentile bootstrap intervals over examples unless said otherwise; comparisons
of two models are *paired*: both were scored on the same examples, so the bootstrap resamples
examples and recomputes the difference on each resample, which removes the between-example
variance a two-sample test would wrongly count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
_CHUNK = 256  # resamples drawn at once: bounds memory at _CHUNK × n indices

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps an array of resamples (shape [resamples, n, ...]) to one value per resample."""


@dataclass(frozen=True)
class Estimate:
    """A figure with its uncertainty: the value, a confidence interval, the sample count."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = DEFAULT_CONFIDENCE
    method: str = "bootstrap"
    stderr: float | None = None

    def to_json(self) -> dict[str, float | int | str | None]:
        return asdict(self)

    def format(self, digits: int = 3) -> str:
        """``0.750 [0.660, 0.830] n=100``"""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] n={self.n}"


@dataclass(frozen=True)
class Comparison:
    """A candidate against a baseline on the same examples: the difference (candidate minus
    baseline) with its paired interval, a two-sided p-value from the same resamples, and
    whether the interval excludes zero."""

    delta: Estimate
    p_value: float
    significant: bool

    def to_json(self) -> dict[str, object]:
        return {
            "delta": self.delta.to_json(),
            "pValue": self.p_value,
            "significant": self.significant,
        }


def _as_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{what}: expected one value per example, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{what}: no examples")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: values must be finite")
    return array


def _resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = values.shape[0]
    out = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        index = rng.integers(0, n, size=(size, n))
        out[start : start + size] = values[index].mean(axis=1)
    return out


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """The mean of per-example scores (1/0 correctness, pass@k per problem, judge scores, a
    win as 1, a tie as 0.5) with a percentile bootstrap interval over examples."""
    array = _as_array(values, "bootstrap_mean")
    draws = _resampled_means(array, resamples, np.random.default_rng(seed))
    low, high = _percentiles(draws, confidence)
    return Estimate(
        value=float(array.mean()),
        low=low,
        high=high,
        n=int(array.size),
        confidence=confidence,
        stderr=float(draws.std(ddof=1)) if resamples > 1 else None,
    )


def bootstrap(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """Any statistic of per-example rows (e.g. perplexity = exp(Σ loss / Σ tokens) over rows
    of [loss, tokens]) with a percentile bootstrap interval. ``statistic`` receives an array
    of shape [resamples, n, ...] and returns one value per resample; it is also applied to
    the data itself (as one resample) for the point value."""
    array = np.asarray(values, dtype=float)
    if array.shape[0] == 0:
        raise ValueError("bootstrap: no examples")
    rng = np.random.default_rng(seed)
    n = array.shape[0]
    draws = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        index = rng.integers(0, n, size=(size, n))
        draws[start : start + size] = statistic(array[index])
    low, high = _percentiles(draws, confidence)
    return Estimate(
        value=float(statistic(array[np.newaxis, ...])[0]),
        low=low,
        high=high,
        n=int(n),
        confidence=confidence,
        stderr=float(draws.std(ddof=1)) if resamples > 1 else None,
    )


def paired_difference(
    candidate: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Mean per-example score of the candidate minus the baseline's, on the same examples
    (index i of both is the same example). The p-value is two-sided, read off the same
    bootstrap distribution as the interval, so 'significant' (the interval excludes 0) and
    p < 1 - confidence agree."""
    a = _as_array(candidate, "candidate")
    b = _as_array(baseline, "baseline")
    if a.shape != b.shape:
        raise ValueError(
            f"paired comparison needs the same examples: {a.size} candidate scores "
            f"vs {b.size} baseline scores"
        )
    differences = a - b
    draws = _resampled_means(differences, resamples, np.random.default_rng(seed))
    low, high = _percentiles(draws, confidence)
    delta = Estimate(
        value=float(differences.mean()),
        low=low,
        high=high,
        n=int(differences.size),
        confidence=confidence,
        method="paired bootstrap",
        stderr=float(draws.std(ddof=1)) if resamples > 1 else None,
    )
    # Two-sided bootstrap p-value: twice the share of resamples on the far side of zero
    # (ties at zero count half), capped at 1.
    below = float(np.mean(draws < 0.0) + 0.5 * np.mean(draws == 0.0))
    p_value = min(1.0, 2.0 * min(below, 1.0 - below))
    if np.all(differences == differences[0]):
        # No variation at all: the difference is exact.
        p_value = 1.0 if differences[0] == 0.0 else 0.0
    significant = bool(low > 0.0 or high < 0.0)
    return Comparison(delta=delta, p_value=p_value, significant=significant)


def win_rate(outcomes: Sequence[float] | np.ndarray, **kwargs: float | int) -> Estimate:
    """Share of comparisons won, ties counting half: outcomes are 1 (win), 0.5 (tie) or 0
    (loss), one per compared item."""
    array = _as_array(outcomes, "win_rate")
    if not np.all(np.isin(array, (0.0, 0.5, 1.0))):
        raise ValueError("win_rate: outcomes must be 1 (win), 0.5 (tie) or 0 (loss)")
    return bootstrap_mean(array, **kwargs)  # type: ignore[arg-type]


def wilson_interval(
    successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (closed form; good at small n and near
    0 or 1, where the bootstrap of a proportion degenerates)."""
    if n <= 0:
        raise ValueError("wilson_interval: n must be positive")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must be in [0, {n}], got {successes}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def from_stderr(
    value: float, stderr: float, n: int, confidence: float = DEFAULT_CONFIDENCE
) -> Estimate:
    """A normal-approximation interval from a reported standard error (lm-evaluation-harness
    reports one per metric)."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    return Estimate(
        value=value,
        low=value - z * stderr,
        high=value + z * stderr,
        n=n,
        confidence=confidence,
        method="normal (stderr)",
        stderr=stderr,
    )
