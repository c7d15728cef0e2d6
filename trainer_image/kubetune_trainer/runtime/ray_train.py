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
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from kubetune_trainer.exit_codes import EXIT_OK, EXIT_PREEMPTED
from kubetune_trainer.plan import Plan
from kubetune_trainer.recipes import recipe_for
from kubetune_trainer.runtime.context import run_context
from kubetune_trainer.runtime.layout import publish_output, ray_storage, run_dir_of
from kubetune_trainer.training.checkpoints import MANIFEST, CheckpointStore

log = logging.getLogger("kubetune.trainer")


def run_on_ray(plan: Plan, *, local_run: bool) -> int:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        else:
            # A local Ray of our own (kubetune run --local, tests): keep it on loopback.
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=True)
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
        ),
    )
    stop_flag = _define_stop_flag().options(name=stop_flag_name(plan)).remote()
    previous = signal.signal(signal.SIGTERM, lambda *_: _request_stop(stop_flag))
    try:
        result = trainer.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
        ray.kill(stop_flag)
    outcome = result.return_value or {}
    log.info("event=ray_finished outcome=%s", json.dumps(outcome))
    return EXIT_PREEMPTED if outcome.get("preempted") else EXIT_OK


def stop_flag_name(plan: Plan) -> str:
    return f"kubetune-stop-{plan.job.namespace}-{plan.job.name}-{plan.attempt}"


def _define_stop_flag() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class _StopFlag:
        """Set by the driver on SIGTERM; polled by every worker at each step."""

        def __init__(self) -> None:
            self.requested = False

        def request(self) -> None:
            self.requested = True

        def is_requested(self) -> bool:
            return self.requested

    return _StopFlag


def _request_stop(flag: Any) -> None:
    log.warning("event=sigterm action=ask-workers-to-save-and-stop")
    flag.request.remote()


def _worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import torch.distributed as dist

    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        # A node-local copy: HF Trainer resumes from a directory.
        resume_from = Path(tempfile.mkdtemp(prefix="kubetune-resume-"))
        checkpoint.to_directory(str(resume_from))

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
    }
