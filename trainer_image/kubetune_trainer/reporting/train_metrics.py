"""Prometheus metrics of a training run, served by rank 0 (kubetune_train_*)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

LABELS = ("namespace", "job", "method")


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
            if key in known:
                self.set(known[key], value)
            elif not key.startswith(("train_", "eval_runtime", "total_flos")):
                name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
                self.method_metric.labels(**self.labels, name=name).set(value)
