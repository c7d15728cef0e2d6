"""Multi-objective rewards on the tiny builtin Llama: two objectives that conflict by
construction (a completion either contains a digit or it does not), each normalised by its
running moments and reported under its own name. Shifting the weight from one to the other
must move both objectives' means the way the weights say, and each run reports both in its
history and in its status record."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean
from typing import Any

import pytest
from trainer_support import run_dir, run_job

pytestmark = pytest.mark.trainer

STEPS = 30


def objectives_run(tmp_path: Path, name: str, digits: float, plain: float) -> dict[str, Any]:
    running = {"type": "regex", "normalize": "running"}
    plan = run_job(
        tmp_path,
        name,
        "grpo",
        {
            "data": {"sources": [{"uri": "builtin://arithmetic-prompts", "maxSamples": 320}]},
            "training": {
                "maxSteps": STEPS,
                "learningRate": 2e-3,
                "scheduler": "constant",
                "perDeviceBatchSize": 32,
                "logEverySteps": 1,
            },
            "grpo": {
                "rewards": [
                    {"name": "digits", "pattern": r"\d", "weight": digits, **running},
                    {"name": "plain", "pattern": r"^\D*$", "weight": plain, **running},
                ],
                "numGenerations": 8,
                "maxCompletionLength": 16,
            },
        },
    )
    lines = (run_dir(plan) / "history.jsonl").read_text().splitlines()
    steps = [e for e in map(json.loads, lines) if "objectives/digits" in e]
    progress = json.loads((run_dir(plan) / "progress.json").read_text())
    return {"steps": steps, "progress": progress}


def late_mean(run: dict[str, Any], objective: str) -> float:
    return fmean(e[f"objectives/{objective}"] for e in run["steps"][-5:])


def early_mean(run: dict[str, Any], objective: str) -> float:
    return fmean(e[f"objectives/{objective}"] for e in run["steps"][:5])


def test_shifting_weight_between_conflicting_objectives_moves_both_means(tmp_path: Path) -> None:
    toward_digits = objectives_run(tmp_path, "toward-digits", digits=0.8, plain=0.2)
    toward_plain = objectives_run(tmp_path, "toward-plain", digits=0.2, plain=0.8)
    for run in (toward_digits, toward_plain):
        assert len(run["steps"]) == STEPS
        last = run["steps"][-1]
        assert run["progress"]["objectives"] == {
            name: f"{last[f'objectives/{name}']:.6g}" for name in ("digits", "plain")
        }
    means = {
        label: {o: (early_mean(run, o), late_mean(run, o)) for o in ("digits", "plain")}
        for label, run in (("toward_digits", toward_digits), ("toward_plain", toward_plain))
    }
    print(json.dumps(means))
    # Within the run weighted toward digits, digits climb and plain falls.
    digits_early, digits_late = means["toward_digits"]["digits"]
    plain_early, plain_late = means["toward_digits"]["plain"]
    assert digits_late > digits_early + 0.3, means
    assert plain_late < plain_early - 0.3, means
    # Shifting the weight to plain moves both means the other way.
    assert late_mean(toward_plain, "digits") < late_mean(toward_digits, "digits") - 0.4, means
    assert late_mean(toward_plain, "plain") > late_mean(toward_digits, "plain") + 0.4, means
