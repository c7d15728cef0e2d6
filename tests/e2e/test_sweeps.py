"""A FineTuneSweep on the real control plane, its study in a real PostgreSQL, the operator
running as the chart's ServiceAccount (a namespaced release: nothing but the chart's Role).

The trainer does not run here (kwok runs no containers): the test plays it. Each running trial
reports its training loss every 10 steps exactly as the trainer does (``KubernetesReporter``,
authenticated as the trial's own trainer ServiceAccount), waits until the sweep has seen each
value, and at step 50 lets its pods succeed. The loss a trial reports depends on its learning
rate: far from 3e-3 it hardly falls, so the median pruner stops such trials once better ones
have finished.

On the way the operator dies three times: once by fault injection right after asking the study
for trials and before making their FineTuneJobs, then twice by SIGKILL while trials run and
finish. At the end: the sweep succeeded with its best trial marked; every trial of the study
has exactly one FineTuneJob (never deleted and made again) and there is no other; at most
``parallelism`` trials ran at once; the pruned ones stopped before step 50.
"""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from e2e_support import kc, wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from test_chart_install import DENIED, install, service_account_kubeconfig, uninstall
from test_operator import Operator, _token

from kubetune.builders import names
from kubetune.builders.common import POD_ANNOTATIONS
from kubetune.sweep_study import study_name
from kubetune_trainer.reporting.kube_status import ApiTarget, KubernetesReporter
from kubetune_trainer.reporting.progress import ProgressRecord
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.e2e

GROUP, VERSION = "kubetune.io", "v1alpha1"
NODE_GROUP = f"sweep-{uuid.uuid4().hex[:6]}"
SWEEP = "lr"
MAX_STEPS, LOG_EVERY = 50, 10
PARALLELISM = 2
GRID = [3e-3, 1e-3, 1e-2, 3e-1, 1e-4, 3e-2]
"""Learning rates tried (a grid: every one once, in the sampler's seeded order)."""


def loss_at(learning_rate: float, step: int) -> float:
    """The training loss a trial reports: falls fast near 3e-3, hardly at all far from it."""
    distance = abs(math.log10(learning_rate) - math.log10(3e-3))
    return round(3.0 - (step / MAX_STEPS) * max(0.05, 2.0 - 1.2 * distance), 4)


def sweep_manifest() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneSweep",
        "metadata": {
            "name": SWEEP,
            # The trainer pods run until the test lets them succeed.
            "annotations": {POD_ANNOTATIONS: json.dumps({kc.OUTCOME: "run"})},
        },
        "spec": {
            "template": {
                "method": "sft",
                "model": {"source": "builtin://tiny-llama"},
                "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
                "training": {"maxSteps": MAX_STEPS, "logEverySteps": LOG_EVERY},
                "resources": {
                    "nodes": 1,
                    "gpusPerNode": 1,
                    "cpu": "1",
                    "memory": "1Gi",
                    "nodeSelector": {kc.NODE_GROUP_LABEL: NODE_GROUP},
                },
            },
            "parameters": [
                {"path": "training.learningRate", "type": "categorical", "values": GRID}
            ],
            "objectives": [{"metric": "loss", "direction": "minimize"}],
            "algorithm": {"name": "grid", "seed": 1},
            "pruner": {"type": "median", "startupTrials": 1},
            "maxTrials": len(GRID),
            "parallelism": PARALLELISM,
            "maxFailedTrials": 0,
        },
    }


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(cluster) -> k8s.ApiClient:
    cluster.add_gpu_nodes(PARALLELISM + 1, group=NODE_GROUP)
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


