"""Labeler quality: agreement statistics and who is excluded, as pure functions of the votes.

- Krippendorff's α (nominal; any number of labelers per item, missing votes allowed) over the
  regular items, computed by the ``krippendorff`` library.
- Cohen's κ for each pair of labelers over the items both voted on, and its mean.
- Per labeler: agreement with gold answers; agreement with the consensus (for each of the
  labeler's votes, the plurality of the *other* included labelers' votes on that item, when
  there is a single plurality); median seconds per vote.

A labeler is excluded, in this order, when (1) their gold agreement is below the campaign's
threshold after at least ``min_gold_votes`` gold votes; (2) they are suspiciously fast and the
campaign excludes for speed (otherwise speed is only flagged); (3) their agreement with the
consensus of the labelers still included is below its threshold after ``min_consensus_votes``
comparisons. "Below" means the whole 95% Wilson interval of the agreement is below: on six
gold items a careful labeler who misses two (0.67) is not excluded for bad luck, one who misses
all of them is. Each reason is kept as a sentence for the admin.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import krippendorff
import numpy as np

from kubetune_studio.store.schema import CHOICES
from kubetune_trainer.evaluation.statistics import wilson_interval

MIN_KAPPA_SHARED = 5
"""Fewest items two labelers must share for their κ to be reported."""


@dataclass(frozen=True)
class VoteRecord:
    item_id: int
    labeler_id: int
    choice: str
    time_spent_ms: int | None = None


@dataclass(frozen=True)
class Thresholds:
    min_gold_agreement: float = 0.7
    min_gold_votes: int = 3
    min_consensus_agreement: float = 0.5
    min_consensus_votes: int = 10
    min_median_seconds: float = 2.0
    exclude_fast: bool = False


@dataclass
class LabelerQuality:
    labeler_id: int
    votes: int = 0
    gold_votes: int = 0
    gold_agreement: float | None = None
    consensus_comparisons: int = 0
    consensus_agreement: float | None = None
    median_seconds: float | None = None
    fast: bool = False
    excluded: bool = False
    reasons: list[str] = field(default_factory=list)


@dataclass
class Quality:
    labelers: dict[int, LabelerQuality]
    alpha: float | None
    """Krippendorff's α over regular items among included labelers (None: too little data)."""
    alpha_all: float | None
    """The same over every labeler, before exclusions."""
    kappas: dict[tuple[int, int], float]
    """Cohen's κ per pair of included labelers sharing at least MIN_KAPPA_SHARED items."""
    mean_kappa: float | None

    @property
    def excluded(self) -> set[int]:
        return {i for i, q in self.labelers.items() if q.excluded}


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's κ of two labelers' choices on the same items (None when chance agreement is 1,
    where κ is undefined)."""
    if len(first) != len(second) or not first:
        raise ValueError("cohen_kappa needs two equally long, non-empty sequences")
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    left, right = Counter(first), Counter(second)
    expected = sum(left[c] * right[c] for c in left.keys() | right.keys()) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def krippendorff_alpha(votes: Iterable[VoteRecord]) -> float | None:
    """Nominal α over the given votes (labelers × items, missing where a labeler did not vote);
    None when no item has two votes or every pairable vote is the same choice."""
    per_item = Counter(v.item_id for v in votes)
    votes = [v for v in votes if per_item[v.item_id] >= 2]  # only pairable values count
    if len({v.choice for v in votes}) < 2:
        return None  # no votes to pair, or no variation: expected disagreement is 0
    items = sorted({v.item_id for v in votes})
    labelers = sorted({v.labeler_id for v in votes})
    code = {c: i for i, c in enumerate(CHOICES)}
    column = {item: j for j, item in enumerate(items)}
    row = {labeler: i for i, labeler in enumerate(labelers)}
    data = np.full((len(labelers), len(items)), np.nan)
    for v in votes:
        data[row[v.labeler_id], column[v.item_id]] = code[v.choice]
    return float(
        krippendorff.alpha(
            reliability_data=data,
            level_of_measurement="nominal",
            value_domain=list(range(len(CHOICES))),
        )
    )


def clearly_below(rate: float, n: int, threshold: float) -> float | None:
    """The upper end of the rate's 95% Wilson interval when even that is below the threshold
    (the labeler is below it beyond chance); None otherwise."""
    upper = wilson_interval(round(rate * n), n)[1]
    return upper if upper < threshold else None


def plurality(choices: Iterable[str]) -> str | None:
    """The single most frequent choice, or None when there is none (no votes, or a tie)."""
    counts = Counter(choices).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def consensus_agreement(
    votes: Sequence[VoteRecord], labeler_id: int, others: set[int]
) -> tuple[int, float | None]:
    """(comparisons, agreement) of one labeler with the plurality of ``others`` per item."""
    by_item: dict[int, list[VoteRecord]] = defaultdict(list)
    for v in votes:
        by_item[v.item_id].append(v)
    matches = comparisons = 0
    for item_votes in by_item.values():
        own = [v.choice for v in item_votes if v.labeler_id == labeler_id]
        if not own:
            continue
        majority = plurality(
            v.choice for v in item_votes if v.labeler_id != labeler_id and v.labeler_id in others
        )
        if majority is None:
            continue
        comparisons += 1
        matches += own[0] == majority
    return comparisons, (matches / comparisons if comparisons else None)


def pairwise_kappas(votes: Sequence[VoteRecord]) -> dict[tuple[int, int], float]:
    by_labeler: dict[int, dict[int, str]] = defaultdict(dict)
    for v in votes:
        by_labeler[v.labeler_id][v.item_id] = v.choice
    kappas = {}
    for first, second in itertools.combinations(sorted(by_labeler), 2):
        shared = sorted(by_labeler[first].keys() & by_labeler[second].keys())
        if len(shared) < MIN_KAPPA_SHARED:
            continue
        kappa = cohen_kappa(
            [by_labeler[first][i] for i in shared], [by_labeler[second][i] for i in shared]
        )
        if kappa is not None:
            kappas[(first, second)] = kappa
    return kappas


def assess(votes: Sequence[VoteRecord], gold: Mapping[int, str], thresholds: Thresholds) -> Quality:
    """Quality of every labeler who voted, exclusions with their reasons, and agreement."""
    regular = [v for v in votes if v.item_id not in gold]
    labelers = {v.labeler_id: LabelerQuality(v.labeler_id) for v in votes}
    for labeler_id, quality in labelers.items():
        own = [v for v in votes if v.labeler_id == labeler_id]
        quality.votes = len(own)
        on_gold = [v for v in own if v.item_id in gold]
        quality.gold_votes = len(on_gold)
        if on_gold:
            hits = sum(v.choice == gold[v.item_id] for v in on_gold)
            quality.gold_agreement = hits / len(on_gold)
        times = [v.time_spent_ms for v in own if v.time_spent_ms is not None]
        if times:
            quality.median_seconds = statistics.median(times) / 1000.0
            quality.fast = quality.median_seconds < thresholds.min_median_seconds

    for quality in labelers.values():
        if quality.gold_agreement is None or quality.gold_votes < thresholds.min_gold_votes:
            continue
        upper = clearly_below(
            quality.gold_agreement, quality.gold_votes, thresholds.min_gold_agreement
        )
        if upper is not None:
            quality.excluded = True
            quality.reasons.append(
                f"gold agreement {quality.gold_agreement:.2f} (95% CI up to {upper:.2f}) < "
                f"{thresholds.min_gold_agreement:.2f} on {quality.gold_votes} gold items"
            )
        if quality.fast:
            verdict = "excluded" if thresholds.exclude_fast else "flagged only"
            quality.reasons.append(
                f"suspiciously fast: median {quality.median_seconds:.1f}s per vote < "
                f"{thresholds.min_median_seconds:.1f}s ({verdict})"
            )
            quality.excluded |= thresholds.exclude_fast

    included = {i for i, q in labelers.items() if not q.excluded}
    for labeler_id, quality in labelers.items():
        count, rate = consensus_agreement(regular, labeler_id, included)
        quality.consensus_comparisons, quality.consensus_agreement = count, rate
        if quality.excluded or rate is None:
            continue
        if count < thresholds.min_consensus_votes:
            continue
        upper = clearly_below(rate, count, thresholds.min_consensus_agreement)
        if upper is not None:
            quality.excluded = True
            quality.reasons.append(
                f"consensus agreement {rate:.2f} (95% CI up to {upper:.2f}) < "
                f"{thresholds.min_consensus_agreement:.2f} over {count} items"
            )

    kept = [v for v in regular if not labelers[v.labeler_id].excluded]
    kappas = pairwise_kappas(kept)
    return Quality(
        labelers=labelers,
        alpha=krippendorff_alpha(kept),
        alpha_all=krippendorff_alpha(regular),
        kappas=kappas,
        mean_kappa=float(np.mean(list(kappas.values()))) if kappas else None,
    )
