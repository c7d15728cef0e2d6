"""SFT and DPO on tiny builtin models: they learn, DPO starts at ln 2, SIGTERM resumes to the
same trajectory, and Ray shards the data across workers."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import FineTuneJob
from kubetune.planner import make_plan
from kubetune_trainer.exit_codes import EXIT_PREEMPTED
from kubetune_trainer.plan import Plan, Scaling

pytestmark = pytest.mark.trainer


def job(name: str, method: str, spec: dict[str, Any]) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "t"},
            "spec": {"method": method, "model": {"source": "builtin://tiny-llama"}, **spec},
        }
    )


def plan_for(
    tmp_path: Path, ftj: FineTuneJob, *, attempt: int = 1, workers: int = 1
) -> tuple[Plan, Path]:
    plan = make_plan(
        ftj,
        attempt=attempt,
        default_storage=str(tmp_path / "runs"),
        scaling=Scaling(workers=workers, devices_per_worker=0, nodes=1, use_gpu=False),
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"plan-{ftj.metadata.name}-{attempt}.json"
    path.write_text(plan.to_json())
    return plan, path


def train(
    plan_path: Path, *, mode: str = "single", env: dict[str, str] | None = None
) -> subprocess.Popen:
    env = (
        os.environ | {"KUBETUNE_METRICS_PORT": "0", "KUBETUNE_PROGRESS_INTERVAL": "0"} | (env or {})
    )
    command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(plan_path)]
    return subprocess.Popen([*command, "--mode", mode], env=env)


def history(run_dir: Path) -> dict[int, float]:
    """Loss by step from the run's history (the latest attempt wins for a step)."""
    losses = {}
    for line in (run_dir / "history.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "loss" in entry:
            losses[entry["step"]] = entry["loss"]
    return losses


def accuracy_of(model_source: str, limit: int = 100) -> float:
    from kubetune_trainer.data import load_data
    from kubetune_trainer.evaluation.measures import answer_accuracy
    from kubetune_trainer.models import load_model_and_tokenizer
    from kubetune_trainer.plan import DataSpec

    model, tokenizer = load_model_and_tokenizer(model_source)
    spec = DataSpec.model_validate(
        {
            "sources": [
                {
                    "uri": "builtin://arithmetic-prompts",
                    "split": "test",
                    "maxSamples": limit,
                    "format": "prompt-only",
                }
            ]
        }
    )
    rows = list(load_data(spec, kind="prompt").train)
    return answer_accuracy(model, tokenizer, rows, max_new_tokens=6).accuracy


SFT_SPEC = {
    "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
    "training": {
        "epochs": 4,
        "learningRate": 3e-3,
        "warmupRatio": 0.05,
        "perDeviceBatchSize": 32,
        "maxLength": 128,
        "logEverySteps": 10,
    },
    "checkpoint": {"everySteps": 100, "keepLast": 1},
}


@pytest.fixture(scope="module")
def sft_output(tmp_path_factory) -> Path:
    """A tiny Llama taught to add one (shared by the SFT and DPO tests)."""
    tmp = tmp_path_factory.mktemp("sft")
    plan, path = plan_for(tmp, job("sft", "sft", SFT_SPEC))
    assert train(path).wait() == 0
    return Path(plan.storage.output_dir)


def test_sft_raises_heldout_exact_match(sft_output: Path) -> None:
    before = accuracy_of("builtin://tiny-llama")
    after = accuracy_of(str(sft_output))
    assert before <= 0.05
    assert after >= 0.5, f"held-out exact match {before:.2f} -> {after:.2f}"


def test_dpo_starts_at_ln2_and_heldout_reward_accuracy_rises(
    tmp_path: Path, sft_output: Path
) -> None:
    heldout = {"uri": "builtin://arithmetic-preference", "split": "test", "maxSamples": 96}
    ftj = job(
        "dpo",
        "dpo",
        {
            "model": {"source": str(sft_output)},
            "data": {
                "sources": [{"uri": "builtin://arithmetic-preference", "maxSamples": 480}],
                "evalSources": [heldout],
            },
            "training": {
                "epochs": 1,
                "learningRate": 2e-4,
                "perDeviceBatchSize": 16,
                "maxLength": 128,
                "logEverySteps": 1,
                "trlArgs": {"eval_on_start": True},
            },
            "dpo": {"beta": 0.1},
        },
    )
    plan, path = plan_for(tmp_path, ftj)
    assert train(path).wait() == 0
    run_dir = Path(plan.storage.root) / plan.storage.run_name
    entries = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    train_logs = [e for e in entries if "loss" in e]
    # Policy == reference at the first step, so every pair's implicit reward margin is 0.
    assert abs(train_logs[0]["loss"] - math.log(2)) < 1e-3
    evals = [e for e in entries if "eval_rewards/accuracies" in e]
    before, after = evals[0]["eval_rewards/accuracies"], evals[-1]["eval_rewards/accuracies"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    assert after >= 0.8 and after > before + 0.5, (before, after)


RESUME_SPEC = {
    "data": {"sources": [{"uri": "builtin://arithmetic-sft", "maxSamples": 960}]},
    "training": {"maxSteps": 30, "learningRate": 1e-3, "perDeviceBatchSize": 16,
                 "maxLength": 96, "logEverySteps": 1, "seed": 7},
    "checkpoint": {"everySteps": 5, "keepLast": 2},
}  # fmt: skip


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float) -> None:
    progress = run_dir / "progress.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "trainer exited before it was stopped"
        if progress.exists():
            try:
                if json.loads(progress.read_text()).get("step", 0) >= step:
                    return
            except json.JSONDecodeError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout}s")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Loss by step of the run both modes' interrupted runs must reproduce. One process and
    Ray Train with one worker see the same rows in the same order with the same seed, so one
    uninterrupted run serves both (a Ray run costs a cluster start-up)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    reference, ref_path = plan_for(tmp, job("ref", "sft", RESUME_SPEC))
    assert train(ref_path, mode="single").wait() == 0
    return history(Path(reference.storage.root) / reference.storage.run_name)


@pytest.mark.parametrize("mode", ["single", "ray"])
def test_sigterm_then_resume_matches_uninterrupted_run(
    tmp_path: Path, mode: str, uninterrupted: dict[int, float]
) -> None:
    expected = uninterrupted

    plan, path = plan_for(tmp_path / "cut", job("cut", "sft", RESUME_SPEC))
    run_dir = Path(plan.storage.root) / plan.storage.run_name
    env = {"KUBETUNE_PROGRESS_FILE": str(run_dir / "progress.json")}
    first = train(path, mode=mode, env=env)
    wait_for_step(run_dir, 12, first, timeout=300)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == EXIT_PREEMPTED
    stopped_at = json.loads((run_dir / "progress.json").read_text())["step"]
    assert stopped_at < 30

    _, resumed_path = plan_for(tmp_path / "cut", job("cut", "sft", RESUME_SPEC), attempt=2)
    assert train(resumed_path, mode=mode, env=env).wait() == 0
    actual = history(run_dir)
    assert max(actual) == max(expected) == 30
    for step, loss in expected.items():
        assert actual[step] == pytest.approx(loss, abs=1e-4), f"step {step}"
