"""The exit-code contract end to end, as a user meets it: `kubetune run --local` leaves with the
trainer's code and its one error line (no traceback), and honours badRows: skip. Runs are tiny
(tiny-llama, a step or two); most stop before training, where the code allows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import FineTuneJob
from kubetune.planner import make_plan
from kubetune_trainer.exit_codes import (
    EXIT_BAD_DATA,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_STALE_ATTEMPT,
)

pytestmark = pytest.mark.trainer

GOOD = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}


def job_yaml(name: str, **spec: Any) -> str:
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "codes"},
        "spec": {
            "method": "sft",
            "model": {"source": "builtin://tiny-llama"},
            "data": {"sources": [{"uri": "builtin://arithmetic-sft", "maxSamples": 16}]},
            "training": {"maxSteps": 1, "perDeviceBatchSize": 4, "maxLength": 64},
            **spec,
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def env(**extra: str) -> dict[str, str]:
    return os.environ | {"KUBETUNE_METRICS_PORT": "0", "OMP_NUM_THREADS": "1"} | extra


def kubetune(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kubetune.cli", *args]
    return subprocess.run(
        command, cwd=cwd, env=env(**extra), capture_output=True, text=True, timeout=600
    )


def first_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    return next(line for line in result.stderr.splitlines() if line.startswith("error:"))


def write_rows(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_a_malformed_row_exits_65_naming_file_and_row(tmp_path: Path) -> None:
    data = write_rows(
        tmp_path / "data" / "train.jsonl",
        [json.dumps(GOOD).encode(), b'{"messages": [oops', json.dumps(GOOD).encode()],
    )
    data_spec = {"sources": [{"uri": "data/train.jsonl"}]}  # relative to the manifest
    (tmp_path / "job.yaml").write_text(job_yaml("bad", data=data_spec))
    result = kubetune("run", "job.yaml", "--local", "--storage", "runs", cwd=tmp_path)
    assert result.returncode == EXIT_BAD_DATA, result.stderr[-3000:]
    assert first_error(result) == (
        f"error: {data}: row 1 (line 2): malformed JSON: Expecting value: line 1 column 15 "
        "(char 14) (exit 65: bad data)"
    )
    assert "hint: fix the row, or set spec.data.badRows: skip" in result.stderr
    assert "bad: kubetune-train exited with 65" in result.stderr


def test_skipped_bad_rows_train_and_a_gate_not_met_exports_nothing(tmp_path: Path) -> None:
    """badRows: skip drops a malformed and a non-UTF-8 row (counted), training succeeds (0),
    and the export stage's gate is not met (79): the run still succeeds, nothing exported."""
    good = json.dumps(GOOD).encode()
    write_rows(
        tmp_path / "data" / "train.jsonl",
        [good, b'{"messages": [oops', good, b'{"text": "caf\xe9"}', *[good] * 8],
    )
    spec = {
        "data": {"sources": [{"uri": "data/train.jsonl"}], "badRows": "skip"},
        "eval": {"metrics": [{"name": "ppl", "type": "perplexity",
                              "dataset": {"uri": "builtin://arithmetic-sft", "maxSamples": 4}}]},
        "export": {"formats": ["safetensors"], "gate": {"metric": "ppl", "max": 1.0}},
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(job_yaml("skip", **spec))
    result = kubetune("run", "job.yaml", "--local", "--storage", "runs", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    skipped = next(line for line in result.stderr.splitlines() if "event=bad_rows_skipped" in line)
    assert "skipped=2 kept=10" in skipped, skipped  # the malformed row and the non-UTF-8 one
    assert "row 1 (line 2): malformed JSON" in skipped, skipped
    row = next(line for line in result.stdout.splitlines() if line.startswith("skip "))
    cells = row.split()  # JOB METHOD STATE STEP LOSS DURATION SKIPPED-ROWS RESUMED-FROM EXPORT
    assert (cells[2], cells[6], cells[8:11]) == ("Succeeded", "2", ["gate", "not", "met"]), row
    manifest = json.loads((tmp_path / "runs/codes/skip/export/manifest.json").read_text())
    assert manifest["artifacts"] == [] and manifest["gate"]["passed"] is False


def test_an_unreachable_model_source_exits_1_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(job_yaml("far", model={"source": "hf://acme/missing"}))
    result = kubetune(
        "run", "job.yaml", "--local", "--storage", "runs", cwd=tmp_path,
        HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9",
    )  # fmt: skip
    assert result.returncode == EXIT_FAILED
    assert first_error(result) == (
        "error: 'hf://acme/missing': cannot reach the Hub and it is not in the local cache "
        "(exit 1: failed)"
    )
    assert "hint: check the network (HF_ENDPOINT, proxies)" in result.stderr


def test_sigterm_exits_75_after_a_checkpoint(tmp_path: Path) -> None:
    spec = {"training": {"maxSteps": 400, "perDeviceBatchSize": 4, "maxLength": 64}}
    (tmp_path / "job.yaml").write_text(job_yaml("stop", **spec))
    command = [sys.executable, "-m", "kubetune.cli", "run", "job.yaml", "--local"]
    process = subprocess.Popen(
        [*command, "--storage", "runs"],
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    progress = tmp_path / "runs" / "codes" / "stop" / "progress.json"
    deadline = time.monotonic() + 300
    while not (progress.exists() and progress.read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, "training never started"
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert "Traceback" not in stderr
    checkpoints = tmp_path / "runs" / "codes" / "stop" / "checkpoints"
    assert any(checkpoints.iterdir()), "a checkpoint was saved before stopping"


def test_a_stale_attempt_exits_76(tmp_path: Path) -> None:
    job = FineTuneJob.model_validate(yaml.safe_load(job_yaml("stale")))
    paths = []
    for attempt in (1, 2):
        plan = make_plan(job, attempt=attempt, default_storage=str(tmp_path / "runs"))
        paths.append(tmp_path / f"plan-{attempt}.json")
        paths[-1].write_text(plan.to_json())
    attempts = tmp_path / "runs" / "codes" / "stale" / "attempts"
    attempts.mkdir(parents=True)
    (attempts / "2").touch()  # attempt 2 has started
    command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(paths[0])]
    result = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_STALE_ATTEMPT
    assert first_error(result) == (
        "error: attempt 1 is stale: attempt 2 of this run has started; not writing checkpoints "
        "(exit 76: stale attempt)"
    )


def test_a_worker_s_expected_failure_is_the_driver_s() -> None:
    """On the Ray path a DataError raised in a worker reaches the driver wrapped by Ray Train
    (WorkerGroupError, each failure with its traceback text); the driver exits with the
    lowest failed rank's own error and code (a Ray run of its own costs minutes on CPU: Ray's
    real exception types stand in for it)."""
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from kubetune_trainer.data.errors import DataError
    from kubetune_trainer.runtime.ray_train import worker_user_error

    bad = DataError("data/train.jsonl: row 1 (line 2): malformed JSON")
    failures = {
        1: UserExceptionWithTraceback(bad, "Traceback ..."),
        0: UserExceptionWithTraceback(RuntimeError("gloo: peer closed"), "Traceback ..."),
    }
    assert worker_user_error(WorkerGroupError("2 workers failed", failures)) is bad
    assert worker_user_error(WorkerGroupError("1 worker failed", {0: failures[0]})) is None
