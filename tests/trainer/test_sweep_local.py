"""``kubetune sweep --local`` on the add-one task: a real search over the learning rate, two
trials at a time, with real tiny trainings as its trials.

The sweep is interrupted (Ctrl-C) while its first trials run and resumed by running the same
command again; it then finishes with every trial asked once. Its best learning rate gives a
model whose held-out exact match beats the one trained with the shipped default learning rate,
by a paired comparison on the same questions at 95%; and the median pruner stopped the clearly
bad trial (a learning rate near 1e-5, whose held-out loss hardly moves) before its step budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from trainer_support import run_job

from kubetune.sweep_local import history_values
from kubetune_trainer.evaluation.statistics import paired_difference
from kubetune_trainer.plan import TrainingSpec

pytestmark = pytest.mark.trainer

MAX_STEPS = 150
EVAL_EVERY = 30
TEMPLATE = {
    "method": "sft",
    "model": {"source": "builtin://tiny-llama"},
    "data": {
        "sources": [{"uri": "builtin://arithmetic-sft"}],
        "evalSources": [{"uri": "builtin://arithmetic-sft", "split": "test", "maxSamples": 64}],
    },
    "training": {
        "maxSteps": MAX_STEPS,
        "perDeviceBatchSize": 32,
        "maxLength": 96,
        "warmupRatio": 0.05,
        "logEverySteps": 10,
        "evalEverySteps": EVAL_EVERY,
    },
    "checkpoint": {"everySteps": EVAL_EVERY, "keepLast": 1},
}
SWEEP = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneSweep",
    "metadata": {"name": "add-one-lr"},
    "spec": {
        "template": TEMPLATE,
        "parameters": [
            {"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-2,
             "log": True}
        ],
        "objectives": [{"metric": "eval_loss", "direction": "minimize"}],
        # Seeded: the 4th trial draws a learning rate near 5e-5, after two good ones finished.
        "algorithm": {"name": "random", "seed": 6},
        "pruner": {"type": "median", "startupTrials": 1},
        "maxTrials": 4,
    },
}  # fmt: skip
HELD_OUT = 100


# Run in the sweep's directory, as a user would (docs/sweeps.md shows this output).
SWEEP_COMMAND = [sys.executable, "-m", "kubetune.cli", "sweep", "sweep.yaml", "--local",
                 "--parallel", "2"]  # fmt: skip


def correct_answers(model_source: str) -> list[float]:
    """1/0 per held-out question (builtin://arithmetic-prompts, test split: sums never seen in
    training), greedy answers, exact match of the number."""
    from kubetune_trainer.data import load_data
    from kubetune_trainer.evaluation.measures import answers_match, extract_answer, generate
    from kubetune_trainer.models import load_model_and_tokenizer
    from kubetune_trainer.plan import DataSpec

    spec = DataSpec.model_validate(
        {"sources": [{"uri": "builtin://arithmetic-prompts", "format": "prompt-only",
                      "split": "test", "maxSamples": HELD_OUT}]}
    )  # fmt: skip
    rows = list(load_data(spec, kind="prompt").train)
    model, tokenizer = load_model_and_tokenizer(model_source)
    completions = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=6)
    return [
        float(answers_match(extract_answer(c, "lastNumber", None), str(r["answer"]), "lastNumber"))
        for c, r in zip(completions, rows, strict=True)
    ]


def test_local_sweep_resumes_prunes_and_beats_the_default_learning_rate(tmp_path: Path):
    started = time.monotonic()
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    storage = tmp_path / "runs"  # the default, ./runs
    sweep_dir = storage / "default" / "add-one-lr"
    env = os.environ | {"KUBETUNE_METRICS_PORT": "0"}

    # Interrupted while the first two trials run (after their first evaluation)...
    first = subprocess.Popen(SWEEP_COMMAND, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not any(
        "eval_loss" in history_values(storage / "default" / f"add-one-lr-t{n}")[1] for n in (0, 1)
    ):
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no evaluation within 240s"
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=180)
    sys.stderr.write(f"\n$ kubetune sweep sweep.yaml --local --parallel 2\n{out}^C\n")
    assert first.returncode == 130, out
    assert "run the same command again to resume" in out
    interrupted = json.loads((sweep_dir / "status.json").read_text())
    assert interrupted["phase"] == "Running"

    # ...and resumed: the same command finishes it.
    second = subprocess.run(SWEEP_COMMAND, env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    sys.stderr.write(f"\n$ kubetune sweep sweep.yaml --local --parallel 2\n{second.stdout}\n")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "add-one-lr-t0: resumed" in second.stdout or "add-one-lr-t1: resumed" in second.stdout
    status = json.loads((sweep_dir / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    rows = {r["name"]: r for r in status["trials"]}
    assert sorted(rows) == [f"add-one-lr-t{n}" for n in range(4)]  # each asked once

    # The clearly bad trial (a learning rate under 1e-4) was stopped early by the pruner.
    pruned = [r for r in rows.values() if r["state"] == "Pruned"]
    bad = [r for r in rows.values() if float(r["parameters"]["training.learningRate"]) < 1e-4]
    assert bad and all(r in pruned for r in bad), json.dumps(rows, indent=1)
    # A trial worse than the ones done may also be pruned at its last step (the pruner sees
    # the final report too); the clearly bad one must stop early.
    for row in bad:
        steps, _ = history_values(storage / "default" / row["name"])
        assert steps is not None and steps < MAX_STEPS, (row, steps)

    # Printed: the table, the best parameters, the best trial as a FineTuneJob.
    best = status["bestTrial"]
    assert f"best: {best['name']}" in second.stdout
    best_job = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best_job["kind"] == "FineTuneJob" and best_job["metadata"]["name"] == "add-one-lr-best"
    best_lr = best_job["spec"]["training"]["learningRate"]
    assert f"{best_lr:.6g}" == best["parameters"]["training.learningRate"]
    assert (sweep_dir / "best" / "output").resolve() == Path(best["output"]).resolve()

    # The best learning rate against the shipped default, on the same held-out questions.
    recipe = {k: v for k, v in TEMPLATE.items() if k not in ("method", "model")}
    default = run_job(tmp_path, "default-lr", "sft", recipe)
    assert default.recipe.training.learning_rate == TrainingSpec().learning_rate
    baseline = correct_answers(default.storage.output_dir)
    candidate = correct_answers(best["output"])
    comparison = paired_difference(candidate, baseline, confidence=0.95)
    assert comparison.significant and comparison.delta.value > 0, comparison
    sys.stderr.write(
        f"\n[sweep] best lr {best_lr:.3g}: held-out exact match {sum(candidate) / HELD_OUT:.2f} "
        f"vs default lr {TrainingSpec().learning_rate:g}: {sum(baseline) / HELD_OUT:.2f} "
        f"(difference {comparison.delta.format()}, p={comparison.p_value:.3g}); "
        f"pruned {[r['name'] for r in pruned]}; {time.monotonic() - started:.0f}s\n"
    )
