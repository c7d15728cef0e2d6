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
import json
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
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
            peering_priority=int(env.get("KUBETUNE_PEERING_PRIORITY", "0")),
            peering_lifetime=int(env.get("KUBETUNE_PEERING_LIFETIME_SECONDS", "60")),
            timer_interval=_env_float("KUBETUNE_TIMER_SECONDS", 60.0),
            dependency_poll=_env_float("KUBETUNE_DEPENDENCY_POLL_SECONDS", 10.0),
            retry_backoff=_env_float("KUBETUNE_RETRY_BACKOFF_SECONDS", 2.0),
            retry_backoff_max=_env_float("KUBETUNE_RETRY_BACKOFF_MAX_SECONDS", 60.0),
            server_timeout=_env_float("KUBETUNE_WATCH_TIMEOUT_SECONDS", 300.0),
            api_workers=int(env.get("KUBETUNE_API_WORKERS", "32")),
            launcher_debounce=_env_float("KUBETUNE_LAUNCHER_DEBOUNCE_SECONDS", 0.5),
            fault_exit_after_creates=int(env.get("KUBETUNE_FAULT_EXIT_AFTER_CREATES", "0")),
        )


CONFIG = OperatorConfig.from_env()
PEERING = "kubetune"  # the kopf peering object's name
PEERING_CHECK_SECONDS = 2.0


@dataclass
class _State:
    """Per-process state; every per-job entry is dropped when the job is deleted."""

    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    timers: dict[tuple[str, str], asyncio.TimerHandle] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    crds: dict[str, bool] = field(default_factory=dict)
    created: int = 0
    resync: asyncio.Task[None] | None = None
    crd_checked: float = float("-inf")
    dynamic: DynamicClient | None = None
    priority: int = 0
    acting: bool = True
    acting_checked: float = float("-inf")


STATE = _State()


# --------------------------------------------------------------------------- API access


class JobGone(Exception):
    """The FineTuneJob was deleted while a pass was working on it."""


def _api() -> DynamicClient:
    """One client (one connection pool, sized for the worker threads) for every call."""
    if STATE.dynamic is None:
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()
        configuration = k8s.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = CONFIG.api_workers
        STATE.dynamic = DynamicClient(k8s.ApiClient(configuration))
    return STATE.dynamic


def describe(err: BaseException) -> str:
    """One log line for an error (API errors print their headers and traceback otherwise)."""
    if isinstance(err, ApiException):
        message = ""
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            message = json.loads(err.body).get("message", "")
        return f"{err.status} {err.reason}: {message}".rstrip(": ")
    return f"{type(err).__name__}: {err}"


def _resource(api_version: str, kind: str) -> Any:
    return _api().resources.get(api_version=api_version, kind=kind)


