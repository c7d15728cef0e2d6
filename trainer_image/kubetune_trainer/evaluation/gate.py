"""The export gate: the trained model is evaluated on one metric of spec.eval, and the export
stage goes on only when the value is within spec.export.gate's bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune_trainer.evaluation.suite import evaluate_metrics
from kubetune_trainer.plan import EvalSpec, ExportGate, ModelSpec, Plan


def check_gate(results: dict[str, Any], gate: ExportGate) -> tuple[bool, str]:
    """Whether the results pass an export gate, and why (for the log and the job status)."""
    value = results["metrics"].get(gate.metric)
    if value is None:
        return False, f"metric {gate.metric} has no value (nothing could be scored)"
    if gate.min is not None and value < gate.min:
        return False, f"{gate.metric}={value:.4g} is below min {gate.min:g}"
    if gate.max is not None and value > gate.max:
        return False, f"{gate.metric}={value:.4g} is above max {gate.max:g}"
    return True, f"{gate.metric}={value:.4g} passes the gate"


def evaluate_gate(plan: Plan, model_dir: Path) -> tuple[bool, dict[str, Any]]:
    """Evaluate the trained model on the gate's metric; whether it passes, and the record the
    export manifest keeps."""
    assert plan.recipe.export is not None and plan.recipe.eval is not None
    gate = plan.recipe.export.gate
    assert gate is not None
    metric = next(m for m in plan.recipe.eval.metrics if m.name == gate.metric)
    results = evaluate_metrics(EvalSpec(metrics=[metric]), ModelSpec(source=str(model_dir)))
    passed, reason = check_gate(results, gate)
    record = {
        "metric": gate.metric,
        "value": results["metrics"].get(gate.metric),
        "min": gate.min,
        "max": gate.max,
        "passed": passed,
        "message": f"export gate {'met' if passed else 'not met'}: {reason}",
    }
    return passed, record
