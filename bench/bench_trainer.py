"""Trainer benchmark: one run, one JSON line on stdout (progress on stderr).

* ``sftStepRatio``: kubetune's SFT step rate over bare TRL ``SFTTrainer``'s, same model, data
  and settings, measured in alternating rounds in one process (target >= 0.97).
* ``nonPaddingShare``: non-padding share of the token slots the model is fed, with and without
  packing, on variable-length data (target >= 0.95 with packing).
* ``firstStep``: seconds from starting ``kubetune-train`` to the end of its first optimizer step,
  single-process and on Ray (one worker), and their ratio.

Baselines are measured in the same run, so compare ratios, not seconds, across machines.
Run: ``python bench/bench_trainer.py`` (see bench/README.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

from transformers import TrainerCallback

from kubetune.api import FineTuneJob
from kubetune.planner import make_plan
from kubetune_trainer.plan import Plan, Scaling

MODEL = "builtin://tiny-llama"
SFT_DATA = "builtin://arithmetic-sft"
BATCH = 16
MAX_LENGTH = 128
LEARNING_RATE = 1e-3
SEED = 5


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class StepTimer(TrainerCallback):
    """Wall time at the end of every optimizer step, and the logged losses."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.losses: dict[int, float] = {}

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs and "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])

    def seconds_per_step(self, skip: int) -> float:
        """Median step time after the first `skip` steps (warm-up)."""
        gaps = [b - a for a, b in zip(self.ends[skip:], self.ends[skip + 1 :], strict=False)]
        return statistics.median(gaps)


def plan_for(
    tmp: Path, name: str, training: dict[str, Any], data_uri: str, workers: int = 1
) -> Plan:
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {
                "method": "sft",
                "model": {"source": MODEL},
                "data": {"sources": [{"uri": data_uri}]},
                "training": {"learningRate": LEARNING_RATE, "seed": SEED, **training},
            },
        }
    )
    scaling = Scaling(workers=workers, devices_per_worker=0, nodes=1, use_gpu=False)
    return make_plan(job, default_storage=str(tmp / "runs"), scaling=scaling)


def run_kubetune_sft(plan: Plan, tmp: Path, extra: list[Any]) -> None:
    """kubetune's SFT recipe in this process, with the single-process path's context."""
    from kubetune_trainer.recipes import sft
    from kubetune_trainer.recipes.common import RunContext
    from kubetune_trainer.reporting.progress import Throttled
    from kubetune_trainer.reporting.train_metrics import TrainMetrics
    from kubetune_trainer.runtime.context import reporter_from_env
    from kubetune_trainer.training.hardware import Hardware

    run_dir = Path(plan.storage.root) / plan.storage.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(
        plan=plan,
        hardware=Hardware.detect(),
        staging_dir=run_dir / "staging",
        output_dir=tmp / f"out-{plan.job.name}",
        publish=lambda path, step, logs: str(path),
        progress=Throttled(reporter_from_env(), 10.0),
        metrics=TrainMetrics(plan.job.namespace, plan.job.name, "sft"),
        history=run_dir / "history.jsonl",
        extra_callbacks=extra,
    )
    sft.run(ctx)