def _get(api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
    try:
        return _resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None


RAYJOB_CRD = "rayjobs.ray.io"
KUEUE_CRD = "workloads.kueue.x-k8s.io"


def _installed_crds() -> dict[str, bool]:
    """Which optional CRDs (KubeRay's RayJob, Kueue's Workload) the cluster has, re-read every
    crd_refresh seconds. Without permission to read CRDs (a namespaced install) they count as
    absent: the job launcher and no Kueue."""
    now = time.monotonic()
    if now - STATE.crd_checked > CONFIG.crd_refresh:
        api = k8s.ApiextensionsV1Api(_api().client)
        for name in (RAYJOB_CRD, KUEUE_CRD):
            try:
                api.read_custom_resource_definition(name)
                STATE.crds[name] = True
            except ApiException as err:
                if err.status not in (403, 404):
                    raise
                if err.status == 403 and name not in STATE.crds:
                    log.warning("event=crd_unreadable crd=%s assumed=absent", name)
                STATE.crds[name] = False
        STATE.crd_checked = now
    return STATE.crds


def _settings() -> lifecycle.Settings:
    crds = _installed_crds()
    facts = ClusterFacts(
        trainer_image=CONFIG.trainer_image,
        export_image=CONFIG.export_image,
        default_storage=CONFIG.default_storage,
        rayjob_crd=crds[RAYJOB_CRD],
        kueue=crds[KUEUE_CRD],
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
    export_attempt = int((job.get("status") or {}).get("exportAttempt") or 0)
    exporter_name = names.export_job_name(name, export_attempt) if export_attempt else None
    exporter = None
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
                elif kind == "Job" and item["metadata"]["name"] == exporter_name:
                    exporter = item
            component = (item["metadata"].get("labels") or {}).get(names.LABEL_COMPONENT)
            children.append(
                Child(
                    api_version, kind, item["metadata"]["name"], child_attempt, finished, component
                )
            )
    export_pods: list[dict[str, Any]] = []
    if exporter is not None and lifecycle.launcher_state(exporter)[0] == "failed":
        # The export stage says why it stopped in its termination message (optional: without
        # the power to list pods the condition carries the exit code alone).
        with contextlib.suppress(ApiException):
            pods = _resource("v1", "Pod").get(
                namespace=namespace,
                label_selector=f"{selector},{names.LABEL_EXPORT_ATTEMPT}={export_attempt}",
            )
            export_pods = pods.to_dict().get("items") or []
    dependencies: dict[str, dict[str, Any] | None] = {}
    try:
        spec = FineTuneJobSpec.model_validate(job.get("spec") or {})
        deps = [dep for _, dep in model_dependencies(spec)]
    except ValueError:
        deps = []
    for dep in deps:
        dependencies[dep] = _get(API_VERSION, KIND, dep, namespace)
    return Observed(
        launcher=launcher,
        children=tuple(children),
        dependencies=dependencies,
        exporter=exporter,
        export_pods=tuple(export_pods),
    )


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
    try:
        _api().patch(
            resource=resource.subresources["status"],
            name=name,
            namespace=namespace,
            body={"status": patch},
            content_type=MERGE_PATCH,
        )
    except NotFoundError as err:
        raise JobGone(name) from err


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
        k8s.CoreV1Api(_api().client).create_namespaced_event(meta["namespace"], body)


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
    launchers = {
        f"created {m['kind']}/{m['metadata']['name']}"
        for create in decision.creates
        for m in create.manifests
        if m["kind"] in lifecycle.LAUNCHER_KINDS
        and m["metadata"]["labels"].get(names.LABEL_COMPONENT) == "launcher"
    }  # not the export stage's Jobs
    launched = sum(1 for line in done if line in launchers)
    if launched:
        metrics.ATTEMPTS.labels(namespace=job["metadata"]["namespace"], method=method).inc(launched)
    for event in decision.events:
        if event.reason in ("ApplicationFailure", "Disruption"):
            metrics.RESTARTS.labels(reason=event.reason).inc()
        elif event.reason == "Resumed" and "suspension" in event.message:
            metrics.RESTARTS.labels(reason="Unsuspended").inc()


def _pass(namespace: str, name: str) -> tuple[dict[str, Any], Decision, list[str]] | None:
    """Read, decide, act: the blocking part of a pass, in one worker thread, so a pass waits
    for a worker once (under a burst, passes finish in arrival order instead of all of them
    finishing together at the end). None when the job no longer exists."""
    started = time.perf_counter()
    try:
        job = _get_job(namespace, name)
        if job is None:
            return None
        settings = _settings()
        world = observe(job, settings.facts.rayjob_crd)
        decision = lifecycle.reconcile(job, world, datetime.now(UTC), settings)
        return job, decision, execute(job, decision)
    except JobGone:
        return None  # deleted meanwhile: the garbage collector takes the rest
    except Exception:
        metrics.RECONCILE_ERRORS.inc()
        raise
    finally:
        metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)


async def reconcile_job(namespace: str, name: str) -> None:
    """One pass for one job, serialized per job. Raises on API errors (callers retry)."""
    key = _key(namespace, name)
    async with _lock(key):
        result = await asyncio.to_thread(_pass, namespace, name)
        if result is None:
            forget(namespace, name)
            return
        job, decision, done = result
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
    """A job succeeded: jobs of the namespace waiting for dependencies look again now. They
    are known from the watch (no list of every job per success: that is quadratic)."""
    for name in metrics.jobs_in_phase(namespace, "WaitingForDependencies"):
        schedule(namespace, name, 0)


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
        if not await _acting():
            return  # a standby: the active replica reconciles (and its resync covers all)
        await reconcile_job(namespace, name)
    except Exception as err:
        delay = _retry_delay(key)
        log.warning(
            "job=%s/%s reconcile failed (%s); retry in %.1fs", namespace, name, describe(err), delay
        )
        schedule(namespace, name, delay)


async def _handler_pass(namespace: str, name: str) -> None:
    """For kopf's change handlers: errors become TemporaryError (kopf retries with delay)."""
    key = _key(namespace, name)
    try:
        await reconcile_job(namespace, name)
    except kopf.TemporaryError:
        raise
    except Exception as err:
        raise kopf.TemporaryError(
            f"reconcile failed: {describe(err)}", delay=_retry_delay(key)
        ) from err


# --------------------------------------------------------------------------- HA


def peering_acting(peering: dict[str, Any] | None, priority: int, now: datetime) -> bool:
    """Whether the replica with ``priority`` is the one that acts, from kopf's peering object
    (status: one entry per replica with priority, lastseen, lifetime): no live replica has a
    higher priority. kopf pauses its own handlers by the same rule; this applies it to the
    operator's own timers (requeues, resync), which kopf does not pause."""
    for info in ((peering or {}).get("status") or {}).values():
        if not isinstance(info, dict):
            continue
        lastseen = lifecycle.parse_time(info.get("lastseen"))
        lifetime = float(info.get("lifetime") or 60)
        alive = lastseen is None or (now - lastseen).total_seconds() < lifetime
        if alive and int(info.get("priority") or 0) > priority:
            return False
    return True


def _read_peering() -> dict[str, Any] | None:
    if CONFIG.namespace is None:
        return _get("kopf.dev/v1", "ClusterKopfPeering", PEERING, None)
    return _get("kopf.dev/v1", "KopfPeering", PEERING, CONFIG.namespace)


async def _acting() -> bool:
    if not CONFIG.ha:
        return True
    now = time.monotonic()
    if now - STATE.acting_checked > PEERING_CHECK_SECONDS:
        STATE.acting_checked = now
        try:
            peering = await asyncio.to_thread(_read_peering)
        except Exception as err:
            log.warning("peering: cannot read %s (%s)", PEERING, describe(err))
        else:
            acting = peering_acting(peering, STATE.priority, datetime.now(UTC))
            if acting != STATE.acting:
                log.info(
                    "peering: %s (priority %s)", "acting" if acting else "standby", STATE.priority
                )
            STATE.acting = acting
    return STATE.acting


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
        STATE.priority = CONFIG.peering_priority or random.SystemRandom().randint(1, 2**31 - 1)
        STATE.acting, STATE.acting_checked = False, float("-inf")
        settings.peering.standalone = False
        settings.peering.name = PEERING
        settings.peering.mandatory = True
        settings.peering.clusterwide = CONFIG.namespace is None
        settings.peering.priority = STATE.priority
        settings.peering.lifetime = CONFIG.peering_lifetime
    else:
        settings.peering.standalone = True
    # A new run (a restart, or a test's second runner in one process) starts with no state.
    STATE.locks.clear()
    STATE.timers.clear()
    STATE.failures.clear()
    STATE.crd_checked = float("-inf")
    # asyncio.to_thread's default pool has min(32, CPUs + 4) threads: 6 on a 2-core node, which
    # would cap concurrent reconciles far below what the API server serves.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=CONFIG.api_workers, thread_name_prefix="kubetune-api")
    )
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
async def on_job_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    """Metrics follow every change (the trainer's progress too); deletion forgets the job.
    Async, on the event loop: no I/O, and no other thread touching the per-job state."""
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
        schedule(namespace, owner, CONFIG.launcher_debounce)


async def _resync_loop() -> None:
    """The safety net: every job is looked at again each interval, whatever event was missed,
    and state kept for jobs that no longer exist is dropped (a missed DELETED event cannot
    leak memory). An operator-level loop rather than ``kopf.timer``, which would put a kopf
    finalizer on every job, so that deleting a job would wait for a running operator."""
    while True:
        await asyncio.sleep(CONFIG.timer_interval)
        if not await _acting():
            continue
        try:
            listed = await asyncio.to_thread(_list_jobs)
        except Exception as err:
            log.warning("resync: cannot list jobs (%s)", err)
            continue
        existing = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed}
        kept = {*STATE.locks, *STATE.timers, *STATE.failures, *metrics.known_jobs()}
        for key in [k for k in kept if k not in existing]:
            forget(*key)
        # Spread over the interval: a thousand passes at once would delay event-driven ones.
        spacing = CONFIG.timer_interval / max(1, len(existing))
        for i, (namespace, name) in enumerate(sorted(existing)):
            schedule(namespace, name, i * spacing)


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
