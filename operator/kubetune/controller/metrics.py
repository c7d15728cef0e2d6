"""The operator's Prometheus metrics (served on /metrics by prometheus_client).

Per-job series are removed when the job is deleted (:func:`forget_job`), so the number of series
follows the number of jobs that exist, not the number that ever existed.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge(
    "kubetune_jobs", "FineTuneJobs by phase and method.", ["phase", "method"], registry=REGISTRY
)
ATTEMPTS = Counter(
    "kubetune_job_attempts", "Attempts launched.", ["namespace", "method"], registry=REGISTRY
)
RESTARTS = Counter(
    "kubetune_job_restarts",
    "New attempts after a failed one, by reason (ApplicationFailure, Disruption, Unsuspended).",
    ["reason"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "kubetune_reconcile_duration_seconds",
    "Time of one reconcile pass (read, decide, act).",
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "kubetune_reconcile_errors", "Reconcile passes that raised.", registry=REGISTRY
)
JOB_LABELS = ["namespace", "job", "method"]
JOB_STEP = Gauge("kubetune_job_step", "Optimizer steps done.", JOB_LABELS, registry=REGISTRY)
JOB_LOSS = Gauge("kubetune_job_loss", "Latest training loss.", JOB_LABELS, registry=REGISTRY)
JOB_TOKENS = Gauge(
    "kubetune_job_tokens_per_second",
    "Training throughput, all workers together.",
    JOB_LABELS,
    registry=REGISTRY,
)
_PER_JOB = (JOB_STEP, JOB_LOSS, JOB_TOKENS)

# (namespace, name) -> (phase, method) and the labels its per-job series were set with.
_known: dict[tuple[str, str], tuple[str, str]] = {}


def _refresh_jobs_gauge() -> None:
    counts: dict[tuple[str, str], int] = {}
    for key in _known.values():
        counts[key] = counts.get(key, 0) + 1
    JOBS.clear()
    for (phase, method), n in counts.items():
        JOBS.labels(phase=phase, method=method).set(n)


def observe_job(body: dict[str, Any]) -> None:
    """Update the phase count and per-job gauges from a FineTuneJob as last seen."""
    meta = body.get("metadata") or {}
    key = (meta.get("namespace") or "", meta.get("name") or "")
    method = str((body.get("spec") or {}).get("method") or "unknown")
    status = body.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    if _known.get(key) != (phase, method):
        _known[key] = (phase, method)
        _refresh_jobs_gauge()
    progress = status.get("progress") or {}
    labels = {"namespace": key[0], "job": key[1], "method": method}
    for gauge, field in ((JOB_STEP, "step"), (JOB_LOSS, "loss"), (JOB_TOKENS, "tokensPerSecond")):
        value = progress.get(field)
        try:
            number = float(value) if value is not None else None
        except ValueError:
            number = None
        if number is not None:
            gauge.labels(**labels).set(number)


def forget_job(namespace: str, name: str) -> None:
    """Drop a deleted job's series."""
    known = _known.pop((namespace, name), None)
    if known is not None:
        _refresh_jobs_gauge()
        method = known[1]
        for gauge in _PER_JOB:
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name, method)


def jobs_in_phase(namespace: str, phase: str) -> list[str]:
    """Names of the namespace's jobs last seen in ``phase``."""
    return [name for (ns, name), (seen, _) in _known.items() if ns == namespace and seen == phase]


def tracked_jobs() -> int:
    return len(_known)


def known_jobs() -> list[tuple[str, str]]:
    """(namespace, name) of every job with series."""
    return list(_known)


__all__ = [
    "ATTEMPTS",
    "JOBS",
    "RECONCILE_DURATION",
    "RECONCILE_ERRORS",
    "REGISTRY",
    "RESTARTS",
    "forget_job",
    "jobs_in_phase",
    "known_jobs",
    "observe_job",
    "tracked_jobs",
]
