"""The single-process path: one worker on local or PVC storage (the fastest start). The run's
checkpoint store (docs/checkpoints.md) says where the attempt resumes and takes every save."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from kubetune_trainer.exit_codes import EXIT_OK, EXIT_PREEMPTED
from kubetune_trainer.plan import Plan
from kubetune_trainer.recipes import recipe_for
from kubetune_trainer.runtime.context import run_context
from kubetune_trainer.runtime.layout import checkpoint_store, run_dir_of, write_result
from kubetune_trainer.runtime.signals import StopSignals
from kubetune_trainer.training.checkpoints import Checkpoint

log = logging.getLogger("kubetune.trainer")


def run_single(plan: Plan, *, local_run: bool, stop: StopSignals | None = None) -> int:
    started = time.time()
    run_dir = run_dir_of(plan)
    assert run_dir is not None, "single-process runs need local or pvc storage"
    store = checkpoint_store(plan)
    base = store.register_attempt(plan.attempt)  # a StaleAttempt exits 76 (kubetune-train)
    log_resume_point(plan, base)

    def publish(path: Path, step: int, logs: dict[str, float]) -> str:
        return store.publish(path, step, plan.attempt).location

    ctx = run_context(
        plan,
        publish=publish,
        resume_from=store.local_copy(base) if base else None,
        local_run=local_run,
        stop_requested=stop.requested if stop is not None else None,
    )
    shutil.rmtree(ctx.staging_dir, ignore_errors=True)
    result = recipe_for(plan.recipe.method)(ctx)  # a StaleAttempt exits 76 (kubetune-train)
    write_result(
        run_dir,
        plan,
        final_step=result.final_step,
        preempted=result.preempted,
        metrics=result.metrics,
        output=result.output_dir,
        resumed_from=base.step if base else None,
        started=started,
    )
    shutil.rmtree(ctx.staging_dir, ignore_errors=True)
    return EXIT_PREEMPTED if result.preempted else EXIT_OK


def log_resume_point(plan: Plan, base: Checkpoint | None) -> None:
    if base is None:
        log.info("event=resume_point attempt=%d checkpoint=none", plan.attempt)
        return
    log.info(
        "event=resume_point attempt=%d checkpoint=%s step=%d from=%s",
        plan.attempt,
        base.name,
        base.step,
        base.adopted_from or base.name,
    )
