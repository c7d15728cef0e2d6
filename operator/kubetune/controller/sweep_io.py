"""The FineTuneSweep controller's I/O: what a pass observes (the sweep, its trial FineTuneJobs,
its study), how a decision is carried out (the study's actions, trial FineTuneJobs made,
stopped or deleted, the sweep's status, events), and the per-sweep scheduling (one pass at a
time per sweep, requeues, retries with backoff, a resync of every sweep, studies of deleted
sweeps removed from the storage).

A pass is read → decide → act, repeated (at most :data:`ROUNDS` times) while what it did
changed the study: a trial asked is made in the same pass, a trial told complete lets the
sweep finish in the same pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kopf

from kubetune.api import API_VERSION, KIND
from kubetune.controller.api_client import MERGE_PATCH, ApiClient, describe, owned_by, path_of
from kubetune.controller.config import OperatorConfig
from kubetune.controller.lifecycle import Delete, Event
from kubetune.controller.peering import Peering
from kubetune.controller.sweep_lifecycle import (
    Ask,
    CreateTrial,
    DeleteTrial,
    StopTrial,
    SweepDecision,
    SweepSettings,
    TrialJob,
    sweep_decision,
)
from kubetune.reasons import ConditionType
from kubetune.sweep_api import LABEL_SWEEP, LABEL_TRIAL, SWEEP_KIND, FineTuneSweep
from kubetune.sweep_space import TRAINING_LOSS
from kubetune.sweep_study import Studies, apply, parse_study_name, study_name, view
from kubetune.sweep_validation import sweep_problems

log = logging.getLogger("kubetune.operator")

ROUNDS = 3
SweepKey = tuple[str, str]
"""(namespace, name)"""


# --------------------------------------------------------------------------- observing


def trial_metrics(status: dict[str, Any]) -> dict[str, float]:
    """The values a trial reported in its status: the training loss (progress.loss) and the
    held-out metrics (progress.evalMetrics), as numbers; unreadable ones are left out."""
    progress = status.get("progress") or {}
    found: dict[str, Any] = dict(progress.get("evalMetrics") or {})
    if progress.get("loss") is not None:
        found[TRAINING_LOSS] = progress["loss"]
    metrics = {}
    for key, text in found.items():
        with contextlib.suppress(TypeError, ValueError):
            value = float(text)
            if math.isfinite(value):
                metrics[key] = value
    return metrics


def trial_job(obj: dict[str, Any]) -> TrialJob | None:
    """A trial as the decision sees it, from its FineTuneJob (None when not labelled as one)."""
    meta = obj.get("metadata") or {}
    number = (meta.get("labels") or {}).get(LABEL_TRIAL, "")
    if not number.isdigit():
        return None
    status = obj.get("status") or {}
    conditions = status.get("conditions") or []
    failed = next((c for c in conditions if c.get("type") == ConditionType.FAILED), None)
    return TrialJob(
        number=int(number),
        name=meta.get("name", ""),
        phase=status.get("phase"),
        suspended=bool(((obj.get("spec") or {}).get("runtime") or {}).get("suspend")),
        step=(status.get("progress") or {}).get("step"),
        metrics=trial_metrics(status),
        output=status.get("output"),
        message=str((failed or {}).get("message") or ""),
    )


def observe_trials(api: ApiClient, sweep: dict[str, Any]) -> tuple[TrialJob, ...]:
    """The sweep's trial FineTuneJobs (labelled with the sweep, owned by its uid)."""
    meta = sweep["metadata"]
    listed = api.list(API_VERSION, KIND, meta["namespace"], f"{LABEL_SWEEP}={meta['name']}")
    found = []
    for item in listed:
        if owned_by(item, meta.get("uid", "")):
            job = trial_job(item)
            if job is not None:
                found.append(job)
    return tuple(sorted(found, key=lambda j: j.number))


# --------------------------------------------------------------------------- acting


def post_event(api: ApiClient, sweep: dict[str, Any], event: Event) -> None:
    """An event on the sweep: through kopf's poster inside its context, else directly."""
    api.post_event({"apiVersion": API_VERSION, "kind": SWEEP_KIND, **sweep}, event)


