"""kubetune's PPO on the builtin tiny Llama: it raises a rule reward, the adaptive KL controller
keeps the policy near the reference where a zero coefficient lets it drift, and a run stopped by
SIGTERM resumes at the same step with its KL coefficient and RNG, matching an uninterrupted run.

The task: arithmetic prompts, reward 1 when the response opens with a lowercase word (regex
``^ [a-z]``). The untrained model's first token is such a word about 15% of the time (a
space-prefixed lowercase token: 296 of its 2048 tokens), so the signal is dense from the start.
Every run uses one torch thread: on a shared 2-core machine more threads only fight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import FineTuneJob
from kubetune.planner import make_plan
from kubetune_trainer.exit_codes import EXIT_PREEMPTED
from kubetune_trainer.plan import Plan, Scaling

pytestmark = pytest.mark.trainer

PROMPTS = {"sources": [{"uri": "builtin://arithmetic-prompts", "format": "prompt-only"}]}
OPENS_WITH_A_WORD = {"type": "regex", "pattern": "^ [a-z]"}


def ppo_job(name: str, training: dict[str, Any], ppo: dict[str, Any]) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "ppo"},
            "spec": {
                "method": "ppo",
                "model": {"source": "builtin://tiny-llama"},
                "data": PROMPTS,
                "training": {"logEverySteps": 1, "scheduler": "constant", **training},
                "ppo": {"rewards": [OPENS_WITH_A_WORD], "responseLength": 6, **ppo},
                "checkpoint": {"everySteps": 1000},
            },
        }
    )


def plan_for(tmp: Path, ftj: FineTuneJob, *, attempt: int = 1, workers: int = 1) -> Path:
    plan = make_plan(
        ftj,
        attempt=attempt,
        default_storage=str(tmp / "runs"),
        scaling=Scaling(workers=workers, devices_per_worker=0, nodes=1, use_gpu=False),
    )
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"plan-{ftj.metadata.name}-{attempt}.json"
    path.write_text(plan.to_json())
    return path


def run_dir(plan_path: Path) -> Path:
    plan = Plan.from_json(plan_path.read_text())
    return Path(plan.storage.root) / plan.storage.run_name


def start(plan_path: Path, mode: str = "single") -> subprocess.Popen:
    env = os.environ | {
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_PROGRESS_INTERVAL": "0",
        "KUBETUNE_PROGRESS_FILE": str(run_dir(plan_path) / "progress.json"),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(plan_path)]
    return subprocess.Popen([*command, "--mode", mode], env=env)


def history(plan_path: Path) -> dict[int, dict[str, Any]]:
    """Logged entries by step (a later attempt's entry for a step wins)."""
    entries = {}
    for line in (run_dir(plan_path) / "history.jsonl").read_text().splitlines():
        entry = json.loads(line)
        entries[entry["step"]] = entry
    return entries


def mean(entries: dict[int, dict[str, Any]], key: str, steps: range) -> float:
    return sum(entries[s][key] for s in steps) / len(steps)


LEARNING = {"maxSteps": 30, "learningRate": 2e-3, "perDeviceBatchSize": 32, "seed": 3}
ROLLOUTS = {"rolloutBatchSize": 32, "miniBatchSize": 16, "ppoEpochs": 4}
KL_TARGET = 2.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, dict[str, Any]]]:
    """The same PPO run twice, side by side: without a KL penalty, and with the adaptive
    controller aiming at KL_TARGET nats per response (a short horizon so it adapts within 30
    steps)."""
    tmp = tmp_path_factory.mktemp("ppo")
    plans = {
        "free": plan_for(tmp, ppo_job("free", LEARNING, {**ROLLOUTS, "klCoef": 0.0})),
        "adaptive": plan_for(
            tmp,
            ppo_job(
                "adaptive",
                LEARNING,
                {**ROLLOUTS, "klCoef": 0.1, "adaptiveKl": {"target": KL_TARGET, "horizon": 32}},
            ),
        ),
    }
    processes = {name: start(path) for name, path in plans.items()}
    for name, process in processes.items():
        assert process.wait(timeout=900) == 0, f"{name}: kubetune-train failed"
    return {name: history(path) for name, path in plans.items()}


