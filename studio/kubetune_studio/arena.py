"""The arena's leaderboard as pure functions of its battles: Bradley–Terry ratings with bootstrap
95% intervals, the win-rate matrix, battle counts, and which differences are significant.

A *battle* is one vote on two models' answers to one prompt: A won, B won, or a tie (a "both
bad" vote is a tie, as in Chatbot Arena). Under the Bradley–Terry model, model *i* beats model
*j* with probability ``1 / (1 + exp(s_j - s_i))``; the strengths ``s`` are fitted by logistic
regression on the battles (scikit-learn, as Chatbot Arena fits them), a tie counting as half a
win for each side. Strengths are shown on the Elo scale, ``1000 + 400 · s / ln 10`` after
centring them on their mean, so a 100-point gap means the higher model wins 64% of battles.

Intervals come from resampling battles with replacement; because the fit depends on the battles
only through how often each pair had each outcome, a resample is a multinomial draw over those
cells, which is the same distribution as drawing battles and far cheaper. The resamples are
refitted all at once by Newton's method on the same penalised likelihood (numpy; a unit test
holds it equal to scikit-learn's fit), so 200 rounds take milliseconds. One model is above
another (significantly) when their intervals do not overlap, the rule Chatbot Arena ranks by.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression

Outcome = Literal["a", "b", "tie"]
OUTCOMES: tuple[Outcome, ...] = ("a", "b", "tie")
VOTE_OUTCOME: dict[str, Outcome] = {"a": "a", "b": "b", "tie": "tie", "both_bad": "tie"}

ELO_SCALE = 400.0 / math.log(10.0)
ELO_CENTRE = 1000.0
DEFAULT_ROUNDS = 200
PRIOR_STRENGTH = 1e4
"""scikit-learn's ``C``: the L2 penalty is 1/C of a battle's weight, negligible against any
real number of battles, but it keeps an unbeaten model's strength finite."""

SAMPLINGS = ("uniform", "adaptive")


@dataclass(frozen=True)
class Battle:
    model_a: str
    model_b: str
    outcome: Outcome


class ArenaError(ValueError):
    """Bad input to the arena's functions; the message names the field."""


def battle_from_vote(model_a: str, model_b: str, choice: str) -> Battle:
    if choice not in VOTE_OUTCOME:
        raise ArenaError(f"choice: '{choice}' is not one of {', '.join(VOTE_OUTCOME)}")
    return Battle(model_a, model_b, VOTE_OUTCOME[choice])


def _check(battles: Sequence[Battle], models: Sequence[str]) -> dict[str, int]:
    if len(models) < 2:
        raise ArenaError(f"models: an arena needs at least two models (got {len(models)})")
    if len(set(models)) != len(models):
        raise ArenaError("models: names must be unique")
    index = {m: i for i, m in enumerate(models)}
    for n, battle in enumerate(battles):
        for field in ("model_a", "model_b"):
            if getattr(battle, field) not in index:
                raise ArenaError(
                    f"battles[{n}].{field}: '{getattr(battle, field)}' is not one of the models"
                )
        if battle.model_a == battle.model_b:
            raise ArenaError(f"battles[{n}]: a model cannot battle itself ('{battle.model_a}')")
        if battle.outcome not in OUTCOMES:
            raise ArenaError(f"battles[{n}].outcome: '{battle.outcome}' is not a, b or tie")
    return index


def outcome_counts(battles: Sequence[Battle], models: Sequence[str]) -> np.ndarray:
    """``counts[i, j, k]`` for i < j: battles between models i and j with outcome k, where k is
    0 (i won), 1 (j won) or 2 (tie), whichever of the two was shown as A."""
    index = _check(battles, models)
    counts = np.zeros((len(models), len(models), 3))
    for battle in battles:
        i, j = index[battle.model_a], index[battle.model_b]
        k = OUTCOMES.index(battle.outcome)
        if i > j:
            i, j = j, i
            k = {0: 1, 1: 0, 2: 2}[k]
        counts[i, j, k] += 1
    return counts


def _pairs(n: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(n), 2))


