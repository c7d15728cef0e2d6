"""The pieces around the lifecycle: the trainer's Kubernetes progress reporter (against a local
HTTP server), reporter selection, operator metrics cleanup, the builders' pod annotations and
progress env, the operator's configuration from the environment."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from kubetune.api import FineTuneJob
from kubetune.builders import ClusterFacts, build_children
from kubetune.builders.common import POD_ANNOTATIONS, pod_annotations
from kubetune.planner import make_plan
from kubetune_trainer import progress
from kubetune_trainer.kube_progress import (
    ApiTarget,
    KubernetesReporter,
    ReportError,
    status_patch,
)
from kubetune_trainer.progress import ProgressRecord


class _Recorder(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    reply = 200

    def do_PATCH(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).requests.append(
            {
                "path": self.path,
                "auth": self.headers["Authorization"],
                "type": self.headers["Content-Type"],
                "body": json.loads(self.rfile.read(length)),
            }
        )
        self.send_response(type(self).reply)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"kind": "Status"}' if type(self).reply != 200 else b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Recorder.requests = []
    _Recorder.reply = 200
    httpd = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_reporter_merge_patches_its_own_job_status(server: str):
    target = ApiTarget(server=server, token="tok", ca_file=None, namespace="ns", name="job")
    record = ProgressRecord(step=3, totalSteps=10, loss="0.5", skippedRows=2)
    record.lastCheckpoint = {"uri": "s3://b/c", "step": 3}
    KubernetesReporter(target).report(record)
    (req,) = _Recorder.requests
    assert req["path"] == "/apis/kubetune.io/v1alpha1/namespaces/ns/finetunejobs/job/status"
    assert req["auth"] == "Bearer tok"
    assert req["type"] == "application/merge-patch+json"
    status = req["body"]["status"]
    assert status["progress"]["step"] == 3 and status["progress"]["loss"] == "0.5"
    assert "skippedRows" not in status["progress"] and "lastCheckpoint" not in status["progress"]
    assert status["lastCheckpoint"] == {"uri": "s3://b/c", "step": 3}


def test_reporter_drops_refused_reports_and_patch_raises(server: str):
    _Recorder.reply = 403
    target = ApiTarget(server=server, token="t", ca_file=None, namespace="ns", name="job")
    reporter = KubernetesReporter(target)
    reporter.report(ProgressRecord(step=1))  # logged, not raised: training goes on
    with pytest.raises(ReportError) as err:
        reporter.patch({"status": {}})
    assert err.value.status == 403


def test_status_patch_without_checkpoint():
    assert "lastCheckpoint" not in status_patch(ProgressRecord(step=1))["status"]


def test_api_target_from_env_overrides(tmp_path):
    token = tmp_path / "token"
    token.write_text("from-file\n")
    env = {
        "KUBETUNE_API_SERVER": "https://api:6443/",
        "KUBETUNE_API_TOKEN_FILE": str(token),
        "KUBETUNE_API_CA_FILE": "/ca.crt",
        "KUBETUNE_NAMESPACE": "ns",
        "KUBETUNE_JOB": "j",
    }
    target = ApiTarget.from_env(env)
    assert (target.server, target.token, target.ca_file) == (
        "https://api:6443",
        "from-file",
        "/ca.crt",
    )
    env.pop("KUBETUNE_API_SERVER")
    env.update(
        KUBERNETES_SERVICE_HOST="10.0.0.1", KUBERNETES_SERVICE_PORT="443", KUBETUNE_API_TOKEN="x"
    )
    target = ApiTarget.from_env(env)
    assert target.server == "https://10.0.0.1:443" and target.token == "x"


def test_reporter_from_env_picks_by_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBETUNE_PROGRESS_FILE", raising=False)
    monkeypatch.delenv("KUBETUNE_PROGRESS", raising=False)
    assert isinstance(progress.reporter_from_env(), progress.NullReporter)
    monkeypatch.setenv("KUBETUNE_PROGRESS", "kubernetes")
    monkeypatch.setenv("KUBETUNE_API_SERVER", "https://api")
    monkeypatch.setenv("KUBETUNE_API_TOKEN", "t")
    monkeypatch.setenv("KUBETUNE_NAMESPACE", "ns")
    monkeypatch.setenv("KUBETUNE_JOB", "j")
    assert isinstance(progress.reporter_from_env(), KubernetesReporter)
    monkeypatch.setenv("KUBETUNE_PROGRESS_FILE", str(tmp_path / "p.json"))
    assert isinstance(progress.reporter_from_env(), progress.FileReporter)


# --------------------------------------------------------------------------- builders


def _job(annotations: dict[str, str] | None = None) -> FineTuneJob:
    meta: dict[str, Any] = {"name": "demo", "namespace": "ns", "uid": "u"}
    if annotations is not None:
        meta["annotations"] = annotations
    return FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": meta,
            "spec": {
                "method": "sft",
                "model": {"source": "builtin://tiny-llama"},
                "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
            },
        }
    )


def _launcher(job: FineTuneJob) -> dict[str, Any]:
    children = build_children(
        job, make_plan(job, default_storage="s3://b"), ClusterFacts(trainer_image="t")
    )
    return next(c for c in children if c["kind"] == "Job")


def test_pod_annotations_opt_in():
    plain = _launcher(_job())
    assert "annotations" not in plain["spec"]["template"]["metadata"]
    job = _job({POD_ANNOTATIONS: json.dumps({"a.io/x": "1", "n": 2})})
    assert pod_annotations(job) == {"a.io/x": "1"}
    assert _launcher(job)["spec"]["template"]["metadata"]["annotations"] == {"a.io/x": "1"}
    assert pod_annotations(_job({POD_ANNOTATIONS: "not json"})) == {}
    assert pod_annotations(_job({POD_ANNOTATIONS: "[1]"})) == {}


def test_trainer_env_selects_the_kubernetes_reporter():
    env = _launcher(_job())["spec"]["template"]["spec"]["containers"][0]["env"]
    values = {e["name"]: e.get("value") for e in env}
    assert values["KUBETUNE_PROGRESS"] == "kubernetes"
    assert values["KUBETUNE_JOB"] == "demo" and values["KUBETUNE_NAMESPACE"] == "ns"


# --------------------------------------------------------------------------- metrics, config


def test_metrics_series_removed_with_the_job():
    from kubetune.controller import metrics

    body = {
        "metadata": {"namespace": "ns", "name": "m1"},
        "spec": {"method": "sft"},
        "status": {"phase": "Running", "progress": {"step": 4, "loss": "0.5"}},
    }
    metrics.observe_job(body)
    text = _exposition(metrics.REGISTRY)
    assert 'kubetune_job_step{job="m1",method="sft",namespace="ns"} 4.0' in text
    assert 'kubetune_jobs{method="sft",phase="Running"}' in text
    before = metrics.tracked_jobs()
    metrics.forget_job("ns", "m1")
    text = _exposition(metrics.REGISTRY)
    assert 'job="m1"' not in text
    assert metrics.tracked_jobs() == before - 1


def _exposition(registry: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_operator_config_from_env(monkeypatch):
    from kubetune.controller.handlers import OperatorConfig

    monkeypatch.setenv("KUBETUNE_TRAINER_IMAGE", "img:1")
    monkeypatch.setenv("KUBETUNE_NAMESPACE", "team")
    monkeypatch.setenv("KUBETUNE_HA", "1")
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", "9000")
    config = OperatorConfig.from_env()
    assert (config.trainer_image, config.namespace, config.ha, config.metrics_port) == (
        "img:1",
        "team",
        True,
        9000,
    )
