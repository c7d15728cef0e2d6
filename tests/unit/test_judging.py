"""The judge's votes beside the humans': combining the two orders (disagreement is a tie) and
judge–human agreement recovered from simulated humans with a planted agreement rate."""

from __future__ import annotations

import random

import pytest

from kubetune_studio.agreement import VoteRecord
from kubetune_studio.judging import agreement_by_category, combine_verdicts, judge_human_agreement


@pytest.mark.parametrize(
    ("in_order", "swapped", "vote"),
    [
        ("A", "B", "a"),  # A preferred in both positions
        ("B", "A", "b"),
        ("tie", "tie", "tie"),
        ("A", "A", "tie"),  # the judge always picks the first position: no preference
        ("B", "B", "tie"),
        ("A", "tie", "tie"),
        (None, "A", None),
        ("B", None, None),
    ],
)
def test_two_orders_combine_into_one_vote(in_order, swapped, vote) -> None:
    assert combine_verdicts(in_order, swapped) == vote


def simulated(planted: float, items: int, humans: int, seed: int):
    """A judge vote per item and ``humans`` human votes per item, each agreeing with the judge
    with probability ``planted`` and otherwise picking one of the other two answers."""
    rng = random.Random(seed)
    judge, people = [], []
    for item in range(items):
        verdict = rng.choice(["a", "b", "tie"])
        judge.append(VoteRecord(item, 1000, verdict))
        for human in range(humans):
            if rng.random() < planted:
                choice = verdict
            else:
                choice = rng.choice([c for c in ("a", "b", "tie") if c != verdict])
            people.append(VoteRecord(item, human, choice))
    return judge, people


@pytest.mark.parametrize("planted", [0.55, 0.75, 0.9])
def test_agreement_recovers_a_planted_rate_within_its_interval(planted: float) -> None:
    judge, people = simulated(planted, items=400, humans=3, seed=int(planted * 100))
    found = judge_human_agreement(judge, people, seed=1)
    print(f"planted {planted}: {found.value:.3f} [{found.low:.3f}, {found.high:.3f}]")
    assert found.low <= planted <= found.high
    assert found.items == 400 and found.comparisons == 1200


def test_agreement_interval_covers_the_planted_rate_at_about_95_percent() -> None:
    covered = sum(
        (lambda f: f.low <= 0.7 <= f.high)(
            judge_human_agreement(*simulated(0.7, items=120, humans=2, seed=s), seed=s)
        )
        for s in range(200)
    )
    print(f"coverage of the agreement interval: {covered / 200:.3f} over 200 simulations")
    assert 0.90 <= covered / 200 <= 0.99


def test_both_bad_counts_as_a_tie_and_excluded_humans_are_left_out() -> None:
    judge = [VoteRecord(1, 99, "tie"), VoteRecord(2, 99, "a")]
    humans = [VoteRecord(1, 1, "both_bad"), VoteRecord(2, 1, "a"), VoteRecord(2, 2, "b")]
    assert judge_human_agreement(judge, humans).value == pytest.approx((1 + 0.5) / 2)
    assert judge_human_agreement(judge, humans, excluded={2}).value == pytest.approx(1.0)


def test_agreement_per_category() -> None:
    judge_easy, humans_easy = simulated(0.9, items=200, humans=2, seed=5)
    judge_hard, humans_hard = simulated(0.5, items=200, humans=2, seed=6)
    shift = 1000  # item ids of the second category
    judge = judge_easy + [VoteRecord(v.item_id + shift, v.labeler_id, v.choice) for v in judge_hard]
    humans = humans_easy + [
        VoteRecord(v.item_id + shift, v.labeler_id, v.choice) for v in humans_hard
    ]
    categories = {i: "easy" for i in range(200)} | {i + shift: "hard" for i in range(200)}
    found = agreement_by_category(judge, humans, categories)
    assert found["easy"].low <= 0.9 <= found["easy"].high
    assert found["hard"].low <= 0.5 <= found["hard"].high
