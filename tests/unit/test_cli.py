"""`kubetune validate`: exit codes, problem lines, resolved plans of the shipped examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.cli import main

from .conftest import EXAMPLES, REPO


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubetune.cli", *args], capture_output=True, text=True, cwd=REPO
    )


def test_every_method_has_an_example() -> None:
    methods = set()
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            methods.add(doc["spec"]["method"])
    assert methods == {"sft", "dpo", "reward", "ppo", "grpo", "eval"}


def test_examples_are_valid() -> None:
    result = run_cli("validate", *map(str, EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("is valid") == sum(
        len(list(yaml.safe_load_all(p.read_text()))) for p in EXAMPLES
    )


def test_pipeline_plans_chain_outputs() -> None:
    result = run_cli(
        "validate", "--plan", "--storage", "pvc://ckpt", "manifests/examples/pipeline.yaml"
    )
    assert result.returncode == 0, result.stderr
    plans = json.loads(result.stdout)
    sft_output = plans["default/pipe-sft"]["storage"]["outputDir"]
    assert sft_output == "pvc://ckpt/default/pipe-sft/output"
    ppo = plans["default/pipe-ppo"]["recipe"]
    assert ppo["model"]["source"] == sft_output
    rm_output = plans["default/pipe-rm"]["storage"]["outputDir"]
    assert ppo["ppo"]["rewards"][0]["model"]["source"] == rm_output


def test_invalid_file_prints_one_line_per_problem_and_exits_1(write_yaml, job) -> None:
    job["spec"]["training"] = {"learningRate": 0, "epochz": 2}
    path = write_yaml(job)
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-1] == "2 problem(s) in 1 file(s)"
    text = path.read_text().splitlines()
    lr_line = text.index("    learningRate: 0") + 1
    epochz_line = text.index("    epochz: 2") + 1
    assert sorted(lines[:-1]) == sorted(
        [
            f"{path}:{lr_line}: spec.training.learningRate: Input should be greater than 0",
            f"{path}:{epochz_line}: spec.training.epochz: unknown field; did you mean 'epochs'?",
        ]
    )


def test_dependency_cycles_and_self_references(write_yaml, job, capsys) -> None:
    a = yaml.safe_load(yaml.safe_dump(job))
    a["metadata"]["name"] = "a"
    a["spec"]["model"] = {"source": "finetunejob://b"}
    b = yaml.safe_load(yaml.safe_dump(job))
    b["metadata"]["name"] = "b"
    b["spec"]["model"] = {"source": "finetunejob://a"}
    c = yaml.safe_load(yaml.safe_dump(job))
    c["metadata"]["name"] = "c"
    c["spec"]["model"] = {"source": "finetunejob://c"}
    assert main(["validate", str(write_yaml(a, b, c))]) == 1
    err = capsys.readouterr().err
    assert "spec.model.source: dependency cycle through finetunejob://b" in err
    assert "spec.model.source: dependency cycle through finetunejob://a" in err
    assert "spec.model.source: a job cannot use its own output as a model" in err


def test_duplicate_job_names_across_files(write_yaml, job, capsys) -> None:
    first = write_yaml(job, name="one.yaml")
    second = write_yaml(job, name="two.yaml")
    assert main(["validate", str(first), str(second)]) == 1
    assert f"job team-a/demo is also defined in {first}" in capsys.readouterr().err


def test_single_plan_is_printed_alone(write_yaml, job, capsys) -> None:
    assert main(["validate", "--plan", str(write_yaml(job))]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["job"] == {"name": "demo", "namespace": "team-a"}


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_entry_point_is_installed(flag: str) -> None:
    exe = Path(sys.executable).with_name("kubetune")
    result = subprocess.run([str(exe), flag], capture_output=True, text=True)
    assert result.returncode == 0 and "kubetune" in result.stdout


def objectives_job(job: dict) -> dict:
    job["spec"]["method"] = "grpo"
    job["spec"]["data"] = {"sources": [{"uri": "builtin://arithmetic-prompts"}]}
    job["spec"]["grpo"] = {
        "rewards": [
            {"name": "fluency", "type": "regex", "pattern": "a", "weight": 0.3},
            {"type": "length", "targetLength": 8, "weight": 0.5},
            {"name": "quality", "type": "answerMatch", "weight": 0.4},
        ]
    }
    return job


def test_objective_weight_flags_set_the_named_weights(write_yaml, job, capsys) -> None:
    path = write_yaml(objectives_job(job))
    flags = ["--objective-weight", "fluency=0.8", "--objective-weight", "quality=0.2"]
    assert main(["validate", "--plan", str(path), *flags]) == 0
    rewards = json.loads(capsys.readouterr().out)["recipe"]["grpo"]["rewards"]
    assert [(r.get("name"), r["weight"]) for r in rewards] == [
        ("fluency", 0.8),
        (None, 0.5),
        ("quality", 0.2),
    ]


def test_objective_weight_for_no_objective_is_refused(write_yaml, job, capsys) -> None:
    path = write_yaml(objectives_job(job))
    assert main(["validate", str(path), "--objective-weight", "fluence=0.8"]) == 2
    err = capsys.readouterr().err
    assert "no reward source is named fluence (objectives in these jobs: fluency, quality)" in err


@pytest.mark.parametrize("flag", ["fluency", "fluency=heavy", "Fluency=1", "fluency=inf"])
def test_objective_weight_must_be_name_equals_number(write_yaml, job, flag, capsys) -> None:
    path = write_yaml(objectives_job(job))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--local", str(path), "--objective-weight", flag])
    assert exit_info.value.code == 2
    assert "argument --objective-weight" in capsys.readouterr().err
