"""What a local run leaves on disk, read back: the state of a job that `kubetune run --local`
ran, for the runner itself (resume or not, already finished) and for `kubetune list`,
`status` and `logs`.

Layout of ``<storage>/<namespace>/<job>/`` (the trainer's part is described in
kubetune_trainer.runtime.layout)::

    plan-attempt-<N>.json       the plan of each attempt (written by the runner)
    logs/attempt-<N>.log        everything the attempt printed (written by the runner)
    logs/attempt-<N>.json       the attempt as the runner saw it: pid, start, end, exit code
    result-attempt-<N>.json     how the attempt ended (written by the trainer)
    progress.json               the latest progress record (step, total, loss, checkpoint)
    history.jsonl               every logged step
    checkpoints/step-<N>-a<K>/  checkpoints (docs/checkpoints.md), in both modes
    output/  export/            the model; the export's artifacts and manifest.json

Reading is split from deciding: :func:`decide_state` is pure.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from kubetune_trainer.exit_codes import EXIT_INTERRUPTED, EXIT_OK, EXIT_PREEMPTED
from kubetune_trainer.plan import Plan
from kubetune_trainer.training.checkpoint_fs import CheckpointStore

_PLAN = re.compile(r"^plan-attempt-(\d+)\.json$")


def shown(path: str | Path | None) -> str:
    """A path as the user reads it: relative to the working directory when it lies under it
    (``runs/demo/demo-sft/output``), absolute otherwise; ``-`` for none."""
    if path is None:
        return "-"
    absolute = Path(path).absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def attempt_log(run_dir: Path, attempt: int) -> Path:
    return run_dir / "logs" / f"attempt-{attempt}.log"


def attempt_record_path(run_dir: Path, attempt: int) -> Path:
    return run_dir / "logs" / f"attempt-{attempt}.json"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def latest_checkpoint_step(run_dir: Path) -> int | None:
    """The step of the newest complete checkpoint in the run's store (single process and Ray
    Train alike)."""
    if not run_dir.is_dir():
        return None
    latest = CheckpointStore(run_dir).latest()
    return latest.step if latest is not None else None


def read_plan(path: Path) -> Plan | None:
    try:
        return Plan.from_json(path.read_text())
    except (OSError, ValueError):
        return None


def attempts_of(run_dir: Path) -> list[int]:
    """Attempt numbers the runner started here (by their plans), ascending."""
    if not run_dir.is_dir():
        return []
    found = (_PLAN.match(p.name) for p in run_dir.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


class LocalState(StrEnum):
    """The state of a local run (its latest attempt)."""

    pending = "Pending"
    """Never started."""
    running = "Running"
    succeeded = "Succeeded"
    interrupted = "Interrupted"
    """Stopped with a checkpoint (Ctrl-C, SIGTERM): the same command resumes it."""
    stopped = "Stopped"
    """Killed before it could save (a second Ctrl-C, SIGKILL, the runner gone)."""
    failed = "Failed"


@dataclass(frozen=True)
class Attempt:
    number: int
    record: dict[str, Any] | None
    """logs/attempt-N.json (None for runs made before the runner wrote it)."""
    result: dict[str, Any] | None
    """result-attempt-N.json (None until the trainer wrote it)."""
    alive: bool
    """The attempt's trainer process is still running."""


def decide_state(attempt: Attempt | None) -> LocalState:
    """The state of a local job from its latest attempt."""
    if attempt is None:
        return LocalState.pending
    record, result = attempt.record or {}, attempt.result
    code = record.get("exitCode")
    if code is None and result is None:
        return LocalState.running if attempt.alive else LocalState.stopped
    if code is None:  # a trainer result but no exit code: the runner did not see the end
        if attempt.alive:
            return LocalState.running
        code = EXIT_PREEMPTED if result and result.get("preempted") else EXIT_OK
    if code == EXIT_OK:
        return LocalState.succeeded
    if code == EXIT_PREEMPTED:
        return LocalState.interrupted
    if code < 0 or code == EXIT_INTERRUPTED:  # killed by a signal, or a second Ctrl-C
        return LocalState.stopped
    return LocalState.failed


