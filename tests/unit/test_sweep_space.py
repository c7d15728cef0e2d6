"""A FineTuneSweep's search space against the FineTuneJob schema: every problem is one line
naming the field of the sweep it comes from, found before any trial starts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.sweep_api import FineTuneSweepSpec
from kubetune.sweep_space import grid_size, trial_budget, trial_spec
from kubetune.sweep_validation import load_sweep, sweep_problems

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

TEMPLATE = {
    "method": "sft",
    "model": {"source": "builtin://tiny-llama"},
    "data": {
        "sources": [{"uri": "builtin://arithmetic-sft"}],
        "evalSources": [{"uri": "builtin://arithmetic-sft", "split": "test"}],
    },
    "training": {"maxSteps": 60, "evalEverySteps": 20},
    "runtime": {"queueName": "team-a"},
}


def sweep(*parameters: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body = {
        "template": copy.deepcopy(TEMPLATE),
        "parameters": list(parameters)
        or [{"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-2}],
        "objectives": [{"metric": "eval_loss", "direction": "minimize"}],
    }
    body.update(spec)
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneSweep",
        "metadata": {"name": "lr", "namespace": "team-a"},
        "spec": body,
    }


def problems(*parameters: dict[str, Any], **spec: Any) -> list[str]:
    return sweep_problems(sweep(*parameters, **spec))


LR = {"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-2, "log": True}


def test_a_valid_sweep_has_no_problems():
    assert problems(LR, {"path": "peft.r", "type": "categorical", "values": [8, 16]}) == []


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        (
            {"path": "training.learningRat", "type": "float", "min": 1e-5, "max": 1e-2},
            "spec.parameters[0].path: 'learningRat' is not a field of training",
        ),
        (
            {"path": "data.sources.x", "type": "float", "min": 0.1, "max": 1},
            "spec.parameters[0].path: data.sources is a list: index it with a number",
        ),
        (
            {"path": "data.sources.4.weight", "type": "float", "min": 0.1, "max": 1},
            "spec.parameters[0].path: data.sources.4.weight: the template has no item 4",
        ),
        (
            {"path": "training", "type": "categorical", "values": ["a"]},
            "spec.parameters[0].path: training is a section, not a single value",
        ),
        (
            {"path": "runtime.suspend", "type": "categorical", "values": [True, False]},
            "spec.parameters[0].path: runtime.suspend cannot be a parameter",
        ),
    ],
    ids=["unknown-field", "list-without-index", "index-out-of-range", "section", "reserved"],
)
def test_a_bad_path_is_named(parameter: dict[str, Any], expected: str):
    (found,) = problems(parameter)
    assert found.startswith(expected), found


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        (
            {"path": "training.learningRate", "type": "float", "min": 1e-4, "max": 2.0},
            "spec.parameters[0].max: 2.0 is not valid for training.learningRate: Input should "
            "be less than or equal to 1",
        ),
        (
            {"path": "training.learningRate", "type": "float", "min": 1e-2, "max": 1e-4},
            "spec.parameters[0].max: must be above min (0.01)",
        ),
        (
            {"path": "training.learningRate", "type": "float", "min": 0, "max": 1e-2, "log": True},
            "spec.parameters[0].min: a log-scale parameter needs min above 0",
        ),
        (
            {"path": "peft.r", "type": "int", "min": 0, "max": 64},
            "spec.parameters[0].min: 0 is not valid for peft.r: Input should be greater than or "
            "equal to 1",
        ),
        (
            {"path": "peft.r", "type": "int", "min": 4.5, "max": 64},
            "spec.parameters[0].min: an int parameter needs a whole number, not 4.5",
        ),
        (
            {"path": "training.learningRate", "type": "float"},
            "spec.parameters[0].min: a float parameter needs min",
        ),
        (
            {"path": "dpo.beta", "type": "float", "min": 0.05, "max": 0.5},
            "spec.parameters[0].min: 0.05 is not valid for dpo: section given but method is 'sft'",
        ),
    ],
    ids=["above-schema-max", "min-above-max", "log-from-zero", "below-schema-min", "int-not-whole",
         "no-range", "section-of-other-method"],
)  # fmt: skip
def test_a_bad_range_is_named(parameter: dict[str, Any], expected: str):
    (found,) = problems(parameter)
    assert found.startswith(expected), found


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        (
            {"path": "peft.r", "type": "categorical", "values": [8, "16"]},
            "spec.parameters[0].values[1]: '16' is not an integer (peft.r)",
        ),
        (
            {"path": "peft.type", "type": "categorical", "values": ["lora", "dora"]},
            "spec.parameters[0].values[1]: 'dora' is not valid for peft.type: Input should be "
            "'none', 'lora' or 'qlora'",
        ),
        (
            {"path": "training.packing", "type": "categorical", "values": [True, "no"]},
            "spec.parameters[0].values[1]: 'no' is not a boolean (training.packing)",
        ),
        (
            {"path": "training.packing", "type": "float", "min": 0, "max": 1},
            "spec.parameters[0].type: training.packing is a boolean; use type categorical",
        ),
        (
            {"path": "peft.r", "type": "float", "min": 4, "max": 64},
            "spec.parameters[0].type: peft.r is an integer; use type int (or categorical)",
        ),
        (
            {"path": "peft.r", "type": "categorical", "values": [8, 8]},
            "spec.parameters[0].values: each value may appear once",
        ),
        (
            {"path": "peft.r", "type": "categorical", "values": [8], "min": 1},
            "spec.parameters[0].min: a categorical parameter takes values, not min",
        ),
    ],
    ids=["int-field-string", "literal-field", "bool-field", "float-over-bool", "float-over-int",
         "repeated", "range-and-values"],
)  # fmt: skip
def test_a_categorical_of_the_wrong_type_is_named(parameter: dict[str, Any], expected: str):
    (found,) = problems(parameter)
    assert found.startswith(expected), found


def test_cmaes_refuses_a_categorical_parameter_and_several_objectives():
    categorical = {"path": "peft.type", "type": "categorical", "values": ["none", "lora"]}
    assert problems(LR, categorical, algorithm={"name": "cmaes"}) == [
        "spec.parameters[1].type: algorithm cmaes samples float and int parameters only; "
        "peft.type is categorical (use algorithm tpe or random)"
    ]
    two = [
        {"metric": "eval_loss", "direction": "minimize"},
        {"metric": "loss", "direction": "minimize"},
    ]
    assert problems(LR, algorithm={"name": "cmaes"}, objectives=two) == [
        "spec.algorithm.name: cmaes optimises one objective and spec.objectives has 2 (use "
        "algorithm tpe or random)"
    ]
    assert problems(LR, {"path": "peft.r", "type": "int", "min": 4, "max": 64},
                    algorithm={"name": "cmaes"}) == []  # fmt: skip


def test_grid_needs_a_finite_space_and_caps_the_budget():
    assert problems(LR, algorithm={"name": "grid"}) == [
        "spec.parameters[0].step: algorithm grid tries every value once: a float parameter "
        "needs a step"
    ]
    spec = FineTuneSweepSpec.model_validate(
        sweep(
            {"path": "training.learningRate", "type": "float", "min": 0.001, "max": 0.003,
             "step": 0.001},
            {"path": "peft.r", "type": "int", "min": 8, "max": 32, "step": 8},
            {"path": "peft.type", "type": "categorical", "values": ["none", "lora"]},
            algorithm={"name": "grid"},
            maxTrials=100,
        )["spec"]
    )  # fmt: skip
    assert grid_size(spec) == 3 * 4 * 2
    assert trial_budget(spec) == 24


def test_held_out_objectives_need_held_out_data_and_pruning_needs_fixed_steps():
    body = sweep(LR)
    del body["spec"]["template"]["data"]["evalSources"]
    assert sweep_problems(body) == [
        "spec.objectives[0].metric: eval_loss is a held-out metric: give the template held-out "
        "data (template.data.evalSources or template.data.evalRatio)"
    ]
    body = sweep(LR, pruner={"type": "median"})
    del body["spec"]["template"]["training"]["evalEverySteps"]
    assert sweep_problems(body) == [
        "spec.template.training.evalEverySteps: the pruner compares trials at the same steps: "
        "set evalEverySteps so eval_loss is reported at fixed steps"
    ]
    # The training loss is reported at every logEverySteps: it needs neither.
    loss = [{"metric": "loss", "direction": "minimize"}]
    body = sweep(LR, pruner={"type": "median"}, objectives=loss)
    del body["spec"]["template"]["training"]["evalEverySteps"]
    del body["spec"]["template"]["data"]["evalSources"]
    assert sweep_problems(body) == []


def test_template_and_objective_errors_are_named_too():
    body = sweep(LR)
    body["spec"]["template"]["training"]["learningRate"] = -1
    body["spec"]["objectives"] = [{"metric": "Eval-Loss", "direction": "down"}]
    found = sweep_problems(body)
    assert "spec.template.training.learningRate: Input should be greater than 0" in found
    assert any(p.startswith("spec.objectives[0].metric: String should match") for p in found)
    assert any(p.startswith("spec.objectives[0].direction: Input should be") for p in found)


def test_a_trial_spec_is_the_template_with_its_values_and_keeps_the_queue():
    spec = trial_spec(
        TEMPLATE, {"training.learningRate": 0.003, "peft.r": 8, "data.sources.0.weight": 2.0}
    )
    assert spec["training"] == {"maxSteps": 60, "evalEverySteps": 20, "learningRate": 0.003}
    assert spec["peft"] == {"r": 8}
    assert spec["data"]["sources"][0] == {"uri": "builtin://arithmetic-sft", "weight": 2.0}
    assert spec["runtime"] == {"queueName": "team-a"}
    assert TEMPLATE["training"] == {"maxSteps": 60, "evalEverySteps": 20}  # not changed


def test_the_cli_loads_a_sweep_file_with_line_numbers(tmp_path: Path):
    path = tmp_path / "sweep.yaml"
    body = sweep({"path": "peft.r", "type": "categorical", "values": [8, "16"]})
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    sweep_model, _, found = load_sweep(path)
    assert sweep_model is None
    (problem,) = found
    line = path.read_text().splitlines()[problem.line - 1]
    assert str(problem).startswith(f"{path}:{problem.line}: spec.parameters[0].values[1]:")
    assert line.strip() == "- '16'"


def test_the_example_manifest_is_a_valid_sweep():
    sweep_model, raw, found = load_sweep(REPO / "manifests" / "examples" / "sweep.yaml")
    assert found == [] and sweep_model is not None
    assert raw["kind"] == "FineTuneSweep"
