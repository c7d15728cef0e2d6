"""Comparisons without models: per-example scores of planted models become values with
intervals, paired differences, gate decisions, held-out early-stopping decisions, and the
Markdown report's table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kubetune_trainer.evaluation.gate import check_comparison
from kubetune_trainer.evaluation.report import markdown, summary_lines
from kubetune_trainer.evaluation.results import MetricResult, compare, scored
from kubetune_trainer.evaluation.suite import (
    Evaluation,
    NamedModel,
    Settings,
    comparisons,
    results_document,
)
from kubetune_trainer.plan import EarlyStopping, ExportGate, MetricGoal, ModelSpec
from kubetune_trainer.training.held_out import derived_held_out_metrics, improved

pytestmark = pytest.mark.unit
BASELINE = ModelSpec(source="builtin://tiny-llama")


def accuracy(outcomes: list[float], ids: list[int] | None = None) -> MetricResult:
    return scored("accuracy", ids if ids is not None else list(range(len(outcomes))), outcomes)


def perplexity(losses: list[float], tokens: list[int]) -> MetricResult:
    rows = [[loss, t] for loss, t in zip(losses, tokens, strict=True)]
    return scored("perplexity", list(range(len(rows))), rows, statistic="perplexity",
                  lower_is_better=True)  # fmt: skip


def test_a_metric_value_has_its_interval_and_count() -> None:
    result = accuracy([1.0] * 30 + [0.0] * 70)
    assert result.value == pytest.approx(0.3)
    assert result.estimate is not None and result.estimate.n == 100
    assert result.estimate.low < 0.3 < result.estimate.high
    ppl = perplexity([2.0, 4.0, 6.0], [2, 2, 4])
    assert ppl.value == pytest.approx(math.exp(12.0 / 8))


def test_comparison_pairs_examples_by_id() -> None:
    """The baseline was scored on examples 0..99 in another order and the candidate on 0..79:
    the comparison uses the 80 shared examples, each paired with itself."""
    rng = np.random.default_rng(1)
    truth = (rng.random(100) < 0.5).astype(float)
    order = rng.permutation(100)
    baseline = accuracy([truth[i] for i in order], ids=[int(i) for i in order])
    candidate = accuracy([1.0] * 80, ids=list(range(80)))
    found = compare(candidate, baseline)
    assert found is not None and found.delta.n == 80
    assert found.delta.value == pytest.approx(1.0 - truth[:80].mean())
    assert compare(candidate, accuracy([1.0], ids=[999])) is None


def _evaluation(results: dict[str, dict[str, MetricResult]], baseline: str) -> Evaluation:
    named = [NamedModel(name, ModelSpec(source=f"/models/{name}")) for name in results]
    return Evaluation(named, results, baseline, Settings(resamples=1000), {})


def test_document_has_every_model_with_intervals_and_deltas_to_the_baseline() -> None:
    base = accuracy([1.0] * 10 + [0.0] * 90)
    sft = accuracy([1.0] * 70 + [0.0] * 30)
    same = accuracy([1.0] * 10 + [0.0] * 90)
    evaluation = _evaluation(
        {"base": {"acc": base}, "sft": {"acc": sft}, "copy": {"acc": same}}, "base"
    )
    document = results_document(evaluation, "sft")
    assert document["metrics"] == {"acc": pytest.approx(0.7)}
    assert [m["name"] for m in document["models"]] == ["base", "sft", "copy"]
    assert document["comparisons"]["sft"]["acc"]["significant"]
    assert document["comparisons"]["sft"]["acc"]["better"] is True
    assert document["comparisons"]["copy"]["acc"]["better"] is None
    assert "base" not in document["comparisons"]
    lines = summary_lines(document)
    assert lines[0] == "Model: sft vs baseline base"
    assert lines[1].startswith("acc: 0.700 [") and "↑ from 0.100" in lines[1]
    assert "Δ +0.600" in lines[1] and "significantly better" in lines[1]
    table = markdown(document).splitlines()
    header = [c.strip() for c in table[len(lines) + 1].strip("|").split("|")]
    assert header == ["metric", "n", "base (baseline)", "sft", "Δ sft", "copy", "Δ copy"]
    cells = [c.strip() for c in table[len(lines) + 3].strip("|").split("|")]
    assert cells[0] == "acc ↑" and cells[1] == "100"
    assert cells[4].startswith("+0.600 [") and cells[4].endswith("*")
    assert cells[6].startswith("+0.000 [0.000, 0.000]") and not cells[6].endswith("*")


def test_gate_against_a_baseline() -> None:
    gate = ExportGate(metric="acc", baseline=BASELINE, no_worse_than=0.05)
    rng = np.random.default_rng(3)
    truth = (rng.random(400) < 0.6).astype(float)
    flipped = truth.copy()
    flipped[np.flatnonzero(truth == 1)[:8]] = 0.0  # 2 points worse: within 5 with confidence
    ok = compare(accuracy(list(flipped)), accuracy(list(truth)))
    assert check_comparison(ok, False, gate)[0]
    much_worse = truth.copy()
    much_worse[np.flatnonzero(truth == 1)[:60]] = 0.0  # 15 points worse
    passed, why = check_comparison(
        compare(accuracy(list(much_worse)), accuracy(list(truth))), False, gate
    )
    assert not passed and "more than noWorseThan 0.05" in why
    better_gate = ExportGate(metric="acc", baseline=BASELINE, significantly_better=True)
    assert not check_comparison(ok, False, better_gate)[0]
    improved_ = truth.copy()
    improved_[np.flatnonzero(truth == 0)[:40]] = 1.0
    assert check_comparison(
        compare(accuracy(list(improved_)), accuracy(list(truth))), False, better_gate
    )[0]
    # Lower is better (perplexity): a higher value is the worse direction.
    ppl_gate = ExportGate(metric="ppl", baseline=BASELINE, no_worse_than=0.1)
    tokens = [10] * 50
    worse = compare(perplexity([12.0] * 50, tokens), perplexity([10.0] * 50, tokens))
    assert not check_comparison(worse, True, ppl_gate)[0]
    assert check_comparison(
        compare(perplexity([10.0] * 50, tokens), perplexity([12.0] * 50, tokens)), True, ppl_gate
    )[0]
    assert not check_comparison(None, False, gate)[0]


def test_held_out_goals_and_early_stopping_decisions() -> None:
    assert MetricGoal(metric="loss").key == "eval_loss"
    assert MetricGoal(metric="eval_perplexity").lower_is_better
    assert not MetricGoal(metric="rewards/accuracies").lower_is_better
    assert not MetricGoal(metric="eval_loss", mode="max").lower_is_better
    goal = EarlyStopping(metric="eval_loss", patience=2, min_delta=0.1)
    assert improved(None, 5.0, goal)
    assert improved(5.0, 4.8, goal, 0.1) and not improved(5.0, 4.95, goal, 0.1)
    assert derived_held_out_metrics("sft", {"eval_loss": math.log(7.0)}) == {
        "eval_perplexity": pytest.approx(7.0)
    }
    assert derived_held_out_metrics("dpo", {"eval_loss": 0.5}) == {}


def test_comparisons_of_an_evaluation_without_baseline_are_empty() -> None:
    evaluation = _evaluation({"only": {"acc": accuracy([1.0, 0.0])}}, "only")
    evaluation.baseline = None
    assert comparisons(evaluation) == {}


def test_on_policy_pairs_are_the_models_distinct_wrong_answers() -> None:
    from kubetune_trainer.plan import OnPolicyPairs
    from kubetune_trainer.recipes.on_policy import pairs_from_completions

    rows = [
        {"prompt": [{"role": "user", "content": "What is 41 + 1?"}], "answer": "42"},
        {"prompt": [{"role": "user", "content": "What is 9 + 1?"}], "answer": "10"},
    ]
    completions = [["42", "43", "The answer is 43", "44"], ["10", "10", "", "10"]]
    pairs = pairs_from_completions(rows, completions, OnPolicyPairs(pairs_per_prompt=2))
    assert [p["rejected"][0]["content"] for p in pairs] == ["43", "The answer is 43"]
    assert all(p["chosen"] == [{"role": "assistant", "content": "42"}] for p in pairs)
    assert all(p["prompt"] == rows[0]["prompt"] for p in pairs)
    # An empty completion is no answer to prefer against; a right one gives no pair.
    exact = pairs_from_completions(rows, completions, OnPolicyPairs(extractor="exact"))
    assert [p["rejected"][0]["content"] for p in exact] == ["43"]