@dataclass
class LocalRunView:
    """One local job as `kubetune list` and `status` show it."""

    namespace: str
    name: str
    run_dir: Path
    method: str = "-"
    state: LocalState = LocalState.pending
    attempt: int = 0
    step: int | None = None
    total_steps: int | None = None
    loss: str | None = None
    objectives: dict[str, str] = field(default_factory=dict)
    """The latest batch mean of each reward objective (name -> value as text)."""
    seconds: float = 0.0
    """Wall time of all attempts together (a running one up to now)."""
    skipped_rows: int = 0
    resumed_from: int | None = None
    """The step the latest attempt resumed from (None: it started from scratch)."""
    last_checkpoint: int | None = None
    exit_code: int | None = None
    output: str | None = None
    export: str = "-"
    started: str | None = None
    updated: str | None = None
    log: Path | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "method": self.method,
            "state": str(self.state),
            "attempt": self.attempt,
            "step": self.step,
            "totalSteps": self.total_steps,
            "loss": self.loss,
            "objectives": self.objectives,
            "seconds": round(self.seconds, 1),
            "skippedRows": self.skipped_rows,
            "resumedFrom": self.resumed_from,
            "lastCheckpointStep": self.last_checkpoint,
            "exitCode": self.exit_code,
            "output": self.output,
            "export": self.export,
            "started": self.started,
            "updated": self.updated,
            "runDir": str(self.run_dir),
            "log": str(self.log) if self.log else None,
            "attempts": self.attempts,
        }


def read_attempt(run_dir: Path, number: int) -> Attempt:
    record = read_json(attempt_record_path(run_dir, number))
    result = read_json(run_dir / f"result-attempt-{number}.json")
    alive = bool(record) and record.get("exitCode") is None and pid_alive(record.get("pid"))
    return Attempt(number, record, result, alive)


def attempt_seconds(attempt: Attempt, now: float) -> float:
    record = attempt.record or {}
    if record.get("started"):
        start = parse_rfc3339(record["started"])
        end = parse_rfc3339(record["finished"]) if record.get("finished") else None
        if end is None and attempt.alive:
            end = now
        if end is not None:
            return max(0.0, end - start)
    if attempt.result and isinstance(attempt.result.get("seconds"), int | float):
        return float(attempt.result["seconds"])
    return 0.0


def export_state(run_dir: Path) -> str:
    manifest = read_json(run_dir / "export" / "manifest.json")
    if manifest is None:
        return "-"
    gate = manifest.get("gate")
    if gate and not gate.get("passed", True):
        return "gate not met"
    return "done"


def read_run(run_dir: Path, *, now: float | None = None) -> LocalRunView:
    """Everything `kubetune status` shows about the local run in run_dir."""
    now = time.time() if now is None else now
    view = LocalRunView(namespace=run_dir.parent.name, name=run_dir.name, run_dir=run_dir)
    numbers = attempts_of(run_dir)
    attempts = [read_attempt(run_dir, n) for n in numbers]
    latest = attempts[-1] if attempts else None
    plan = read_plan(run_dir / f"plan-attempt-{numbers[-1]}.json") if numbers else None
    output_dir = None
    if plan is not None:
        view.method = plan.recipe.method
        output_dir = plan.storage.output_dir
    view.state = decide_state(latest)
    view.attempt = latest.number if latest else 0
    view.output = output_dir if view.state == LocalState.succeeded else None
    progress = read_json(run_dir / "progress.json") or {}
    view.step = progress.get("step")
    view.total_steps = progress.get("totalSteps")
    view.loss = progress.get("loss")
    view.objectives = dict(progress.get("objectives") or {})
    view.skipped_rows = int(progress.get("skippedRows") or 0)
    view.updated = progress.get("updated")
    view.last_checkpoint = latest_checkpoint_step(run_dir)
    view.seconds = sum(attempt_seconds(a, now) for a in attempts)
    view.export = export_state(run_dir)
    if latest is not None:
        view.exit_code = (latest.record or {}).get("exitCode")
        view.resumed_from = (latest.record or {}).get("resumedFrom")
        if view.resumed_from is None and latest.result:
            view.resumed_from = latest.result.get("resumedFrom")
        if latest.result and view.step is None:
            view.step = latest.result.get("finalStep")
        log = attempt_log(run_dir, latest.number)
        view.log = log if log.exists() else None
    if attempts:
        first = attempts[0].record or {}
        view.started = first.get("started") or (attempts[0].result or {}).get("started")
    for a in attempts:
        record, result = a.record or {}, a.result or {}
        view.attempts.append(
            {
                "attempt": a.number,
                "started": record.get("started") or result.get("started"),
                "finished": record.get("finished") or result.get("finished"),
                "exitCode": record.get("exitCode"),
                "finalStep": result.get("finalStep"),
                "resumedFrom": record.get("resumedFrom", result.get("resumedFrom")),
                "seconds": round(attempt_seconds(a, now), 1),
            }
        )
    return view


def run_dirs(storage: Path) -> list[Path]:
    """Every local run under a storage root (<storage>/<namespace>/<job>), sorted."""
    if not storage.is_dir():
        return []
    found = []
    for namespace in sorted(p for p in storage.iterdir() if p.is_dir()):
        for job in sorted(p for p in namespace.iterdir() if p.is_dir()):
            if attempts_of(job):
                found.append(job)
    return found
