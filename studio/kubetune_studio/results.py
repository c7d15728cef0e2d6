"""Human win rates: each model against the campaign's baseline, with a bootstrap 95% interval.

Per item (a prompt answered by the model and by the baseline), every included labeler's vote
scores the model 1 (its response chosen), 0 (the baseline's chosen) or ½ (tie or both bad), and
the item's score is the mean over its votes. The win rate is the mean over items, and its
interval comes from resampling items (votes on one item are not independent), computed by the
evaluation statistics shared with the trainer's reports.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from kubetune_studio.agreement import VoteRecord
from kubetune_trainer.evaluation.statistics import bootstrap_mean

OUTCOME = {"tie": 0.5, "both_bad": 0.5}


@dataclass(frozen=True)
class Pairing:
    """A regular item: which model is shown as A and as B."""

    item_id: int
    model_a: str
    model_b: str


@dataclass(frozen=True)
class WinRate:
    model: str
    baseline: str
    win_rate: float | None
    """None when no item has an included vote."""
    low: float | None
    high: float | None
    items: int
    votes: int
    wins: int
    ties: int
    losses: int


def item_scores(
    pairings: Sequence[Pairing],
    votes: Sequence[VoteRecord],
    model: str,
    baseline: str,
    excluded: set[int],
) -> tuple[list[float], dict[str, int]]:
    """The model's score on each item it shares with the baseline (items without an included
    vote are left out), and the vote counts (wins, ties, losses)."""
    sides = {}
    for p in pairings:
        if {p.model_a, p.model_b} == {model, baseline}:
            sides[p.item_id] = "a" if p.model_a == model else "b"
    per_item: dict[int, list[float]] = defaultdict(list)
    tally = {"votes": 0, "wins": 0, "ties": 0, "losses": 0}
    for vote in votes:
        side = sides.get(vote.item_id)
        if side is None or vote.labeler_id in excluded:
            continue
        if vote.choice in OUTCOME:
            score, kind = OUTCOME[vote.choice], "ties"
        elif vote.choice == side:
            score, kind = 1.0, "wins"
        else:
            score, kind = 0.0, "losses"
        per_item[vote.item_id].append(score)
        tally[kind] += 1
        tally["votes"] += 1
    return [sum(s) / len(s) for _, s in sorted(per_item.items())], tally


def win_rate(
    pairings: Sequence[Pairing],
    votes: Sequence[VoteRecord],
    model: str,
    baseline: str,
    excluded: set[int],
    *,
    seed: int = 0,
) -> WinRate:
    scores, tally = item_scores(pairings, votes, model, baseline, excluded)
    estimate = bootstrap_mean(scores, seed=seed) if scores else None
    return WinRate(
        model=model,
        baseline=baseline,
        win_rate=estimate.value if estimate else None,
        low=estimate.low if estimate else None,
        high=estimate.high if estimate else None,
        items=len(scores),
        votes=tally["votes"],
        wins=tally["wins"],
        ties=tally["ties"],
        losses=tally["losses"],
    )
