"""The studio's statistics against independent computations: Cohen's κ against scikit-learn and a
textbook case, Krippendorff's α against a hand-computed case and an implementation of the
coincidence-matrix definition written here, and the win-rate interval's coverage of a planted
rate over seeded simulations."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from kubetune_studio.agreement import (
    Thresholds,
    VoteRecord,
    assess,
    cohen_kappa,
    krippendorff_alpha,
    plurality,
)
from kubetune_studio.results import Pairing, item_scores, win_rate
from kubetune_studio.store.schema import CHOICES


def test_cohen_kappa_textbook_case() -> None:
    # 50 items: both yes 20, yes/no 5, no/yes 10, both no 15 -> p_o 0.7, p_e 0.5, kappa 0.4.
    first = ["a"] * 20 + ["a"] * 5 + ["b"] * 10 + ["b"] * 15
    second = ["a"] * 20 + ["b"] * 5 + ["a"] * 10 + ["b"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)


@pytest.mark.parametrize("seed", range(20))
def test_cohen_kappa_matches_scikit_learn(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(5, 80)
    first = [rng.choice(CHOICES) for _ in range(n)]
    # The second labeler copies the first with some probability: kappa spans its range.
    agree = rng.random()
    second = [c if rng.random() < agree else rng.choice(CHOICES) for c in first]
    expected = cohen_kappa_score(first, second)
    got = cohen_kappa(first, second)
    if np.isnan(expected):
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_cohen_kappa_is_undefined_when_both_always_say_the_same_thing() -> None:
    assert cohen_kappa(["a"] * 5, ["a"] * 5) is None


def test_krippendorff_alpha_hand_computed() -> None:
    # Two labelers, four items: (a,a) (a,b) (b,b) (b,b). Coincidences: o_aa 2, o_ab = o_ba 1,
    # o_bb 4; n_a 3, n_b 5, n 8. alpha = 1 - (n-1) * 2 / (2 * 3 * 5) = 1 - 14/30.
    votes = [
        VoteRecord(item, labeler, choice)
        for item, pair in enumerate([("a", "a"), ("a", "b"), ("b", "b"), ("b", "b")])
        for labeler, choice in enumerate(pair)
    ]
    assert krippendorff_alpha(votes) == pytest.approx(1 - 14 / 30)


def alpha_by_definition(votes: list[VoteRecord]) -> float:
    """Nominal alpha from the coincidence matrix (Krippendorff 2011), independent of the
    library: pairable values only (units with at least two values)."""
    by_item: dict[int, list[str]] = {}
    for v in votes:
        by_item.setdefault(v.item_id, []).append(v.choice)
    coincidences: Counter[tuple[str, str]] = Counter()
    for values in by_item.values():
        m = len(values)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            coincidences[(values[i], values[j])] += 1 / (m - 1)
    totals: Counter[str] = Counter()
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    disagreement = sum(w for (c, k), w in coincidences.items() if c != k)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    return 1 - (n - 1) * disagreement / expected


@pytest.mark.parametrize("seed", range(15))
def test_krippendorff_alpha_matches_the_definition_with_missing_votes(seed: int) -> None:
    rng = random.Random(seed)
    votes = []
    for item in range(rng.randint(5, 40)):
        truth = rng.choice(CHOICES)
        for labeler in range(5):
            if rng.random() < 0.4:
                continue  # this labeler did not see the item
            choice = truth if rng.random() < 0.7 else rng.choice(CHOICES)
            votes.append(VoteRecord(item, labeler, choice))
    got = krippendorff_alpha(votes)
    if got is None:
        return
    assert got == pytest.approx(alpha_by_definition(votes), abs=1e-9)


def test_plurality_needs_a_single_winner() -> None:
    assert plurality(["a", "a", "b"]) == "a"
    assert plurality(["a", "b"]) is None
    assert plurality([]) is None


def simulated_votes(seed: int, careless: bool) -> tuple[list[VoteRecord], dict[int, str]]:
    """Three careful labelers (right 90%) and one more, careless (uniform) or careful; items
    0-39 regular, 100-109 gold."""
    rng = random.Random(seed)
    truth = {item: rng.choice("ab") for item in range(40)}
    gold = {100 + i: rng.choice("ab") for i in range(10)}
    votes = []
    for labeler in range(4):
        for item, answer in (truth | gold).items():
            if labeler == 3 and careless:
                choice = rng.choice(CHOICES)
            else:
                choice = answer if rng.random() < 0.9 else rng.choice(CHOICES)
            votes.append(VoteRecord(item, labeler, choice, time_spent_ms=rng.randint(3000, 9000)))
    return votes, gold


def test_a_careless_labeler_is_excluded_with_reasons_and_alpha_rises() -> None:
    votes, gold = simulated_votes(0, careless=True)
    quality = assess(votes, gold, Thresholds())
    careless = quality.labelers[3]
    assert careless.excluded
    assert any(r.startswith("gold agreement") for r in careless.reasons), careless.reasons
    assert quality.excluded == {3}
    assert quality.alpha is not None and quality.alpha_all is not None
    assert quality.alpha > quality.alpha_all
    assert all((3 not in pair) for pair in quality.kappas)


def test_careful_labelers_are_all_kept() -> None:
    votes, gold = simulated_votes(1, careless=False)
    assert assess(votes, gold, Thresholds()).excluded == set()


def test_speed_flags_and_excludes_only_when_asked() -> None:
    votes, gold = simulated_votes(2, careless=False)
    fast = [
        VoteRecord(v.item_id, v.labeler_id, v.choice, 400) if v.labeler_id == 0 else v
        for v in votes
    ]
    flagged = assess(fast, gold, Thresholds(min_median_seconds=2.0))
    assert not flagged.labelers[0].excluded
    assert "suspiciously fast" in flagged.labelers[0].reasons[0]
    assert assess(fast, gold, Thresholds(exclude_fast=True)).excluded == {0}


def test_item_scores_count_ties_half_and_follow_positions() -> None:
    pairings = [Pairing(1, "tuned", "base"), Pairing(2, "base", "tuned"), Pairing(3, "x", "base")]
    votes = [
        VoteRecord(1, 10, "a"),  # tuned shown as A wins
        VoteRecord(1, 11, "tie"),
        VoteRecord(2, 10, "a"),  # base shown as A wins
        VoteRecord(2, 12, "b"),  # excluded labeler's vote
        VoteRecord(3, 10, "b"),  # another model's item
    ]
    scores, tally = item_scores(pairings, votes, "tuned", "base", excluded={12})
    assert scores == [0.75, 0.0]
    assert tally == {"votes": 3, "wins": 1, "ties": 1, "losses": 1}


def test_win_rate_interval_covers_the_planted_rate_at_its_level() -> None:
    """Per vote: the model wins 55%, ties 10%, loses 35%: planted win rate 0.6. Over 200 seeded
    campaigns of 60 items x 3 votes, the 95% interval covers 0.6 in 90-99% of them (a binomial
    band around 0.95 for 200 trials)."""
    planted = 0.55 + 0.10 / 2
    covered = 0
    trials = 200
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        pairings = [Pairing(i, "tuned", "base") for i in range(60)]
        draws = rng.choice(["a", "tie", "b"], p=[0.55, 0.10, 0.35], size=(60, 3))
        votes = [
            VoteRecord(item, labeler, str(draws[item, labeler]))
            for item in range(60)
            for labeler in range(3)
        ]
        result = win_rate(pairings, votes, "tuned", "base", set(), seed=seed)
        covered += result.low <= planted <= result.high
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_exclusion_rule_spares_careful_labelers_and_catches_careless_ones() -> None:
    """Over seeded labelers with 6 gold items: a careful one (right 88%) is excluded by bad luck
    rarely (under 5%), a careless one (uniform over the 4 choices) after 20 gold items almost
    always (over 90%)."""

    def excluded_share(accuracy: float, gold_items: int, trials: int = 400) -> float:
        rng = random.Random(42)
        out = 0
        for trial in range(trials):
            gold = {i: "a" for i in range(gold_items)}
            votes = [
                VoteRecord(i, trial, "a" if rng.random() < accuracy else rng.choice("b"))
                for i in gold
            ]
            out += trial in assess(votes, gold, Thresholds()).excluded
        return out / trials

    assert excluded_share(0.88, gold_items=6) < 0.05
    assert excluded_share(0.25, gold_items=20) > 0.90
