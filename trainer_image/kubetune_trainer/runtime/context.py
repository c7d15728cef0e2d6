"""The one place a RunContext is assembled, for the single-process path and for every Ray
Train worker alike, and the one place the run's environment is read (progress reporter and
interval, metrics port)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from kubetune_trainer.plan import Plan
from kubetune_trainer.recipes.common import RunContext
from kubetune_trainer.reporting.progress import (
    FileReporter,
    NullReporter,
    ProgressReporter,
    Throttled,
)
from kubetune_trainer.reporting.train_metrics import TrainMetrics
from kubetune_trainer.runtime.layout import history_path, output_path, run_dir_of, staging_dir
from kubetune_trainer.training.callbacks import Publisher
from kubetune_trainer.training.hardware import Hardware


def progress_interval() -> float:
    """KUBETUNE_PROGRESS_INTERVAL: seconds between two progress reports (default 10)."""
    return float(os.environ.get("KUBETUNE_PROGRESS_INTERVAL", "10"))


def metrics_port(plan: Plan) -> int:
    """KUBETUNE_METRICS_PORT, else the plan's: rank 0's Prometheus port (0: none)."""
    return int(os.environ.get("KUBETUNE_METRICS_PORT", plan.metrics_port))


def reporter_from_env() -> ProgressReporter:
    """KUBETUNE_PROGRESS_FILE selects the file reporter; KUBETUNE_PROGRESS=kubernetes (set by
    the operator's builders) the job-status reporter; without either progress is only logged."""
    path = os.environ.get("KUBETUNE_PROGRESS_FILE")
    if path:
        return FileReporter(path)
    if os.environ.get("KUBETUNE_PROGRESS") == "kubernetes":
        from kubetune_trainer.reporting.kube_status import KubernetesReporter

        return KubernetesReporter()
    return NullReporter()


def run_context(
    plan: Plan,
    *,
    publish: Publisher,
    resume_from: Path | None,
    local_run: bool,
    rank: int = 0,
    world_size: int = 1,
    stop_requested: Callable[[], bool] | None = None,
) -> RunContext:
    """What a recipe gets. Rank 0 alone reports progress and serves the metrics."""
    main = rank == 0
    metrics = None
    if main:
        metrics = TrainMetrics(plan.job.namespace, plan.job.name, plan.recipe.method)
        metrics.serve(metrics_port(plan))
    return RunContext(
        plan=plan,
        hardware=Hardware.detect(),
        staging_dir=staging_dir(plan),
        output_dir=output_path(plan),
        publish=publish,
        progress=Throttled(reporter_from_env() if main else NullReporter(), progress_interval()),
        metrics=metrics,
        resume_from=resume_from,
        world_size=world_size,
        rank=rank,
        local_run=local_run,
        history=history_path(plan),
        run_dir=run_dir_of(plan),
        stop_requested=stop_requested,
    )
