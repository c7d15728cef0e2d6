"""HF Trainer callbacks shared by every TRL-based recipe: progress, metrics, checkpoint
publishing, time-based saves and SIGTERM handling."""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubetune_trainer.reporting.progress import ProgressRecord, Throttled, now_rfc3339
from kubetune_trainer.reporting.train_metrics import TrainMetrics

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
    """SIGTERM (pod eviction, preemption, node drain) → save at the next step boundary, then
    stop. The runtime turns `preempted` into the documented exit code.

    Under Ray the signal reaches the driver, not the workers: `stop_requested` polls the
    driver's stop flag. With several ranks the decision is all-reduced every step so that all
    ranks save and stop at the same step (a rank stopping alone would hang the others).
    """

    def __init__(self, stop_requested: Callable[[], bool] | None = None) -> None:
        self.preempted = False
        self.stop_requested = stop_requested
        self._signalled = False
        self._previous: Any = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.warning("event=sigterm action=save-and-stop")
        self._signalled = True

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        # Ray Train runs the training function off the main thread, where signal handlers
        # cannot be installed; there the driver's stop flag (stop_requested) carries SIGTERM.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def on_step_end(self, args, state, control: TrainerControl, **kwargs) -> None:
        local = self._signalled or bool(self.stop_requested and self.stop_requested())
        if any_rank(local):
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


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
    ) -> None:
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
        logs = logs or {}
        self._last_logs = {k: v for k, v in logs.items() if isinstance(v, int | float)}
        self._update(state)
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
            self.progress.report(self.record)
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
