"""The operator against a real control plane: kube-apiserver, kube-controller-manager (Job
controller, garbage collector), kube-scheduler, etcd, and kwok deciding pod outcomes.

The operator runs as a subprocess (``python -m kubetune.operator_main``) so a test can kill it
with SIGKILL and start it again. Pod outcomes are chosen with the FineTuneJob annotation
``kubetune.io/pod-annotations``, which the builders copy onto the trainer pods of the attempts
built after it is set: a test sets "fail" for attempt 1, then switches it to "succeed" once
attempt 1's launcher exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import REPO_ROOT, kc, wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from kubetune.api import FineTuneJob
from kubetune.builders import ClusterFacts, build_children, names
from kubetune.builders.common import PLAN_KEY, POD_ANNOTATIONS
from kubetune.planner import make_plan
from kubetune_trainer.reporting.kube_status import ApiTarget, KubernetesReporter, ReportError
from kubetune_trainer.reporting.progress import ProgressRecord

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"
TRAINER_IMAGE = "kubetune/trainer:e2e"
STORAGE = "s3://kubetune-e2e/runs"
NODE_GROUP = f"op-{uuid.uuid4().hex[:6]}"
CHILD_KINDS = [
    ("batch/v1", "Job"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """The operator as a subprocess against the test cluster; restartable."""

    def __init__(self, kubeconfig: Path, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self, wait: bool = True, **extra_env: str) -> None:
        self.starts += 1
        env = dict(os.environ)
        env.update(extra_env)
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            KUBETUNE_TRAINER_IMAGE=TRAINER_IMAGE,
            KUBETUNE_DEFAULT_STORAGE=STORAGE,
            KUBETUNE_METRICS_PORT=str(self.metrics_port),
            KUBETUNE_HEALTH_PORT=str(self.health_port),
            KUBETUNE_TIMER_SECONDS="5",
            KUBETUNE_DEPENDENCY_POLL_SECONDS="2",
            KUBETUNE_RETRY_BACKOFF_SECONDS="0.5",
            KUBETUNE_RETRY_BACKOFF_MAX_SECONDS="5",
            KUBETUNE_WATCH_TIMEOUT_SECONDS="10",
            PYTHONPATH=os.pathsep.join(
                [str(REPO_ROOT / "operator"), str(REPO_ROOT / "trainer_image")]
            ),
        )
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubetune.operator_main"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )
        if wait:
            wait_for(self.metrics_up, timeout=60, what="operator /metrics")

    def metrics_up(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.logs()
        with contextlib.suppress(OSError):
            self.metrics()
            return True
        return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    def healthz(self) -> int:
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status

    def kill(self) -> None:
        """SIGKILL: no cleanup, no chance to finish what it was doing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self, tail: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-tail:])


@pytest.fixture(scope="module")
def api(cluster) -> k8s.ApiClient:
    cluster.add_gpu_nodes(3, group=NODE_GROUP)
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="module")
def operator(cluster, api, tmp_path_factory) -> Iterator[Operator]:
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()


# --------------------------------------------------------------------------- helpers


def ftj(name: str, pods: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "method": "sft",
            "model": {"source": "builtin://tiny-llama"},
            "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
            "resources": {
                "nodes": 1,
                "gpusPerNode": 1,
                "cpu": "1",
                "memory": "1Gi",
                "nodeSelector": {kc.NODE_GROUP_LABEL: NODE_GROUP},
            },
            "resume": {"maxRestarts": 3, "backoffSeconds": 1, "maxBackoffSeconds": 2},
        },
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body["spec"].get(key), dict):
            body["spec"][key] = {**body["spec"][key], **value}
        else:
            body["spec"][key] = value
    if pods is not None:
        body["metadata"]["annotations"] = {POD_ANNOTATIONS: json.dumps(pods)}
    return body


def outcome(kind: str, delay: str = "1s", exit_code: int | None = None) -> dict[str, str]:
    pods = {kc.OUTCOME: kind, kc.DELAY: delay}
    if exit_code is not None:
        pods[kc.EXIT_CODE] = str(exit_code)
    return pods


def custom(api: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api)


