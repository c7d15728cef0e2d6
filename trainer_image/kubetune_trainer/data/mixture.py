"""Weighted mixtures and the held-out split, all seeded.

The rule, exactly:

1. Each source is read up to its ``maxSamples`` valid rows (the first ones, in file order).
2. With ``evalRatio`` (and no ``evalSources``), each source holds out ``round(n × evalRatio)``
   of its n rows (at least 1 and at most n − 1 when n ≥ 2), chosen by a permutation seeded with
   (seed, source index). The held-out rows of all sources form the eval set; the rest are the
   source's training pool, so no row is in both.
3. The mixture's size N is the sum of the pools' sizes, capped by the global ``maxSamples``.
4. Source i gets ``N × wᵢ / Σw`` rows, rounded down, and the rows left over go one each to the
   sources with the largest remainders (earlier sources first on ties). A source asked for no
   more than its pool holds gives a seeded sample without replacement; asked for more, it gives
   its whole pool as many whole times as fit, then a seeded sample for the rest.
5. The mixture is shuffled with the seed.

The same seed and data give the same train and eval rows, in the same order.
"""

from __future__ import annotations

import math
import random
from typing import Any, TypeVar

T = TypeVar("T")
Row = dict[str, Any]


def _rng(seed: int, *salt: int) -> random.Random:
    value = seed
    for part in salt:
        value = value * 1_000_003 + part + 1
    return random.Random(value)


def hold_out(rows: list[T], ratio: float, seed: int, source_index: int) -> tuple[list[T], list[T]]:
    """(train, eval) of one source's rows; see rule 2."""
    n = len(rows)
    if ratio <= 0 or n < 2:
        return rows, []
    count = min(max(round(n * ratio), 1), n - 1)
    order = list(range(n))
    _rng(seed, 1, source_index).shuffle(order)
    held = set(order[:count])
    return (
        [row for i, row in enumerate(rows) if i not in held],
        [row for i, row in enumerate(rows) if i in held],
    )


def allocate(total: int, weights: list[float]) -> list[int]:
    """Rows per source for a mixture of ``total`` rows (largest-remainder rounding)."""
    weight_sum = sum(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def take(pool: list[T], count: int, rng: random.Random) -> list[T]:
    """``count`` rows from ``pool``: a sample, or whole repeats plus a sample (rule 4)."""
    if count <= 0 or not pool:
        return []
    repeats, rest = divmod(count, len(pool))
    return pool * repeats + rng.sample(pool, rest)


def mix(
    pools: list[list[T]], weights: list[float], seed: int, max_samples: int | None = None
) -> tuple[list[T], list[int]]:
    """The shuffled mixture of ``pools`` and the rows taken from each (rules 3 to 5)."""
    total = sum(len(p) for p in pools)
    if max_samples is not None:
        total = min(total, max_samples)
    counts = allocate(total, weights)
    mixed: list[T] = []
    for i, (pool, count) in enumerate(zip(pools, counts, strict=True)):
        mixed.extend(take(pool, count, _rng(seed, 2, i)))
    _rng(seed, 3).shuffle(mixed)
    return mixed, counts
