"""The operator's only API I/O: one client (:class:`ApiClient`), what a pass observes about a
job (:func:`observe`) and how a decision is carried out (:func:`execute`): create-or-adopt
children by their deterministic names, delete, merge-patch the status fields the operator
owns, post events.

Requests are plain JSON over the kubernetes package's authenticated connection pool: no
discovery, no typed or dynamic-client objects (their decoding cost more CPU than the rest of
a pass). A pass reads only what its decision can depend on (:func:`lifecycle.reads`): a job's
first pass reads no children (nothing of it can exist yet; create-or-adopt settles a
conflict), later passes list its Jobs (launchers and export Jobs) by label, and the pods and
events of a launcher only when its pods have not run within the grace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from kubetune.api import API_VERSION, KIND, PLURAL, FineTuneJobSpec, model_dependencies
from kubetune.builders import names
from kubetune.controller import lifecycle
from kubetune.controller.config import OperatorConfig
from kubetune.controller.lifecycle import Child, Create, Decision, Delete, Event, Observed
from kubetune.sweep_api import SWEEP_KIND, SWEEP_PLURAL, best_dependency, sweep_of_dependency

log = logging.getLogger("kubetune.operator")

USER_AGENT = "kubetune-operator"
RAYJOB = ("ray.io/v1", "RayJob")
MERGE_PATCH = "application/merge-patch+json"
RAYJOB_CRD = "rayjobs.ray.io"
KUEUE_CRD = "workloads.kueue.x-k8s.io"
#: REST plural of every kind the operator reads or writes.
PLURALS: dict[tuple[str, str], str] = {
    (API_VERSION, KIND): PLURAL,
    (API_VERSION, SWEEP_KIND): SWEEP_PLURAL,
    ("batch/v1", "Job"): "jobs",
    ("v1", "Service"): "services",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("ray.io/v1", "RayJob"): "rayjobs",
    ("kopf.dev/v1", "KopfPeering"): "kopfpeerings",
    ("kopf.dev/v1", "ClusterKopfPeering"): "clusterkopfpeerings",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "customresourcedefinitions",
}
#: Children a pass lists when it needs all of them (Suspended and finished jobs).
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("batch/v1", "Job"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
)
#: A metadata-only list (PartialObjectMetadataList): names and resource versions, no bodies.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


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


def path_of(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of a collection (``name`` None) or of one object."""
    root = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    path = f"{root}/namespaces/{namespace}" if namespace else root
    path += f"/{PLURALS[(api_version, kind)]}"
    return f"{path}/{name}" if name else path


