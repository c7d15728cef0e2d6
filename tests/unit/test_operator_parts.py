"""The pieces around the lifecycle: operator metrics cleanup, the builders' pod annotations and
progress env, the operator's configuration from the environment. (The trainer's progress
reporter is tested in test_progress_reporting.py.)"""

from __future__ import annotations

import json
from typing import Any

from kubetune.api import FineTuneJob
from kubetune.builders import ClusterFacts, build_children
from kubetune.builders.common import POD_ANNOTATIONS, pod_annotations
from kubetune.planner import make_plan

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
    from kubetune.controller.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    body = {
        "metadata": {"namespace": "ns", "name": "m1"},
        "spec": {"method": "sft"},
        "status": {"phase": "Running", "progress": {"step": 4, "loss": "0.5"}},
    }
    metrics.observe_job(body)
    text = _exposition(metrics.registry)
    assert 'kubetune_job_step{job="m1",method="sft",namespace="ns"} 4.0' in text
    assert 'kubetune_jobs{method="sft",phase="Running"}' in text
    before = metrics.tracked_jobs()
    metrics.forget_job("ns", "m1")
    text = _exposition(metrics.registry)
    assert 'job="m1"' not in text
    assert metrics.tracked_jobs() == before - 1


def _exposition(registry: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_operator_config_from_env(monkeypatch):
    from kubetune.controller.config import OperatorConfig

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
