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
    metrics.observe_logs(
        {"eval_loss": 0.25, "eval_rewards/accuracies": 0.875, "eval_runtime": 3.0,
         "eval_samples_per_second": 50.0}
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
    # Held-out metrics at each evaluation have their own gauge; timings are not metrics.
    eval_labels = 'job="sft-chat",method="dpo",name="{}",namespace="team-a"'
    assert f"kubetune_train_eval_metric{{{eval_labels.format('eval_loss')}}} 0.25" in body
    accuracies = eval_labels.format("eval_rewards_accuracies")
    assert f"kubetune_train_eval_metric{{{accuracies}}} 0.875" in body
    # Trainer summary values are not method metrics.
    assert "train_runtime" not in body and "eval_runtime" not in body
    assert "eval_samples_per_second" not in body


def test_each_reward_objective_is_a_series_of_its_own() -> None:
    metrics = TrainMetrics("team-a", "grpo-chat", "grpo")
    metrics.observe_logs({"objectives/fluency": 0.25, "objectives/quality": 0.75, "reward": 1.0})
    port = free_port()
    metrics.serve(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    labels = 'job="grpo-chat",method="grpo",name="{}",namespace="team-a"'
    assert f"kubetune_train_objective{{{labels.format('fluency')}}} 0.25" in body
    assert f"kubetune_train_objective{{{labels.format('quality')}}} 0.75" in body
    assert f"kubetune_train_method_metric{{{labels.format('reward')}}} 1.0" in body
    assert "objectives_fluency" not in body  # not a method metric as well
