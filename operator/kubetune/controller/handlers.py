"""kopf handlers: the only place with API I/O.

Every trigger (the job created, resumed or changed; one of its launcher Jobs changed; the
safety-net timer; a requeue the lifecycle asked for) ends in :func:`reconcile_job`, which,
under a per-job lock, reads the job fresh from the API server, observes its children and
dependencies, asks :func:`kubetune.controller.lifecycle.reconcile` what to do, and does it:
create-or-adopt children by their deterministic names, delete, merge-patch the status fields
the operator owns, post events.

Configuration comes from the environment (:class:`OperatorConfig`), read at import time so
kopf's decorators see it (``kubetune.operator_main`` and tests set it before importing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from kubetune.api import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    FineTuneJobSpec,
    model_dependencies,
)
from kubetune.builders import ClusterFacts, names
from kubetune.controller import lifecycle, metrics
from kubetune.controller.lifecycle import Child, Create, Decision, Delete, Event, Observed

log = logging.getLogger("kubetune.operator")

CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("batch/v1", "Job"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
)
RAYJOB = ("ray.io/v1", "RayJob")
MERGE_PATCH = "application/merge-patch+json"


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass(frozen=True)
class OperatorConfig:
    """The operator's configuration (environment variables in brackets)."""

    trainer_image: str = "ghcr.io/kubetune/trainer:latest"  # KUBETUNE_TRAINER_IMAGE
    export_image: str = ""  # KUBETUNE_EXPORT_IMAGE
    default_storage: str = "pvc://kubetune-runs"  # KUBETUNE_DEFAULT_STORAGE
    namespace: str | None = None  # KUBETUNE_NAMESPACE: watch only this namespace
    metrics_port: int = 8080  # KUBETUNE_METRICS_PORT (0: no metrics server)
    ha: bool = False  # KUBETUNE_HA=1: kopf peering (an active/standby pair)
    timer_interval: float = 60.0  # KUBETUNE_TIMER_SECONDS: safety-net resync of every job
    dependency_poll: float = 10.0  # KUBETUNE_DEPENDENCY_POLL_SECONDS
    retry_backoff: float = 2.0  # KUBETUNE_RETRY_BACKOFF_SECONDS: first retry after an error
    retry_backoff_max: float = 60.0
    server_timeout: float = 300.0  # KUBETUNE_WATCH_TIMEOUT_SECONDS
    crd_refresh: float = 300.0  # how often to look for the RayJob CRD again
    fault_exit_after_creates: int = 0
    """KUBETUNE_FAULT_EXIT_AFTER_CREATES (fault injection for tests): the process dies
    (exit code 3) right after its Nth successful child creation, before anything else."""

    @classmethod
    def from_env(cls) -> OperatorConfig:
        env = os.environ
        namespace = env.get("KUBETUNE_NAMESPACE") or None
        return cls(
            trainer_image=env.get("KUBETUNE_TRAINER_IMAGE") or cls.trainer_image,
            export_image=env.get("KUBETUNE_EXPORT_IMAGE", ""),
            default_storage=env.get("KUBETUNE_DEFAULT_STORAGE") or cls.default_storage,
            namespace=namespace,
            metrics_port=int(env.get("KUBETUNE_METRICS_PORT", "8080")),
            ha=env.get("KUBETUNE_HA", "") in ("1", "true", "yes"),
            timer_interval=_env_float("KUBETUNE_TIMER_SECONDS", 60.0),
            dependency_poll=_env_float("KUBETUNE_DEPENDENCY_POLL_SECONDS", 10.0),
            retry_backoff=_env_float("KUBETUNE_RETRY_BACKOFF_SECONDS", 2.0),
            retry_backoff_max=_env_float("KUBETUNE_RETRY_BACKOFF_MAX_SECONDS", 60.0),
            server_timeout=_env_float("KUBETUNE_WATCH_TIMEOUT_SECONDS", 300.0),
            fault_exit_after_creates=int(env.get("KUBETUNE_FAULT_EXIT_AFTER_CREATES", "0")),
        )


