"""A real Prometheus (Debian's package, fetched by tests/cluster/fetch-prometheus.sh) scrapes the
operator's /metrics while jobs succeed, fail and report progress; every assertion reads a value
back through Prometheus' HTTP query API, as a dashboard or an alert rule would."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import REPO_ROOT, kc, wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from test_operator import GROUP, PLURAL, VERSION, Operator, _free_port, create, ftj, outcome

pytestmark = pytest.mark.e2e

NODE_GROUP = "prometheus"
FETCH_SCRIPT = REPO_ROOT / "tests" / "cluster" / "fetch-prometheus.sh"


def prometheus_binary() -> Path:
    """$KUBETUNE_PROMETHEUS_BIN, else where fetch-prometheus.sh caches it."""
    override = os.environ.get("KUBETUNE_PROMETHEUS_BIN")
    if override:
        return Path(override)
    out = subprocess.run(
        ["bash", str(FETCH_SCRIPT), "bin"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


class Prometheus:
    """A Prometheus server scraping one target every second; storage and logs in ``workdir``."""

    def __init__(self, binary: Path, workdir: Path, target: str) -> None:
        self.port = _free_port()
        self.workdir = workdir
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "kubetune-operator", "static_configs": [{"targets": [target]}]}
            ],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(binary),
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )

    def _get(self, path: str) -> bytes:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read()

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        with contextlib.suppress(OSError):
            return self._get("/-/ready").startswith(b"Prometheus")
        return False

    def query(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Instant query: {sorted labels (without __name__): value}."""
        body = json.loads(self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert body["status"] == "success", body
        return {
            tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(
                r["value"][1]
            )
            for r in body["data"]["result"]
        }

    def value(self, promql: str) -> float | None:
        """The single value of a query, None while it has no result."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return next(iter(result.values()), None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def prometheus_bin(cluster) -> Path:
    # `cluster` first: like every e2e test, skips (or fails) without the control plane.
    binary = prometheus_binary()
    if not os.access(binary, os.X_OK):
        reason = f"Prometheus not fetched ({binary} missing): run tests/cluster/build.sh"
        if os.environ.get("KUBETUNE_REQUIRE_E2E") == "1":
            pytest.fail(reason + " [KUBETUNE_REQUIRE_E2E=1]", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture
def api(cluster) -> k8s.ApiClient:
    cluster.add_gpu_nodes(2, group=NODE_GROUP)
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture
def scraped_operator(
    cluster, api, namespace, prometheus_bin, tmp_path
) -> Iterator[tuple[Operator, Prometheus]]:
    """The operator, watching only this test's namespace (so its job counts are this test's),
    and Prometheus scraping it."""
    operator = Operator(cluster.kubeconfig, tmp_path)
    prometheus: Prometheus | None = None
    try:
        operator.start(KUBETUNE_NAMESPACE=namespace)
        prometheus = Prometheus(prometheus_bin, tmp_path, f"127.0.0.1:{operator.metrics_port}")
        wait_for(prometheus.ready, timeout=60, what="Prometheus ready")
        yield operator, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        operator.stop()


def _job(name: str, pods: dict[str, str], **spec: Any) -> dict[str, Any]:
    return ftj(
        name, pods=pods, resources={"nodeSelector": {kc.NODE_GROUP_LABEL: NODE_GROUP}}, **spec
    )


def _report_progress(api: k8s.ApiClient, namespace: str, name: str, progress: dict) -> None:
    """What the trainer's reporter does: a merge patch of status.progress."""
    k8s.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": {"progress": progress}}
    )


def test_prometheus_scrapes_job_phases_restarts_reconciles_and_progress(
    api, namespace, scraped_operator
):
    _, prom = scraped_operator
    wait_for(
        lambda: prom.value('up{job="kubetune-operator"}') == 1.0,
        timeout=30,
        what="Prometheus scraping the operator (up == 1)",
    )
    create(api, namespace, _job("ok", outcome("succeed", "1s")))
    create(
        api,
        namespace,
        _job("broken", outcome("fail", "1s", exit_code=2), resume={"maxRestarts": 1}),
    )
    create(api, namespace, _job("live", outcome("run")))

    def phases() -> dict[str, float]:
        result = prom.query('kubetune_jobs{method="sft"} > 0')
        return {dict(labels)["phase"]: value for labels, value in result.items()}

    wait_for(
        lambda: phases() == {"Succeeded": 1.0, "Failed": 1.0, "Running": 1.0},
        timeout=120,
        interval=1,
        what=f"jobs by phase in Prometheus (last: {phases()})",
    )
    # broken: attempt 1 failed (a restart), attempt 2 failed (restarts exhausted).
    restarts = prom.query("sum by (reason) (kubetune_job_restarts_total)")
    assert restarts == {(("reason", "ApplicationFailure"),): 1.0}, restarts
    attempts = prom.value(f'sum(kubetune_job_attempts_total{{namespace="{namespace}"}})')
    assert attempts == 4.0  # ok 1, broken 2, live 1
    reconciles = prom.value("kubetune_reconcile_duration_seconds_count")
    assert reconciles is not None and reconciles >= 6  # a pass per launch and per finish at least
    assert prom.value("kubetune_reconcile_errors_total") == 0.0

    _report_progress(
        api,
        namespace,
        "live",
        {"step": 7, "totalSteps": 20, "loss": "0.5", "tokensPerSecond": 123.0},
    )
    # Prometheus keeps the target's own `job` label (the scrape job) and renames the metric's
    # `job` label (the FineTuneJob) to `exported_job`, as it does for any scrape config without
    # honor_labels.
    live = f'namespace="{namespace}",exported_job="live",method="sft",job="kubetune-operator"'
    wait_for(
        lambda: prom.value(f"kubetune_job_step{{{live}}}") == 7.0,
        timeout=30,
        interval=1,
        what="kubetune_job_step of live in Prometheus",
    )
    assert prom.value(f"kubetune_job_loss{{{live}}}") == 0.5
    assert prom.value(f"kubetune_job_tokens_per_second{{{live}}}") == 123.0
    # Finished jobs keep their last progress series only when they reported any.
    assert prom.query(f'kubetune_job_step{{namespace="{namespace}",exported_job="ok"}}') == {}
