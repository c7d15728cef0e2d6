"""When and how often a job is reconciled: one pass at a time per job, requeues the lifecycle
asks for, retries with backoff after errors, and the safety-net resync of every job.

Every trigger ends in :meth:`Scheduler.reconcile_job`, which, under a per-job lock, reads the
job fresh from the API server, observes its children and dependencies, asks
:func:`kubetune.controller.lifecycle.reconcile` what to do, and does it (``api_client``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import kopf

from kubetune.api import KIND, Phase
from kubetune.builders import ClusterFacts, names
from kubetune.controller import lifecycle
from kubetune.controller.api_client import (
    KUEUE_CRD,
    RAYJOB_CRD,
    ApiClient,
    JobGone,
    describe,
    execute,
    observe,
)
from kubetune.controller.config import OperatorConfig
from kubetune.controller.lifecycle import Decision, Delete
from kubetune.controller.metrics import OperatorMetrics
from kubetune.controller.peering import Peering

log = logging.getLogger("kubetune.operator")

JobKey = tuple[str, str]
"""(namespace, name)"""


class Scheduler:
    """The operator's per-job state, made at start-up; every per-job entry is dropped when the
    job is deleted (:meth:`forget`)."""

    def __init__(
        self,
        config: OperatorConfig,
        api: ApiClient,
        metrics: OperatorMetrics,
        peering: Peering,
    ) -> None:
        self.config = config
        self.api = api
        self.metrics = metrics
        self.peering = peering
        self.locks: dict[JobKey, asyncio.Lock] = {}
        self.timers: dict[JobKey, asyncio.TimerHandle] = {}
        self.failures: dict[JobKey, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def reset(self) -> None:
        """A new kopf run (a restart, or a second runner in one process) starts with no
        per-job state."""
        self.locks.clear()
        self.timers.clear()
        self.failures.clear()

    def _lock(self, key: JobKey) -> asyncio.Lock:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock

    def forget(self, namespace: str, name: str) -> None:
        """Drop everything kept for a deleted job."""
        key = (namespace, name)
        handle = self.timers.pop(key, None)
        if handle is not None:
            handle.cancel()
        self.failures.pop(key, None)
        lock = self.locks.get(key)
        if lock is not None and not lock.locked():
            self.locks.pop(key, None)
        self.metrics.forget_job(namespace, name)

    # -- one pass ----------------------------------------------------------------------------

    def lifecycle_settings(self) -> lifecycle.Settings:
        crds = self.api.installed_crds()
        config = self.config
        facts = ClusterFacts(
            trainer_image=config.trainer_image,
            export_image=config.export_image,
            default_storage=config.default_storage,
            rayjob_crd=crds[RAYJOB_CRD],
            kueue=crds[KUEUE_CRD],
        )
        return lifecycle.Settings(
            facts=facts,
            default_storage=config.default_storage,
            dependency_poll_seconds=config.dependency_poll,
        )

    def _pass(self, namespace: str, name: str) -> tuple[dict[str, Any], Decision, list[str]] | None:
        """Read, decide, act: the blocking part of a pass, in one worker thread, so a pass
        waits for a worker once (under a burst, passes finish in arrival order instead of all
        of them finishing together at the end). None when the job no longer exists."""
        started = time.perf_counter()
        try:
            job = self.api.get_job(namespace, name)
            if job is None:
                return None
            settings = self.lifecycle_settings()
            world = observe(self.api, job, settings.facts.rayjob_crd)
            decision = lifecycle.reconcile(job, world, datetime.now(UTC), settings)
            return job, decision, execute(self.api, job, decision)
        except JobGone:
            return None  # deleted meanwhile: the garbage collector takes the rest
        except Exception:
            self.metrics.reconcile_errors.inc()
            raise
        finally:
            self.metrics.reconcile_duration.observe(time.perf_counter() - started)

    def _count(self, job: dict[str, Any], decision: Decision, done: list[str]) -> None:
        """Attempts launched and restarts, from the decision's structured record."""
        method = str((job.get("spec") or {}).get("method") or "unknown")
        launchers = {
            f"created {m['kind']}/{m['metadata']['name']}"
            for create in decision.creates
            for m in create.manifests
            if m["kind"] in lifecycle.LAUNCHER_KINDS
            and m["metadata"]["labels"].get(names.LABEL_COMPONENT) == "launcher"
        }  # not the export stage's Jobs
        launched = sum(1 for line in done if line in launchers)
        if launched:
            namespace = job["metadata"]["namespace"]
            self.metrics.attempts.labels(namespace=namespace, method=method).inc(launched)
        for event in decision.events:
            if event.restart is not None:
                self.metrics.restarts.labels(reason=event.restart).inc()

    async def reconcile_job(self, namespace: str, name: str) -> None:
        """One pass for one job, serialized per job. Raises on API errors (callers retry)."""
        key = (namespace, name)
        async with self._lock(key):
            result = await asyncio.to_thread(self._pass, namespace, name)
            if result is None:
                self.forget(namespace, name)
                return
            job, decision, done = result
            for event in decision.events:
                self.api.post_event(job, event)
            self._count(job, decision, done)
            self.failures.pop(key, None)
            status = {**(job.get("status") or {}), **decision.status_patch}
            if any(isinstance(a, Delete) and a.kind == KIND for a in decision.actions):
                self.forget(namespace, name)  # deleted itself (ttlSecondsAfterFinished)
            else:
                self.metrics.observe_job({**job, "status": status})
            if done or decision.status_patch:
                log.info(
                    "job=%s/%s phase=%s attempt=%s actions=%s",
                    namespace,
                    name,
                    status.get("phase"),
                    status.get("attempt"),
                    ",".join(done) or "-",
                )
            if decision.requeue_after is not None:
                self.schedule(namespace, name, decision.requeue_after)
            if decision.status_patch.get("phase") == Phase.succeeded:
                self._nudge_waiting(namespace)

    def _nudge_waiting(self, namespace: str) -> None:
        """A job succeeded: jobs of the namespace waiting for dependencies look again now.
        They are known from the watch (no list of every job per success: that is quadratic)."""
        for name in self.metrics.jobs_in_phase(namespace, Phase.waiting_for_dependencies):
            self.schedule(namespace, name, 0)

    # -- requeues and retries ----------------------------------------------------------------

    def retry_delay(self, key: JobKey) -> float:
        n = self.failures.get(key, 0) + 1
        self.failures[key] = n
        config = self.config
        return min(config.retry_backoff_max, config.retry_backoff * 2 ** min(n - 1, 16))

    def schedule(self, namespace: str, name: str, delay: float) -> None:
        """Reconcile the job after delay seconds (the earliest of several requests wins)."""
        loop = asyncio.get_running_loop()
        key = (namespace, name)
        when = loop.time() + max(0.0, delay)
        handle = self.timers.get(key)
        if handle is not None and not handle.cancelled():
            if handle.when() <= when:
                return
            handle.cancel()
        self.timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: JobKey) -> None:
        self.timers.pop(key, None)
        task = asyncio.get_running_loop().create_task(self._scheduled(key))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _scheduled(self, key: JobKey) -> None:
        namespace, name = key
        try:
            if not await self.peering.is_acting():
                return  # a standby: the active replica reconciles (and its resync covers all)
            await self.reconcile_job(namespace, name)
        except Exception as err:
            delay = self.retry_delay(key)
            log.warning(
                "job=%s/%s reconcile failed (%s); retry in %.1fs",
                namespace,
                name,
                describe(err),
                delay,
            )
            self.schedule(namespace, name, delay)

    async def handler_pass(self, namespace: str, name: str) -> None:
        """For kopf's change handlers: errors become TemporaryError (kopf retries with
        delay)."""
        try:
            await self.reconcile_job(namespace, name)
        except kopf.TemporaryError:
            raise
        except Exception as err:
            raise kopf.TemporaryError(
                f"reconcile failed: {describe(err)}", delay=self.retry_delay((namespace, name))
            ) from err

    # -- the safety net ----------------------------------------------------------------------

    async def resync_loop(self) -> None:
        """Every job is looked at again each interval, whatever event was missed, and state
        kept for jobs that no longer exist is dropped (a missed DELETED event cannot leak
        memory). An operator-level loop rather than ``kopf.timer``, which would put a kopf
        finalizer on every job, so that deleting a job would wait for a running operator."""
        interval = self.config.timer_interval
        while True:
            await asyncio.sleep(interval)
            if not await self.peering.is_acting():
                continue
            try:
                listed = await asyncio.to_thread(self.api.list_jobs)
            except Exception as err:
                log.warning("resync: cannot list jobs (%s)", err)
                continue
            existing = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed}
            kept = {*self.locks, *self.timers, *self.failures, *self.metrics.known_jobs()}
            for key in [k for k in kept if k not in existing]:
                self.forget(*key)
            # Spread over the interval: a thousand passes at once would delay event-driven ones.
            spacing = interval / max(1, len(existing))
            for i, (namespace, name) in enumerate(sorted(existing)):
                self.schedule(namespace, name, i * spacing)