CONFIG = OperatorConfig.from_env()


@dataclass
class _State:
    """Per-process state; every per-job entry is dropped when the job is deleted."""

    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    timers: dict[tuple[str, str], asyncio.TimerHandle] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    rayjob_crd: bool = False
    created: int = 0
    resync: asyncio.Task[None] | None = None
    crd_checked: float = float("-inf")
    dynamic: DynamicClient | None = None


STATE = _State()


# --------------------------------------------------------------------------- API access


def _api() -> DynamicClient:
    if STATE.dynamic is None:
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()
        STATE.dynamic = DynamicClient(k8s.ApiClient())
    return STATE.dynamic


def _resource(api_version: str, kind: str) -> Any:
    return _api().resources.get(api_version=api_version, kind=kind)


def _get(api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        return _resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None


def _rayjob_crd() -> bool:
    now = time.monotonic()
    if now - STATE.crd_checked > CONFIG.crd_refresh:
        try:
            k8s.ApiextensionsV1Api().read_custom_resource_definition("rayjobs.ray.io")
            STATE.rayjob_crd = True
        except ApiException as err:
            if err.status != 404:
                raise
            STATE.rayjob_crd = False
        STATE.crd_checked = now
    return STATE.rayjob_crd


def _settings() -> lifecycle.Settings:
    facts = ClusterFacts(
        trainer_image=CONFIG.trainer_image,
        export_image=CONFIG.export_image,
        default_storage=CONFIG.default_storage,
        rayjob_crd=_rayjob_crd(),
    )
    return lifecycle.Settings(
        facts=facts,
        default_storage=CONFIG.default_storage,
        dependency_poll_seconds=CONFIG.dependency_poll,
    )


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _attempt_of(obj: dict[str, Any]) -> int | None:
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(names.LABEL_ATTEMPT)
    return int(value) if value and value.isdigit() else None


def observe(job: dict[str, Any], rayjob_crd: bool) -> Observed:
    """The job's children (by label, owned by its uid), its current launcher, its
    dependencies."""
    meta = job["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
    selector = f"{names.LABEL_JOB}={name}"
    kinds = [*CHILD_KINDS, RAYJOB] if rayjob_crd else list(CHILD_KINDS)
    children: list[Child] = []
    launcher = None
    attempt = int((job.get("status") or {}).get("attempt") or 0)
    for api_version, kind in kinds:
        listed = _resource(api_version, kind).get(namespace=namespace, label_selector=selector)
        for item in listed.to_dict().get("items") or []:
            if not _owned_by(item, uid):
                continue
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
            child_attempt = _attempt_of(item)
            finished = False
            if kind in lifecycle.LAUNCHER_KINDS:
                finished = lifecycle.launcher_state(item)[0] != "running"
                if child_attempt == attempt and item["metadata"]["name"] == (
                    names.launcher_name(name, attempt) if attempt else None
                ):
                    launcher = item
            children.append(
                Child(api_version, kind, item["metadata"]["name"], child_attempt, finished)
            )
    dependencies: dict[str, dict[str, Any] | None] = {}
    try:
        spec = FineTuneJobSpec.model_validate(job.get("spec") or {})
        deps = [dep for _, dep in model_dependencies(spec)]
    except ValueError:
        deps = []
    for dep in deps:
        dependencies[dep] = _get(API_VERSION, KIND, dep, namespace)
    return Observed(launcher=launcher, children=tuple(children), dependencies=dependencies)


def _create_or_adopt(manifest: dict[str, Any], uid: str) -> str:
    """Create a child; when its name exists already, check that it is ours (adopt it)."""
    meta = manifest["metadata"]
    resource = _resource(manifest["apiVersion"], manifest["kind"])
    try:
        resource.create(body=manifest, namespace=meta["namespace"])
        _count_creation(manifest)
        return "created"
    except ApiException as err:
        if err.status != 409:
            raise
    existing = resource.get(name=meta["name"], namespace=meta["namespace"]).to_dict()
    if not _owned_by(existing, uid):
        raise kopf.TemporaryError(
            f"{manifest['kind']} {meta['name']} exists and is not owned by this job", delay=30
        )
    return "adopted"


def _count_creation(manifest: dict[str, Any]) -> None:
    STATE.created += 1
    limit = CONFIG.fault_exit_after_creates
    if limit and STATE.created >= limit:
        log.warning(
            "fault injection: exiting after creating %s/%s",
            manifest["kind"],
            manifest["metadata"]["name"],
        )
        logging.shutdown()
        os._exit(3)


def _delete(namespace: str, action: Delete) -> None:
    with contextlib.suppress(NotFoundError):
        _resource(action.api_version, action.kind).delete(
            name=action.name,
            namespace=namespace,
            body={"propagationPolicy": "Background"},
        )


def _patch_status(namespace: str, name: str, patch: dict[str, Any]) -> None:
    resource = _resource(API_VERSION, KIND)
    _api().patch(
        resource=resource.subresources["status"],
        name=name,
        namespace=namespace,
        body={"status": patch},
        content_type=MERGE_PATCH,
    )


def _post_event(job: dict[str, Any], event: Event) -> None:
    """Events through kopf's poster when called inside its context, else directly."""
    try:
        kopf.event(job, type=event.type, reason=event.reason, message=event.message)
        return
    except LookupError:
        pass
    meta = job["metadata"]
    now = datetime.now(UTC)
    body = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
        involved_object=k8s.V1ObjectReference(
            api_version=API_VERSION,
            kind=KIND,
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta.get("uid"),
        ),
        type=event.type,
        reason=event.reason,
        message=event.message[:1024],
        first_timestamp=now,
        last_timestamp=now,
        source=k8s.V1EventSource(component=names.MANAGER),
        reporting_component=names.MANAGER,
        reporting_instance=names.MANAGER,
    )
    with contextlib.suppress(ApiException):
        k8s.CoreV1Api().create_namespaced_event(meta["namespace"], body)


def execute(job: dict[str, Any], decision: Decision) -> list[str]:
    """Carry out a decision: creations and deletions, then the status patch. Returns log
    lines. Events are posted by the caller (kopf's poster lives on the event loop)."""
    meta = job["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
    done: list[str] = []
    self_delete: Delete | None = None
    for action in decision.actions:
        if isinstance(action, Create):
            for manifest in action.manifests:
                how = _create_or_adopt(manifest, uid)
                done.append(f"{how} {manifest['kind']}/{manifest['metadata']['name']}")
        elif isinstance(action, Delete):
            if action.kind == KIND:
                self_delete = action
                continue
            _delete(namespace, action)
            done.append(f"deleted {action.kind}/{action.name}")
    if decision.status_patch and self_delete is None:
        _patch_status(namespace, name, decision.status_patch)
    if self_delete is not None:
        _delete(namespace, self_delete)
        done.append(f"deleted {KIND}/{name}")
    return done


# --------------------------------------------------------------------------- reconcile


def _key(namespace: str, name: str) -> tuple[str, str]:
    return (namespace, name)


def _lock(key: tuple[str, str]) -> asyncio.Lock:
    lock = STATE.locks.get(key)
    if lock is None:
        lock = STATE.locks[key] = asyncio.Lock()
    return lock


def forget(namespace: str, name: str) -> None:
    """Drop everything kept for a deleted job."""
    key = _key(namespace, name)
    handle = STATE.timers.pop(key, None)
    if handle is not None:
        handle.cancel()
    STATE.failures.pop(key, None)
    lock = STATE.locks.get(key)
    if lock is not None and not lock.locked():
        STATE.locks.pop(key, None)
    metrics.forget_job(namespace, name)


def _get_job(namespace: str, name: str) -> dict[str, Any] | None:
    return _get(API_VERSION, KIND, name, namespace)


def _count(job: dict[str, Any], decision: Decision, done: list[str]) -> None:
    method = str((job.get("spec") or {}).get("method") or "unknown")
    launched = sum(1 for line in done if line.startswith(("created Job/", "created RayJob/")))
    if launched:
        metrics.ATTEMPTS.labels(namespace=job["metadata"]["namespace"], method=method).inc(launched)
    for event in decision.events:
        if event.reason in ("ApplicationFailure", "Disruption"):
            metrics.RESTARTS.labels(reason=event.reason).inc()
        elif event.reason == "Resumed" and "suspension" in event.message:
            metrics.RESTARTS.labels(reason="Unsuspended").inc()


async def reconcile_job(namespace: str, name: str) -> None:
    """One pass for one job, serialized per job. Raises on API errors (callers retry)."""
    key = _key(namespace, name)
    async with _lock(key):
        started = time.perf_counter()
        try:
            job = await asyncio.to_thread(_get_job, namespace, name)
            if job is None:
                forget(namespace, name)
                return
            settings = await asyncio.to_thread(_settings)
            world = await asyncio.to_thread(observe, job, settings.facts.rayjob_crd)
            decision = lifecycle.reconcile(job, world, datetime.now(UTC), settings)
            done = await asyncio.to_thread(execute, job, decision)
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            raise
        finally:
            metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)
        for event in decision.events:
            _post_event(job, event)
        _count(job, decision, done)
        STATE.failures.pop(key, None)
        status = {**(job.get("status") or {}), **decision.status_patch}
        if any(isinstance(a, Delete) and a.kind == KIND for a in decision.actions):
            forget(namespace, name)  # deleted itself (ttlSecondsAfterFinished)
        else:
            metrics.observe_job({**job, "status": status})
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
            schedule(namespace, name, decision.requeue_after)
        if decision.status_patch.get("phase") == "Succeeded":
            await _nudge_waiting(namespace)


async def _nudge_waiting(namespace: str) -> None:
    """A job succeeded: jobs of the namespace waiting for dependencies look again now."""
    listed = await asyncio.to_thread(
        lambda: _resource(API_VERSION, KIND).get(namespace=namespace).to_dict()
    )
    for item in listed.get("items") or []:
        if (item.get("status") or {}).get("phase") == "WaitingForDependencies":
            schedule(namespace, item["metadata"]["name"], 0)


def _retry_delay(key: tuple[str, str]) -> float:
    n = STATE.failures.get(key, 0) + 1
    STATE.failures[key] = n
    return min(CONFIG.retry_backoff_max, CONFIG.retry_backoff * 2 ** min(n - 1, 16))


def schedule(namespace: str, name: str, delay: float) -> None:
    """Reconcile the job after delay seconds (the earliest of several requests wins)."""
    loop = asyncio.get_running_loop()
    key = _key(namespace, name)
    when = loop.time() + max(0.0, delay)
    handle = STATE.timers.get(key)
    if handle is not None and not handle.cancelled():
        if handle.when() <= when:
            return
        handle.cancel()
    STATE.timers[key] = loop.call_at(when, _fire, key)


def _fire(key: tuple[str, str]) -> None:
    STATE.timers.pop(key, None)
    task = asyncio.get_running_loop().create_task(_scheduled(key))
    STATE.tasks.add(task)
    task.add_done_callback(STATE.tasks.discard)


async def _scheduled(key: tuple[str, str]) -> None:
    namespace, name = key
    try:
        await reconcile_job(namespace, name)
    except Exception as err:
        delay = _retry_delay(key)
        log.warning("job=%s/%s reconcile failed (%s); retry in %.1fs", namespace, name, err, delay)
        schedule(namespace, name, delay)


async def _handler_pass(namespace: str, name: str) -> None:
    """For kopf's change handlers: errors become TemporaryError (kopf retries with delay)."""
    key = _key(namespace, name)
    try:
        await reconcile_job(namespace, name)
    except kopf.TemporaryError:
        raise
    except Exception as err:
        raise kopf.TemporaryError(f"reconcile failed: {err}", delay=_retry_delay(key)) from err


# --------------------------------------------------------------------------- kopf wiring


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = True
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = int(CONFIG.server_timeout)  # the API wants an integer
    settings.watching.client_timeout = int(CONFIG.server_timeout) + 10
    settings.execution.max_workers = 8
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    if CONFIG.ha:
        settings.peering.standalone = False
        settings.peering.name = "kubetune"
        settings.peering.mandatory = True
        settings.peering.clusterwide = CONFIG.namespace is None
    else:
        settings.peering.standalone = True
    # A new run (a restart, or a test's second runner in one process) starts with no state.
    STATE.locks.clear()
    STATE.timers.clear()
    STATE.failures.clear()
    STATE.crd_checked = float("-inf")
    if CONFIG.metrics_port:
        _start_metrics(CONFIG.metrics_port)
    STATE.resync = asyncio.get_running_loop().create_task(_resync_loop())


_metrics_started: set[int] = set()


def _start_metrics(port: int) -> None:
    from prometheus_client import start_http_server

    if port not in _metrics_started:
        start_http_server(port, registry=metrics.REGISTRY)
        _metrics_started.add(port)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def on_change(name: str, namespace: str, **_: Any) -> None:
    await _handler_pass(namespace, name)


@kopf.on.event(GROUP, VERSION, PLURAL)
def on_job_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    """Metrics follow every change (the trainer's progress too); deletion forgets the job."""
    meta = body.get("metadata") or {}
    if event.get("type") == "DELETED":
        forget(meta.get("namespace", ""), meta.get("name", ""))
        return
    metrics.observe_job(dict(body))


@kopf.on.event("ray.io", "v1", "rayjobs", labels={names.LABEL_MANAGED_BY: names.MANAGER})
@kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_MANAGED_BY: names.MANAGER})
async def on_launcher_event(body: kopf.Body, namespace: str, **_: Any) -> None:
    """A launcher (Job, or RayJob when KubeRay is installed; kopf serves only resources the
    cluster has) changed: reconcile the FineTuneJob it belongs to."""
    owner = (body.get("metadata", {}).get("labels") or {}).get(names.LABEL_JOB)
    if owner:
        schedule(namespace, owner, 0)


