"""Runs a plan: in this process (one worker, local storage: fastest start) or on Ray Train
(several workers or nodes, or remote storage)."""

from __future__ import annotations

import logging
from typing import Literal

from kubetune_trainer.plan import Plan
from kubetune_trainer.runtime.ray_train import run_on_ray
from kubetune_trainer.runtime.single import run_single
from kubetune_trainer.uris import local_storage

log = logging.getLogger("kubetune.trainer")

Mode = Literal["auto", "single", "ray"]


def choose_mode(plan: Plan, requested: Mode) -> Literal["single", "ray"]:
    if requested != "auto":
        return requested
    single = plan.scaling.workers == 1 and local_storage(plan.storage.root) is not None
    return "single" if single else "ray"


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
    return run_on_ray(plan, local_run=local_run)
