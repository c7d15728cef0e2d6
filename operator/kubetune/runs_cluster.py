"""`kubetune submit`, and `list`, `status`, `logs`, `delete` against a cluster (`--cluster`, or
`--context NAME`): FineTuneJobs through the Kubernetes API, as kubectl would, but in the terms
of a fine-tuning run.

- submit: validate the files exactly as `kubetune validate` does, then create each job;
- list: the jobs of a namespace (or all) with phase, progress, loss, attempt and age;
- status: the job's status (phase, progress, checkpoint, conditions, artifacts) and its events;
- logs: the log of pod 0 of the current attempt (the Ray head and driver), optionally followed;
- delete: the job (its children go with it: they carry its ownerReference).

Formatting is pure (``*_table``, ``status_lines``); the API calls are the functions taking a
:class:`Target`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.builders import names
from kubetune.objectives import objective_pairs
from kubetune.validation import job_key, load_jobs, pipeline_problems


class ClusterError(RuntimeError):
    """A request the cluster refused or could not answer, said in one line."""


@dataclass
class Target:
    """An API client for one kubeconfig context, and the namespace to work in."""

    api: Any
    namespace: str
    context: str


def connect(context: str | None, namespace: str | None, kubeconfig: str | None = None) -> Target:
    """A client for the context (default: the kubeconfig's current one); the namespace is the
    one given, else the context's, else ``default``."""
    from kubernetes import config as k8s_config
    from kubernetes.config.config_exception import ConfigException

    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c["name"] == context), None) if context else active
        if chosen is None:
            known = ", ".join(c["name"] for c in contexts)
            raise ClusterError(f"no context '{context}' in the kubeconfig (contexts: {known})")
        api = k8s_config.new_client_from_config(config_file=kubeconfig, context=chosen["name"])
    except (ConfigException, OSError) as err:
        raise ClusterError(f"cannot read the kubeconfig: {err}") from None
    default_namespace = chosen.get("context", {}).get("namespace") or "default"
    return Target(api, namespace or default_namespace, chosen["name"])


def _custom(target: Target) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(target.api)


def _core(target: Target) -> Any:
    from kubernetes import client

    return client.CoreV1Api(target.api)


def _refused(err: Any, what: str) -> ClusterError:
    """One line from an ApiException: the API server's own message when it sent one."""
    import json

    message = getattr(err, "reason", "") or str(err)
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        message = json.loads(err.body).get("message", message)
    return ClusterError(f"{what}: {message}")


def _api_errors() -> tuple[type[BaseException], ...]:
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    return (ApiException, HTTPError)


# --------------------------------------------------------------------------- submit


def submit(target: Target, paths: list[Path]) -> list[str]:
    """Validate every file, then create every job; the created ``namespace/name``s. Nothing is
    created when a file has a problem (the problems are printed, then ClusterError)."""
    jobs, problems = load_jobs(paths)
    problems += pipeline_problems(jobs)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        raise ClusterError(f"{len(problems)} problem(s) in {len(paths)} file(s); nothing submitted")
    bodies = []
    for doc, job in jobs:
        namespace = job.metadata.namespace or target.namespace
        body = dict(doc.data)
        body["metadata"] = {**body.get("metadata", {}), "namespace": namespace}
        bodies.append((namespace, job.metadata.name, body))
    created = []
    for namespace, name, body in bodies:
        try:
            _custom(target).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        except _api_errors() as err:
            if getattr(err, "status", None) == 409:
                raise ClusterError(
                    f"finetunejob {namespace}/{name} already exists; "
                    f"`kubetune delete {name} --namespace {namespace}` first, or rename it"
                ) from None
            raise _refused(err, f"finetunejob {namespace}/{name}") from None
        created.append(f"{namespace}/{name}")
    return created


def submitted_names(paths: list[Path]) -> list[str]:
    jobs, _ = load_jobs(paths)
    return ["/".join(job_key(job)) for _, job in jobs]


# --------------------------------------------------------------------------- read


