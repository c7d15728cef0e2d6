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

from kubetune_trainer.checkpoints import CheckpointStore
from kubetune_trainer.exit_codes import EXIT_OK, EXIT_PREEMPTED
from kubetune_trainer.plan import Plan

log = logging.getLogger("kubetune.trainer")


def ray_storage(plan: Plan) -> tuple[str, str]:
    """(storage_path, name) for RunConfig: the run directory split so Ray's layout matches the
    single-process one (<root>/<namespace>/<job>)."""
    from kubetune_trainer.runner import local_storage

    root = local_storage(plan.storage.root)
    base = str(root) if root is not None else plan.storage.root.rstrip("/")
    namespace, name = plan.storage.run_name.split("/", 1)
    return f"{base}/{namespace}", name


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


def _staging_dir(plan: Plan) -> Path:
    """Shared by the ranks of one node (the same path on each), so HF's per-rank files of a
    checkpoint land together."""
    from kubetune_trainer.runner import local_storage

    root = local_storage(plan.storage.root)
    if root is not None:
        return root / plan.storage.run_name / "staging" / f"attempt-{plan.attempt}"
    safe = plan.storage.run_name.replace("/", "_")
    return Path(tempfile.gettempdir()) / "kubetune-staging" / safe / f"attempt-{plan.attempt}"


def _worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import torch.distributed as dist

    from kubetune_trainer.hardware import Hardware
    from kubetune_trainer.metrics import TrainMetrics
    from kubetune_trainer.progress import NullReporter, Throttled, reporter_from_env
    from kubetune_trainer.recipes import recipe_for
    from kubetune_trainer.recipes.common import RunContext
    from kubetune_trainer.runner import (
        local_storage,
        metrics_port,
        output_path,
        progress_interval,
        publish_output,
    )

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
    root = local_storage(plan.storage.root)
    if root is not None:
        fence = CheckpointStore(root / plan.storage.run_name)
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
        (path / "kubetune.json").write_text(json.dumps(manifest))
        dir_name = f"checkpoint-{step:08d}"
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(path)),
            checkpoint_dir_name=dir_name,
        )
        shutil.rmtree(path, ignore_errors=True)
        return f"{storage_path}/{name}/{dir_name}"

    metrics = TrainMetrics(plan.job.namespace, plan.job.name, plan.recipe.method)
    if rank == 0:
        metrics.serve(metrics_port(plan))
    staging = _staging_dir(plan)
    ctx = RunContext(
        plan=plan,
        hardware=Hardware.detect(),
        staging_dir=staging,
        output_dir=output_path(plan),
        publish=publish,
        progress=Throttled(
            reporter_from_env() if rank == 0 else NullReporter(), progress_interval()
        ),
        metrics=metrics if rank == 0 else None,
        resume_from=resume_from,
        world_size=world,
        rank=rank,
        local_run=config.get("local_run", False),
        history=root / plan.storage.run_name / "history.jsonl" if root is not None else None,
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
