"""The single-process path: one worker on local or PVC storage (the fastest start). Checkpoints
go through kubetune's own attempt-fenced store (kubetune_trainer.training.checkpoints)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from kubetune_trainer.exit_codes import EXIT_OK, EXIT_PREEMPTED, EXIT_STALE_ATTEMPT
from kubetune_trainer.plan import Plan
from kubetune_trainer.recipes import recipe_for
from kubetune_trainer.runtime.context import run_context
from kubetune_trainer.runtime.layout import run_dir_of, write_result
from kubetune_trainer.runtime.signals import StopSignals
from kubetune_trainer.training.checkpoints import CheckpointStore, StaleAttempt

log = logging.getLogger("kubetune.trainer")


def run_single(plan: Plan, *, local_run: bool, stop: StopSignals | None = None) -> int:
    started = time.time()
    run_dir = run_dir_of(plan)
    assert run_dir is not None, "single-process runs need local or pvc storage"
    store = CheckpointStore(run_dir, keep_last=plan.recipe.checkpoint.keep_last)
    store.register_attempt(plan.attempt)
    latest = store.latest()
    if latest is not None:
        log.info(
            "event=resume job=%s step=%d attempt=%d checkpoint=%s",
            plan.storage.run_name,
            latest.step,
            plan.attempt,
            latest.path,
        )

    def publish(path: Path, step: int, logs: dict[str, float]) -> str:
        return str(store.publish(path, step, plan.attempt).path)

    ctx = run_context(
        plan,
        publish=publish,
        resume_from=latest.path if latest else None,
        local_run=local_run,
        stop_requested=stop.requested if stop is not None else None,
    )
    shutil.rmtree(ctx.staging_dir, ignore_errors=True)
    try:
        result = recipe_for(plan.recipe.method)(ctx)
    except StaleAttempt as err:
        log.error("event=stale_attempt message=%s", err)
        return EXIT_STALE_ATTEMPT
    write_result(
        run_dir,
        plan,
        final_step=result.final_step,
        preempted=result.preempted,
        metrics=result.metrics,
        output=result.output_dir,
        resumed_from=latest.step if latest else None,
        started=started,
    )
    shutil.rmtree(ctx.staging_dir, ignore_errors=True)
    return EXIT_PREEMPTED if result.preempted else EXIT_OK
