"""Evaluation results as data: one metric of one model with its uncertainty and per-example
scores (:class:`MetricResult`), paired comparisons against a baseline, and the JSON document
``eval_results.json``. Pure and torch-free: the eval recipe, the export gate, ``kubetune
compare`` and the report all read the same document.

Every figure carries an interval and its sample count: a percentile bootstrap over examples
(accuracy, pass@k, win rate, judge scores: the mean of per-example scores; perplexity:
exp(Σ loss / Σ tokens) over rows), or lm-evaluation-harness's own standard error where it
reports one. Comparisons are paired on the examples both models were scored on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kubetune_trainer.evaluation.statistics import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Comparison,
    Estimate,
    Statistic,
    bootstrap,
    from_stderr,
    mean_statistic,
    paired_bootstrap,
    perplexity_statistic,
)

RESULTS_VERSION = "kubetune.io/eval-results/v2"


def bits_per_byte_statistic(resampled: np.ndarray) -> np.ndarray:
    """Σ negative log-likelihood (nats) / Σ bytes / ln 2 over [loss, bytes] rows."""
    return resampled[..., 0].sum(axis=-1) / resampled[..., 1].sum(axis=-1) / np.log(2.0)


STATISTICS: dict[str, Statistic] = {
    "mean": mean_statistic,
    "perplexity": perplexity_statistic,
    "bits_per_byte": bits_per_byte_statistic,
}
"""How per-example rows become a metric's value: the mean of scores, or a ratio of sums."""


@dataclass
class MetricResult:
    """One metric of one model."""

    type: str
    value: float | None
    """None when nothing could be scored."""
    estimate: Estimate | None
    ids: list[Any] = field(default_factory=list)
    """Example ids, aligned with rows; comparisons pair examples by id."""
    rows: list[Any] = field(default_factory=list)
    """Per example: a score, or [loss, tokens] for perplexities."""
    statistic: str = "mean"
    lower_is_better: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    """Per-example outputs (prompt, generation, score), saved beside the results."""
    categories: dict[str, Estimate] = field(default_factory=dict)
    """Per category (e.g. MMLU subjects)."""


def estimate_rows(
    rows: list[Any],
    statistic: str,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Estimate | None:
    """The value of rows under the statistic, with its bootstrap interval (None: no rows)."""
    if not rows:
        return None
    return bootstrap(
        np.asarray(rows, dtype=float),
        STATISTICS[statistic],
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def scored(
    type_: str,
    ids: list[Any],
    rows: list[Any],
    *,
    statistic: str = "mean",
    lower_is_better: bool = False,
    details: dict[str, Any] | None = None,
    samples: list[dict[str, Any]] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> MetricResult:
    """A metric whose value and interval come from its per-example rows."""
    estimate = estimate_rows(rows, statistic, confidence=confidence, resamples=resamples, seed=seed)
    return MetricResult(
        type=type_,
        value=None if estimate is None else estimate.value,
        estimate=estimate,
        ids=list(ids),
        rows=list(rows),
        statistic=statistic,
        lower_is_better=lower_is_better,
        details=details or {},
        samples=samples or [],
    )


def reported(
    value: float, stderr: float, n: int, confidence: float = DEFAULT_CONFIDENCE
) -> Estimate:
    """A figure with a standard error reported by another library (lm-eval)."""
    return from_stderr(value, stderr, n, confidence)


def compare(
    candidate: MetricResult,
    baseline: MetricResult,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Comparison | None:
    """Candidate minus baseline, paired on the examples both were scored on (None when they
    share none, or the metric's rows cannot be compared)."""
    if candidate.statistic != baseline.statistic or not candidate.rows or not baseline.rows:
        return None
    theirs = dict(zip(baseline.ids, baseline.rows, strict=True))
    common = [
        (row, theirs[i])
        for i, row in zip(candidate.ids, candidate.rows, strict=True)
        if i in theirs
    ]
    if not common:
        return None
    a = np.asarray([c for c, _ in common], dtype=float)
    b = np.asarray([t for _, t in common], dtype=float)
    return paired_bootstrap(
        a, b, STATISTICS[candidate.statistic], confidence=confidence, resamples=resamples, seed=seed
    )


def better(comparison: Comparison, lower_is_better: bool) -> bool | None:
    """True: significantly better; False: significantly worse; None: no significant
    difference."""
    if not comparison.significant:
        return None
    return (comparison.delta.value < 0) == lower_is_better


def metric_json(result: MetricResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": result.type,
        "value": result.value,
        "lowerIsBetter": result.lower_is_better,
        "statistic": result.statistic,
    }
    if result.estimate is not None:
        out["estimate"] = result.estimate.to_json()
    if result.categories:
        out["categories"] = {k: v.to_json() for k, v in result.categories.items()}
    return out


def comparison_json(comparison: Comparison, lower_is_better: bool) -> dict[str, Any]:
    return comparison.to_json() | {"better": better(comparison, lower_is_better)}
