"""kopf wiring: the handlers of one operator run, registered on a registry of their own.

:func:`build_registry` makes the operator's parts from its configuration (the API client, the
metrics, the HA peering, the scheduler) and registers handlers that reach them through their
closure: no module-level state, nothing registered at import time.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from prometheus_client import start_http_server

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.builders import names
from kubetune.controller.api_client import ApiClient
from kubetune.controller.config import OperatorConfig
from kubetune.controller.metrics import OperatorMetrics
from kubetune.controller.peering import Peering
from kubetune.controller.scheduling import Scheduler


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A kopf registry whose handlers run the FineTuneJob operator configured by ``config``."""
    api = ApiClient(config)
    metrics = OperatorMetrics()
    peering = Peering(config, api)
    scheduler = Scheduler(config, api, metrics, peering)
    registry = kopf.OperatorRegistry()
    served_metrics: set[int] = set()
    resync: list[asyncio.Task[None]] = []

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """kopf's default login (in-cluster or kubeconfig, through the kubernetes client),
        which only kopf's default registry brings along."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry, id="configure")
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.posting.enabled = True
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = int(config.server_timeout)  # the API wants an int
        settings.watching.client_timeout = int(config.server_timeout) + 10
        settings.execution.max_workers = 8
        settings.networking.error_backoffs = [1, 2, 5, 10, 30]
        peering.configure(settings)
        # A new run (a restart, or a second runner in one process) starts with no state.
        scheduler.reset()
        api.reset()
        # asyncio.to_thread's default pool has min(32, CPUs + 4) threads: 6 on a 2-core node,
        # which would cap concurrent reconciles far below what the API server serves.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=config.api_workers, thread_name_prefix="kubetune-api")
        )
        if config.metrics_port and config.metrics_port not in served_metrics:
            start_http_server(config.metrics_port, registry=metrics.registry)
            served_metrics.add(config.metrics_port)
        resync.append(asyncio.get_running_loop().create_task(scheduler.resync_loop()))

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="on_change")
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="on_change")
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="on_change")
    async def on_change(name: str, namespace: str, **_: Any) -> None:
        await scheduler.handler_pass(namespace, name)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="on_job_event")
    async def on_job_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        """Metrics follow every change (the trainer's progress too); deletion forgets the job.
        Async, on the event loop: no I/O, and no other thread touching the per-job state."""
        meta = body.get("metadata") or {}
        if event.get("type") == "DELETED":
            scheduler.forget(meta.get("namespace", ""), meta.get("name", ""))
            return
        metrics.observe_job(dict(body))

    managed = {names.LABEL_MANAGED_BY: names.MANAGER}

    @kopf.on.event(
        "ray.io", "v1", "rayjobs", labels=managed, registry=registry, id="on_launcher_event"
    )
    @kopf.on.event("batch", "v1", "jobs", labels=managed, registry=registry, id="on_launcher_event")
    async def on_launcher_event(body: kopf.Body, namespace: str, **_: Any) -> None:
        """A launcher (Job, or RayJob when KubeRay is installed; kopf serves only resources the
        cluster has) changed: reconcile the FineTuneJob it belongs to."""
        owner = (body.get("metadata", {}).get("labels") or {}).get(names.LABEL_JOB)
        if owner:
            scheduler.schedule(namespace, owner, config.launcher_debounce)

    @kopf.on.cleanup(registry=registry, id="stop_resync")
    async def stop_resync(**_: Any) -> None:
        while resync:
            resync.pop().cancel()

    return registry


__all__ = ["build_registry"]
