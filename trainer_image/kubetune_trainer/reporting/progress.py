"""Progress records and where they go.

The trainer reports progress (step, total, epoch, percent, ETA, loss, tokens/s, latest
checkpoint, the latest held-out metrics and reward objectives, an eval job's summary) through a
reporter the runtime chooses from the environment
(:func:`kubetune_trainer.runtime.context.reporter_from_env`): a JSON file for local runs, the
job's status in Kubernetes when the operator runs it (``kube_status``). Reports are throttled;
the operator owns phase and conditions, the trainer only progress.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ProgressRecord:
    """Field names follow FineTuneJob status (camelCase on the wire)."""

    step: int = 0
    totalSteps: int = 0
    epoch: float = 0.0
    percent: int = 0
    etaSeconds: int | None = None
    loss: str | None = None
    tokensPerSecond: float | None = None
    updated: str = field(default_factory=now_rfc3339)
    lastCheckpoint: dict[str, Any] | None = None
    skippedRows: int = 0
    evalMetrics: dict[str, str] | None = None
    """The latest held-out metrics during training (name -> value as text)."""
    objectives: dict[str, str] | None = None
    """The latest batch mean of each reward objective (name -> value as text)."""
    evaluation: dict[str, Any] | None = None
    """An eval job's outcome: models, baseline, summary lines, where the results are."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class ProgressReporter(Protocol):
    def report(self, record: ProgressRecord) -> None: ...


class FileReporter:
    """Writes the latest record as JSON, atomically (readers never see half a file)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def report(self, record: ProgressRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(record.to_dict(), indent=1))
        tmp.replace(self.path)


class NullReporter:
    def report(self, record: ProgressRecord) -> None:
        pass


class Throttled:
    """Passes a record on at most once per interval, except forced ones (a new checkpoint, the
    end of training), so a fast loop cannot flood the API server."""

    def __init__(self, reporter: ProgressReporter, interval_seconds: float) -> None:
        self.reporter = reporter
        self.interval = interval_seconds
        self._last = float("-inf")

    def report(self, record: ProgressRecord, *, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return False
        self._last = now
        self.reporter.report(record)
        return True
