"""The trainer's progress reporting: the Kubernetes status reporter (against a local HTTP
server), its configuration from the environment, and the runtime's choice of reporter."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from kubetune_trainer.reporting.kube_status import (
    ApiTarget,
    KubernetesReporter,
    ReportError,
    status_patch,
)
from kubetune_trainer.reporting.progress import FileReporter, NullReporter, ProgressRecord
from kubetune_trainer.runtime.context import reporter_from_env


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


def test_status_patch_carries_held_out_metrics_and_an_evaluation_and_fits_the_schema():
    from kubetune.api import FineTuneJobStatus

    training = status_patch(
        ProgressRecord(
            step=5, evalMetrics={"eval_loss": "0.5"}, objectives={"fluency": "0.25", "quality": "1"}
        )
    )
    assert training["status"]["progress"]["evalMetrics"] == {"eval_loss": "0.5"}
    assert training["status"]["progress"]["objectives"] == {"fluency": "0.25", "quality": "1"}
    summary = {
        "models": ["base", "dpo"],
        "baseline": "base",
        "summary": "Model: dpo vs baseline base\nexact_match: 0.810 [0.750, 0.860] n=200",
        "results": "/runs/demo/demo-eval/output/eval_results.json",
    }
    evaluation = status_patch(ProgressRecord(evaluation=summary))["status"]
    assert evaluation == {"evaluation": summary}  # an eval job reports no training progress
    for patch in (training["status"], evaluation):
        FineTuneJobStatus.model_validate(patch)  # what the CRD's status schema accepts


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
    assert isinstance(reporter_from_env(), NullReporter)
    monkeypatch.setenv("KUBETUNE_PROGRESS", "kubernetes")
    monkeypatch.setenv("KUBETUNE_API_SERVER", "https://api")
    monkeypatch.setenv("KUBETUNE_API_TOKEN", "t")
    monkeypatch.setenv("KUBETUNE_NAMESPACE", "ns")
    monkeypatch.setenv("KUBETUNE_JOB", "j")
    assert isinstance(reporter_from_env(), KubernetesReporter)
    monkeypatch.setenv("KUBETUNE_PROGRESS_FILE", str(tmp_path / "p.json"))
    assert isinstance(reporter_from_env(), FileReporter)