def _design(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the logistic regression: for each pair (i, j) the feature vector e_i - e_j with
    label 1 (i won) and label 0 (j won), then the same mirrored (e_j - e_i, labels swapped) so
    that both classes are always present; mirroring doubles the likelihood, the fit is the same.
    """
    rows, labels = [], []
    for i, j in _pairs(n):
        x = np.zeros(n)
        x[i], x[j] = 1.0, -1.0
        rows += [x, x, -x, -x]
        labels += [1, 0, 0, 1]
    return np.array(rows), np.array(labels)


def _weights(counts: np.ndarray) -> np.ndarray:
    """Sample weights for :func:`_design`'s rows: i's wins plus half the ties, j's wins plus
    half the ties, and the same again for the mirrored rows."""
    weights = []
    for i, j in _pairs(counts.shape[0]):
        wins_i = counts[i, j, 0] + counts[i, j, 2] / 2
        wins_j = counts[i, j, 1] + counts[i, j, 2] / 2
        weights += [wins_i, wins_j, wins_i, wins_j]
    return np.array(weights)


def fit_strengths(counts: np.ndarray) -> np.ndarray:
    """Bradley–Terry strengths (natural log-odds units, mean zero) from :func:`outcome_counts`."""
    n = counts.shape[0]
    rows, labels = _design(n)
    weights = _weights(counts)
    if weights.sum() == 0:
        return np.zeros(n)
    fit = LogisticRegression(
        fit_intercept=False, C=PRIOR_STRENGTH, solver="newton-cholesky", tol=1e-10, max_iter=200
    ).fit(rows, labels, sample_weight=weights)
    strengths = fit.coef_[0]
    return strengths - strengths.mean()


def to_elo(strengths: np.ndarray) -> np.ndarray:
    return ELO_CENTRE + ELO_SCALE * np.asarray(strengths)


def fit_strengths_batch(counts: np.ndarray, iterations: int = 50) -> np.ndarray:
    """:func:`fit_strengths` for a stack of count arrays at once (shape (rounds, n, n, 3)), by
    damped Newton steps on the same penalised likelihood scikit-learn minimises:
    ``||s||^2 / 2 + C * sum over battles of the log-loss`` (each battle counted twice, as in
    :func:`_design`). The bootstrap refits hundreds of resamples this way in one go; a unit
    test holds it equal to scikit-learn's fit."""
    rounds, n = counts.shape[0], counts.shape[1]
    pairs = _pairs(n)
    incidence = np.zeros((len(pairs), n))
    for k, (i, j) in enumerate(pairs):
        incidence[k, i], incidence[k, j] = 1.0, -1.0
    first = np.stack([counts[:, i, j, 0] + counts[:, i, j, 2] / 2 for i, j in pairs], axis=1)
    second = np.stack([counts[:, i, j, 1] + counts[:, i, j, 2] / 2 for i, j in pairs], axis=1)
    scale = 2.0 * PRIOR_STRENGTH

    def objective(s: np.ndarray) -> np.ndarray:
        d = s @ incidence.T
        loss = first * np.logaddexp(0.0, -d) + second * np.logaddexp(0.0, d)
        return 0.5 * np.sum(s * s, axis=1) + scale * np.sum(loss, axis=1)

    strengths = np.zeros((rounds, n))
    current = objective(strengths)
    eye = np.eye(n)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(strengths @ incidence.T)))
        g = scale * ((first + second) * p - first)
        h = scale * (first + second) * p * (1.0 - p)
        gradient = g @ incidence + strengths
        hessian = np.einsum("ki,bk,kj->bij", incidence, h, incidence) + eye
        step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        size = np.ones(rounds)
        for _halving in range(30):  # backtrack where a full step would not decrease
            trial = strengths - size[:, None] * step
            value = objective(trial)
            worse = value > current + 1e-12 * np.abs(current)
            if not worse.any():
                break
            size = np.where(worse, size / 2, size)
        strengths, current = trial, np.minimum(value, current)
        if np.max(np.abs(size[:, None] * step)) < 1e-10:
            break
    return strengths - strengths.mean(axis=1, keepdims=True)