def create(api: k8s.ApiClient, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def get(api: k8s.ApiClient, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return custom(api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def patch(api: k8s.ApiClient, ns: str, name: str, body: dict[str, Any]) -> None:
    custom(api).patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, body)


def set_pods(api: k8s.ApiClient, ns: str, name: str, pods: dict[str, str]) -> None:
    patch(api, ns, name, {"metadata": {"annotations": {POD_ANNOTATIONS: json.dumps(pods)}}})


def status(api: k8s.ApiClient, ns: str, name: str) -> dict[str, Any]:
    job = get(api, ns, name)
    return (job or {}).get("status") or {}


def wait_phase(api: k8s.ApiClient, ns: str, name: str, phase: str, timeout: float = 60) -> dict:
    def check() -> dict[str, Any] | None:
        s = status(api, ns, name)
        if s.get("phase") == phase:
            return s
        if phase != "Failed" and s.get("phase") == "Failed":
            pytest.fail(f"{name} failed: {json.dumps(s.get('conditions'), indent=1)}")
        return None

    return wait_for(check, timeout=timeout, interval=0.5, what=f"{name} to be {phase}")


def condition(s: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in s.get("conditions") or [] if c["type"] == type_)


def children(api: k8s.ApiClient, ns: str, name: str) -> set[tuple[str, str]]:
    """(kind, name) of every object labelled as the job's child."""
    from kubernetes.dynamic import DynamicClient

    dyn = DynamicClient(api)
    found = set()
    for api_version, kind in CHILD_KINDS:
        items = dyn.resources.get(api_version=api_version, kind=kind).get(
            namespace=ns, label_selector=f"{names.LABEL_JOB}={name}"
        )
        found |= {(kind, item.metadata.name) for item in items.items}
    return found


def launcher(api: k8s.ApiClient, ns: str, name: str, attempt: int) -> dict[str, Any] | None:
    try:
        job = k8s.BatchV1Api(api).read_namespaced_job(names.launcher_name(name, attempt), ns)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return api.sanitize_for_serialization(job)


def predicted(job: dict[str, Any], attempt: int) -> list[dict[str, Any]]:
    model = FineTuneJob.model_validate(
        {k: job[k] for k in ("apiVersion", "kind", "metadata", "spec")}
    )
    plan = make_plan(model, attempt=attempt, default_storage=STORAGE)
    return build_children(model, plan, ClusterFacts(trainer_image=TRAINER_IMAGE))


def events(api: k8s.ApiClient, ns: str, name: str) -> list[str]:
    items = (
        k8s.CoreV1Api(api)
        .list_namespaced_event(
            ns, field_selector=f"involvedObject.name={name},involvedObject.kind=FineTuneJob"
        )
        .items
    )
    return [e.reason for e in items]


# --------------------------------------------------------------------------- proofs


def test_sft_job_runs_to_success_with_predicted_children(api, operator, namespace):
    create(api, namespace, ftj("sft", pods=outcome("succeed", "3s")))
    s = wait_phase(api, namespace, "sft", "Running", timeout=30)
    assert s["attempt"] == 1 and s.get("startTime")
    job = get(api, namespace, "sft")
    expected = {(m["kind"], m["metadata"]["name"]) for m in predicted(job, 1)}
    assert expected == {
        ("ServiceAccount", "sft-trainer"),
        ("Role", "sft-trainer"),
        ("RoleBinding", "sft-trainer"),
        ("ConfigMap", "sft-plan-a1"),
        ("Service", "sft-a1"),
        ("Job", "sft-a1"),
    }
    wait_for(lambda: children(api, namespace, "sft") == expected, timeout=20, what="children")
    a1 = launcher(api, namespace, "sft", 1)
    owner = a1["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "FineTuneJob",
        "sft",
        job["metadata"]["uid"],
        True,
    )
    s = wait_phase(api, namespace, "sft", "Succeeded", timeout=60)
    plan = make_plan(FineTuneJob.model_validate(job), attempt=1, default_storage=STORAGE)
    assert s["output"] == plan.storage.output_dir
    assert condition(s, "Succeeded")["status"] == "True"
    assert condition(s, "Running")["status"] == "False"
    assert s.get("restarts") in (None, 0) and s.get("completionTime")
    reasons = wait_for(
        lambda: (r := events(api, namespace, "sft")) and "Succeeded" in r and r,
        timeout=20,
        what="events",
    )
    # One event per phase change the status showed (Pending never was: it launched at once).
    assert {"Launched", "Succeeded"} <= set(reasons) and "Accepted" not in reasons, reasons
    assert "Running" not in reasons, reasons
    text = operator.metrics()
    assert 'kubetune_jobs{method="sft",phase="Succeeded"}' in text
    assert operator.healthz() == 200
    assert "kubetune_job_attempts_total" in text
    assert "kubetune_reconcile_duration_seconds_count" in text


def test_application_failure_restarts_from_checkpoint(api, operator, namespace):
    create(api, namespace, ftj("app", pods=outcome("fail", "4s", exit_code=1)))
    wait_for(lambda: launcher(api, namespace, "app", 1), timeout=30, what="attempt 1")
    set_pods(api, namespace, "app", outcome("succeed", "1s"))
    s = wait_phase(api, namespace, "app", "Succeeded", timeout=90)
    assert (s["attempt"], s["restarts"], s["disruptions"]) == (2, 1, 0)
    a1 = launcher(api, namespace, "app", 1)
    failed = next(c for c in a1["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert "ApplicationFailure" in events(api, namespace, "app")
    core = k8s.CoreV1Api(api)
    plans = [
        json.loads(core.read_namespaced_config_map(f"app-plan-a{n}", namespace).data["plan.json"])
        for n in (1, 2)
    ]
    assert [p["attempt"] for p in plans] == [1, 2]
    # Same run name and storage: attempt 2's trainer finds attempt 1's latest checkpoint.
    assert plans[0]["storage"] == plans[1]["storage"]
    assert 'kubetune_job_restarts_total{reason="ApplicationFailure"}' in operator.metrics()


def test_eviction_is_a_disruption_not_a_restart(api, operator, namespace):
    create(api, namespace, ftj("evict", pods=outcome("evict", "4s")))
    wait_for(lambda: launcher(api, namespace, "evict", 1), timeout=30, what="attempt 1")
    set_pods(api, namespace, "evict", outcome("succeed", "1s"))
    s = wait_phase(api, namespace, "evict", "Succeeded", timeout=90)
    assert (s["attempt"], s["restarts"], s["disruptions"]) == (2, 0, 1)
    assert "Disruption" in events(api, namespace, "evict")


def test_max_restarts_exhausted_fails_with_reason_and_exit_code(api, operator, namespace):
    create(
        api,
        namespace,
        ftj("doomed", pods=outcome("fail", "1s", exit_code=3), resume={"maxRestarts": 1}),
    )
    s = wait_phase(api, namespace, "doomed", "Failed", timeout=90)
    failed = condition(s, "Failed")
    assert failed["reason"] == "RestartsExhausted"
    assert "exit code 3" in failed["message"], failed["message"]
    assert "maxRestarts (1) exhausted" in failed["message"]
    assert (s["attempt"], s["restarts"]) == (2, 1)
    assert launcher(api, namespace, "doomed", 3) is None


def test_active_deadline_fails_the_job_and_stops_its_launcher(api, operator, namespace):
    create(api, namespace, ftj("slow", pods=outcome("run"), activeDeadlineSeconds=4))
    wait_phase(api, namespace, "slow", "Running", timeout=30)
    s = wait_phase(api, namespace, "slow", "Failed", timeout=30)
    failed = condition(s, "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds (4s)" in failed["message"]
    wait_for(lambda: launcher(api, namespace, "slow", 1) is None, timeout=30, what="a1 deleted")


def test_sft_to_dpo_chain(api, operator, namespace):
    dpo = ftj(
        "dpo",
        pods=outcome("succeed", "1s"),
        method="dpo",
        model={"source": "finetunejob://base"},
        data={"sources": [{"uri": "builtin://arithmetic-preference"}]},
    )
    create(api, namespace, dpo)
    s = wait_phase(api, namespace, "dpo", "WaitingForDependencies", timeout=30)
    assert condition(s, "DependenciesReady")["status"] == "False"
    assert "spec.model: job 'base' does not exist" in condition(s, "DependenciesReady")["message"]
    create(api, namespace, ftj("base", pods=outcome("succeed", "3s")))
    wait_phase(api, namespace, "base", "Running", timeout=30)
    assert status(api, namespace, "dpo")["phase"] == "WaitingForDependencies"
    assert launcher(api, namespace, "dpo", 1) is None
    base = wait_phase(api, namespace, "base", "Succeeded", timeout=60)
    s = wait_phase(api, namespace, "dpo", "Running", timeout=30)
    assert condition(s, "DependenciesReady")["status"] == "True"
    cm = k8s.CoreV1Api(api).read_namespaced_config_map("dpo-plan-a1", namespace)
    plan = json.loads(cm.data["plan.json"])
    assert plan["recipe"]["model"]["source"] == base["output"]
    wait_phase(api, namespace, "dpo", "Succeeded", timeout=60)


def test_suspend_and_resume(api, operator, namespace):
    create(api, namespace, ftj("pause", pods=outcome("run")))
    wait_for(
        lambda: (
            (j := launcher(api, namespace, "pause", 1)) and (j.get("status") or {}).get("active")
        ),
        timeout=30,
        what="attempt 1 pod active",
    )
    patch(api, namespace, "pause", {"spec": {"runtime": {"suspend": True}}})
    s = wait_phase(api, namespace, "pause", "Suspended", timeout=30)
    assert condition(s, "Suspended")["status"] == "True"
    wait_for(lambda: launcher(api, namespace, "pause", 1) is None, timeout=30, what="a1 deleted")
    patch(api, namespace, "pause", {"spec": {"runtime": {"suspend": False}}})
    s = wait_phase(api, namespace, "pause", "Running", timeout=30)
    assert s["attempt"] == 2 and s.get("restarts") in (None, 0)
    assert launcher(api, namespace, "pause", 2) is not None


def test_delete_mid_run_removes_every_child(api, operator, namespace):
    create(api, namespace, ftj("gone", pods=outcome("run")))
    wait_phase(api, namespace, "gone", "Running", timeout=30)
    wait_for(lambda: len(children(api, namespace, "gone")) == 6, timeout=20, what="children")
    core = k8s.CoreV1Api(api)
    selector = f"{names.LABEL_JOB}=gone"
    wait_for(lambda: core.list_namespaced_pod(namespace, label_selector=selector).items, 30)
    assert not get(api, namespace, "gone")["metadata"].get("finalizers")
    # With the operator down: the garbage collector of kube-controller-manager alone removes
    # what the job owned (ownerReferences), pods included.
    operator.stop()
    try:
        custom(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
        wait_for(lambda: get(api, namespace, "gone") is None, timeout=30, what="job deleted")
        wait_for(lambda: not children(api, namespace, "gone"), timeout=60, what="children gone")
        wait_for(
            lambda: not core.list_namespaced_pod(namespace, label_selector=selector).items,
            timeout=60,
            what="pods gone",
        )
    finally:
        operator.start()


def test_ttl_after_finished_deletes_children_then_job(api, operator, namespace):
    create(api, namespace, ftj("short", pods=outcome("succeed", "1s"), ttlSecondsAfterFinished=3))
    wait_phase(api, namespace, "short", "Succeeded", timeout=60)
    assert children(api, namespace, "short")
    wait_for(lambda: get(api, namespace, "short") is None, timeout=30, what="job deleted by TTL")
    wait_for(lambda: not children(api, namespace, "short"), timeout=60, what="children gone")


def test_invalid_spec_that_passes_the_crd(api, operator, namespace):
    body = ftj("bad", resume={"backoffSeconds": 100, "maxBackoffSeconds": 10})
    create(api, namespace, body)  # the API server accepts it
    s = wait_phase(api, namespace, "bad", "Failed", timeout=30)
    invalid = condition(s, "InvalidSpec")
    assert invalid["status"] == "True"
    assert invalid["message"].startswith("spec.resume.maxBackoffSeconds:"), invalid["message"]
    time.sleep(2)
    assert not children(api, namespace, "bad")
    assert "InvalidSpec" in events(api, namespace, "bad")


def _token(api: k8s.ApiClient, ns: str, account: str) -> str:
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    return (
        k8s.CoreV1Api(api)
        .create_namespaced_service_account_token(account, ns, request)
        .status.token
    )


def test_trainer_identity_reports_progress_and_nothing_else(api, operator, namespace):
    create(api, namespace, ftj("prog", pods=outcome("run")))
    create(api, namespace, ftj("other", pods=outcome("run")))
    wait_phase(api, namespace, "prog", "Running", timeout=30)
    wait_phase(api, namespace, "other", "Running", timeout=30)
    token = _token(api, namespace, "prog-trainer")
    conf = api.configuration
    target = ApiTarget(
        server=conf.host, token=token, ca_file=conf.ssl_ca_cert, namespace=namespace, name="prog"
    )
    reporter = KubernetesReporter(target)
    checkpoint = {"uri": f"{STORAGE}/ckpt/step-5", "step": 5, "attempt": 1}
    record = ProgressRecord(
        step=5, totalSteps=10, epoch=0.5, percent=50, loss="1.25", tokensPerSecond=321.0
    )
    record.lastCheckpoint = checkpoint
    reporter.report(record)
    s = wait_for(
        lambda: (st := status(api, namespace, "prog")).get("progress", {}).get("step") == 5 and st,
        timeout=20,
        what="progress in status",
    )
    assert s["progress"]["loss"] == "1.25" and s["lastCheckpoint"]["step"] == 5
    # The operator keeps the trainer's fields and reflects them.
    s = wait_for(
        lambda: (
            (st := status(api, namespace, "prog"))
            and "Checkpointed" in {c["type"] for c in st.get("conditions", [])}
            and st
        ),
        timeout=20,
        what="Checkpointed condition",
    )
    assert s["progress"]["step"] == 5 and s["phase"] == "Running"
    wait_for(
        lambda: (
            f'kubetune_job_step{{job="prog",method="sft",namespace="{namespace}"}} 5.0'
            in operator.metrics()
        ),
        timeout=20,
        what="kubetune_job_step metric",
    )
    # The same identity cannot touch another job, or Secrets.
    other = KubernetesReporter(
        ApiTarget(conf.host, token, conf.ssl_ca_cert, namespace=namespace, name="other")
    )
    with pytest.raises(ReportError) as refused:
        other.patch({"status": {"progress": {"step": 99}}})
    assert refused.value.status == 403
    request = urllib.request.Request(
        f"{conf.host}/api/v1/namespaces/{namespace}/secrets",
        headers={"Authorization": f"Bearer {token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as secrets:
        urllib.request.urlopen(request, context=reporter._ssl, timeout=10)
    assert secrets.value.code == 403
    assert status(api, namespace, "other").get("progress") is None
    # Deleting the job drops its series.
    custom(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "prog")
    wait_for(lambda: 'job="prog"' not in operator.metrics(), timeout=20, what="series removed")


def test_operator_crashing_between_creations_adopts_and_finishes(api, operator, namespace):
    """The process dies after its 2nd creation (SA, Role made), then after its 3rd (RoleBinding,
    ConfigMap, Service; no Job yet), then right after creating the Job (before the status
    patch): each restart adopts what exists by name and makes only the rest. With one API
    worker the children are made one at a time in the builders' order (with more, the
    independent ones go at once and the launcher after them), so each crash lands in between."""
    operator.stop()
    create(api, namespace, ftj("crashy", pods=outcome("succeed", "2s")))
    for limit, made in ((2, 2), (3, 5), (1, 6)):
        operator.start(
            wait=False, KUBETUNE_FAULT_EXIT_AFTER_CREATES=str(limit), KUBETUNE_API_WORKERS="1"
        )
        assert operator.proc.wait(timeout=60) == 3, operator.logs()
        assert len(children(api, namespace, "crashy")) == made
        assert status(api, namespace, "crashy").get("phase") in (None, "Pending")
    operator.start()
    s = wait_phase(api, namespace, "crashy", "Succeeded", timeout=60)
    assert s["attempt"] == 1
    job = get(api, namespace, "crashy")
    assert children(api, namespace, "crashy") == {
        (m["kind"], m["metadata"]["name"]) for m in predicted(job, 1)
    }
    assert "adopted Job/crashy-a1" in operator.logs(tail=400)


# --------------------------------------------------------------------------- the kubetune CLI


def kubetune_cli(cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    context = cluster.kubectl("config", "current-context").strip()
    command = [sys.executable, "-m", "kubetune.cli", *args, "--context", context]
    env = os.environ | {"KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_kubetune_submit_status_logs_list_delete(api, operator, namespace, cluster, tmp_path):
    """The CLI's cluster verbs against the real API server: submit validates before it creates,
    status reads the job's status and events, logs streams pod 0's log (kwok simulates it from
    a file holding the trainer's real output for the pod's plan), delete removes the job."""
    bad = ftj("cli")
    bad["spec"]["training"] = {"learningRat": 0.1}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    refused = kubetune_cli(cluster, "submit", str(tmp_path / "bad.yaml"), "-n", namespace)
    assert refused.returncode == 1
    assert "spec.training.learningRat: unknown field" in refused.stderr
    assert "nothing submitted" in refused.stderr and get(api, namespace, "cli") is None

    (tmp_path / "cli.yaml").write_text(yaml.safe_dump(ftj("cli", pods=outcome("run"))))
    created = kubetune_cli(cluster, "submit", str(tmp_path / "cli.yaml"), "-n", namespace)
    assert created.returncode == 0, created.stderr
    assert f"finetunejob {namespace}/cli created" in created.stdout
    wait_phase(api, namespace, "cli", "Running", timeout=30)

    pod0 = wait_for(
        lambda: next(
            (p for p in k8s.CoreV1Api(api).list_namespaced_pod(
                namespace, label_selector=f"{names.LABEL_JOB}=cli"
            ).items if p.metadata.labels.get(names.JOB_COMPLETION_INDEX_LABEL) == "0"),
            None,
        ),
        timeout=30,
        what="pod 0",
    )  # fmt: skip
    config = k8s.CoreV1Api(api).read_namespaced_config_map(
        names.plan_configmap_name("cli", 1), namespace
    )
    (tmp_path / "plan.json").write_text(config.data[PLAN_KEY])
    trainer = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(tmp_path / "plan.json")]
    check = subprocess.run([*trainer, "--check"], capture_output=True, text=True, timeout=60)
    line = f"plan.json: plan for {namespace}/cli (sft, attempt 1) is valid"
    assert check.returncode == 0 and line in check.stdout, check.stderr
    log_file = tmp_path / "pod0.log"
    log_file.write_text(kc.cri_log(check.stdout.replace(str(tmp_path) + "/", "")))
    cluster.simulate_logs(namespace, pod0.metadata.name, log_file)

    logs = wait_for(
        lambda: (r := kubetune_cli(cluster, "logs", "cli", "-n", namespace)).stdout and r,
        timeout=30,
        what="pod 0's log",
    )
    assert logs.stdout.splitlines() == [line], logs.stderr

    follow = subprocess.Popen(
        [sys.executable, "-m", "kubetune.cli", "logs", "cli", "-f", "-n", namespace, "--context",
         cluster.kubectl("config", "current-context").strip()],
        env=os.environ | {"KUBECONFIG": str(cluster.kubeconfig)},
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert follow.stdout.readline().rstrip("\n") == line
        with log_file.open("a") as out:
            out.write(kc.cri_log("event=checkpoint step=5"))
        assert follow.stdout.readline().rstrip("\n") == "event=checkpoint step=5"
    finally:
        follow.terminate()
        follow.wait(timeout=30)

    listed = kubetune_cli(cluster, "list", "-n", namespace)
    assert listed.stdout.splitlines()[0].split() == [
        "JOB", "METHOD", "PHASE", "STEP", "LOSS", "ATTEMPT", "AGE"
    ]  # fmt: skip
    assert listed.stdout.splitlines()[1].split()[:3] == ["cli", "sft", "Running"]
    as_json = json.loads(kubetune_cli(cluster, "list", "-n", namespace, "-o", "json").stdout)
    assert [j["metadata"]["name"] for j in as_json] == ["cli"]

    status = kubetune_cli(cluster, "status", "cli", "-n", namespace)
    assert status.returncode == 0, status.stderr
    assert "phase:       Running" in status.stdout
    assert any(
        row.split()[2:3] == ["Launched"] for row in status.stdout.split("EVENTS", 1)[1].splitlines()
    )
    missing = kubetune_cli(cluster, "status", "nope", "-n", namespace)
    assert (
        missing.returncode == 2
        and f"no finetunejob nope in namespace {namespace}" in missing.stderr
    )

    deleted = kubetune_cli(cluster, "delete", "cli", "-n", namespace)
    assert deleted.returncode == 0 and f"finetunejob {namespace}/cli deleted" in deleted.stdout
    wait_for(lambda: get(api, namespace, "cli") is None, timeout=30, what="cli deleted")
