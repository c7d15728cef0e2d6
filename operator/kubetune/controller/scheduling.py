"""When and how often a job is reconciled: one pass at a time per job, only when something
the lifecycle reads may have changed, requeues the lifecycle asks for, retries with backoff
after errors, and a safety net whose cost does not grow with idle jobs.

Triggers: a job seen for the first time (created, or listed when the operator starts), a new
``metadata.generation`` (its spec changed), a status change the lifecycle reads
(:func:`lifecycle.status_wants_pass`), a launcher or export Job whose
:func:`lifecycle.launcher_signal` changed (its state; whether its pods run, for a job whose
PodsReady is False), the requeues a decision asks for, and the safety net (:meth:`resync_loop`).
The operator's own status patches and a launcher's pods starting trigger nothing.

Every trigger ends in :meth:`Scheduler.reconcile_job`, which, under a per-job lock, reads the
job fresh from the API server (not for a new job's first pass: nothing has written it since its
event), observes what its decision can depend on, asks
:func:`kubetune.controller.lifecycle.reconcile` what to do, and does it (``api_client``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from kubetune.api import KIND, Phase
from kubetune.builders import ClusterFacts, names
from kubetune.controller import lifecycle, memory
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
ChildKey = tuple[str, str]
"""(namespace, name) of a Job the operator made (a launcher or an export Job)"""


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
        self.pod_checks: dict[JobKey, tuple[asyncio.TimerHandle, str, int, float]] = {}
        """Conditional looks: (timer, launcher name, its pod count, seconds of looks that found
        no word so far), unless its pods run by then."""
        self.generations: dict[JobKey, int | None] = {}
        """The metadata.generation of each job as last seen in its events."""
        self.versions: dict[JobKey, str] = {}
        self.flagged: set[JobKey] = set()
        """Jobs whose PodsReady is False."""
        self.signals: dict[ChildKey, tuple[str, lifecycle.LauncherSignal]] = {}
        """Each Job the operator made: its FineTuneJob's name and what the lifecycle reads."""
        self.child_versions: dict[ChildKey, str] = {}
        self.suspects: dict[tuple[str, JobKey], str] = {}
        """Objects whose listed resourceVersion differed from the last one seen, at the last
        resync (a missed event if it still differs at the next)."""
        self.missing: set[JobKey] = set()
        """Jobs with state kept here that the last resync's list did not show."""
        self.untouched: dict[JobKey, dict[str, Any]] = {}
        """New jobs as their first event showed them, with no status yet: their first pass
        reads nothing (a GET would return the same; nothing of them can exist yet)."""
        self.was_acting = not config.ha

    def reset(self) -> None:
        """A new kopf run (a restart, or a second runner in one process) starts with no
        per-job state."""
        self.locks.clear()
        self.timers.clear()
        self.failures.clear()
        self.pod_checks.clear()
        self.generations.clear()
        self.versions.clear()
        self.flagged.clear()
        self.signals.clear()
        self.child_versions.clear()
        self.suspects.clear()
        self.missing.clear()
        self.untouched.clear()
        self.was_acting = not self.config.ha

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
        check = self.pod_checks.pop(key, None)
        if check is not None:
            check[0].cancel()
        self.failures.pop(key, None)
        self.generations.pop(key, None)
        self.versions.pop(key, None)
        self.flagged.discard(key)
        self.untouched.pop(key, None)
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
            pods_grace_seconds=config.pods_grace,
        )

    def _pass(
        self, namespace: str, name: str, untouched: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], Decision, list[str]] | None:
        """Read, decide, act: the blocking part of a pass, in one worker thread, so a pass
        waits for a worker once (under a burst, passes finish in arrival order instead of all
        of them finishing together at the end). None when the job no longer exists. The job is
        read fresh (an event may predate the last pass's patch) unless it is ``untouched``."""
        started = time.perf_counter()
        try:
            job = untouched or self.api.get_job(namespace, name)
            if job is None:
                return None
            settings = self.lifecycle_settings()
            now = datetime.now(UTC)
            rayjob = settings.facts.rayjob_crd
            world = observe(self.api, job, rayjob, now, settings.pods_grace_seconds)
            decision = lifecycle.reconcile(job, world, now, settings)
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
            untouched = self.untouched.pop(key, None)
            result = await asyncio.to_thread(self._pass, namespace, name, untouched)
            if result is None:
                self.forget(namespace, name)
                return
            job, decision, done = result
            self._seed_signals(namespace, name, decision)
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
            if any(action.startswith("adopted ") for action in done):
                # Children an earlier process made (it died before the status patch) may have
                # moved on already, a launcher even finished: its events are past, so the next
                # pass reads them now instead of waiting for one.
                self.schedule(namespace, name, 0)
            if decision.recheck_pods_after is not None and status.get("attempt"):
                launcher = names.launcher_name(name, int(status["attempt"]))
                self.schedule_pods_check(
                    namespace, name, launcher, decision.recheck_pods_after, decision.pods_expected
                )
            if decision.status_patch.get("phase") == Phase.succeeded:
                self._nudge_waiting(namespace)

    def _seed_signals(self, namespace: str, owner: str, decision: Decision) -> None:
        """What a Job this pass created reads like before its first event: that event (pods
        not created yet) then changes nothing."""
        for create in decision.creates:
            for manifest in create.manifests:
                if manifest["kind"] in lifecycle.LAUNCHER_KINDS:
                    key = (namespace, manifest["metadata"]["name"])
                    self.signals.setdefault(key, (owner, lifecycle.launcher_signal(manifest)))

    # -- what events trigger -----------------------------------------------------------------

    def job_event(self, kind: str | None, body: dict[str, Any]) -> None:
        """A FineTuneJob event (``kind`` None: listed when the watch started)."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if kind == "DELETED":
            self.forget(*key)
            return
        self.metrics.observe_job(body)
        self.versions[key] = meta.get("resourceVersion", "")
        if lifecycle.pods_flagged(body):
            self.flagged.add(key)
        else:
            self.flagged.discard(key)
        generation = meta.get("generation")
        first = key not in self.generations
        if first and not body.get("status"):
            self.untouched[key] = body
        else:
            self.untouched.pop(key, None)  # a newer version: the pass reads it
        if first or self.generations[key] != generation or lifecycle.status_wants_pass(body):
            self.generations[key] = generation
            self.schedule(*key, 0)

    def child_event(self, kind: str | None, body: dict[str, Any]) -> None:
        """An event of a Job (or RayJob) the operator made: a pass for its FineTuneJob when
        what the lifecycle reads of it changed."""
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace", "")
        owner = (meta.get("labels") or {}).get(names.LABEL_JOB)
        if not owner:
            return
        key = (namespace, meta.get("name", ""))
        job = (namespace, owner)
        if kind == "DELETED":
            self.signals.pop(key, None)
            self.child_versions.pop(key, None)
            if job in self.generations:  # not when its job is being deleted
                self.schedule(*job, self.config.launcher_debounce)
            return
        self.child_versions[key] = meta.get("resourceVersion", "")
        signal = lifecycle.launcher_signal(dict(body))
        previous = self.signals.get(key)
        self.signals[key] = (owner, signal)
        if previous is None or job not in self.generations:
            # Made by a pass of ours (seeded), or listed at start (its job's pass reads it);
            # one that finished unseen is worth a pass whatever the reason it was not known.
            if previous is None and job in self.generations and signal[0] != "running":
                self.schedule(*job, self.config.launcher_debounce)
            return
        if lifecycle.signal_needs_pass(previous[1], signal, job in self.flagged):
            self.schedule(*job, self.config.launcher_debounce)
        elif previous[1][1] is None and signal[1] is False:
            # Unsuspended (admitted by Kueue): its pods have the grace from now on.
            expected = lifecycle.expected_pods(dict(body))
            self.schedule_pods_check(*job, key[1], self.config.pods_grace, expected)

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

    @property
    def pods_patience(self) -> float:
        """Seconds of silence about pending pods before the silence itself is reported."""
        return self.config.pods_grace * lifecycle.PATIENCE_GRACES

    def schedule_pods_check(
        self,
        namespace: str,
        name: str,
        launcher: str,
        delay: float,
        expected: int = 1,
        silent_for: float = 0.0,
    ) -> None:
        """A look at the launcher's ``expected`` pods after delay seconds, unless they all run
        by then; ``silent_for``: seconds of looks that found no word so far."""
        key = (namespace, name)
        old = self.pod_checks.pop(key, None)
        if old is not None:
            old[0].cancel()
        loop = asyncio.get_running_loop()
        handle = loop.call_at(loop.time() + max(0.0, delay), self._check_pods, key)
        self.pod_checks[key] = (handle, launcher, expected, silent_for)

    def _check_pods(self, key: JobKey) -> None:
        _, launcher, expected, silent_for = self.pod_checks.pop(key, (None, "", 1, 0.0))
        known = self.signals.get((key[0], launcher))
        if known is not None and known[1] != ("running", False):
            return  # its pods run (or it finished: that event asked for its own pass)
        if key in self.flagged or silent_for >= self.pods_patience:
            self.schedule(*key, 0)  # a pass refreshes what PodsReady says (or says the silence)
            return
        look = self._look_at_pods(key, launcher, expected, silent_for)
        task = asyncio.get_running_loop().create_task(look)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _look_at_pods(
        self, key: JobKey, launcher: str, expected: int, silent_for: float
    ) -> None:
        """A list of the launcher's pods (and of its events when some are missing): a pass
        only when somebody said why they do not run; otherwise (queued for the scheduler, or
        not created yet) another look later, each wait twice the last (up to four graces).
        Under a burst most jobs' pods wait a while: a look costs one request where a pass
        costs four and a status patch."""
        namespace, _ = key
        try:
            pods = await asyncio.to_thread(self.api.launcher_pods, namespace, launcher)
            events: list[dict[str, Any]] = []
            if len(lifecycle.live_pods(pods)) < expected:
                events = await asyncio.to_thread(self.api.launcher_events, namespace, launcher)
        except Exception:
            self.schedule(*key, 0)  # the pass reads them itself (and retries on errors)
            return
        if key not in self.generations or lifecycle.pods_started(pods, expected):
            return  # deleted meanwhile; or its pods run (the launcher's event is on its way)
        if lifecycle.pods_need_pass(pods, events, expected, datetime.now(UTC), self.pods_patience):
            self.schedule(*key, 0)
            return
        grace = self.config.pods_grace
        wait = min(4 * grace, max(grace, 2 * silent_for))
        self.schedule_pods_check(namespace, key[1], launcher, wait, expected, silent_for + wait)

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

    # -- the safety net ----------------------------------------------------------------------

    async def resync_loop(self) -> None:
        """Each interval: one metadata-only list of the jobs and one of their Jobs (and one of
        their RayJobs, with KubeRay). State kept for objects that no longer exist is dropped
        (a missed DELETED event cannot leak memory); an object whose resourceVersion differs
        from the last one its events showed, twice in a row, missed an event: its job is
        reconciled. A replica that just became the active one reconciles every job (its timers
        never ran). An operator-level loop rather than ``kopf.timer``, which would put a kopf
        finalizer on every job, so that deleting a job would wait for a running operator."""
        interval = self.config.timer_interval
        while True:
            await asyncio.sleep(interval)
            if not await self.peering.is_acting():
                self.was_acting = False
                continue
            try:
                jobs = await asyncio.to_thread(self.api.job_versions)
                children = await asyncio.to_thread(self.api.launcher_versions)
            except Exception as err:
                log.warning("resync: cannot list jobs (%s)", describe(err))
                continue
            memory.trim()  # what the interval's passes freed
            took_over, self.was_acting = not self.was_acting, True
            kept = {*self.locks, *self.timers, *self.failures, *self.generations}
            missing = {k for k in kept | set(self.metrics.known_jobs()) if k not in jobs}
            for key in missing & self.missing:  # twice: not just created after the list
                self.forget(*key)
            self.missing = missing - self.missing
            for key in [k for k in self.signals if k not in children]:
                self.signals.pop(key, None)
                self.child_versions.pop(key, None)
            due = set(jobs) if took_over else set()
            suspects: dict[tuple[str, JobKey], str] = {}
            for key, version in jobs.items():
                if self.versions.get(key) != version:
                    suspects[("job", key)] = version
            for key, (owner, version) in children.items():
                if owner and self.child_versions.get(key) != version:
                    suspects[("child", key)] = version
            for (what, key), version in suspects.items():
                if self.suspects.get((what, key)) == version:
                    due.add(key if what == "job" else (key[0], children[key][0]))
            self.suspects = suspects
            if due:
                log.info("resync: %d job(s) to look at again", len(due))
            # Spread over the interval: many passes at once would delay event-driven ones.
            spacing = interval / max(1, len(due))
            for i, (namespace, name) in enumerate(sorted(due)):
                self.schedule(namespace, name, i * spacing)