def bootstrap_strengths(counts: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """``rounds`` refits on battles resampled with replacement; shape (rounds, models)."""
    rng = np.random.default_rng(seed)
    flat = counts.reshape(-1)
    total = int(flat.sum())
    if total == 0:
        return np.zeros((rounds, counts.shape[0]))
    resampled = rng.multinomial(total, flat / total, size=rounds).reshape((rounds, *counts.shape))
    return fit_strengths_batch(resampled.astype(float))


@dataclass(frozen=True)
class Rating:
    model: str
    rating: float
    low: float
    high: float
    rank: int
    """1 + the number of models significantly above this one (Chatbot Arena's rank)."""
    battles: int
    wins: int
    ties: int
    losses: int


@dataclass(frozen=True)
class Leaderboard:
    ratings: list[Rating]
    """Best first."""
    models: list[str]
    """In the order of the matrices."""
    win_rates: list[list[float | None]]
    """``win_rates[i][j]``: model i's share of its battles against j (ties half); None when the
    two never met."""
    battle_counts: list[list[int]]
    significant: list[tuple[str, str]]
    """(better, worse) for every pair whose intervals do not overlap."""
    battles: int
    rounds: int
    confidence: float

    def rating(self, model: str) -> Rating:
        return next(r for r in self.ratings if r.model == model)

    def to_json(self) -> dict[str, object]:
        return {
            "battles": self.battles,
            "bootstrap_rounds": self.rounds,
            "confidence": self.confidence,
            "ratings": [r.__dict__ for r in self.ratings],
            "models": self.models,
            "win_rates": self.win_rates,
            "battle_counts": self.battle_counts,
            "significant": [{"better": a, "worse": b} for a, b in self.significant],
        }


def leaderboard(
    battles: Sequence[Battle],
    models: Sequence[str],
    *,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 0,
    confidence: float = 0.95,
) -> Leaderboard:
    """Ratings with percentile-bootstrap intervals, and what the battles say pair by pair."""
    if rounds < 1:
        raise ArenaError(f"rounds: at least 1 (got {rounds})")
    if not 0 < confidence < 1:
        raise ArenaError(f"confidence: between 0 and 1 (got {confidence})")
    models = list(models)
    counts = outcome_counts(battles, models)
    ratings = to_elo(fit_strengths(counts))
    draws = to_elo(bootstrap_strengths(counts, rounds, seed))
    tail = (1 - confidence) / 2 * 100
    lows, highs = np.percentile(draws, [tail, 100 - tail], axis=0)
    n = len(models)
    full = counts + counts.transpose(1, 0, 2)[:, :, [1, 0, 2]]  # full[i, j]: i's view of i-j
    win_rates: list[list[float | None]] = [[None] * n for _ in range(n)]
    battle_counts = [[0] * n for _ in range(n)]
    for i, j in itertools.permutations(range(n), 2):
        wins, losses, ties = full[i, j]
        met = wins + losses + ties
        battle_counts[i][j] = int(met)
        win_rates[i][j] = float((wins + ties / 2) / met) if met else None
    significant = [
        (models[i], models[j]) for i, j in itertools.permutations(range(n), 2) if lows[i] > highs[j]
    ]
    above = {m: sum(1 for better, worse in significant if worse == m) for m in models}
    rows = [
        Rating(
            model=m,
            rating=float(ratings[i]),
            low=float(lows[i]),
            high=float(highs[i]),
            rank=1 + above[m],
            battles=int(full[i].sum()),
            wins=int(full[i, :, 0].sum()),
            ties=int(full[i, :, 2].sum()),
            losses=int(full[i, :, 1].sum()),
        )
        for i, m in enumerate(models)
    ]
    rows.sort(key=lambda r: (-r.rating, r.model))
    return Leaderboard(
        ratings=rows,
        models=models,
        win_rates=win_rates,
        battle_counts=battle_counts,
        significant=significant,
        battles=len(battles),
        rounds=rounds,
        confidence=confidence,
    )


# --------------------------------------------------------------------------- drawing pairs


def pair_weights(
    models: Sequence[str], battles: Sequence[Battle], sampling: str = "uniform"
) -> dict[tuple[str, str], float]:
    """How likely each pair of models is to be drawn next (the weights sum to 1).

    ``uniform``: every pair alike. ``adaptive``: towards the pairs whose order is least certain:
    a pair's weight is the standard error of its win rate, ``sqrt(p (1 - p) / (n + 1))``, with p
    the fitted chance that one beats the other and n their battles so far; close pairs with few
    battles are drawn most, settled pairs (far apart or often compared) least.
    """
    if sampling not in SAMPLINGS:
        raise ArenaError(f"sampling: '{sampling}' is not one of {', '.join(SAMPLINGS)}")
    models = list(models)
    counts = outcome_counts(battles, models)
    pairs = _pairs(len(models))
    if sampling == "uniform":
        raw = [1.0] * len(pairs)
    else:
        strengths = fit_strengths(counts)
        raw = []
        for i, j in pairs:
            p = 1.0 / (1.0 + math.exp(strengths[j] - strengths[i]))
            raw.append(math.sqrt(p * (1 - p) / (counts[i, j].sum() + 1)))
    total = sum(raw)
    return {(models[i], models[j]): w / total for (i, j), w in zip(pairs, raw, strict=True)}


def draw_pair(weights: Mapping[tuple[str, str], float], draw: float) -> tuple[str, str]:
    """The pair a uniform number ``draw`` in [0, 1) falls on (inverse of the cumulative weights,
    in the mapping's order)."""
    if not 0 <= draw < 1:
        raise ArenaError(f"draw: in [0, 1) (got {draw})")
    cumulative = 0.0
    pair = None
    for pair, weight in weights.items():
        cumulative += weight
        if draw < cumulative:
            return pair
    if pair is None:
        raise ArenaError("weights: no pairs")
    return pair


# --------------------------------------------------------------------------- voter hygiene


def leaked_identity(text: str, names: Sequence[str]) -> str | None:
    """The first model name that ``text`` mentions (as a whole word, any case), or None. A vote
    on a response that names its model is not blind, so the arena discards it."""
    for name in names:
        if name and re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text, re.IGNORECASE):
            return name
    return None