def execute(
    api: ApiClient,
    study: Any,
    model: FineTuneSweep | None,
    sweep: dict[str, Any],
    d: SweepDecision,
    after_study: Callable[[SweepDecision], None] = lambda d: None,
) -> list[str]:
    """Carry out a decision: the study's actions, then the trial FineTuneJobs, then the
    status patch (events are posted by the caller). Returns log lines."""
    meta = sweep["metadata"]
    namespace, uid = meta["namespace"], meta.get("uid", "")
    done: list[str] = []
    if study is not None and model is not None:
        done += apply(study, model.spec, d.actions)
        after_study(d)
    for action in d.actions:
        if isinstance(action, CreateTrial):
            how = api.create_or_adopt(action.manifest, uid)
            done.append(f"{how} {KIND}/{action.manifest['metadata']['name']}")
        elif isinstance(action, StopTrial):
            api.request(
                "PATCH",
                path_of(API_VERSION, KIND, namespace, action.name),
                body={"spec": {"runtime": {"suspend": True}}},
                content_type=MERGE_PATCH,
            )
            done.append(f"stopped {KIND}/{action.name}")
        elif isinstance(action, DeleteTrial):
            api.delete(namespace, Delete(API_VERSION, KIND, action.name))
            done.append(f"deleted {KIND}/{action.name}")
    if d.status_patch:
        api.request(
            "PATCH",
            path_of(API_VERSION, SWEEP_KIND, namespace, meta["name"]) + "/status",
            body={"status": d.status_patch},
            content_type=MERGE_PATCH,
        )
    return done


# --------------------------------------------------------------------------- one pass