class Trials:
    """The test's view of the sweep and its trials, and the trainer's part."""

    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.custom = k8s.CustomObjectsApi(api)
        self.uids: dict[str, set[str]] = {}
        self.most_at_once = 0
        self.reporters: dict[str, KubernetesReporter] = {}
        self.finished: set[str] = set()

    def sweep(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "finetunesweeps", SWEEP
        )

    def jobs(self) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            "finetunejobs",
            label_selector=f"kubetune.io/sweep={SWEEP}",
        )["items"]
        for job in items:
            self.uids.setdefault(job["metadata"]["name"], set()).add(job["metadata"]["uid"])
        active = [
            j
            for j in items
            if (j.get("status") or {}).get("phase") not in ("Succeeded", "Failed", "Suspended")
            and not j["spec"].get("runtime", {}).get("suspend")
        ]
        self.most_at_once = max(self.most_at_once, len(active))
        return items

    def reporter(self, job: dict[str, Any]) -> KubernetesReporter:
        """The trainer's reporter, as the trial's own ServiceAccount."""
        name = job["metadata"]["name"]
        if name not in self.reporters:
            conf = self.api.configuration
            target = ApiTarget(
                server=conf.host,
                token=_token(self.api, self.namespace, f"{name}-trainer"),
                ca_file=conf.ssl_ca_cert,
                namespace=self.namespace,
                name=name,
            )
            self.reporters[name] = KubernetesReporter(target)
        return self.reporters[name]

    def seen_step(self, sweep: dict[str, Any], name: str) -> int | None:
        rows = (sweep.get("status") or {}).get("trials") or []
        return next((r.get("step") for r in rows if r["name"] == name), None)

    def play_trainer(self) -> None:
        """One step of every running trial, once the sweep has seen its previous one."""
        sweep = self.sweep()
        for job in self.jobs():
            name = job["metadata"]["name"]
            status = job.get("status") or {}
            if status.get("phase") != "Running" or job["spec"].get("runtime", {}).get("suspend"):
                continue
            step = (status.get("progress") or {}).get("step") or 0
            if step and self.seen_step(sweep, name) != step:
                continue  # the sweep has not looked at this value yet
            if step >= MAX_STEPS:
                self.succeed(name)
                continue
            lr = job["spec"]["training"]["learningRate"]
            step += LOG_EVERY
            record = ProgressRecord(step=step, totalSteps=MAX_STEPS, percent=2 * step,
                                    loss=f"{loss_at(lr, step):.4f}")  # fmt: skip
            self.reporter(job).report(record)

    def succeed(self, name: str) -> None:
        if name in self.finished:
            return
        core = k8s.CoreV1Api(self.api)
        pods = core.list_namespaced_pod(self.namespace, label_selector=f"{names.LABEL_JOB}={name}")
        for pod in pods.items:
            core.patch_namespaced_pod(
                pod.metadata.name,
                self.namespace,
                {"metadata": {"annotations": {kc.OUTCOME: "succeed"}}},
            )
        if pods.items:
            self.finished.add(name)


def run_until(trials: Trials, done: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        trials.play_trainer()
        value = done()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)


def test_sweep_prunes_marks_the_best_and_survives_three_operator_kills(
    cluster, api, namespace, postgres, tmp_path
):
    started = time.monotonic()
    database = postgres.create_database()
    storage = postgres.url(database)
    release = install(cluster, tmp_path, f"watchNamespace={namespace}")
    kubeconfig = service_account_kubeconfig(cluster, api, release, tmp_path / "sa")
    operator = Operator(kubeconfig, tmp_path)
    env = {
        "KUBETUNE_NAMESPACE": namespace,
        "KUBETUNE_SWEEP_STORAGE": storage,
        "KUBETUNE_SWEEP_DEBOUNCE_SECONDS": "0.2",
    }
    trials = Trials(api, namespace)
    custom = k8s.CustomObjectsApi(api)
    try:
        # Kill 1: the operator dies right after the study was asked for the first trials,
        # before any FineTuneJob was made.
        operator.start(**env, KUBETUNE_FAULT_EXIT_AFTER_ASKS="1")
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "finetunesweeps", sweep_manifest()
        )
        assert operator.proc.wait(timeout=60) == 3, operator.logs()
        uid = trials.sweep()["metadata"]["uid"]
        study = optuna.load_study(study_name=study_name(namespace, SWEEP, uid), storage=storage)
        assert [t.state.name for t in study.trials] == ["RUNNING"] * PARALLELISM
        assert trials.jobs() == []  # asked, never made

        operator.start(**env)
        wait_for(lambda: len(trials.jobs()) == PARALLELISM, timeout=30, what="the first trials")

        # Kill 2: SIGKILL while trials run and report.
        run_until(trials, lambda: len(trials.jobs()) > PARALLELISM, 120, "a third trial")
        operator.kill()
        operator.start(**env)

        # Kill 3: SIGKILL right after a trial's pods succeeded, before the sweep saw it.
        run_until(trials, lambda: len(trials.finished) >= 2, 120, "two trials to finish")
        operator.kill()
        operator.start(**env)

        sweep = run_until(
            trials,
            lambda: (
                (s := trials.sweep()).get("status", {}).get("phase") in ("Succeeded", "Failed")
                and s
            ),
            180,
            "the sweep to finish",
        )
        log = "\n".join(
            (tmp_path / f"operator-{n}.log").read_text(errors="replace")
            for n in range(1, operator.starts + 1)
        )
    finally:
        operator.stop()
        uninstall(cluster, tmp_path, release)
    status = sweep["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert operator.starts == 4

    # Every trial of the study has exactly one FineTuneJob, made once; no other exists.
    study = optuna.load_study(study_name=status["study"], storage=storage)
    names_in_study = {f"{SWEEP}-t{t.number}" for t in study.trials}
    assert len(study.trials) == len(GRID)
    assert {j["metadata"]["name"] for j in trials.jobs()} == names_in_study
    assert all(len(uids) == 1 for uids in trials.uids.values()), trials.uids
    assert trials.most_at_once <= PARALLELISM

    # The study and the status agree; the pruned trials stopped early; the best is marked.
    rows = {r["name"]: r for r in status["trials"]}
    states = {f"{SWEEP}-t{t.number}": t.state.name for t in study.trials}
    assert {n: r["state"] for n, r in rows.items()} == {
        n: {"COMPLETE": "Completed", "PRUNED": "Pruned"}[s] for n, s in states.items()
    }
    pruned = [r for r in rows.values() if r["state"] == "Pruned"]
    assert any(r["step"] < MAX_STEPS for r in pruned), rows  # stopped before its last step
    for row in pruned:
        at = int(row["message"].removeprefix("pruned at step ").split(":")[0])
        assert at <= row["step"] and ": loss=" in row["message"], row
        job = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "finetunejobs", row["name"]
        )
        assert job["spec"]["runtime"]["suspend"] is True
    best = status["bestTrial"]
    assert float(best["parameters"]["training.learningRate"]) == 3e-3
    assert best["values"] == {"loss": f"{loss_at(3e-3, MAX_STEPS):g}"}
    assert best["output"].endswith(f"/{namespace}/{best['name']}/output")
    assert status["bestValue"] == best["values"]["loss"]
    assert study.best_trial.number == best["number"]
    assert (status["completed"], status["pruned"], status["running"]) == (
        len(GRID) - len(pruned),
        len(pruned),
        0,
    )
    # Under the chart's Role only: nothing was refused.
    assert not [line for line in log.splitlines() if DENIED.search(line)]
    printed = cluster.kubectl("get", "finetunesweeps", "-n", namespace)
    sys.stderr.write(
        f"\n[sweeps] {len(GRID)} trials, {len(pruned)} pruned, 3 operator kills, "
        f"{time.monotonic() - started:.1f}s\n{printed}"
    )