def list_jobs(target: Target, *, all_namespaces: bool = False) -> list[dict[str, Any]]:
    try:
        if all_namespaces:
            found = _custom(target).list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            found = _custom(target).list_namespaced_custom_object(
                GROUP, VERSION, target.namespace, PLURAL
            )
    except _api_errors() as err:
        raise _refused(err, f"listing finetunejobs in {target.namespace}") from None
    return sorted(
        found.get("items", []),
        key=lambda j: (j["metadata"].get("namespace", ""), j["metadata"]["name"]),
    )


def get_job(target: Target, name: str) -> dict[str, Any]:
    try:
        return _custom(target).get_namespaced_custom_object(
            GROUP, VERSION, target.namespace, PLURAL, name
        )
    except _api_errors() as err:
        if getattr(err, "status", None) == 404:
            raise ClusterError(
                f"no finetunejob {name} in namespace {target.namespace} "
                f"(context {target.context}); `kubetune list --context {target.context} -A` "
                "lists them all"
            ) from None
        raise _refused(err, f"finetunejob {target.namespace}/{name}") from None


def job_events(target: Target, name: str) -> list[dict[str, Any]]:
    """The job's events, oldest first."""
    selector = f"involvedObject.name={name},involvedObject.kind=FineTuneJob"
    try:
        found = _core(target).list_namespaced_event(target.namespace, field_selector=selector)
    except _api_errors() as err:
        raise _refused(err, f"events of {target.namespace}/{name}") from None
    events = [target.api.sanitize_for_serialization(e) for e in found.items]
    return sorted(events, key=_event_time)


def _event_time(event: dict[str, Any]) -> str:
    return (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("metadata", {}).get("creationTimestamp")
        or ""
    )


def delete_job(target: Target, name: str) -> None:
    get_job(target, name)  # a clear message when it does not exist
    try:
        _custom(target).delete_namespaced_custom_object(
            GROUP, VERSION, target.namespace, PLURAL, name
        )
    except _api_errors() as err:
        raise _refused(err, f"deleting finetunejob {target.namespace}/{name}") from None


# --------------------------------------------------------------------------- logs


def choose_pod0(pods: list[dict[str, Any]], attempt: int | None) -> dict[str, Any] | None:
    """Pod 0 of the attempt among a job's trainer pods: completion index 0 of the Indexed Job
    launcher, or the Ray head of a RayJob; the newest such pod when there are several (a pod
    replaced after an eviction)."""
    if attempt is not None:
        pods = [p for p in pods if _labels(p).get(names.LABEL_ATTEMPT) == str(attempt)]
    heads = [
        p
        for p in pods
        if _labels(p).get(names.JOB_COMPLETION_INDEX_LABEL) == "0"
        or _labels(p).get(names.LABEL_ROLE) == "head"
    ]
    candidates = heads or pods
    if not candidates:
        return None
    return max(candidates, key=lambda p: p["metadata"].get("creationTimestamp") or "")


def _labels(pod: dict[str, Any]) -> dict[str, str]:
    return pod["metadata"].get("labels") or {}


def trainer_pod(target: Target, name: str) -> str:
    """The name of pod 0 of the job's current attempt."""
    job = get_job(target, name)
    attempt = (job.get("status") or {}).get("attempt")
    selector = f"{names.LABEL_JOB}={name},{names.LABEL_COMPONENT}=trainer"
    try:
        found = _core(target).list_namespaced_pod(target.namespace, label_selector=selector)
    except _api_errors() as err:
        raise _refused(err, f"pods of {target.namespace}/{name}") from None
    pods = [target.api.sanitize_for_serialization(p) for p in found.items]
    pod = choose_pod0(pods, attempt)
    if pod is None:
        phase = (job.get("status") or {}).get("phase") or "Pending"
        raise ClusterError(
            f"finetunejob {target.namespace}/{name} ({phase}) has no trainer pod for attempt "
            f"{attempt or '-'} yet; `kubetune status {name}` says why"
        )
    return pod["metadata"]["name"]


