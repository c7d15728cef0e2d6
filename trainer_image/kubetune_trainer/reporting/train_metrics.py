"""Prometheus metrics of a training run, served by rank 0 (kubetune_train_*)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

LABELS = ("namespace", "job", "method")
OBJECTIVE_PREFIX = "objectives/"
"""Log keys of reward objectives (named reward sources of ppo and grpo): objectives/<name>."""


_EVAL_BOOKKEEPING = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def is_held_out_metric(key: str) -> bool:
    """A held-out evaluation's metric in a HF Trainer log (not its timing)."""
    return key.startswith("eval_") and key not in _EVAL_BOOKKEEPING


def objective_means(logs: dict[str, object]) -> dict[str, float]:
    """The reward objectives' batch means in a log, by objective name."""
    return {
        key.removeprefix(OBJECTIVE_PREFIX): float(value)
        for key, value in logs.items()
        if key.startswith(OBJECTIVE_PREFIX) and isinstance(value, int | float)
    }


class TrainMetrics:
    def __init__(self, namespace: str, job: str, method: str) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"namespace": namespace, "job": job, "method": method}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"kubetune_train_{name}", doc, LABELS, registry=self.registry)

        self.loss = gauge("loss", "Training loss at the latest logged step.")
        self.learning_rate = gauge("learning_rate", "Learning rate at the latest logged step.")
        self.grad_norm = gauge("grad_norm", "Gradient norm before clipping.")
        self.tokens_per_second = gauge("tokens_per_second", "Training tokens per second.")
        self.samples_per_second = gauge("samples_per_second", "Training samples per second.")
        self.step = gauge("step", "Optimizer steps done.")
        self.total_steps = gauge("total_steps", "Optimizer steps planned.")
        self.epoch = gauge("epoch", "Epochs done (fractional).")
        self.method_metric = Gauge(
            "kubetune_train_method_metric",
            "Method-specific metric at the latest logged step (e.g. DPO rewards accuracy).",
            (*LABELS, "name"),
            registry=self.registry,
        )
        self.eval_metric = Gauge(
            "kubetune_train_eval_metric",
            "Held-out metric at the latest evaluation (e.g. eval_loss, eval_perplexity, "
            "eval_rewards_accuracies).",
            (*LABELS, "name"),
            registry=self.registry,
        )
        self.objective = Gauge(
            "kubetune_train_objective",
            "Mean raw value of a reward objective (a named ppo/grpo reward source) at the "
            "latest logged step.",
            (*LABELS, "name"),
            registry=self.registry,
        )
        self.checkpoints = Counter(
            "kubetune_train_checkpoints", "Checkpoints completed.", LABELS, registry=self.registry
        )
        self.skipped_rows = Counter(
            "kubetune_train_skipped_rows",
            "Malformed data rows skipped.",
            LABELS,
            registry=self.registry,
        )

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)

    def set(self, gauge: Gauge, value: float) -> None:
        gauge.labels(**self.labels).set(value)

    def observe_logs(self, logs: dict[str, float]) -> None:
        """Update gauges from a HF Trainer log dict."""
        known = {
            "loss": self.loss,
            "learning_rate": self.learning_rate,
            "grad_norm": self.grad_norm,
            "epoch": self.epoch,
        }
        for key, value in logs.items():
            if not isinstance(value, int | float):
                continue
            name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
            if key in known:
                self.set(known[key], value)
            elif key.startswith(OBJECTIVE_PREFIX):
                self.objective.labels(**self.labels, name=key.removeprefix(OBJECTIVE_PREFIX)).set(
                    value
                )
            elif is_held_out_metric(key):
                self.eval_metric.labels(**self.labels, name=name).set(value)
            elif not key.startswith(("train_", "eval_", "total_flos")):
                self.method_metric.labels(**self.labels, name=name).set(value)
