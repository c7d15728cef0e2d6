"""The operator's only API I/O: one client (:class:`ApiClient`), what a pass observes about a
job (:func:`observe`) and how a decision is carried out (:func:`execute`): create-or-adopt
children by their deterministic names, delete, merge-patch the status fields the operator
owns, post events."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from kubetune.api import API_VERSION, KIND, FineTuneJobSpec, model_dependencies
from kubetune.builders import names
from kubetune.controller import lifecycle
from kubetune.controller.config import OperatorConfig
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
RAYJOB_CRD = "rayjobs.ray.io"
KUEUE_CRD = "workloads.kueue.x-k8s.io"


class JobGone(Exception):
    """The FineTuneJob was deleted while a pass was working on it."""


def describe(err: BaseException) -> str:
    """One log line for an error (API errors print their headers and traceback otherwise)."""
    if isinstance(err, ApiException):
        message = ""
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            message = json.loads(err.body).get("message", "")
        return f"{err.status} {err.reason}: {message}".rstrip(": ")
    return f"{type(err).__name__}: {err}"


class ApiClient:
    """One connection pool (sized for the worker threads) for every call of the process; the
    connection is made on first use. Blocking: called from worker threads."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self._dynamic: DynamicClient | None = None
        self._crds: dict[str, bool] = {}
        self._crds_checked = float("-inf")
        self._created = 0

    def reset(self) -> None:
        """Forget what was learned of the cluster (a new kopf run starts afresh)."""
        self._crds_checked = float("-inf")

    @property
    def dynamic(self) -> DynamicClient:
        if self._dynamic is None:
            try:
                k8s_config.load_incluster_config()
            except k8s_config.ConfigException:
                k8s_config.load_kube_config()
            configuration = k8s.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = self.config.api_workers
            self._dynamic = DynamicClient(k8s.ApiClient(configuration))
        return self._dynamic

    def resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        try:
            return self.resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
        except NotFoundError:
            return None

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(API_VERSION, KIND, name, namespace)

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every FineTuneJob the operator watches."""
        resource = self.resource(API_VERSION, KIND)
        namespace = self.config.namespace
        listed = resource.get(namespace=namespace) if namespace else resource.get()
        return listed.to_dict().get("items") or []

    def installed_crds(self) -> dict[str, bool]:
        """Which optional CRDs (KubeRay's RayJob, Kueue's Workload) the cluster has, re-read
        every crd_refresh seconds. Without permission to read CRDs (a namespaced install) they
        count as absent: the job launcher and no Kueue."""
        now = time.monotonic()
        if now - self._crds_checked > self.config.crd_refresh:
            api = k8s.ApiextensionsV1Api(self.dynamic.client)
            for name in (RAYJOB_CRD, KUEUE_CRD):
                try:
                    api.read_custom_resource_definition(name)
                    self._crds[name] = True
                except ApiException as err:
                    if err.status not in (403, 404):
                        raise
                    if err.status == 403 and name not in self._crds:
                        log.warning("event=crd_unreadable crd=%s assumed=absent", name)
                    self._crds[name] = False
            self._crds_checked = now
        return self._crds

    def create_or_adopt(self, manifest: dict[str, Any], uid: str) -> str:
        """Create a child; when its name exists already, check that it is ours (adopt it)."""
        meta = manifest["metadata"]
        resource = self.resource(manifest["apiVersion"], manifest["kind"])
        try:
            resource.create(body=manifest, namespace=meta["namespace"])
            self._count_creation(manifest)
            return "created"
        except ApiException as err:
            if err.status != 409:
                raise
        existing = resource.get(name=meta["name"], namespace=meta["namespace"]).to_dict()
        if not owned_by(existing, uid):
            raise kopf.TemporaryError(
                f"{manifest['kind']} {meta['name']} exists and is not owned by this job", delay=30
            )
        return "adopted"

    def _count_creation(self, manifest: dict[str, Any]) -> None:
        self._created += 1
        limit = self.config.fault_exit_after_creates
        if limit and self._created >= limit:
            log.warning(
                "fault injection: exiting after creating %s/%s",
                manifest["kind"],
                manifest["metadata"]["name"],
            )
            logging.shutdown()
            os._exit(3)

    def delete(self, namespace: str, action: Delete) -> None:
        with contextlib.suppress(NotFoundError):
            self.resource(action.api_version, action.kind).delete(
                name=action.name,
                namespace=namespace,
                body={"propagationPolicy": "Background"},
            )

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        resource = self.resource(API_VERSION, KIND)
        try:
            self.dynamic.patch(
                resource=resource.subresources["status"],
                name=name,
                namespace=namespace,
                body={"status": patch},
                content_type=MERGE_PATCH,
            )
        except NotFoundError as err:
            raise JobGone(name) from err

    def post_event(self, job: dict[str, Any], event: Event) -> None:
        """Events through kopf's poster when called inside its context, else directly."""
        try:
            kopf.event(job, type=event.type, reason=event.reason, message=event.message)
            return
        except LookupError:
            pass
        meta = job["metadata"]
        now = datetime.now(UTC)
        body = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(
                generate_name=f"{meta['name']}.", namespace=meta["namespace"]
            ),
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
            k8s.CoreV1Api(self.dynamic.client).create_namespaced_event(meta["namespace"], body)


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _attempt_of(obj: dict[str, Any]) -> int | None:
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(names.LABEL_ATTEMPT)
    return int(value) if value and value.isdigit() else None


def observe(api: ApiClient, job: dict[str, Any], rayjob_crd: bool) -> Observed:
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
        listed = api.resource(api_version, kind).get(namespace=namespace, label_selector=selector)
        for item in listed.to_dict().get("items") or []:
            if not owned_by(item, uid):
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
            pods = api.resource("v1", "Pod").get(
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
        dependencies[dep] = api.get_job(namespace, dep)
    return Observed(
        launcher=launcher,
        children=tuple(children),
        dependencies=dependencies,
        exporter=exporter,
        export_pods=tuple(export_pods),
    )


def execute(api: ApiClient, job: dict[str, Any], decision: Decision) -> list[str]:
    """Carry out a decision: creations and deletions, then the status patch. Returns log
    lines. Events are posted by the caller (kopf's poster lives on the event loop)."""
    meta = job["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
    done: list[str] = []
    self_delete: Delete | None = None
    for action in decision.actions:
        if isinstance(action, Create):
            for manifest in action.manifests:
                how = api.create_or_adopt(manifest, uid)
                done.append(f"{how} {manifest['kind']}/{manifest['metadata']['name']}")
        elif isinstance(action, Delete):
            if action.kind == KIND:
                self_delete = action
                continue
            api.delete(namespace, action)
            done.append(f"deleted {action.kind}/{action.name}")
    if decision.status_patch and self_delete is None:
        api.patch_status(namespace, name, decision.status_patch)
    if self_delete is not None:
        api.delete(namespace, self_delete)
        done.append(f"deleted {KIND}/{name}")
    return done
