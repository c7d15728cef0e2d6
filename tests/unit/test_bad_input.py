"""Every ordinary mistake gets one error line (and a hint), a documented exit code and no
traceback; --debug (or KUBETUNE_LOG_LEVEL=DEBUG) adds the traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import FineTuneJob
from kubetune.planner import make_plan
from kubetune_trainer.exit_codes import (
    EXIT_INVALID_PLAN,
    EXIT_USAGE,
)

from .conftest import REPO


def run(*command: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ | {"KUBETUNE_METRICS_PORT": "0"} | env,
        timeout=300,
    )


def kubetune(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    return run("kubetune.cli", *args, cwd=cwd, **env)


def first_error(result: subprocess.CompletedProcess[str]) -> str:
    """The first ``error:`` line, after checking no traceback was printed."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return next(line for line in result.stderr.splitlines() if line.startswith("error:"))


def problem_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result.stderr.splitlines()


# --------------------------------------------------------------------------- validate


def test_trailing_document_separator_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text((REPO / "manifests" / "examples" / "sft.yaml").read_text() + "---\n")
    result = kubetune("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: default/sft-chat (sft) is valid\n"


@pytest.mark.parametrize(
    ("content", "first_line"),
    [
        (b"", "{f}: no YAML documents: the file is empty"),
        (b"---\n---\n# nothing\n", "{f}: no YAML documents: the file is empty"),
        (
            b"kind: FineTuneJob\nmetadata:\n  name: caf\xe9\n",
            "{f}:3: not UTF-8: byte 0xe9 at byte offset 39 (invalid continuation byte)",
        ),
        (
            b"apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\n",
            "{f}:2: kind: not a FineTuneJob: kind Job, apiVersion batch/v1; the file holds no "
            "FineTuneJob (kubetune.io/v1alpha1)",
        ),
        (
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "{f}:2: kind: not a FineTuneJob: kind ConfigMap, apiVersion v1; the file holds no "
            "FineTuneJob (kubetune.io/v1alpha1)",
        ),
        (
            b"apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJobb\nmetadata: {name: x}\n",
            "{f}:2: kind: unknown kind 'FineTuneJobb' (apiVersion kubetune.io/v1alpha1); did you "
            "mean FineTuneJob?",
        ),
    ],
    ids=["empty", "only-empty-documents", "not-utf8", "job", "configmap", "near-miss-kind"],
)
def test_files_validate_refuses(tmp_path: Path, content: bytes, first_line: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(content)
    result = kubetune("validate", str(path))
    assert result.returncode == 1
    lines = problem_lines(result)
    assert lines[0] == first_line.format(f=path)
    assert lines[-1] == "1 problem(s) in 1 file(s)"


def job_text(**spec: Any) -> str:
    doc: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo"},
        "spec": {
            "method": "sft",
            "model": {"source": "builtin://tiny-llama"},
            "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
            **spec,
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.mark.parametrize(
    ("text", "first_line"),
    [
        (
            job_text().replace("method: sft", "method: sft\n  training:\n    learningRate: '1e-4'"),
            "{f}:8: spec.training.learningRate: Input should be a valid number",
        ),
        (
            job_text(checkpoint={"storage": "s3:///path"}),
            "{f}:13: spec.checkpoint.storage: 's3:///path' names no bucket: use s3://BUCKET/PREFIX",
        ),
        (
            job_text().replace("builtin://tiny-llama", "'hf://org/name; rm -rf /'"),
            "{f}:8: spec.model.source: 'hf://org/name; rm -rf /' is not a Hub repository id: "
            "Repo id must use alphanumeric chars, '-', '_' or '.'. The name cannot start or end "
            "with '-' or '.' and the maximum length is 96: 'org/name; rm -rf '.",
        ),
        (
            job_text().replace("method: sft", "method: dpo"),
            "{f}:11: spec.data.sources[0].format: format messages cannot feed method dpo, which "
            "trains on preference rows; use one of preference, hh-rlhf",
        ),
        (
            job_text().replace("builtin://arithmetic-sft", "data/train.jsonl"),
            "{f}:11: spec.data.sources[0].uri: data/train.jsonl: no such file or directory "
            "({d}/data/train.jsonl)",
        ),
    ],
    ids=["number-as-string", "s3-without-bucket", "hub-id", "format-for-method", "missing-data"],
)
def test_specs_validate_refuses(tmp_path: Path, text: str, first_line: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    result = kubetune("validate", str(path))
    assert result.returncode == 1
    assert problem_lines(result)[0] == first_line.format(f=path, d=tmp_path), path.read_text()


def test_relative_data_paths_are_read_from_the_manifests_directory(tmp_path: Path) -> None:
    (tmp_path / "jobs" / "data").mkdir(parents=True)
    (tmp_path / "jobs" / "data" / "train.jsonl").write_text("{}\n")
    path = tmp_path / "jobs" / "job.yaml"
    path.write_text(job_text().replace("builtin://arithmetic-sft", "data/train.jsonl"))
    assert kubetune("validate", str(path), cwd=tmp_path).returncode == 0


# --------------------------------------------------------------------------- run, export


def test_run_refuses_invalid_files_with_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(job_text().replace("method: sft", "method: dpo"))
    result = kubetune("run", str(path), "--local", "--storage", str(tmp_path / "runs"))
    assert result.returncode == EXIT_INVALID_PLAN
    lines = problem_lines(result)
    assert lines[0].startswith(f"{path}:11: spec.data.sources[0].format: format messages")
    assert first_error(result) == (
        "error: 1 problem(s) in 1 file(s); nothing ran (exit 78: invalid plan)"
    )
    assert not (tmp_path / "runs").exists()


def test_run_without_local_is_a_usage_error() -> None:
    result = kubetune("run", "manifests/examples/sft.yaml")
    assert result.returncode == EXIT_USAGE
    assert first_error(result) == "error: kubetune run: only --local is available (exit 2: usage)"
    assert "hint: on a cluster, `kubectl apply -f` the file" in result.stderr


def test_export_with_nothing_trained(tmp_path: Path) -> None:
    result = kubetune("export", "--storage", str(tmp_path / "runs"))
    assert result.returncode == 1
    assert first_error(result) == (
        f"error: no trained model for demo-dpo under {tmp_path / 'runs'}; nothing to export "
        "(exit 1: failed)"
    )
    assert f"hint: train first: kubetune run --local --storage {tmp_path / 'runs'}" in (
        result.stderr
    )


# --------------------------------------------------------------------------- generate, serve


def test_generate_with_an_unknown_builtin() -> None:
    result = kubetune("generate", "builtin://nope", "--prompt", "hi")
    assert result.returncode == EXIT_USAGE
    assert first_error(result) == (
        "error: 'builtin://nope': unknown builtin 'nope'; choose one of tiny-llama, tiny-qwen2, "
        "tiny-mistral (exit 2: usage)"
    )


def test_serve_on_a_port_in_use_fails_before_loading_the_model() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = kubetune("serve", "builtin://tiny-llama", "--port", str(port))
    assert result.returncode == EXIT_USAGE
    assert first_error(result) == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (exit 2: usage)"
    )


def test_debug_adds_the_traceback() -> None:
    for env, args in (({}, ["--debug"]), ({"KUBETUNE_LOG_LEVEL": "DEBUG"}, [])):
        result = kubetune(*args, "generate", "builtin://nope", "--prompt", "hi", **env)
        assert result.returncode == EXIT_USAGE
        assert "Traceback (most recent call last)" in result.stderr
        assert result.stderr.splitlines()[-1].startswith("error: 'builtin://nope'")


# --------------------------------------------------------------------------- kubetune-train


def plan_file(tmp_path: Path, job: dict[str, Any], attempt: int = 1) -> Path:
    plan = make_plan(
        FineTuneJob.model_validate(job), attempt=attempt, default_storage=str(tmp_path / "runs")
    )
    path = tmp_path / f"plan-{attempt}.json"
    path.write_text(plan.to_json())
    return path


def test_unreadable_plan_exits_78_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text('{"version": "kubetune.io/plan/v1", "job": {}}')
    result = run("kubetune_trainer.cli", "--plan", str(path))
    assert result.returncode == EXIT_INVALID_PLAN
    assert first_error(result).startswith(
        f"error: invalid plan {path}: job.name: Field required; recipe: Field required;"
    )
    assert first_error(result).endswith("(exit 78: invalid plan)")


def test_export_stage_without_export_section_exits_78(tmp_path: Path, job) -> None:
    path = plan_file(tmp_path, job)
    result = run("kubetune_trainer.cli", "--plan", str(path), "--stage", "export")
    assert result.returncode == EXIT_INVALID_PLAN
    assert first_error(result) == (
        "error: job demo has no spec.export; nothing to export (exit 78: invalid plan)"
    )


def test_termination_message_is_the_error_line(tmp_path: Path, job) -> None:
    job["spec"]["data"] = {"sources": [{"uri": str(tmp_path / "missing.jsonl")}]}
    path = plan_file(tmp_path, job)
    log = tmp_path / "termination-log"
    result = run(
        "kubetune_trainer.cli", "--plan", str(path), "--check", KUBETUNE_TERMINATION_LOG=str(log)
    )
    assert result.returncode == 0 and not log.exists(), "a valid plan leaves no message"
    result = run(
        "kubetune_trainer.cli", "--plan", str(path), "--stage", "export",
        KUBETUNE_TERMINATION_LOG=str(log),
    )  # fmt: skip
    assert result.returncode == EXIT_INVALID_PLAN
    assert log.read_text() == first_error(result)


def test_a_job_read_back_from_the_cluster_is_valid(tmp_path: Path) -> None:
    """`kubectl get ftj -o yaml` output: status and the server's metadata fields included."""
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "sft.yaml").read_text())
    doc["metadata"] |= {"uid": "0f0e", "resourceVersion": "12", "generation": 1}
    doc["status"] = {
        "phase": "Running",
        "attempt": 1,
        "conditions": [{"type": "Running", "status": "True", "reason": "Running"}],
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = kubetune("validate", str(path))
    assert result.returncode == 0, result.stderr


def test_yaml_is_read_as_kubectl_reads_it(tmp_path: Path) -> None:
    """go-yaml's scalars: 1e-4 and 1e3 are numbers (1e3 a whole one), y is true, a date is a
    string; null is an absent field (the API server prunes it)."""
    text = job_text().replace(
        "method: sft",
        "method: sft\n  training:\n    learningRate: 1e-4\n    maxSteps: 1e3\n    packing: y\n"
        "    warmupSteps: null\n  resources:\n    nodeSelector:\n      since: 2024-01-01",
    )
    path = tmp_path / "job.yaml"
    path.write_text(text)
    result = kubetune("validate", "--plan", str(path))
    assert result.returncode == 0, result.stderr
    training = json.loads(result.stdout)["recipe"]["training"]
    assert (training["learningRate"], training["maxSteps"], training["packing"]) == (
        1e-4,
        1000,
        True,
    )
    assert training["warmupSteps"] == 0
