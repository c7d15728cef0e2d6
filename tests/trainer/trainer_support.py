"""Helpers of the trainer tier: a FineTuneJob's plan for this CPU machine, and running it the
way a pod does (``kubetune-train --plan``, in a child process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kubetune.api import FineTuneJob
from kubetune.planner import make_plan
from kubetune_trainer.plan import Plan, Scaling

CPU = Scaling(workers=1, devices_per_worker=0, nodes=1, use_gpu=False)


def run_job(
    tmp_path: Path,
    name: str,
    method: str,
    spec: dict[str, Any],
    model: str = "builtin://tiny-llama",
) -> Plan:
    """Train the job in a child process (asserting it succeeded); its plan."""
    plan, child = start_job(tmp_path, name, method, spec, model)
    assert child.wait() == 0
    return plan


def start_job(
    tmp_path: Path,
    name: str,
    method: str,
    spec: dict[str, Any],
    model: str = "builtin://tiny-llama",
    log: Path | None = None,
) -> tuple[Plan, subprocess.Popen[bytes]]:
    """Start training the job in a child process (its output written to ``log`` when given);
    its plan and the child."""
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "t"},
            "spec": {"method": method, "model": {"source": model}, **spec},
        }
    )
    plan = make_plan(job, default_storage=str(tmp_path / "runs"), scaling=CPU)
    plan_path = tmp_path / f"{name}.json"
    plan_path.write_text(plan.to_json())
    env = os.environ | {
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_PROGRESS_INTERVAL": "0",
        "KUBETUNE_PROGRESS_FILE": str(run_dir(plan) / "progress.json"),
    }
    command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(plan_path)]
    if log is None:
        return plan, subprocess.Popen(command, env=env)
    with log.open("wb") as out:
        return plan, subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def run_dir(plan: Plan) -> Path:
    return Path(plan.storage.root) / plan.storage.run_name
