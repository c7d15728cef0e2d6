"""The operator's configuration: read once, from the environment, when the operator starts
(:meth:`OperatorConfig.from_env` in ``kubetune.operator_main``), then passed to the parts that
need it. Nothing reads the environment at import time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    return float(value) if value else default


@dataclass(frozen=True)
class OperatorConfig:
    """The operator's configuration (environment variables in brackets)."""

    trainer_image: str = "ghcr.io/kubetune/trainer:latest"  # KUBETUNE_TRAINER_IMAGE
    export_image: str = ""  # KUBETUNE_EXPORT_IMAGE
    default_storage: str = "pvc://kubetune-runs"  # KUBETUNE_DEFAULT_STORAGE
    namespace: str | None = None  # KUBETUNE_NAMESPACE: watch only this namespace
    metrics_port: int = 8080  # KUBETUNE_METRICS_PORT (0: no metrics server)
    health_port: int = 8081
    """KUBETUNE_HEALTH_PORT: kopf's liveness endpoint, GET /healthz (0: none)."""
    ha: bool = False  # KUBETUNE_HA=1: kopf peering (an active/standby pair)
    peering_priority: int = 0
    """KUBETUNE_PEERING_PRIORITY: with HA, the replica with the highest priority acts. kopf
    pauses *every* operator when two alive ones share a priority, so 0 (the default) picks a
    random one per process."""
    peering_lifetime: int = 60
    """KUBETUNE_PEERING_LIFETIME_SECONDS: how long after its last keep-alive a silent replica
    is taken for dead and its standby takes over."""
    timer_interval: float = 60.0  # KUBETUNE_TIMER_SECONDS: safety-net resync of every job
    dependency_poll: float = 10.0  # KUBETUNE_DEPENDENCY_POLL_SECONDS
    retry_backoff: float = 2.0  # KUBETUNE_RETRY_BACKOFF_SECONDS: first retry after an error
    retry_backoff_max: float = 60.0
    server_timeout: float = 300.0  # KUBETUNE_WATCH_TIMEOUT_SECONDS
    api_workers: int = 32
    """KUBETUNE_API_WORKERS: API calls in flight at once (threads and pooled connections); the
    calls are blocking, so this bounds how many jobs are reconciled concurrently."""
    launcher_debounce: float = 0.5
    """KUBETUNE_LAUNCHER_DEBOUNCE_SECONDS: a launcher's status changes in bursts (pods created,
    active, ready); events within this window end in one reconcile pass."""
    crd_refresh: float = 300.0  # how often to look for the RayJob CRD again
    fault_exit_after_creates: int = 0
    """KUBETUNE_FAULT_EXIT_AFTER_CREATES (fault injection for tests): the process dies
    (exit code 3) right after its Nth successful child creation, before anything else."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """The configuration from ``env`` (default: this process's environment)."""
        env = os.environ if env is None else env
        return cls(
            trainer_image=env.get("KUBETUNE_TRAINER_IMAGE") or cls.trainer_image,
            export_image=env.get("KUBETUNE_EXPORT_IMAGE", ""),
            default_storage=env.get("KUBETUNE_DEFAULT_STORAGE") or cls.default_storage,
            namespace=env.get("KUBETUNE_NAMESPACE") or None,
            metrics_port=int(env.get("KUBETUNE_METRICS_PORT", "8080")),
            health_port=int(env.get("KUBETUNE_HEALTH_PORT", "8081")),
            ha=env.get("KUBETUNE_HA", "") in ("1", "true", "yes"),
            peering_priority=int(env.get("KUBETUNE_PEERING_PRIORITY", "0")),
            peering_lifetime=int(env.get("KUBETUNE_PEERING_LIFETIME_SECONDS", "60")),
            timer_interval=_float(env, "KUBETUNE_TIMER_SECONDS", 60.0),
            dependency_poll=_float(env, "KUBETUNE_DEPENDENCY_POLL_SECONDS", 10.0),
            retry_backoff=_float(env, "KUBETUNE_RETRY_BACKOFF_SECONDS", 2.0),
            retry_backoff_max=_float(env, "KUBETUNE_RETRY_BACKOFF_MAX_SECONDS", 60.0),
            server_timeout=_float(env, "KUBETUNE_WATCH_TIMEOUT_SECONDS", 300.0),
            api_workers=int(env.get("KUBETUNE_API_WORKERS", "32")),
            launcher_debounce=_float(env, "KUBETUNE_LAUNCHER_DEBOUNCE_SECONDS", 0.5),
            fault_exit_after_creates=int(env.get("KUBETUNE_FAULT_EXIT_AFTER_CREATES", "0")),
        )