# --------------------------------------------------------------------------- the CRD alone


def _apply(cluster, namespace: str, obj: dict[str, Any], *extra: str):
    return cluster.kubectl_proc("apply", "-n", namespace, *extra, "-f", "-", input=json.dumps(obj))


def _variant(**spec: Any) -> dict[str, Any]:
    obj = sweep_manifest()
    obj["spec"].update(spec)
    return obj


LR_FLOAT = {"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-2}


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            _variant(algorithm={"name": "cmaes"}),
            "algorithm cmaes samples float and int parameters only",
        ),
        (
            _variant(parameters=[{**LR_FLOAT, "min": 0, "log": True}]),
            "a log-scale parameter needs min above 0",
        ),
        (
            _variant(parameters=[LR_FLOAT], algorithm={"name": "cmaes"},
                     objectives=[{"metric": "loss", "direction": "minimize"},
                                 {"metric": "eval_loss", "direction": "minimize"}]),
            "algorithm cmaes optimises one objective",
        ),
        (
            _variant(template={**sweep_manifest()["spec"]["template"], "dpo": {"beta": 0.1}}),
            "spec.dpo is only allowed when method is dpo",
        ),
        (_variant(maxTrials=0), "spec.maxTrials"),
    ],
    ids=["cmaes-categorical", "log-from-zero", "cmaes-two-objectives",
         "template-rule", "bounds"],
)  # fmt: skip
def test_api_server_refuses_a_bad_sweep(cluster, namespace, obj, message):
    result = _apply(cluster, namespace, obj, "--dry-run=server")
    assert result.returncode != 0, f"accepted: {obj['spec']}"
    assert message in result.stderr, result.stderr


def test_sweep_name_length_search_immutable_once_started_and_kubectl_explain(cluster, namespace):
    long = sweep_manifest()
    long["metadata"]["name"] = "x" * 43
    result = _apply(cluster, namespace, long, "--dry-run=server")
    assert result.returncode != 0 and "at most 42 characters" in result.stderr

    assert _apply(cluster, namespace, sweep_manifest()).returncode == 0
    cluster.kubectl(
        "patch", "finetunesweep", SWEEP, "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": {"phase": "Running"}}),
    )  # fmt: skip
    result = _apply(cluster, namespace, _variant(parameters=[LR_FLOAT]))
    assert "spec.parameters cannot change once the sweep has started" in result.stderr
    assert _apply(cluster, namespace, _variant(maxTrials=12)).returncode == 0  # a budget can

    explained = " ".join(cluster.kubectl("explain", "finetunesweep.spec").split())
    for words in (
        "The search space: fields of the template",
        "What to optimise. Several objectives search for the Pareto front",
        "Trials running at once.",
    ):
        assert words in explained, explained
    explained = " ".join(cluster.kubectl("explain", "finetunesweep.spec.parameters.path").split())
    assert "by its camelCase path, e.g. training.learningRate" in explained, explained
    printed = cluster.kubectl("get", "fts", "-n", namespace)
    assert printed.split()[:8] == ["NAME", "PHASE", "COMPLETED", "RUNNING", "PRUNED", "FAILED",
                                   "BEST", "AGE"], printed  # fmt: skip
