"""The export gate: the trained model is evaluated on one metric of spec.eval, and the export
stage goes on only when the value is within spec.export.gate's bounds and, with a baseline,
when the paired comparison on the same examples is good enough (noWorseThan,
significantlyBetter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune_trainer.evaluation.results import better, comparison_json
from kubetune_trainer.evaluation.statistics import Comparison
from kubetune_trainer.evaluation.suite import NamedModel, comparisons, evaluate_models
from kubetune_trainer.plan import EvalSpec, ExportGate, ModelSpec, Plan


def check_gate(results: dict[str, Any], gate: ExportGate) -> tuple[bool, str]:
    """Whether the results pass an export gate's bounds, and why (for the log and the job
    status)."""
    value = results["metrics"].get(gate.metric)
    if value is None:
        return False, f"metric {gate.metric} has no value (nothing could be scored)"
    if gate.min is not None and value < gate.min:
        return False, f"{gate.metric}={value:.4g} is below min {gate.min:g}"
    if gate.max is not None and value > gate.max:
        return False, f"{gate.metric}={value:.4g} is above max {gate.max:g}"
    return True, f"{gate.metric}={value:.4g} passes the gate"


def check_comparison(
    comparison: Comparison | None, lower_is_better: bool, gate: ExportGate
) -> tuple[bool, str]:
    """Whether the paired difference (trained minus baseline) passes noWorseThan and
    significantlyBetter, and why."""
    if comparison is None:
        return False, f"{gate.metric}: no examples scored for both models; nothing to compare"
    delta = comparison.delta
    shown = f"Δ {gate.metric} = {delta.value:+.4g} [{delta.low:+.4g}, {delta.high:+.4g}]"
    if gate.no_worse_than is not None:
        # The worse end of the interval: how much worse the model may plausibly be.
        worst = delta.high if lower_is_better else -delta.low
        if worst > gate.no_worse_than:
            return False, (
                f"{shown}: may be worse than the baseline by {worst:.4g}, more than "
                f"noWorseThan {gate.no_worse_than:g}"
            )
    if gate.significantly_better and better(comparison, lower_is_better) is not True:
        return False, f"{shown}: not significantly better than the baseline"
    return True, f"{shown} against the baseline passes the gate"


def evaluate_gate(plan: Plan, model_dir: Path) -> tuple[bool, dict[str, Any]]:
    """Evaluate the trained model (and the gate's baseline, on the same examples) on the gate's
    metric; whether it passes, and the record the export manifest keeps."""
    assert plan.recipe.export is not None and plan.recipe.eval is not None
    gate = plan.recipe.export.gate
    assert gate is not None
    metric = next(m for m in plan.recipe.eval.metrics if m.name == gate.metric)
    spec = EvalSpec(metrics=[metric])
    named = [NamedModel("trained", ModelSpec(source=str(model_dir)))]
    if gate.baseline is not None:
        named.insert(0, NamedModel("baseline", gate.baseline))
    evaluation = evaluate_models(spec, named, "baseline" if gate.baseline else None)
    mine = evaluation.results["trained"][gate.metric]
    results = {"metrics": {gate.metric: mine.value}}
    passed, reason = (
        (True, "") if gate.min is None and gate.max is None else check_gate(results, gate)
    )
    record: dict[str, Any] = {
        "metric": gate.metric,
        "value": mine.value,
        "interval": mine.estimate.to_json() if mine.estimate else None,
        "min": gate.min,
        "max": gate.max,
    }
    if passed and gate.baseline is not None:
        comparison = comparisons(evaluation)["trained"][gate.metric]
        passed, reason = check_comparison(comparison, mine.lower_is_better, gate)
        theirs = evaluation.results["baseline"][gate.metric]
        record |= {
            "baseline": gate.baseline.source,
            "baselineValue": theirs.value,
            "comparison": comparison_json(comparison, mine.lower_is_better) if comparison else None,
            "noWorseThan": gate.no_worse_than,
            "significantlyBetter": gate.significantly_better,
        }
    record |= {
        "passed": passed,
        "message": f"export gate {'met' if passed else 'not met'}: {reason}",
    }
    return passed, record
