"""Ray Train (V2) path: one TorchTrainer worker per device.

Checkpoints go through the run's checkpoint store, exactly as in the single-process path: rank
0 registers the attempt and chooses the resume point, every rank reads it from the store (a
node-local copy on S3), and after each save the ranks meet at a barrier and rank 0 alone
publishes (docs/checkpoints.md). Ray Train's own checkpoint registry is not used: workers report
metrics only, so Ray never holds a checkpoint that could contradict the store.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from kubetune_trainer.errors import UserError
from kubetune_trainer.exit_codes import EXIT_OK, EXIT_PREEMPTED
from kubetune_trainer.plan import Plan
from kubetune_trainer.recipes import recipe_for
from kubetune_trainer.reporting.logs import configure_logging, log_level
from kubetune_trainer.runtime.context import run_context
from kubetune_trainer.runtime.layout import (
    checkpoint_store,
    publish_output,
    ray_storage,
    run_dir_of,
    write_result,
)
from kubetune_trainer.runtime.signals import StopSignals
from kubetune_trainer.runtime.single import log_resume_point
from kubetune_trainer.training.checkpoints import StaleAttempt

log = logging.getLogger("kubetune.trainer")


def run_on_ray(plan: Plan, *, local_run: bool, stop: StopSignals | None = None) -> int:
    """Train on Ray Train workers. A stop request (``stop``: SIGTERM or Ctrl-C reached this
    driver) is passed to the workers through a stop-flag actor they poll at every step."""
    import ray
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # Ray's own lines (its start-up banner, Ray Train's "Reporting training result" per
    # report) only from WARNING up, unless kubetune itself logs at DEBUG. In an interactive
    # local run Ray Train's controller warnings too: on a busy workstation its state queries
    # time out now and then ("State API may be temporarily unavailable"), which says nothing
    # about the training.
    ray_level = "DEBUG" if log_level() == "DEBUG" else "WARNING"
    train_level = "ERROR" if local_run and ray_level == "WARNING" else ray_level
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": True,
            "logging_level": logging.getLevelName(ray_level),
        }
        if address:
            ray.init(address=address, **options)
        else:
            # A local Ray of our own (kubetune run --local, tests): keep it on loopback.
            ray.init(_node_ip_address="127.0.0.1", **options)
    if stop is not None:
        stop.install()  # ray.init installs its own SIGTERM handler, which would end the driver
    storage_path, name = ray_storage(plan)
    scaling = plan.scaling
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"plan": plan.to_json(), "local_run": local_run},
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=scaling.workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"GPU": scaling.devices_per_worker}
            if scaling.use_gpu
            else {"CPU": 1},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            logging_config=LoggingConfig(log_level=train_level),
        ),
    )
    started = time.time()
    stop_flag = _define_stop_flag().options(name=stop_flag_name(plan)).remote()
    if stop is not None:
        stop.on_request = lambda: _request_stop(stop_flag)
        if stop.requested():  # the signal came while Ray was starting
            _request_stop(stop_flag)
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        cause = worker_user_error(err)
        if cause is None:
            raise
        raise cause from err
    finally:
        if stop is not None:
            stop.on_request = None
        ray.kill(stop_flag)
    outcome = result.return_value or {}
    log.info("event=ray_finished outcome=%s", json.dumps(outcome))
    if outcome.get("stale"):
        raise StaleAttempt(outcome["stale"])  # exits 76 with its error line (kubetune-train)
    run_dir = run_dir_of(plan)
    if run_dir is not None:
        write_result(
            run_dir,
            plan,
            final_step=outcome.get("finalStep", 0),
            preempted=bool(outcome.get("preempted")),
            metrics=outcome.get("metrics", {}),
            output=plan.storage.output_dir if not outcome.get("preempted") else None,
            resumed_from=outcome.get("resumedFrom"),
            started=started,
        )
    return EXIT_PREEMPTED if outcome.get("preempted") else EXIT_OK


def worker_user_error(err: Exception) -> UserError | None:
    """The expected failure (bad data, a missing model, ...) that stopped a worker, lowest rank
    first, so the driver exits with its code and message rather than Ray's wrapper."""
    failures: dict[int, BaseException] = getattr(err, "worker_failures", None) or {}
    for rank in sorted(failures):
        # Ray returns each worker's exception wrapped with its traceback text.
        cause = getattr(failures[rank], "_base_exc", failures[rank])
        if isinstance(cause, UserError):
            return cause
    return None


def stop_flag_name(plan: Plan) -> str:
    return f"kubetune-stop-{plan.job.namespace}-{plan.job.name}-{plan.attempt}"


def _define_stop_flag() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class _StopFlag:
        """Set by the driver on a stop request; polled by every worker at each step."""

        def __init__(self) -> None:
            self.requested = False

        def request(self) -> None:
            self.requested = True

        def is_requested(self) -> bool:
            return self.requested

    return _StopFlag


def _request_stop(flag: Any) -> None:
    log.info("event=stop_requested action=ask-workers-to-save-and-stop")
    flag.request.remote()


def _worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import torch.distributed as dist

    configure_logging(with_time=False)
    plan = Plan.from_json(config["plan"])
    if not plan.scaling.use_gpu:
        # DeepSpeed picks its accelerator when first imported; a CPU plan must get the CPU one
        # even on a node that has GPUs.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    distributed = dist.is_available() and dist.is_initialized()
    store = checkpoint_store(plan)

    # Rank 0 alone registers the attempt and chooses the resume point; the others take its word.
    decision: list[Any] = [None]
    if rank == 0:
        try:
            base = store.register_attempt(plan.attempt)
            log_resume_point(plan, base)
            decision = [{"base": base.name if base else None, "step": base.step if base else None}]
        except StaleAttempt as err:
            log.error("event=stale_attempt message=%s", err)
            decision = [{"stale": str(err)}]
    if distributed:
        dist.broadcast_object_list(decision, src=0)
    if "stale" in decision[0]:
        return {"stale": decision[0]["stale"], "finalStep": 0, "preempted": False, "metrics": {}}
    base_name = decision[0]["base"]
    resume_from = store.local_copy(store.checkpoint(base_name)) if base_name else None

    stop_flag = ray.get_actor(stop_flag_name(plan))

    def stop_requested() -> bool:
        return bool(ray.get(stop_flag.is_requested.remote(), timeout=30))

    def publish(path: Path, step: int, logs: dict[str, float]) -> str | None:
        if distributed:
            dist.barrier()  # every rank's files of this checkpoint are written
        location = None
        if rank == 0:
            location = store.publish(path, step, plan.attempt).location
        ray.train.report({"step": step, **logs})
        return location

    ctx = run_context(
        plan,
        publish=publish,
        resume_from=resume_from,
        local_run=config.get("local_run", False),
        rank=rank,
        world_size=world,
        stop_requested=stop_requested,
    )
    result = recipe_for(plan.recipe.method)(ctx)
    if rank == 0:
        publish_output(plan, result)
    return {
        "finalStep": result.final_step,
        "preempted": result.preempted,
        "metrics": result.metrics,
        "resumedFrom": decision[0]["step"],
    }