async def _resync_loop() -> None:
    """The safety net: every job is looked at again each interval, whatever event was missed,
    and state kept for jobs that no longer exist is dropped (a missed DELETED event cannot
    leak memory). An operator-level loop rather than ``kopf.timer``, which would put a kopf
    finalizer on every job, so that deleting a job would wait for a running operator."""
    while True:
        await asyncio.sleep(CONFIG.timer_interval)
        try:
            listed = await asyncio.to_thread(_list_jobs)
        except Exception as err:
            log.warning("resync: cannot list jobs (%s)", err)
            continue
        existing = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed}
        kept = {*STATE.locks, *STATE.timers, *STATE.failures, *metrics.known_jobs()}
        for key in [k for k in kept if k not in existing]:
            forget(*key)
        for namespace, name in existing:
            schedule(namespace, name, 0)


def _list_jobs() -> list[dict[str, Any]]:
    resource = _resource(API_VERSION, KIND)
    listed = resource.get(namespace=CONFIG.namespace) if CONFIG.namespace else resource.get()
    return listed.to_dict().get("items") or []


@kopf.on.cleanup()
async def stop_resync(**_: Any) -> None:
    if STATE.resync is not None:
        STATE.resync.cancel()
        STATE.resync = None


__all__ = [
    "CONFIG",
    "OperatorConfig",
    "execute",
    "forget",
    "observe",
    "reconcile_job",
    "schedule",
]