def test_ppo_raises_mean_reward(runs: dict[str, dict[int, dict[str, Any]]]) -> None:
    free = runs["free"]
    assert sorted(free) == list(range(1, 31))
    before, after = mean(free, "reward_mean", range(1, 4)), mean(free, "reward_mean", range(28, 31))
    assert before < 0.35 and after > 0.8, f"mean reward {before:.2f} -> {after:.2f}"
    logged = free[30]
    for key in (
        "reward_std",
        "kl",
        "kl_coef",
        "entropy",
        "policy_loss",
        "value_loss",
        "policy_clipfrac",
        "value_clipfrac",
        "approx_kl",
        "response_length",
    ):
        assert key in logged, key
    assert logged["response_length"] <= 6


def test_adaptive_kl_keeps_the_policy_near_the_reference(
    runs: dict[str, dict[int, dict[str, Any]]],
) -> None:
    free, adaptive = runs["free"], runs["adaptive"]
    drift, held = mean(free, "kl", range(26, 31)), mean(adaptive, "kl", range(26, 31))
    assert held < 3 * KL_TARGET, f"adaptive KL {held:.2f} vs target {KL_TARGET}"
    assert drift > 4 * held, f"KL without penalty {drift:.2f}, adaptive {held:.2f}"
    # KL above target pushed the coefficient up from its starting value.
    assert adaptive[30]["kl_coef"] > 2 * adaptive[1]["kl_coef"]
    assert all(entry["kl_coef"] == 0.0 for entry in free.values())


RESUME_TRAINING = {"maxSteps": 6, "learningRate": 2e-3, "perDeviceBatchSize": 16, "seed": 11}
OPENS_WITH_A_WORD_NORMALISED = {**OPENS_WITH_A_WORD, "name": "word", "normalize": "running"}
RESUME_PPO = {
    "rewards": [OPENS_WITH_A_WORD_NORMALISED],
    "rolloutBatchSize": 16,
    "miniBatchSize": 8,
    "ppoEpochs": 2,
    "klCoef": 0.05,
    "adaptiveKl": {"target": 0.1, "horizon": 16},
}


def wait_for_step(path: Path, step: int, process: subprocess.Popen) -> None:
    import time

    progress = run_dir(path) / "progress.json"
    while True:
        assert process.poll() is None, "trainer exited before it was stopped"
        try:
            if json.loads(progress.read_text()).get("step", 0) >= step:
                return
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.2)


def test_sigterm_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    reference = plan_for(tmp_path / "ref", ppo_job("ref", RESUME_TRAINING, RESUME_PPO))
    assert start(reference).wait(timeout=600) == 0
    expected = history(reference)

    cut = plan_for(tmp_path / "cut", ppo_job("cut", RESUME_TRAINING, RESUME_PPO))
    first = start(cut)
    wait_for_step(cut, 2, first)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == EXIT_PREEMPTED
    stopped_at = json.loads((run_dir(cut) / "progress.json").read_text())["step"]
    assert 2 <= stopped_at < 6
    checkpoint = run_dir(cut) / "checkpoints" / f"step-{stopped_at:08d}-a1"
    saved = json.loads((checkpoint / "ppo_state.json").read_text())
    assert saved["step"] == stopped_at
    assert saved["kl_controller"]["value"] != RESUME_PPO["klCoef"]  # the controller had moved
    # The running moments of the normalised objective: every value of the stopped steps.
    assert saved["reward_moments"]["word"]["count"] == 16 * stopped_at

    resumed = plan_for(tmp_path / "cut", ppo_job("cut", RESUME_TRAINING, RESUME_PPO), attempt=2)
    assert start(resumed).wait(timeout=600) == 0
    actual = history(resumed)
    assert sorted(actual) == sorted(expected) == list(range(1, 7))
    assert actual[stopped_at + 1]["attempt"] == 2
    # The resumed run's first coefficient is the one the stopped run left behind.
    assert actual[stopped_at + 1]["kl_coef"] == pytest.approx(saved["kl_controller"]["value"])
    compared = (
        "reward_mean",
        "objectives/word",
        "kl",
        "kl_coef",
        "policy_loss",
        "value_loss",
        "entropy",
    )
    for step in range(1, 7):
        for key in compared:
            assert actual[step][key] == pytest.approx(expected[step][key], rel=1e-4, abs=1e-5), (
                f"step {step} {key}"
            )
