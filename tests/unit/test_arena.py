"""The arena's Bradley–Terry leaderboard against planted strengths and independent fits: the
closed form for two models, a maximum-likelihood fit written here with scipy, the coverage of
the bootstrap intervals over seeded simulations, and the order with large planted gaps."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, logit

from kubetune_studio import arena
from kubetune_studio.arena import ArenaError, Battle

TIE_RATE = 0.1


def simulate(strengths: dict[str, float], battles: int, rng: np.random.Generator) -> list[Battle]:
    """Battles between uniformly drawn pairs under Bradley–Terry with ties: a tie with
    probability TIE_RATE, else A wins with probability p - TIE_RATE / 2, so that A's expected
    score (ties half) is exactly p = expit(s_a - s_b)."""
    models = list(strengths)
    drawn = []
    for _ in range(battles):
        a, b = rng.choice(len(models), 2, replace=False)
        p = expit(strengths[models[a]] - strengths[models[b]])
        u = rng.random()
        outcome = "tie" if u < TIE_RATE else ("a" if u < TIE_RATE + p - TIE_RATE / 2 else "b")
        drawn.append(Battle(models[a], models[b], outcome))
    return drawn


def planted_elo(strengths: dict[str, float]) -> dict[str, float]:
    values = np.array(list(strengths.values()))
    return dict(zip(strengths, arena.to_elo(values - values.mean()), strict=True))


def test_two_models_rating_gap_is_the_logit_of_the_win_rate() -> None:
    battles = (
        [Battle("x", "y", "a")] * 30
        + [Battle("y", "x", "b")] * 25  # x shown as B and winning
        + [Battle("x", "y", "b")] * 20
        + [Battle("y", "x", "tie")] * 10
    )
    board = arena.leaderboard(battles, ["x", "y"], rounds=20)
    score = (55 + 10 / 2) / 85
    gap = board.rating("x").rating - board.rating("y").rating
    assert gap == pytest.approx(arena.ELO_SCALE * logit(score), abs=1e-3)
    assert board.rating("x").rating + board.rating("y").rating == pytest.approx(2000)
    x = board.models.index("x")
    assert board.win_rates[x][1 - x] == pytest.approx(score)
    assert board.battle_counts[x][1 - x] == 85
    assert (board.rating("x").wins, board.rating("x").ties, board.rating("x").losses) == (
        55,
        10,
        20,
    )


def scipy_bradley_terry(battles: list[Battle], models: list[str]) -> np.ndarray:
    """The Bradley–Terry maximum-likelihood strengths (ties half a win each), by direct
    minimisation of the negative log-likelihood with scipy."""
    index = {m: i for i, m in enumerate(models)}
    pairs = []
    for b in battles:
        score = {"a": 1.0, "b": 0.0, "tie": 0.5}[b.outcome]
        pairs.append((index[b.model_a], index[b.model_b], score))
    first, second, score = (np.array(column) for column in zip(*pairs, strict=True))

    def loss(free: np.ndarray) -> float:
        s = np.concatenate([[0.0], free])  # the first model anchors the scale
        d = s[first] - s[second]
        return -np.sum(score * np.log(expit(d)) + (1 - score) * np.log(expit(-d)))

    found = minimize(loss, np.zeros(len(models) - 1), method="BFGS", options={"gtol": 1e-9})
    strengths = np.concatenate([[0.0], found.x])
    return strengths - strengths.mean()


@pytest.mark.parametrize("seed", range(3))
def test_fit_matches_a_direct_maximum_likelihood_fit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    planted = dict(zip("pqrst", rng.normal(0, 0.8, 5), strict=True))
    battles = simulate(planted, 1500, rng)
    models = list(planted)
    ours = arena.fit_strengths(arena.outcome_counts(battles, models))
    assert ours == pytest.approx(scipy_bradley_terry(battles, models), abs=2e-3)


@pytest.mark.parametrize("models", [2, 3, 6])
def test_the_batched_bootstrap_fit_equals_scikit_learn_s_fit(models: int) -> None:
    rng = np.random.default_rng(models)
    stack = np.zeros((20, models, models, 3))
    for i, j in itertools.combinations(range(models), 2):
        stack[:, i, j] = rng.integers(0, 30, (20, 3))
    stack[0, 0, 1:] = [25, 0, 0]  # model 0 unbeaten in the first draw
    batched = arena.fit_strengths_batch(stack)
    for counts, found in zip(stack, batched, strict=True):
        # An unbeaten model sits on a nearly flat ridge of the objective: both fits stop
        # within 1e-4 (0.02 Elo points) of each other there, and far closer elsewhere.
        assert found == pytest.approx(arena.fit_strengths(counts), abs=1e-4)


def test_intervals_cover_the_planted_ratings_at_about_the_expected_rate() -> None:
    rng = np.random.default_rng(7)
    planted = {"a": 0.6, "b": 0.2, "c": -0.1, "d": -0.7}
    truth = planted_elo(planted)
    covered = total = 0
    for simulation in range(200):
        board = arena.leaderboard(simulate(planted, 400, rng), list(planted), seed=simulation)
        for model, rating in truth.items():
            found = board.rating(model)
            covered += found.low <= rating <= found.high
            total += 1
    coverage = covered / total
    print(f"coverage of the 95% intervals: {coverage:.3f} over {total} intervals")
    # 800 intervals, correlated within a simulation (centred ratings sum to a constant).
    assert 0.91 <= coverage <= 0.98


def test_large_planted_gaps_give_the_right_order_and_significant_differences() -> None:
    planted = {"weak": -1.5, "fair": -0.5, "good": 0.5, "best": 1.5}
    board = arena.leaderboard(
        simulate(planted, 3000, np.random.default_rng(3)), list(planted), rounds=100, seed=1
    )
    assert [r.model for r in board.ratings] == ["best", "good", "fair", "weak"]
    assert [r.rank for r in board.ratings] == [1, 2, 3, 4]
    assert set(board.significant) == set(
        itertools.combinations(["best", "good", "fair", "weak"], 2)
    )
    truth = planted_elo(planted)
    for rating in board.ratings:
        assert rating.low <= rating.rating <= rating.high
        assert abs(rating.rating - truth[rating.model]) < 60


def test_equal_models_are_not_significantly_different() -> None:
    planted = {"one": 0.0, "two": 0.0, "three": 0.0}
    board = arena.leaderboard(
        simulate(planted, 600, np.random.default_rng(11)), list(planted), rounds=100, seed=2
    )
    assert board.significant == []
    assert all(r.rank == 1 for r in board.ratings)


def test_an_unbeaten_model_gets_a_finite_rating_and_the_win_matrix_says_so() -> None:
    battles = [Battle("champ", "other", "a")] * 20 + [Battle("other", "third", "tie")] * 4
    board = arena.leaderboard(battles, ["champ", "other", "third"], rounds=20)
    champ = board.rating("champ")
    assert math.isfinite(champ.rating) and champ.rank == 1
    i, j, k = (board.models.index(m) for m in ("champ", "other", "third"))
    assert board.win_rates[i][j] == 1.0 and board.win_rates[j][i] == 0.0
    assert board.win_rates[i][k] is None and board.battle_counts[i][k] == 0
    assert board.win_rates[j][k] == 0.5


def test_the_bootstrap_is_reproducible_from_its_seed() -> None:
    battles = simulate({"a": 0.3, "b": 0.0, "c": -0.3}, 200, np.random.default_rng(5))
    first = arena.leaderboard(battles, ["a", "b", "c"], rounds=30, seed=4)
    again = arena.leaderboard(battles, ["a", "b", "c"], rounds=30, seed=4)
    assert first == again


def test_adaptive_sampling_favours_close_pairs_with_few_battles() -> None:
    models = ["a", "b", "c"]
    # a and b: close and rarely compared; a and c: far apart and compared often.
    battles = (
        [Battle("a", "b", "a")] * 3
        + [Battle("a", "b", "b")] * 2
        + [Battle("a", "c", "a")] * 95
        + [Battle("a", "c", "b")] * 5
        + [Battle("b", "c", "a")] * 18
        + [Battle("b", "c", "b")] * 2
    )
    uniform = arena.pair_weights(models, battles, "uniform")
    assert list(uniform.values()) == pytest.approx([1 / 3] * 3)
    adaptive = arena.pair_weights(models, battles, "adaptive")
    assert sum(adaptive.values()) == pytest.approx(1.0)
    assert adaptive[("a", "b")] > adaptive[("b", "c")] > adaptive[("a", "c")]
    rng = np.random.default_rng(0)
    drawn = Counter(arena.draw_pair(adaptive, rng.random()) for _ in range(20000))
    for pair, weight in adaptive.items():
        assert drawn[pair] / 20000 == pytest.approx(weight, abs=0.015)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: arena.leaderboard([], ["only"]), r"^models: an arena needs at least two"),
        (
            lambda: arena.leaderboard([Battle("a", "zed", "a")], ["a", "b"]),
            r"^battles\[0\]\.model_b: 'zed' is not one of the models$",
        ),
        (
            lambda: arena.leaderboard([Battle("a", "b", "win")], ["a", "b"]),  # type: ignore[arg-type]
            r"^battles\[0\]\.outcome: 'win'",
        ),
        (lambda: arena.pair_weights(["a", "b"], [], "greedy"), r"^sampling: 'greedy'"),
        (lambda: arena.battle_from_vote("a", "b", "maybe"), r"^choice: 'maybe'"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(call, message: str) -> None:
    with pytest.raises(ArenaError, match=message):
        call()


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("As Orca-7B, I think the answer is 4.", "orca-7b"),
        ("I was trained as lynx-3b.", "lynx-3b"),
        ("The orca-7bx model is another one.", None),
        ("big-orca-7b is not this model", None),
        ("An orca is a whale.", None),
    ],
)
def test_a_response_that_names_a_model_is_caught_whole_word_any_case(text, found) -> None:
    assert arena.leaked_identity(text, ["orca-7b", "lynx-3b"]) == found


def test_the_queue_hands_out_an_item_of_the_drawn_pair_when_one_is_open() -> None:
    from kubetune_studio import queue

    candidates = [queue.Candidate(item, False, filled) for item, filled in [(1, 0), (2, 0), (3, 1)]]
    progress = queue.LabelerProgress(regular_votes=0, gold_votes=0)
    common = {"overlap": 2, "gold_every": 0, "seed": 0, "labeler_id": 7}
    assert queue.next_item(candidates, progress, prefer={3}, **common) == 3
    # The drawn pair's items are full or done: the usual breadth-first choice.
    assert queue.next_item(candidates, progress, prefer={9}, **common) in {1, 2}
    assert queue.next_item(candidates, progress, prefer={3}, **common | {"overlap": 1}) in {1, 2}
    draws = [queue.draw_number(0, 7, n) for n in range(2000)]
    assert all(0 <= d < 1 for d in draws) and abs(np.mean(draws) - 0.5) < 0.03