def pod_log(target: Target, pod: str, *, follow: bool) -> Iterator[bytes]:
    """The pod's log as it comes (to the end of the container with ``follow``)."""
    try:
        response = _core(target).read_namespaced_pod_log(
            pod, target.namespace, follow=follow, _preload_content=False
        )
    except _api_errors() as err:
        raise _refused(err, f"log of pod {target.namespace}/{pod}") from None
    try:
        yield from response.stream(4096)
    finally:
        response.release_conn()


# --------------------------------------------------------------------------- formatting


def age(timestamp: str | None, now: datetime) -> str:
    """kubectl's short age: 42s, 5m, 3h, 2d."""
    if not timestamp:
        return "-"
    # creationTimestamp has seconds; an event's eventTime has microseconds.
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def steps(progress: dict[str, Any]) -> str:
    if progress.get("step") is None:
        return "-"
    return f"{progress['step']}/{progress.get('totalSteps', '-')}"


def list_table(jobs: list[dict[str, Any]], now: datetime, *, namespaces: bool) -> list[tuple]:
    header = ("NAMESPACE",) if namespaces else ()
    rows: list[tuple] = [(*header, "JOB", "METHOD", "PHASE", "STEP", "LOSS", "ATTEMPT", "AGE")]
    for job in jobs:
        meta, status = job["metadata"], job.get("status") or {}
        progress = status.get("progress") or {}
        ns = (meta.get("namespace", ""),) if namespaces else ()
        rows.append(
            (
                *ns,
                meta["name"],
                job["spec"].get("method", "-"),
                status.get("phase") or "Pending",
                steps(progress),
                progress.get("loss") or "-",
                str(status.get("attempt") or "-"),
                age(meta.get("creationTimestamp"), now),
            )
        )
    return rows


def status_lines(job: dict[str, Any], events: list[dict[str, Any]], now: datetime) -> list[str]:
    """`kubetune status JOB` for a cluster job: what kubectl describe would say, in the terms
    of a run."""
    meta, status = job["metadata"], job.get("status") or {}
    progress = status.get("progress") or {}
    checkpoint = status.get("lastCheckpoint") or {}
    lines = [
        f"job:         {meta.get('namespace')}/{meta['name']} ({job['spec'].get('method')})",
        f"phase:       {status.get('phase') or 'Pending'}",
        f"attempt:     {status.get('attempt') or '-'} (restarts {status.get('restarts') or 0}, "
        f"disruptions {status.get('disruptions') or 0})",
        f"step:        {steps(progress)}  loss {progress.get('loss') or '-'}"
        + (f"  eta {progress['etaSeconds']}s" if progress.get("etaSeconds") else ""),
        *(
            [f"objectives:  {objective_pairs(progress['objectives'])}"]
            if progress.get("objectives")
            else []
        ),
        "checkpoint:  "
        + (f"step {checkpoint['step']} at {checkpoint['uri']}" if checkpoint else "-"),
        f"output:      {status.get('output') or '-'}",
        f"started:     {status.get('startTime') or '-'}"
        + (f"  finished {status['completionTime']}" if status.get("completionTime") else ""),
    ]
    conditions = status.get("conditions") or []
    if conditions:
        lines += ["", "CONDITIONS"]
        rows = [("TYPE", "STATUS", "REASON", "MESSAGE")]
        rows += [
            (c["type"], c["status"], c.get("reason") or "-", one_line(c.get("message") or ""))
            for c in conditions
        ]
        lines += format_rows(rows)
    artifacts = status.get("artifacts") or []
    if artifacts:
        lines += ["", "ARTIFACTS"]
        rows = [("FORMAT", "VERIFIED", "URI")]
        rows += [(a["format"], "yes" if a.get("verified") else "no", a["uri"]) for a in artifacts]
        lines += format_rows(rows)
    if events:
        lines += ["", "EVENTS"]
        rows = [("AGE", "TYPE", "REASON", "MESSAGE")]
        rows += [
            (
                age(_event_time(e) or None, now),
                e.get("type") or "-",
                e.get("reason") or "-",
                one_line(e.get("message") or ""),
            )
            for e in events
        ]
        lines += format_rows(rows)
    return lines


def one_line(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_rows(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