def run_bare_trl(tmp: Path, steps: int, timer: StepTimer) -> None:
    """What a TRL user writes for the same training: SFTTrainer with the same settings."""
    from trl import SFTConfig, SFTTrainer

    from kubetune_trainer.data import load_data
    from kubetune_trainer.models import load_model, load_tokenizer
    from kubetune_trainer.plan import DataSpec

    tokenizer = load_tokenizer(MODEL)
    model = load_model(MODEL, tokenizer=tokenizer)
    data = load_data(DataSpec.model_validate({"sources": [{"uri": SFT_DATA}]}), kind="sft")
    config = SFTConfig(
        output_dir=str(tmp / "bare"),
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="cosine",
        per_device_train_batch_size=BATCH,
        max_length=MAX_LENGTH,
        assistant_only_loss=True,
        seed=SEED,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data.train,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()


def step_ratio(tmp: Path, rounds: int = 6, steps: int = 50, skip: int = 10) -> dict[str, Any]:
    """Alternate kubetune and bare TRL runs (ABBA order). A run's step time is its median
    step time after warm-up; each side is scored by its best run, which filters out the bursts
    of contention of a shared machine; `ratio` is TRL's best over kubetune's best."""
    kube_times, bare_times = [], []
    losses: dict[str, dict[int, float]] = {}
    for i in range(rounds):
        order = ("kubetune", "trl") if i % 2 == 0 else ("trl", "kubetune")
        for who in order:
            timer = StepTimer()
            if who == "kubetune":
                training = {"maxSteps": steps, "perDeviceBatchSize": BATCH, "maxLength": MAX_LENGTH}
                plan = plan_for(tmp, f"kube-{i}", training, SFT_DATA)
                run_kubetune_sft(plan, tmp, [timer])
                kube_times.append(timer.seconds_per_step(skip))
            else:
                run_bare_trl(tmp, steps, timer)
                bare_times.append(timer.seconds_per_step(skip))
            losses[who] = timer.losses
            say(f"round {i} {who}: {timer.seconds_per_step(skip) * 1000:.1f} ms/step")
    kube, bare = min(kube_times), min(bare_times)
    # kubetune also logs the first step, so its first logged window differs; compare after it.
    common = sorted(s for s in set(losses["kubetune"]) & set(losses["trl"]) if s > 10)
    return {
        "kubetuneMsPerStep": round(kube * 1000, 2),
        "trlMsPerStep": round(bare * 1000, 2),
        "ratio": round(bare / kube, 3),
        "target": 0.97,
        "medianRatio": round(statistics.median(bare_times) / statistics.median(kube_times), 3),
        "kubetuneRunsMs": [round(t * 1000, 1) for t in kube_times],
        "trlRunsMs": [round(t * 1000, 1) for t in bare_times],
        "stepsPerRun": steps,
        "maxLossDiff": max(abs(losses["kubetune"][s] - losses["trl"][s]) for s in common),
    }


def variable_length_data(path: Path, rows: int = 512) -> str:
    """Sums of 1 to 40 terms: prompts from a few tokens to ~150."""
    rng = random.Random(SEED)
    with open(path, "w") as out:
        for _ in range(rows):
            terms = [rng.randint(0, 99) for _ in range(rng.randint(1, 40))]
            prompt = " + ".join(str(t) for t in terms)
            messages = [
                {"role": "user", "content": f"{prompt} ="},
                {"role": "assistant", "content": str(sum(terms))},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")
    return str(path)


def padding_share(tmp: Path, steps: int = 12) -> dict[str, Any]:
    """Non-padding share of the fed token slots, from kubetune's own data trace."""
    from kubetune_trainer.training.callbacks import DataTraceCallback

    data = variable_length_data(tmp / "variable.jsonl")
    found: dict[str, Any] = {}
    for packing in (False, True):
        name = "packed" if packing else "padded"
        trace = tmp / f"trace-{name}"
        training = {
            "maxSteps": steps,
            "perDeviceBatchSize": 8,
            "maxLength": 256,
            "packing": packing,
        }
        run_kubetune_sft(plan_for(tmp, name, training, data), tmp, [DataTraceCallback(trace)])
        entries = [json.loads(x) for x in (trace / "rank-0.jsonl").read_text().splitlines()]
        tokens = sum(e["tokens"] for e in entries)
        slots = sum(e["slots"] for e in entries)
        found[name] = round(tokens / slots, 4)
        say(f"{name}: {tokens}/{slots} non-padding tokens")
    return {"withoutPacking": found["padded"], "withPacking": found["packed"], "target": 0.95}


def first_step_seconds(tmp: Path, mode: str) -> float:
    """Seconds from launching kubetune-train to the end of its first optimizer step (the first
    line of its data trace)."""
    training = {"maxSteps": 3, "perDeviceBatchSize": BATCH, "maxLength": MAX_LENGTH}
    plan = plan_for(tmp, f"first-{mode}", training, SFT_DATA)
    plan_path = tmp / f"plan-first-{mode}.json"
    plan_path.write_text(plan.to_json())
    trace = tmp / f"trace-first-{mode}" / "rank-0.jsonl"
    env = os.environ | {
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_DATA_TRACE": str(trace.parent),
    }
    command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(plan_path)]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--mode", mode], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = None
    while process.poll() is None:
        if first is None and trace.exists() and trace.read_text().strip():
            first = time.perf_counter() - started
        time.sleep(0.05)
    if process.returncode != 0:
        raise RuntimeError(f"kubetune-train --mode {mode} exited {process.returncode}")
    if first is None:
        raise RuntimeError(f"kubetune-train --mode {mode} finished without a first step")
    say(f"first step, {mode}: {first:.1f} s")
    return first


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as name:
        tmp = Path(name)
        started = time.perf_counter()
        # HF Trainer prints its logs on stdout: keep stdout for the result line.
        with contextlib.redirect_stdout(sys.stderr):
            step = step_ratio(tmp)
            padding = padding_share(tmp)
            single = first_step_seconds(tmp, "single")
            ray = first_step_seconds(tmp, "ray")
        import torch

        result = {
            "bench": "trainer",
            "sftStep": step,
            "nonPaddingShare": padding,
            "firstStep": {
                "singleSeconds": round(single, 2),
                "raySeconds": round(ray, 2),
                "rayOverSingle": round(ray / single, 2),
            },
            "cpus": os.cpu_count(),
            "torchThreads": torch.get_num_threads(),
            "benchSeconds": round(time.perf_counter() - started, 1),
        }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
