"""The single-process path: one worker on local or PVC storage (the fastest start). Checkpoints
go through kubetune's own attempt-fenced store (kubetune_trainer.training.checkpoints)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kubetune_trainer.exit_codes import EXIT_OK, EXIT_PREEMPTED, EXIT_STALE_ATTEMPT
from kubetune_trainer.plan import Plan
from kubetune_trainer.recipes import recipe_for
from kubetune_trainer.recipes.common import RecipeResult
from kubetune_trainer.runtime.context import run_context
from kubetune_trainer.runtime.layout import run_dir_of
from kubetune_trainer.training.checkpoints import CheckpointStore, StaleAttempt

log = logging.getLogger("kubetune.trainer")


def run_single(plan: Plan, *, local_run: bool) -> int:
    run_dir = run_dir_of(plan)
    assert run_dir is not None, "single-process runs need local or pvc storage"
    store = CheckpointStore(run_dir, keep_last=plan.recipe.checkpoint.keep_last)
    store.register_attempt(plan.attempt)
    latest = store.latest()

    def publish(path: Path, step: int, logs: dict[str, float]) -> str:
        return str(store.publish(path, step, plan.attempt).path)

    ctx = run_context(
        plan,
        publish=publish,
        resume_from=latest.path if latest else None,
        local_run=local_run,
    )
    shutil.rmtree(ctx.staging_dir, ignore_errors=True)
    try:
        result = recipe_for(plan.recipe.method)(ctx)
    except StaleAttempt as err:
        log.error("event=stale_attempt message=%s", err)
        return EXIT_STALE_ATTEMPT
    write_result(run_dir, plan, result)
    shutil.rmtree(ctx.staging_dir, ignore_errors=True)
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
