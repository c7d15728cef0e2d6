"""Runs a plan: in this process (one worker, local storage: fastest start) or on Ray Train
(several workers or nodes, or remote storage)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from kubetune_trainer.checkpoints import CheckpointStore, StaleAttempt
from kubetune_trainer.exit_codes import EXIT_OK, EXIT_PREEMPTED
from kubetune_trainer.hardware import Hardware
from kubetune_trainer.metrics import TrainMetrics
from kubetune_trainer.plan import Plan, uri_scheme
from kubetune_trainer.progress import Throttled, reporter_from_env
from kubetune_trainer.recipes import recipe_for
from kubetune_trainer.recipes.common import RecipeResult, RunContext
from kubetune_trainer.uris import local_path, pvc_path

log = logging.getLogger("kubetune.trainer")

Mode = Literal["auto", "single", "ray"]
CHECKPOINT_MANIFEST = "kubetune.json"


def local_storage(uri: str) -> Path | None:
    """The filesystem path of a storage root, or None for remote (s3://) storage."""
    scheme = uri_scheme(uri)
    if scheme == "pvc":
        return pvc_path(uri)
    if scheme == "file":
        return local_path(uri).resolve()
    return None


def choose_mode(plan: Plan, requested: Mode) -> Literal["single", "ray"]:
    if requested != "auto":
        return requested
    single = plan.scaling.workers == 1 and local_storage(plan.storage.root) is not None
    return "single" if single else "ray"


def progress_interval() -> float:
    return float(os.environ.get("KUBETUNE_PROGRESS_INTERVAL", "10"))


def metrics_port(plan: Plan) -> int:
    return int(os.environ.get("KUBETUNE_METRICS_PORT", plan.metrics_port))


def run_plan(plan: Plan, *, mode: Mode = "auto", local_run: bool = False) -> int:
    """Train according to the plan; the process exit code (see exit_codes)."""
    chosen = choose_mode(plan, mode)
    log.info(
        "event=start job=%s/%s method=%s attempt=%d mode=%s workers=%d",
        plan.job.namespace,
        plan.job.name,
        plan.recipe.method,
        plan.attempt,
        chosen,
        plan.scaling.workers,
    )
    if chosen == "single":
        return run_single(plan, local_run=local_run)
    from kubetune_trainer.ray_runner import run_on_ray

    return run_on_ray(plan, local_run=local_run)


def run_dir_of(plan: Plan) -> Path:
    root = local_storage(plan.storage.root)
    assert root is not None, "single-process runs need local or pvc storage"
    return root / plan.storage.run_name


def output_path(plan: Plan) -> Path:
    """Where the recipe writes the final model: the output directory itself on local or PVC
    storage; a node-local directory uploaded by publish_output on S3 storage."""
    path = local_storage(plan.storage.output_dir)
    if path is not None:
        return path
    safe = plan.storage.run_name.replace("/", "_")
    return Path(tempfile.gettempdir()) / "kubetune-output" / safe / f"attempt-{plan.attempt}"


def publish_output(plan: Plan, result: RecipeResult) -> None:
    """Upload the final model to S3 when the run's storage is remote (rank 0, after success)."""
    if result.output_dir is None or local_storage(plan.storage.output_dir) is not None:
        return
    from kubetune_trainer.uris import upload_dir

    upload_dir(result.output_dir, plan.storage.output_dir)


def run_single(plan: Plan, *, local_run: bool) -> int:
    run_dir = run_dir_of(plan)
    store = CheckpointStore(run_dir, keep_last=plan.recipe.checkpoint.keep_last)
    store.register_attempt(plan.attempt)
    latest = store.latest()
    staging = run_dir / "staging" / f"attempt-{plan.attempt}"
    shutil.rmtree(staging, ignore_errors=True)

    def publish(path: Path, step: int, logs: dict[str, float]) -> str:
        return str(store.publish(path, step, plan.attempt).path)

    metrics = TrainMetrics(plan.job.namespace, plan.job.name, plan.recipe.method)
    metrics.serve(metrics_port(plan))
    ctx = RunContext(
        plan=plan,
        hardware=Hardware.detect(),
        staging_dir=staging,
        output_dir=output_path(plan),
        publish=publish,
        progress=Throttled(reporter_from_env(), progress_interval()),
        metrics=metrics,
        resume_from=latest.path if latest else None,
        local_run=local_run,
        history=run_dir / "history.jsonl",
    )
    try:
        result = recipe_for(plan.recipe.method)(ctx)
    except StaleAttempt as err:
        log.error("event=stale_attempt message=%s", err)
        from kubetune_trainer.exit_codes import EXIT_STALE_ATTEMPT

        return EXIT_STALE_ATTEMPT
    write_result(run_dir, plan, result)
    shutil.rmtree(staging, ignore_errors=True)
    return EXIT_PREEMPTED if result.preempted else EXIT_OK


def write_result(run_dir: Path, plan: Plan, result: RecipeResult) -> None:
    summary: dict[str, Any] = {
        "attempt": plan.attempt,
        "finalStep": result.final_step,
        "preempted": result.preempted,
        "metrics": result.metrics,
        "output": str(result.output_dir) if result.output_dir else None,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkstemp(dir=run_dir, prefix=".result-")[1])
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(run_dir / f"result-attempt-{plan.attempt}.json")
    log.info(
        "event=%s step=%d output=%s",
        "preempted" if result.preempted else "finished",
        result.final_step,
        summary["output"],
    )
