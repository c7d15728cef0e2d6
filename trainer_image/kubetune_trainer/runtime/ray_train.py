"""Ray Train (V2) path: one TorchTrainer worker per device, checkpoints through Ray's storage.

Resume is V2's: the run is started again with the same RunConfig(name, storage_path) and each
worker finds the latest registered checkpoint with ray.train.get_checkpoint(). Ray's stock
report callback is not used: every rank would upload its own copy (STACK.md), so after each
save the ranks meet at a barrier and rank 0 alone reports the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from kubetune_trainer.exit_codes import EXIT_OK, EXIT_PREEMPTED
from kubetune_trainer.plan import Plan
from kubetune_trainer.recipes import recipe_for
from kubetune_trainer.reporting.logs import configure_logging, log_level
from kubetune_trainer.runtime.context import run_context
from kubetune_trainer.runtime.layout import publish_output, ray_storage, run_dir_of, write_result
from kubetune_trainer.runtime.signals import StopSignals
from kubetune_trainer.training.checkpoints import MANIFEST, CheckpointStore

log = logging.getLogger("kubetune.trainer")


def run_on_ray(plan: Plan, *, local_run: bool, stop: StopSignals | None = None) -> int:
    """Train on Ray Train workers. A stop request (``stop``: SIGTERM or Ctrl-C reached this
    driver) is passed to the workers through a stop-flag actor they poll at every step."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # Ray's own lines (its start-up banner, Ray Train's "Reporting training result" per
    # checkpoint) only from WARNING up, unless kubetune itself logs at DEBUG. In an interactive
    # local run Ray Train's controller warnings too: on a busy workstation its state queries
    # time out now and then ("State API may be temporarily unavailable"), which says nothing
    # about the training.
    ray_level = "DEBUG" if log_level() == "DEBUG" else "WARNING"
    train_level = "ERROR" if local_run and ray_level == "WARNING" else ray_level
    if not ray.is_initialized():
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": True,
            "logging_level": logging.getLevelName(ray_level),
        }
        address = os.environ.get("RAY_ADDRESS")
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
            checkpoint_config=CheckpointConfig(num_to_keep=plan.recipe.checkpoint.keep_last),
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
    finally:
        if stop is not None:
            stop.on_request = None
        ray.kill(stop_flag)
    outcome = result.return_value or {}
    log.info("event=ray_finished outcome=%s", json.dumps(outcome))
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
    storage_path, name = ray_storage(plan)

    fence = None
    run_dir = run_dir_of(plan)
    if run_dir is not None:
        fence = CheckpointStore(run_dir)
        if rank == 0:
            fence.register_attempt(plan.attempt)

    stop_flag = ray.get_actor(stop_flag_name(plan))

    def stop_requested() -> bool:
        return bool(ray.get(stop_flag.is_requested.remote(), timeout=30))

    resume_from = None
    resumed_step = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        # A node-local copy: HF Trainer resumes from a directory.
        resume_from = Path(tempfile.mkdtemp(prefix="kubetune-resume-"))
        checkpoint.to_directory(str(resume_from))
        resumed_step = json.loads((resume_from / MANIFEST).read_text())["step"]
        if rank == 0:
            log.info(
                "event=resume job=%s step=%d attempt=%d checkpoint=%s",
                plan.storage.run_name,
                resumed_step,
                plan.attempt,
                checkpoint.path,
            )

    def publish(path: Path, step: int, logs: dict[str, float]) -> str | None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        metrics = {"step": step, **logs}
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return None
        if fence is not None:
            fence.check_attempt(plan.attempt)
        manifest = {"step": step, "attempt": plan.attempt, "time": time.time()}
        (path / MANIFEST).write_text(json.dumps(manifest))
        dir_name = f"checkpoint-{step:08d}"
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(path)),
            checkpoint_dir_name=dir_name,
        )
        shutil.rmtree(path, ignore_errors=True)
        return f"{storage_path}/{name}/{dir_name}"

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
    if resume_from is not None:
        shutil.rmtree(resume_from, ignore_errors=True)
    return {
        "finalStep": result.final_step,
        "preempted": result.preempted,
        "metrics": result.metrics,
        "resumedFrom": resumed_step,
    }
