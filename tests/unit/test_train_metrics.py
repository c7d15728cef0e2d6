"""The trainer's Prometheus endpoint serves kubetune_train_* with the job's labels."""

from __future__ import annotations

import socket
import urllib.request

from kubetune_trainer.reporting.train_metrics import TrainMetrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_endpoint_serves_training_and_method_metrics() -> None:
    metrics = TrainMetrics("team-a", "sft-chat", "dpo")
    metrics.observe_logs(
        {"loss": 0.5, "learning_rate": 1e-4, "grad_norm": 2.0, "epoch": 1.5,
         "rewards/accuracies": 0.75, "train_runtime": 10.0, "note": "text"}
    )  # fmt: skip
    metrics.skipped_rows.labels(**metrics.labels).inc(3)
    port = free_port()
    metrics.serve(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    labels = 'job="sft-chat",method="dpo",namespace="team-a"'
    assert f"kubetune_train_loss{{{labels}}} 0.5" in body
    assert f"kubetune_train_grad_norm{{{labels}}} 2.0" in body
    assert f"kubetune_train_epoch{{{labels}}} 1.5" in body
    method_labels = 'job="sft-chat",method="dpo",name="rewards_accuracies",namespace="team-a"'
    assert f"kubetune_train_method_metric{{{method_labels}}} 0.75" in body
    assert f"kubetune_train_skipped_rows_total{{{labels}}} 3.0" in body
    # Trainer summary values are not method metrics.
    assert "train_runtime" not in body
