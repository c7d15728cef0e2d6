"""HF Trainer callbacks shared by every TRL-based recipe: progress, metrics, checkpoint
publishing, time-based saves and stopping on request."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubetune_trainer.plan import BestModel, EarlyStopping, MetricGoal
from kubetune_trainer.reporting.progress import ProgressRecord, Throttled, now_rfc3339
from kubetune_trainer.reporting.train_metrics import (
    TrainMetrics,
    is_held_out_metric,
    objective_means,
)
from kubetune_trainer.training.held_out import derived_held_out_metrics, improved

log = logging.getLogger("kubetune.trainer")

# Publishes the checkpoint HF just wrote at `path` for `step`; returns its URI, or None on ranks
# that do not publish.
Publisher = Callable[[Path, int, dict[str, float]], str | None]


def any_rank(local: bool) -> bool:
    """True on every rank when it is True on any rank: decisions that make ranks save or stop
    must be taken together, or the others wait forever at the next collective."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    import torch

    flag = torch.tensor([1 if local else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class PreemptionCallback(TrainerCallback):
    """A stop request (SIGTERM: pod eviction, preemption, node drain; Ctrl-C in a local run) →
    save at the next step boundary, then stop. The runtime turns `preempted` into the
    documented exit code.

    The runtime owns the signals (kubetune_trainer.runtime.signals) and hands in
    `stop_requested`: its own flag in a single process, the driver's stop flag under Ray (the
    signal reaches the driver, not the workers). With several ranks the decision is all-reduced
    every step so that all ranks save and stop at the same step (a rank stopping alone would
    hang the others).
    """

    def __init__(self, stop_requested: Callable[[], bool] | None = None) -> None:
        self.preempted = False
        self.stop_requested = stop_requested

    def on_step_end(self, args, state, control: TrainerControl, **kwargs) -> None:
        local = bool(self.stop_requested and self.stop_requested())
        if any_rank(local):
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True


class IntervalSaveCallback(TrainerCallback):
    """Save when `every_seconds` passed since the last save (HF only saves by steps). Each rank
    has its own clock, so the decision is shared: all ranks save at the same step."""

    def __init__(self, every_seconds: int | None) -> None:
        self.every_seconds = every_seconds
        self._last = time.monotonic()

    def on_step_end(self, args, state, control: TrainerControl, **kwargs) -> None:
        if not self.every_seconds:
            return
        if any_rank(time.monotonic() - self._last >= self.every_seconds):
            control.should_save = True

    def on_save(self, args, state, control, **kwargs) -> None:
        self._last = time.monotonic()


class ProgressCallback(TrainerCallback):
    """Metrics gauges, throttled progress records and, after each save, publishing the
    checkpoint and reporting it."""

    def __init__(
        self,
        *,
        metrics: TrainMetrics | None,
        progress: Throttled,
        publish: Publisher,
        is_reporter: bool,
        attempt: int,
        history: Path | None = None,
        skipped_rows: int = 0,
        method: str = "",
    ) -> None:
        self.method = method
        self.metrics = metrics
        self.progress = progress
        self.publish = publish
        self.is_reporter = is_reporter
        self.attempt = attempt
        self.history = history
        self.record = ProgressRecord(skippedRows=skipped_rows)
        self._last_logs: dict[str, float] = {}
        self._window: tuple[float, int] | None = None  # (time, tokens seen) at the last log
        self._started = time.monotonic()
        self._start_step = 0

    def on_train_begin(self, args, state: TrainerState, control, **kwargs) -> None:
        self._started = time.monotonic()
        self._start_step = state.global_step
        self.record.totalSteps = state.max_steps
        if self.metrics:
            self.metrics.set(self.metrics.total_steps, state.max_steps)

    def _update(self, state: TrainerState) -> None:
        r = self.record
        r.step = state.global_step
        r.totalSteps = state.max_steps
        r.epoch = round(state.epoch or 0.0, 4)
        r.percent = int(100 * r.step / r.totalSteps) if r.totalSteps else 0
        done = r.step - self._start_step
        if done > 0 and r.totalSteps:
            rate = (time.monotonic() - self._started) / done
            r.etaSeconds = int(rate * (r.totalSteps - r.step))
        r.updated = now_rfc3339()

    def on_log(self, args, state: TrainerState, control, logs: dict[str, Any] | None = None, **kw):
        logs = logs if logs is not None else {}
        logs.update(derived_held_out_metrics(self.method, logs))
        self._last_logs = {k: v for k, v in logs.items() if isinstance(v, int | float)}
        self._update(state)
        held_out = {k: v for k, v in self._last_logs.items() if is_held_out_metric(k)}
        if held_out:
            self.record.evalMetrics = {k: f"{v:.6g}" for k, v in held_out.items()}
        objectives = objective_means(self._last_logs)
        if objectives:
            self.record.objectives = {k: f"{v:.6g}" for k, v in objectives.items()}
        if "loss" in logs and isinstance(logs["loss"], int | float) and math.isfinite(logs["loss"]):
            self.record.loss = f"{logs['loss']:.4f}"
        tokens = getattr(state, "num_input_tokens_seen", 0) or 0
        now = time.monotonic()
        if self._window is not None and tokens > self._window[1] and now > self._window[0]:
            # num_input_tokens_seen is gathered across ranks, so this is the whole job's rate.
            self.record.tokensPerSecond = round(
                (tokens - self._window[1]) / (now - self._window[0]), 1
            )
        self._window = (now, tokens)
        if self.metrics:
            self.metrics.observe_logs(logs)
            self.metrics.set(self.metrics.step, state.global_step)
            if self.record.tokensPerSecond is not None:
                self.metrics.set(self.metrics.tokens_per_second, self.record.tokensPerSecond)
            if "train_samples_per_second" in logs:
                self.metrics.set(self.metrics.samples_per_second, logs["train_samples_per_second"])
        if self.is_reporter:
            self.progress.report(self.record, force=bool(held_out))
            if self.history is not None:
                entry = {"step": state.global_step, "attempt": self.attempt, **self._last_logs}
                with open(self.history, "a") as out:
                    out.write(json.dumps(entry) + "\n")

    def on_save(self, args: TrainingArguments, state: TrainerState, control, **kwargs) -> None:
        self._update(state)
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        uri = self.publish(path, state.global_step, self._last_logs)
        if uri is None:
            return
        self.record.lastCheckpoint = {
            "uri": uri,
            "step": state.global_step,
            "attempt": self.attempt,
            "time": now_rfc3339(),
        }
        if self.metrics:
            self.metrics.checkpoints.labels(**self.metrics.labels).inc()
        log.info("event=checkpoint step=%d uri=%s", state.global_step, uri)
        self.progress.report(self.record, force=True)

    def on_train_end(self, args, state: TrainerState, control, **kwargs) -> None:
        self._update(state)
        if self.is_reporter:
            self.progress.report(self.record, force=True)


class TrainingDisplay(TrainerCallback):
    """What a person watching a run sees, on rank 0: in an interactive local run one progress
    bar carrying the latest loss; otherwise (a pod's log) one ``event=train_log`` line per
    logged step. Evaluation results are a log line in both. It replaces HF Trainer's own
    progress and printer callbacks (:func:`replace_hf_display`), which print every log as a
    Python dict."""

    SHOWN = ("loss", "learning_rate", "grad_norm", "reward", "kl")

    def __init__(self, *, bar: bool, is_main: bool, job: str) -> None:
        self.show_bar = bar and is_main
        self.is_main = is_main
        self.job = job
        self._bar: Any = None
        self._redirect: Any = None

    def on_train_begin(self, args, state: TrainerState, control, **kwargs) -> None:
        if self.show_bar:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(
                total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True
            )
            # Log lines printed above the bar, not through it.
            self._redirect = logging_redirect_tqdm(tqdm_class=tqdm)
            self._redirect.__enter__()

    def on_step_end(self, args, state: TrainerState, control, **kwargs) -> None:
        if self._bar is not None:
            self._bar.update(state.global_step - self._bar.n)

    def on_log(self, args, state: TrainerState, control, logs: dict[str, Any] | None = None, **kw):
        if not self.is_main or not logs:
            return
        numbers = {k: v for k, v in logs.items() if isinstance(v, int | float)}
        evaluation = {k: v for k, v in numbers.items() if k.startswith("eval_")}
        if evaluation:
            log.info(
                "event=eval job=%s step=%d %s", self.job, state.global_step, _pairs(evaluation)
            )
        shown = {k: numbers[k] for k in self.SHOWN if k in numbers}
        if not shown:
            return
        if self._bar is not None:
            if "loss" in shown:
                self._bar.set_postfix(loss=f"{shown['loss']:.4f}", refresh=False)
            return
        log.info(
            "event=train_log job=%s step=%d/%d %s",
            self.job,
            state.global_step,
            state.max_steps,
            _pairs(shown),
        )

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None


def _pairs(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in values.items())


def replace_hf_display(trainer: Any) -> None:
    """Take HF Trainer's progress bar and log printer off a trainer (TrainingDisplay shows what
    they showed, without a dict per step)."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


class HeldOutCallback(TrainerCallback):
    """Early stopping and best-model selection on a held-out metric, at every evaluation.

    Early stopping (``training.earlyStopping``): training stops after ``patience`` evaluations
    in a row without an improvement by more than ``minDelta``. HF's own EarlyStoppingCallback
    needs ``load_best_model_at_end``, which reloads a checkpoint from the staging directory;
    kubetune's publisher has moved checkpoints out of it by then.

    Best model (``training.bestModel``): whenever the metric improves, rank 0 writes the
    model's weights to ``best_dir`` (a complete copy replaces the previous one by renames, with
    ``best.json`` naming the step and value); the recipe then makes that copy the job's output.
    The record survives a restart, so a resumed attempt keeps comparing against it.
    Evaluations are the same on every rank (HF gathers them), so every rank decides alike.
    """

    RECORD = "best.json"

    def __init__(
        self,
        *,
        early_stopping: EarlyStopping | None,
        best_model: BestModel | None,
        best_dir: Path | None,
        is_main: bool,
    ) -> None:
        self.early_stopping = early_stopping
        self.best_model = best_model
        self.best_dir = best_dir
        self.is_main = is_main
        self._early_best: float | None = None
        self._bad_evaluations = 0
        self.stopped_at: int | None = None
        self.best: dict[str, Any] | None = self.read_record(best_dir)

    @classmethod
    def read_record(cls, best_dir: Path | None) -> dict[str, Any] | None:
        if best_dir is None or not (best_dir / cls.RECORD).is_file():
            return None
        return json.loads((best_dir / cls.RECORD).read_text())

    def on_evaluate(self, args, state: TrainerState, control, metrics=None, model=None, **kw):
        metrics = metrics or {}
        if self.early_stopping is not None:
            self._check_early_stop(state, control, metrics)
        if self.best_model is not None:
            self._check_best(state, metrics, model)

    def _value(self, goal: MetricGoal, metrics: dict[str, Any]) -> float | None:
        value = metrics.get(goal.key)
        if value is None:
            raise ValueError(
                f"held-out metric '{goal.metric}' is not logged by this method; "
                f"logged: {', '.join(sorted(k for k in metrics if is_held_out_metric(k)))}"
            )
        return float(value) if math.isfinite(value) else None

    def _check_early_stop(self, state: TrainerState, control, metrics: dict[str, Any]) -> None:
        goal = self.early_stopping
        assert goal is not None
        value = self._value(goal, metrics)
        if value is not None and improved(self._early_best, value, goal, goal.min_delta):
            self._early_best = value
            self._bad_evaluations = 0
            return
        self._bad_evaluations += 1
        if self._bad_evaluations >= goal.patience:
            self.stopped_at = state.global_step
            control.should_training_stop = True
            log.info(
                "event=early_stop step=%d metric=%s best=%s patience=%d",
                state.global_step,
                goal.key,
                self._early_best,
                goal.patience,
            )

    def _check_best(self, state: TrainerState, metrics: dict[str, Any], model: Any) -> None:
        goal = self.best_model
        assert goal is not None and self.best_dir is not None
        value = self._value(goal, metrics)
        best = self.best["value"] if self.best else None
        if value is None or not improved(best, value, goal):
            return
        self.best = {"step": state.global_step, "metric": goal.key, "value": value}
        if not self.is_main or model is None:
            return
        incoming = self.best_dir.with_name(self.best_dir.name + ".incoming")
        shutil.rmtree(incoming, ignore_errors=True)
        model.save_pretrained(str(incoming))
        (incoming / self.RECORD).write_text(json.dumps(self.best))
        retired = self.best_dir.with_name(self.best_dir.name + ".retired")
        shutil.rmtree(retired, ignore_errors=True)
        if self.best_dir.exists():
            self.best_dir.rename(retired)
        incoming.rename(self.best_dir)
        shutil.rmtree(retired, ignore_errors=True)
        log.info(
            "event=best_model step=%d metric=%s value=%.6g", state.global_step, goal.key, value
        )


class DataTraceCallback(TrainerCallback):
    """Debugging aid (``KUBETUNE_DATA_TRACE=DIR``): every rank records the rows it trained on,
    per optimizer step, in ``DIR/rank-N.jsonl`` (N is the HF Trainer's process index). One line
    per step: the step, the Trainer's world size, a short digest of each row's non-padding token
    ids (one per packed sequence when packing is padding-free), the non-padding tokens and the
    token slots fed. Shows whether the data is really sharded across ranks and how much of each
    batch is padding.

    Rows are seen by a forward pre-hook on the model while it is in training mode, so what is
    recorded is what the model was fed, after the sampler, the collator and any packing.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._rows: list[str] = []
        self._tokens = 0
        self._slots = 0
        self._handle: Any = None
        self._out: Any = None

    def _pre_forward(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        if not module.training:
            return
        import hashlib

        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        self._slots += int(ids.numel())
        if kwargs.get("position_ids") is not None and mask is None and ids.shape[0] == 1:
            # Padding-free packed batch: one row of concatenated sequences, no padding at all.
            self._rows.append(hashlib.sha1(ids.cpu().numpy().tobytes()).hexdigest()[:16])
            self._tokens += int(ids.numel())
            return
        for i in range(ids.shape[0]):
            row = ids[i] if mask is None else ids[i][mask[i].bool()]
            self._rows.append(hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest()[:16])
            self._tokens += int(row.numel())

    def on_train_begin(self, args, state, control, model: Any = None, **kwargs) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._out = open(self.directory / f"rank-{args.process_index}.jsonl", "a")  # noqa: SIM115
        if model is not None:
            self._handle = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        entry = {
            "step": state.global_step,
            "rank": args.process_index,
            "worldSize": args.world_size,
            "rows": self._rows,
            "tokens": self._tokens,
            "slots": self._slots,
        }
        self._out.write(json.dumps(entry) + "\n")
        self._out.flush()
        self._rows, self._tokens, self._slots = [], 0, 0

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self._handle is not None:
            self._handle.remove()
        if self._out is not None:
            self._out.close()
