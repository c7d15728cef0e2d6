"""Ray Train on S3 storage, killed: the next attempt resumes from the newest complete
checkpoint in the run's checkpoint store (docs/checkpoints.md), on a real S3 server. Ray's
storage_path on S3 reaches the same server through AWS_ENDPOINT_URL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kubetune.api import FineTuneJob
from kubetune.planner import make_plan
from kubetune_trainer.plan import Plan, Scaling
from kubetune_trainer.training.checkpoint_s3 import S3CheckpointStore
from kubetune_trainer.training.checkpoints import Checkpoint
from kubetune_trainer.uris import s3_client

pytestmark = pytest.mark.trainer

SPEC = {
    "data": {"sources": [{"uri": "builtin://arithmetic-sft", "maxSamples": 256}]},
    "training": {"maxSteps": 12, "learningRate": 1e-3, "perDeviceBatchSize": 8,
                 "maxLength": 64, "logEverySteps": 1, "seed": 3},
    "checkpoint": {"everySteps": 2, "keepLast": 2},
}  # fmt: skip


def plan_for(tmp_path: Path, storage: str, attempt: int) -> tuple[Plan, Path]:
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "ray-s3", "namespace": "t"},
            "spec": {"method": "sft", "model": {"source": "builtin://tiny-llama"}, **SPEC},
        }
    )
    cpu = Scaling(workers=1, devices_per_worker=0, nodes=1, use_gpu=False)
    plan = make_plan(job, attempt=attempt, default_storage=storage, scaling=cpu)
    path = tmp_path / f"plan-{attempt}.json"
    path.write_text(plan.to_json())
    return plan, path


def start(plan_path: Path, log: Path, trace: Path) -> subprocess.Popen:
    """The trainer in its own session; every trained step lands in ``trace``/rank-0.jsonl."""
    env = os.environ | {
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_PROGRESS_INTERVAL": "0",
        "KUBETUNE_DATA_TRACE": str(trace),
    }
    command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(plan_path)]
    with log.open("wb") as out:
        # Its own session: the kill takes the driver and the Ray processes it started.
        return subprocess.Popen(
            [*command, "--mode", "ray"], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def session_pids(session: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # after ")": state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def kill_session(session: int) -> None:
    deadline = time.monotonic() + 60
    while pids := session_pids(session):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert time.monotonic() < deadline, f"processes of session {session} survive: {pids}"
        time.sleep(0.2)


def settled_latest(store: S3CheckpointStore) -> Checkpoint | None:
    """The newest complete checkpoint once it has stayed the same for two seconds."""
    seen, since = store.latest(), time.monotonic()
    while time.monotonic() - since < 2:
        time.sleep(0.5)
        now = store.latest()
        if now != seen:
            seen, since = now, time.monotonic()
    return seen


def test_ray_on_s3_resumes_after_a_kill_from_the_newest_complete_checkpoint(
    tmp_path: Path, s3_env: str
) -> None:
    bucket = f"ray-{uuid.uuid4().hex[:8]}"
    s3_client().create_bucket(Bucket=bucket)
    storage = f"s3://{bucket}/runs"
    _, path = plan_for(tmp_path, storage, attempt=1)
    store = S3CheckpointStore(f"{storage}/t/ray-s3", cache_dir=tmp_path / "reader")

    first = start(path, tmp_path / "attempt-1.log", tmp_path / "trace-1")
    deadline = time.monotonic() + 420
    while store.latest() is None or store.latest().step < 4:
        assert first.poll() is None, (tmp_path / "attempt-1.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint at step 4 in time"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    # Whatever of the session outlived the kill (a Ray worker in a group of its own) is gone
    # too, and the server has finished any request already sent: what attempt 2 will find.
    kill_session(first.pid)
    latest = settled_latest(store)
    assert latest is not None and latest.attempt == 1 and 4 <= latest.step < 12
    assert store.verify(latest) == []

    _, path = plan_for(tmp_path, storage, attempt=2)
    second = start(path, tmp_path / "attempt-2.log", tmp_path / "trace-2")
    assert second.wait(timeout=600) == 0, (tmp_path / "attempt-2.log").read_text()[-3000:]
    # Attempt 2 trained exactly the steps after the checkpoint: it resumed, it did not restart.
    trace = (tmp_path / "trace-2" / "rank-0.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in trace] == list(range(latest.step + 1, 13))
    # The lineage is attempt 2's: its copy of the base, then its own saves up to the end.
    final = store.latest()
    assert final is not None and (final.step, final.attempt) == (12, 2)
    assert [c.step for c in store.complete()] == [10, 12]
    assert store.verify(final) == []
    run = "runs/t/ray-s3/"
    objects = [o["Key"] for o in s3_client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"{run}output/config.json" in objects  # the final model, uploaded
    record = s3_client().get_object(Bucket=bucket, Key=f"{run}attempts/2")["Body"].read()
    assert json.loads(record)["base"] == f"step-{latest.step:08d}-a2"
    # Ray's own run state went to the same server (pyarrow read AWS_ENDPOINT_URL).
    ours = ("attempts/", "checkpoints/", "output/")
    ray_state = [k for k in objects if k.startswith(run) and not k[len(run) :].startswith(ours)]
    assert ray_state, objects
