"""spec.tracking, proven against the trackers themselves: a tiny SFT job (training and held-out
metrics) and an eval job (values with intervals, the comparison table, the report) land in a
W&B offline run, read back from W&B's own run file with W&B's protobuf records, and in a real
``mlflow server`` with a SQLite backend, read back through MLflow's client."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.plan import Plan
from tests.trainer.trainer_support import run_job

pytestmark = pytest.mark.trainer

SERVER_START_TIMEOUT = 300.0


def sft_spec(tracking: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": {
            "sources": [{"uri": "builtin://arithmetic-sft", "maxSamples": 96}],
            "evalSources": [{"uri": "builtin://arithmetic-sft", "split": "test", "maxSamples": 16}],
        },
        "training": {
            "maxSteps": 6,
            "learningRate": 1e-3,
            "perDeviceBatchSize": 16,
            "maxLength": 64,
            "logEverySteps": 2,
            "evalEverySteps": 3,
        },
        "tracking": tracking,
    }


def eval_spec(tracking: dict[str, Any], trained: str) -> dict[str, Any]:
    return {
        "eval": {
            "modelName": "sft",
            "models": [{"name": "base", "source": "builtin://tiny-llama"}],
            "metrics": [
                {
                    "name": "perplexity",
                    "type": "perplexity",
                    "dataset": {
                        "uri": "builtin://arithmetic-sft",
                        "split": "test",
                        "maxSamples": 16,
                    },
                },
            ],
        },
        "training": {"perDeviceBatchSize": 16, "maxLength": 64},
        "tracking": tracking,
        "model": {"source": trained},
    }


def run_pair(tmp_path: Path, tracking: dict[str, Any]) -> tuple[Plan, Plan]:
    trained = run_job(tmp_path, "tracked", "sft", sft_spec(tracking))
    spec = eval_spec(tracking, trained.storage.output_dir)
    model = spec.pop("model")["source"]
    evaluated = run_job(tmp_path, "tracked-eval", "eval", spec, model=model)
    return trained, evaluated


# --------------------------------------------------------------------------- W&B offline


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a W&B run file (``run-ID.wandb``): a 7-byte header (":W&B", magic,
    version), then LevelDB-log framing (32 KiB blocks; each chunk a CRC, a length and a type:
    full, first, middle, last) around W&B's protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    block = 32 * 1024
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    offset, pending = 7, b""
    while offset + 7 <= len(data):
        left = block - offset % block
        if left < 7:
            offset += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(path: Path) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """(name, history rows, final summary) of an offline run."""
    name, history, summary = "", [], {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            name = record.run.display_name
        elif kind == "history":
            history.append(
                {
                    "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                    for i in record.history.item
                }
            )
        elif kind == "summary":
            summary |= {
                "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                for i in record.summary.update
            }
    return name, history, summary


def test_wandb_offline_run_holds_training_held_out_and_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    trained, evaluated = run_pair(tmp_path, {"backend": "wandb", "project": "kubetune-test"})
    runs = {}
    for run_file in sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb")):
        name, history, summary = wandb_run(run_file)
        runs[name] = (run_file.parent, history, summary)
    assert len(runs) == 2 and "tracked-eval" in runs

    _, history, _ = next(v for k, v in runs.items() if k != "tracked-eval")
    losses = [row for row in history if "train/loss" in row]
    held_out = [row for row in history if "eval/loss" in row]
    assert [row["train/global_step"] for row in losses] == [1, 2, 4, 6]
    assert [row["train/global_step"] for row in held_out] == [3, 6]
    ours = [
        json.loads(x)
        for x in (Path(trained.storage.root) / "t" / "tracked" / "history.jsonl").open()
    ]
    assert held_out[-1]["eval/loss"] == pytest.approx(
        next(e["eval_loss"] for e in reversed(ours) if "eval_loss" in e)
    )

    folder, _, summary = runs["tracked-eval"]
    results = json.loads((Path(evaluated.storage.output_dir) / "eval_results.json").read_text())
    sft = results["models"][1]["metrics"]["perplexity"]
    assert summary["sft/perplexity"] == pytest.approx(sft["value"])
    assert summary["sft/perplexity_low"] == pytest.approx(sft["estimate"]["low"])
    (table_file,) = folder.glob("files/media/table/comparison_*.table.json")
    table = json.loads(table_file.read_text())
    rows = {
        (row[0], row[1]): dict(zip(table["columns"], row, strict=True)) for row in table["data"]
    }
    delta = results["comparisons"]["sft"]["perplexity"]["delta"]
    assert rows[("sft", "perplexity")]["delta"] == pytest.approx(delta["value"])
    assert (
        rows[("sft", "perplexity")]["significant"]
        == results["comparisons"]["sft"]["perplexity"]["significant"]
    )
    assert rows[("base", "perplexity")]["delta"] is None


# --------------------------------------------------------------------------- MLflow server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port, SQLite backend, local artifacts."""
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            os.killpg(server.pid, signal.SIGTERM)
            raise RuntimeError(
                f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}"
            )
        time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    log.close()


def test_mlflow_server_holds_metrics_params_and_the_report(
    tmp_path: Path, mlflow_server: str
) -> None:
    from mlflow.tracking import MlflowClient

    _, evaluated = run_pair(
        tmp_path, {"backend": "mlflow", "uri": mlflow_server, "project": "kubetune-test"}
    )
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("kubetune-test")
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert "tracked-eval" in runs and len(runs) == 2
    training = next(r for name, r in runs.items() if name != "tracked-eval")
    assert float(training.data.params["learning_rate"]) == pytest.approx(1e-3)
    held_out = client.get_metric_history(training.info.run_id, "eval_loss")
    assert sorted(m.step for m in held_out) == [3, 6]
    assert [m.step for m in client.get_metric_history(training.info.run_id, "loss")] == [1, 2, 4, 6]

    evaluation = runs["tracked-eval"]
    output = Path(evaluated.storage.output_dir)
    results = json.loads((output / "eval_results.json").read_text())
    sft = results["models"][1]["metrics"]["perplexity"]
    assert evaluation.data.metrics["sft.perplexity"] == pytest.approx(sft["value"])
    assert evaluation.data.metrics["sft.perplexity_high"] == pytest.approx(sft["estimate"]["high"])
    assert evaluation.data.params["baseline"] == "base"
    names = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert names == {"eval_results.json", "eval_report.md", "eval_report.html"}
    downloaded = client.download_artifacts(evaluation.info.run_id, "eval_report.md", str(tmp_path))
    assert Path(downloaded).read_text() == (output / "eval_report.md").read_text()