class SweepScheduler:
    """Passes over sweeps, one at a time per sweep; the per-sweep state is dropped when the
    sweep is deleted."""

    def __init__(self, config: OperatorConfig, api: ApiClient, peering: Peering) -> None:
        self.config = config
        self.api = api
        self.peering = peering
        self.studies = Studies(config.sweep_storage) if config.sweep_storage else None
        self.locks: dict[SweepKey, asyncio.Lock] = {}
        self.timers: dict[SweepKey, asyncio.TimerHandle] = {}
        self.failures: dict[SweepKey, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._asks = 0

    def _count_asks(self, decision: SweepDecision) -> None:
        if not decision.of(Ask):
            return
        self._asks += 1
        limit = self.config.fault_exit_after_asks
        if limit and self._asks >= limit:
            log.warning("fault injection: exiting after asking a study for trials")
            logging.shutdown()
            os._exit(3)

    def reset(self) -> None:
        self.locks.clear()
        self.timers.clear()
        self.failures.clear()

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        handle = self.timers.pop(key, None)
        if handle is not None:
            handle.cancel()
        self.failures.pop(key, None)
        lock = self.locks.get(key)
        if lock is not None and not lock.locked():
            self.locks.pop(key, None)

    @property
    def settings(self) -> SweepSettings:
        return SweepSettings(
            storage_configured=self.studies is not None, poll_seconds=self.config.timer_interval
        )

    def _round(self, namespace: str, name: str) -> tuple[dict[str, Any], SweepDecision, list[str]]:
        sweep = self.api.get(API_VERSION, SWEEP_KIND, name, namespace)
        if sweep is None:
            raise LookupError(name)
        trials = observe_trials(self.api, sweep)  # before the study: every trial made was asked
        model, study = None, None
        if self.studies is not None and not sweep_problems(sweep):
            model = FineTuneSweep.model_validate(
                {k: sweep[k] for k in ("apiVersion", "kind", "metadata", "spec")}
            )
            meta = sweep["metadata"]
            study = self.studies.open(model.spec, study_name(namespace, name, meta.get("uid", "")))
        decision = sweep_decision(
            sweep,
            trials,
            view(study) if study is not None else None,
            datetime.now(UTC),
            self.settings,
        )
        return (
            sweep,
            decision,
            execute(self.api, study, model, sweep, decision, after_study=self._count_asks),
        )

    def _pass(
        self, namespace: str, name: str
    ) -> list[tuple[dict[str, Any], SweepDecision, list[str]]]:
        """Rounds of read, decide, act until the study settles; [] when the sweep is gone."""
        rounds = []
        try:
            for _ in range(ROUNDS):
                sweep, decision, done = self._round(namespace, name)
                rounds.append((sweep, decision, done))
                if not decision.changes_study:
                    break
        except LookupError:
            return []
        return rounds

    async def reconcile_sweep(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            rounds = await asyncio.to_thread(self._pass, namespace, name)
            if not rounds:
                self.forget(namespace, name)
                return
            self.failures.pop(key, None)
            for sweep, decision, done in rounds:
                for event in decision.events:
                    post_event(self.api, sweep, event)
                if done or decision.status_patch:
                    status = {**(sweep.get("status") or {}), **decision.status_patch}
                    log.info(
                        "sweep=%s/%s phase=%s trials=%s actions=%s",
                        namespace,
                        name,
                        status.get("phase"),
                        len(status.get("trials") or []),
                        ",".join(done) or "-",
                    )
            requeue = rounds[-1][1].requeue_after
            if requeue is not None:
                self.schedule(namespace, name, requeue)

    # -- requeues and retries ----------------------------------------------------------------

    def schedule(self, namespace: str, name: str, delay: float) -> None:
        """A pass of the sweep after delay seconds (the earliest of several requests wins)."""
        loop = asyncio.get_running_loop()
        key = (namespace, name)
        when = loop.time() + max(0.0, delay)
        handle = self.timers.get(key)
        if handle is not None and not handle.cancelled():
            if handle.when() <= when:
                return
            handle.cancel()
        self.timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: SweepKey) -> None:
        self.timers.pop(key, None)
        task = asyncio.get_running_loop().create_task(self._scheduled(key))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def retry_delay(self, key: SweepKey) -> float:
        n = self.failures.get(key, 0) + 1
        self.failures[key] = n
        config = self.config
        return min(config.retry_backoff_max, config.retry_backoff * 2 ** min(n - 1, 16))

    async def _scheduled(self, key: SweepKey) -> None:
        namespace, name = key
        try:
            if not await self.peering.is_acting():
                return
            await self.reconcile_sweep(namespace, name)
        except Exception as err:
            delay = self.retry_delay(key)
            log.warning(
                "sweep=%s/%s pass failed (%s); retry in %.1fs",
                namespace,
                name,
                describe(err),
                delay,
            )
            self.schedule(namespace, name, delay)

    async def handler_pass(self, namespace: str, name: str) -> None:
        """For kopf's change handlers: errors become TemporaryError (kopf retries)."""
        try:
            await self.reconcile_sweep(namespace, name)
        except Exception as err:
            raise kopf.TemporaryError(
                f"sweep pass failed: {describe(err)}", delay=self.retry_delay((namespace, name))
            ) from err

    # -- the safety net ----------------------------------------------------------------------

    def _list_sweeps(self) -> list[dict[str, Any]]:
        return self.api.list(API_VERSION, SWEEP_KIND, self.config.namespace or None)

    def _collect_studies(self, sweeps: list[dict[str, Any]]) -> list[str]:
        """Delete the studies of sweeps that no longer exist (in the namespaces served)."""
        if self.studies is None:
            return []
        alive = {
            (s["metadata"]["namespace"], s["metadata"]["name"], s["metadata"].get("uid", ""))
            for s in sweeps
        }
        deleted = []
        for study in self.studies.names():
            owner = parse_study_name(study)
            if owner is None or owner in alive:
                continue
            if self.config.namespace and owner[0] != self.config.namespace:
                continue
            self.studies.delete(study)
            deleted.append(study)
        return deleted

    async def resync_loop(self) -> None:
        """Every sweep is looked at again each interval, whatever event was missed; studies
        of deleted sweeps are removed from the storage (no finalizer holds a sweep)."""
        interval = self.config.timer_interval
        while True:
            await asyncio.sleep(interval)
            if not await self.peering.is_acting():
                continue
            try:
                sweeps = await asyncio.to_thread(self._list_sweeps)
                deleted = await asyncio.to_thread(self._collect_studies, sweeps)
            except Exception as err:
                log.warning("sweep resync failed (%s)", describe(err))
                continue
            for study in deleted:
                log.info("study=%s deleted: its sweep no longer exists", study)
            existing = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in sweeps}
            for key in [
                k for k in {*self.locks, *self.timers, *self.failures} if k not in existing
            ]:
                self.forget(*key)
            spacing = interval / max(1, len(existing))
            for i, (namespace, name) in enumerate(sorted(existing)):
                self.schedule(namespace, name, i * spacing)


__all__ = ["SweepScheduler", "execute", "observe_trials", "trial_job", "trial_metrics"]
