"""The operator's Prometheus metrics (served on /metrics by prometheus_client).

One :class:`OperatorMetrics` per operator process, made at start-up with its own registry.
Per-job series are removed when the job is deleted (:meth:`OperatorMetrics.forget_job`), so the
number of series follows the number of jobs that exist, not the number that ever existed.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubetune.reasons import RESTART_REASONS

JOB_LABELS = ["namespace", "job", "method"]


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.jobs = Gauge(
            "kubetune_jobs",
            "FineTuneJobs by phase and method.",
            ["phase", "method"],
            registry=registry,
        )
        self.attempts = Counter(
            "kubetune_job_attempts",
            "Attempts launched.",
            ["namespace", "method"],
            registry=registry,
        )
        self.restarts = Counter(
            "kubetune_job_restarts",
            f"New attempts after a failed one, by reason ({', '.join(RESTART_REASONS)}).",
            ["reason"],
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "kubetune_reconcile_duration_seconds",
            "Time of one reconcile pass (read, decide, act).",
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "kubetune_reconcile_errors", "Reconcile passes that raised.", registry=registry
        )
        self.job_step = Gauge(
            "kubetune_job_step", "Optimizer steps done.", JOB_LABELS, registry=registry
        )
        self.job_loss = Gauge(
            "kubetune_job_loss", "Latest training loss.", JOB_LABELS, registry=registry
        )
        self.job_tokens = Gauge(
            "kubetune_job_tokens_per_second",
            "Training throughput, all workers together.",
            JOB_LABELS,
            registry=registry,
        )
        self._per_job = (self.job_step, self.job_loss, self.job_tokens)
        self._known: dict[tuple[str, str], tuple[str, str]] = {}
        """(namespace, name) -> (phase, method) its per-job series were set with."""

    def _refresh_jobs_gauge(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for key in self._known.values():
            counts[key] = counts.get(key, 0) + 1
        self.jobs.clear()
        for (phase, method), n in counts.items():
            self.jobs.labels(phase=phase, method=method).set(n)

    def observe_job(self, body: dict[str, Any]) -> None:
        """Update the phase count and per-job gauges from a FineTuneJob as last seen."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        method = str((body.get("spec") or {}).get("method") or "unknown")
        status = body.get("status") or {}
        phase = str(status.get("phase") or "Pending")
        if self._known.get(key) != (phase, method):
            self._known[key] = (phase, method)
            self._refresh_jobs_gauge()
        progress = status.get("progress") or {}
        labels = {"namespace": key[0], "job": key[1], "method": method}
        for gauge, field in (
            (self.job_step, "step"),
            (self.job_loss, "loss"),
            (self.job_tokens, "tokensPerSecond"),
        ):
            value = progress.get(field)
            try:
                number = float(value) if value is not None else None
            except ValueError:
                number = None
            if number is not None:
                gauge.labels(**labels).set(number)

    def forget_job(self, namespace: str, name: str) -> None:
        """Drop a deleted job's series."""
        known = self._known.pop((namespace, name), None)
        if known is not None:
            self._refresh_jobs_gauge()
            method = known[1]
            for gauge in self._per_job:
                with contextlib.suppress(KeyError):
                    gauge.remove(namespace, name, method)

    def jobs_in_phase(self, namespace: str, phase: str) -> list[str]:
        """Names of the namespace's jobs last seen in ``phase``."""
        return [
            name
            for (ns, name), (seen, _) in self._known.items()
            if ns == namespace and seen == phase
        ]

    def tracked_jobs(self) -> int:
        return len(self._known)

    def known_jobs(self) -> list[tuple[str, str]]:
        """(namespace, name) of every job with series."""
        return list(self._known)


__all__ = ["OperatorMetrics"]
