"""FineTuneJob -> Plan: defaults filled, dependencies resolved, JSON round trip, layering."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api import FineTuneJob
from kubetune.planner import UnresolvedDependency, make_plan
from kubetune_trainer.plan import PLAN_VERSION, Plan, parse_duration

REPO = Path(__file__).resolve().parents[2]


def test_plan_fills_defaults_and_round_trips(job) -> None:
    plan = make_plan(FineTuneJob.model_validate(job), attempt=3, default_storage="s3://b/runs")
    data = json.loads(plan.to_json())
    assert data["version"] == PLAN_VERSION
    assert data["attempt"] == 3
    assert data["recipe"]["training"]["learningRate"] == 2e-5
    assert data["recipe"]["data"]["badRows"] == "fail"
    assert data["storage"] == {
        "root": "s3://b/runs",
        "runName": "team-a/demo",
        "outputDir": "s3://b/runs/team-a/demo/output",
        "exportDir": "s3://b/runs/team-a/demo/export",
    }
    assert Plan.from_json(plan.to_json()) == plan
    # The platform sections stay out of the trainer's contract.
    assert not {"resources", "runtime", "resume", "envSecrets"} & set(data["recipe"])


def test_scaling_follows_resources(job) -> None:
    job["spec"]["resources"] = {"nodes": 4, "gpusPerNode": 8}
    scaling = make_plan(FineTuneJob.model_validate(job)).scaling
    assert (scaling.workers, scaling.devices_per_worker, scaling.nodes, scaling.use_gpu) == (
        32,
        1,
        4,
        True,
    )
    job["spec"]["resources"] = {"nodes": 2, "gpusPerNode": 0}
    scaling = make_plan(FineTuneJob.model_validate(job)).scaling
    assert (scaling.workers, scaling.devices_per_worker, scaling.use_gpu) == (2, 0, False)


def test_finetunejob_references_resolve_to_the_other_jobs_output(job) -> None:
    job["spec"]["method"] = "ppo"
    job["spec"]["model"] = {"source": "finetunejob://sft"}
    job["spec"]["ppo"] = {"rewards": [{"type": "model", "model": {"source": "finetunejob://rm"}}]}
    outputs = {"sft": "pvc://ckpt/team-a/sft/output", "rm": "pvc://ckpt/team-a/rm/output"}
    plan = make_plan(FineTuneJob.model_validate(job), resolve_job_output=outputs.get)
    assert plan.recipe.model.source == outputs["sft"]
    assert plan.recipe.ppo.rewards[0].model.source == outputs["rm"]


def test_unfinished_dependency_names_the_field(job) -> None:
    job["spec"]["model"] = {"source": "finetunejob://sft"}
    with pytest.raises(UnresolvedDependency) as err:
        make_plan(FineTuneJob.model_validate(job), resolve_job_output=lambda name: None)
    assert str(err.value) == "spec.model: job 'sft' has no output yet"


def test_export_destination_is_used(job) -> None:
    job["spec"]["export"] = {"formats": ["gguf"], "destination": "s3://artifacts/models"}
    plan = make_plan(FineTuneJob.model_validate(job))
    assert plan.storage.export_dir == "s3://artifacts/models/team-a/demo"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2h", 7200)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "1d", "m", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_trainer_never_imports_kubetune() -> None:
    for path in (REPO / "trainer_image").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] == "kubetune"], path


def test_plan_and_api_import_without_torch() -> None:
    code = (
        "import sys, kubetune_trainer.plan, kubetune.api, kubetune.crd, kubetune.cli;"
        "heavy = {'torch', 'transformers', 'trl', 'ray'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