class ApiClient:
    """One connection pool (sized for the worker threads, twice: a pass creates a job's
    independent children concurrently) for every call of the process; connected on first use.
    Blocking: called from worker threads."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self._client: k8s.ApiClient | None = None
        self._crds: dict[str, bool] = {}
        self._crds_checked = float("-inf")
        self._created = 0
        self._created_lock = threading.Lock()
        self._creators = ThreadPoolExecutor(
            max_workers=config.api_workers, thread_name_prefix="kubetune-create"
        )

    def reset(self) -> None:
        """Forget what was learned of the cluster (a new kopf run starts afresh)."""
        self._crds_checked = float("-inf")

    @property
    def client(self) -> k8s.ApiClient:
        if self._client is None:
            try:
                k8s_config.load_incluster_config()
            except k8s_config.ConfigException:
                k8s_config.load_kube_config()
            configuration = k8s.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = 2 * self.config.api_workers
            self._client = k8s.ApiClient(configuration)
            self._client.user_agent = USER_AGENT
        return self._client

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any]:
        """One request; the decoded JSON answer. Raises ApiException on any non-2xx."""
        url = path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.client.param_serialize(
            method, url, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self.client.call_api(*request, _request_timeout=60)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=data.decode(), data=None)
        return json.loads(data) if data else {}

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        try:
            return self.request("GET", path_of(api_version, kind, namespace, quote(name)))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(
        self, api_version: str, kind: str, namespace: str | None, selector: str = ""
    ) -> list[dict[str, Any]]:
        """The objects of a kind (with kind and apiVersion filled in, as a GET gives them)."""
        query = {"labelSelector": selector} if selector else None
        items = self.request("GET", path_of(api_version, kind, namespace), query=query)
        out = items.get("items") or []
        for item in out:
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
        return out

    def launcher_pods(self, namespace: str, launcher: str) -> list[dict[str, Any]]:
        """The pods of a launcher Job (the Job controller labels them with its name)."""
        return self.list("v1", "Pod", namespace, f"batch.kubernetes.io/job-name={launcher}")

    def launcher_events(self, namespace: str, launcher: str) -> list[dict[str, Any]]:
        """The events about a launcher Job (the Job controller's FailedCreate)."""
        about = f"involvedObject.name={launcher},involvedObject.kind=Job"
        path = path_of("v1", "Event", namespace)
        return self.request("GET", path, query={"fieldSelector": about}).get("items") or []

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(API_VERSION, KIND, name, namespace)

    def _metadata(self, api_version: str, kind: str, selector: str = "") -> list[dict[str, Any]]:
        """Names, labels and resource versions of every object of a kind the operator watches:
        one metadata-only list, served from the API server's watch cache."""
        query = {"resourceVersion": "0"}
        if selector:
            query["labelSelector"] = selector
        path = path_of(api_version, kind, self.config.namespace)
        listed = self.request("GET", path, query=query, accept=METADATA_LIST)
        return [item.get("metadata") or {} for item in listed.get("items") or []]

    def job_versions(self) -> dict[tuple[str, str], str]:
        """(namespace, name) → resourceVersion of every FineTuneJob."""
        return {
            (m.get("namespace", ""), m.get("name", "")): m.get("resourceVersion", "")
            for m in self._metadata(API_VERSION, KIND)
        }

    def launcher_versions(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(namespace, name) → (its FineTuneJob's name, resourceVersion) of every Job the
        operator made (launchers and export Jobs), and of every RayJob launcher when the
        cluster has KubeRay's CRD."""
        selector = f"{names.LABEL_MANAGED_BY}={names.MANAGER}"
        kinds = [("batch/v1", "Job")]
        if self.installed_crds()[RAYJOB_CRD]:
            kinds.append(RAYJOB)
        return {
            (m.get("namespace", ""), m.get("name", "")): (
                (m.get("labels") or {}).get(names.LABEL_JOB, ""),
                m.get("resourceVersion", ""),
            )
            for api_version, kind in kinds
            for m in self._metadata(api_version, kind, selector)
        }

    def installed_crds(self) -> dict[str, bool]:
        """Which optional CRDs (KubeRay's RayJob, Kueue's Workload) the cluster has, re-read
        every crd_refresh seconds. Without permission to read CRDs (a namespaced install) they
        count as absent: the job launcher and no Kueue."""
        now = time.monotonic()
        if now - self._crds_checked > self.config.crd_refresh:
            for name in (RAYJOB_CRD, KUEUE_CRD):
                crd = ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
                try:
                    self._crds[name] = self.get(*crd, name, None) is not None
                except ApiException as err:
                    if err.status != 403:
                        raise
                    if name not in self._crds:
                        log.warning("event=crd_unreadable crd=%s assumed=absent", name)
                    self._crds[name] = False
            self._crds_checked = now
        return self._crds

    def create_or_adopt(self, manifest: dict[str, Any], uid: str) -> str:
        """Create a child; when its name exists already, check that it is ours (adopt it)."""
        meta = manifest["metadata"]
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        try:
            self.request("POST", path_of(api_version, kind, meta["namespace"]), body=manifest)
            self._count_creation(manifest)
            return "created"
        except ApiException as err:
            if err.status != 409:
                raise
        existing = self.get(api_version, kind, meta["name"], meta["namespace"]) or {}
        if not owned_by(existing, uid):
            raise kopf.TemporaryError(
                f"{kind} {meta['name']} exists and is not owned by this job", delay=30
            )
        return "adopted"

    def create_all(self, manifests: list[dict[str, Any]], uid: str) -> list[str]:
        """Create-or-adopt a job's children: the independent ones at once, then the launchers
        (their pods mount and use the others). Returns one log line per child."""
        launchers = [m for m in manifests if m["kind"] in lifecycle.LAUNCHER_KINDS]
        others = [m for m in manifests if m["kind"] not in lifecycle.LAUNCHER_KINDS]
        done = []
        for group in (others, launchers):
            hows = list(self._creators.map(lambda m: self.create_or_adopt(m, uid), group))
            done += [
                f"{how} {m['kind']}/{m['metadata']['name']}"
                for how, m in zip(hows, group, strict=True)
            ]
        return done

    def _count_creation(self, manifest: dict[str, Any]) -> None:
        with self._created_lock:
            self._created += 1
            created = self._created
        limit = self.config.fault_exit_after_creates
        if limit and created >= limit:
            log.warning(
                "fault injection: exiting after creating %s/%s",
                manifest["kind"],
                manifest["metadata"]["name"],
            )
            logging.shutdown()
            os._exit(3)

    def delete(self, namespace: str, action: Delete) -> None:
        path = path_of(action.api_version, action.kind, namespace, action.name)
        try:
            self.request("DELETE", path, body={"propagationPolicy": "Background"})
        except ApiException as err:
            if err.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        path = path_of(API_VERSION, KIND, namespace, name) + "/status"
        try:
            self.request("PATCH", path, body={"status": patch}, content_type=MERGE_PATCH)
        except ApiException as err:
            if err.status == 404:
                raise JobGone(name) from err
            raise

    def post_event(self, job: dict[str, Any], event: Event) -> None:
        """Events through kopf's poster when called inside its context, else directly; on a
        FineTuneJob or any object that names its apiVersion and kind (a sweep)."""
        try:
            kopf.event(job, type=event.type, reason=event.reason, message=event.message)
            return
        except LookupError:
            pass
        meta = job["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": job.get("apiVersion", API_VERSION),
                "kind": job.get("kind", KIND),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": event.type,
            "reason": str(event.reason),
            "message": event.message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": names.MANAGER},
            "reportingComponent": names.MANAGER,
            "reportingInstance": names.MANAGER,
        }
        with contextlib.suppress(ApiException):
            self.request("POST", path_of("v1", "Event", meta["namespace"]), body=body)


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _attempt_of(obj: dict[str, Any]) -> int | None:
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(names.LABEL_ATTEMPT)
    return int(value) if value and value.isdigit() else None


def observe(
    api: ApiClient, job: dict[str, Any], rayjob_crd: bool, now: datetime, grace: float
) -> Observed:
    """What the job's next decision can depend on (:func:`lifecycle.reads`): its children
    (by label, owned by its uid), its current launcher and export Job, the launcher's pods when
    they have not run within ``grace``, its dependencies."""
    meta = job["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
    selector = f"{names.LABEL_JOB}={name}"
    reads = lifecycle.reads(job)
    kinds: list[tuple[str, str]] = []
    if reads == "all":
        kinds = list(CHILD_KINDS)
    elif reads == "jobs":
        kinds = [("batch/v1", "Job")]
    if rayjob_crd and reads != "none":
        kinds.append(RAYJOB)
    children: list[Child] = []
    launcher = None
    attempt = int((job.get("status") or {}).get("attempt") or 0)
    export_attempt = int((job.get("status") or {}).get("exportAttempt") or 0)
    exporter_name = names.export_job_name(name, export_attempt) if export_attempt else None
    exporter = None
    for api_version, kind in kinds:
        for item in api.list(api_version, kind, namespace, selector):
            if not owned_by(item, uid):
                continue
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
    # A failed trainer or export stage says why in its termination message (optional: without
    # the power to list pods the condition carries the exit code alone).
    export_pods: list[dict[str, Any]] = []
    if exporter is not None and lifecycle.launcher_state(exporter)[0] == "failed":
        export_pods = _pods(
            api, namespace, f"{selector},{names.LABEL_EXPORT_ATTEMPT}={export_attempt}"
        )
    pods: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    if (
        launcher is not None
        and launcher.get("kind") == "Job"
        and lifecycle.launcher_state(launcher)[0] == "failed"
    ):
        # The trainer's termination message says why (bad data names the file and row).
        trainer = f"{selector},{names.LABEL_ATTEMPT}={attempt},{names.LABEL_COMPONENT}=trainer"
        pods = _pods(api, namespace, trainer)
    elif launcher is not None and lifecycle.pods_to_explain(launcher, now, grace):
        launcher_name = launcher["metadata"]["name"]
        # Optional like the export pods: without the power to read them, PodsReady says less.
        with contextlib.suppress(ApiException):
            pods = api.launcher_pods(namespace, launcher_name)
            if len(lifecycle.live_pods(pods)) < lifecycle.expected_pods(launcher):
                events = api.launcher_events(namespace, launcher_name)
    dependencies: dict[str, dict[str, Any] | None] = {}
    try:
        spec = FineTuneJobSpec.model_validate(job.get("spec") or {})
        deps = [dep for _, dep in model_dependencies(spec)]
    except ValueError:
        deps = []
    for dep in deps:
        sweep = sweep_of_dependency(dep)  # finetunejob://<sweep>/best
        if sweep is None:
            dependencies[dep] = api.get_job(namespace, dep)
        else:
            dependencies[dep] = best_dependency(api.get(API_VERSION, SWEEP_KIND, sweep, namespace))
    return Observed(
        launcher=launcher,
        children=tuple(children),
        dependencies=dependencies,
        exporter=exporter,
        export_pods=tuple(export_pods),
        launcher_pods=tuple(pods),
        launcher_events=tuple(events),
    )


def _pods(api: ApiClient, namespace: str, selector: str) -> list[dict[str, Any]]:
    """The pods the selector finds; none without the power to list them (what they would
    tell is optional)."""
    with contextlib.suppress(ApiException):
        return api.list("v1", "Pod", namespace, selector)
    return []


def execute(api: ApiClient, job: dict[str, Any], decision: Decision) -> list[str]:
    """Carry out a decision: creations and deletions, then the status patch. Returns log
    lines. Events are posted by the caller (kopf's poster lives on the event loop)."""
    meta = job["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
    done: list[str] = []
    self_delete: Delete | None = None
    for action in decision.actions:
        if isinstance(action, Create):
            done += api.create_all(action.manifests, uid)
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
