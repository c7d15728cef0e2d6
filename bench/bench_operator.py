"""Operator benchmark: one run, one JSON line on stdout (progress on stderr).

On a fresh e2e control plane (tests/cluster: kube-apiserver, controller-manager, scheduler, etcd,
kwok) with 250 fake 8-GPU nodes, the operator (``python -m kubetune.operator_main``, production
timings) reconciles FineTuneJobs created all at once:

* ``warmup``: 100 jobs at once, then all deleted (the operator must forget them).
* ``burst``: 1000 jobs at once (``kubectl create`` of Lists, in parallel).
* ``churn`` (``--no-churn`` skips it): the burst deleted, then 1000 new jobs at once; RSS must
  not grow again by a per-job amount (no state kept for deleted jobs).

Per job, the latency is the time from the FineTuneJob's ADDED watch event to its launcher Job's
ADDED watch event, both seen by this process's watches (one clock, sub-second, unlike
creationTimestamps). Reported: p50/p99/max latency, seconds from the first create request until
every launcher exists, the operator's RSS after each round settled and its peak (VmHWM), and the
RSS growth per job between 100 and 1000 jobs (bounded memory: a constant per existing job).

Run: ``python bench/bench_operator.py`` (needs tests/cluster/build.sh; see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "cluster"))

import cluster as kc  # noqa: E402  (tests/cluster is not a package)

from kubetune.api import GROUP, PLURAL, VERSION  # noqa: E402
from kubetune.builders import names  # noqa: E402
from kubetune.builders.common import POD_ANNOTATIONS  # noqa: E402

NAMESPACE = "bench"
NODE_GROUP = "bench"


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finetunejob(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            # The pods stay Running: the bench measures reconciles, not training.
            "annotations": {POD_ANNOTATIONS: json.dumps({kc.OUTCOME: "run"})},
        },
        "spec": {
            "method": "sft",
            "model": {"source": "builtin://tiny-llama"},
            "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
            "resources": {
                "nodes": 1,
                "gpusPerNode": gpus,
                "cpu": "1",
                "memory": "1Gi",
                "nodeSelector": {kc.NODE_GROUP_LABEL: NODE_GROUP},
            },
        },
    }


class FirstSeen(threading.Thread):
    """Watches one kind in the namespace and records when each name was first ADDED."""

    def __init__(self, list_fn: Any, *args: Any, label_selector: str | None = None) -> None:
        super().__init__(daemon=True)
        self.list_fn, self.args, self.label_selector = list_fn, args, label_selector
        self.seen: dict[str, float] = {}
        self.changed = threading.Condition()
        self.stopping = False
        self.ready = threading.Event()

    def run(self) -> None:
        resource_version = None
        while not self.stopping:
            stream = watch.Watch()
            kwargs: dict[str, Any] = {"timeout_seconds": 60, "allow_watch_bookmarks": True}
            if self.label_selector:
                kwargs["label_selector"] = self.label_selector
            if resource_version:
                kwargs["resource_version"] = resource_version
            self.ready.set()
            try:
                for event in stream.stream(self.list_fn, *self.args, **kwargs):
                    if event["type"] != "ADDED":  # MODIFIED, DELETED, BOOKMARK
                        continue
                    now = time.monotonic()
                    obj = event["object"]
                    name = obj["metadata"]["name"] if isinstance(obj, dict) else obj.metadata.name
                    with self.changed:
                        self.seen.setdefault(name, now)
                        self.changed.notify_all()
                resource_version = stream.resource_version
            except Exception as err:  # expired resourceVersion, connection reset: re-list
                say(f"watch restarted: {err!r}")
                resource_version = None
                time.sleep(1)

    def wait_for(self, wanted: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not wanted <= self.seen.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(wanted - self.seen.keys())
                    raise TimeoutError(f"{len(missing)} not seen after {timeout}s: {missing[:5]}")
                self.changed.wait(min(left, 1.0))


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.port = free_port()
        env = os.environ | {
            "KUBECONFIG": str(kubeconfig),
            "KUBETUNE_NAMESPACE": NAMESPACE,
            "KUBETUNE_METRICS_PORT": str(self.port),
            "KUBETUNE_HEALTH_PORT": "0",
            "KUBETUNE_TRAINER_IMAGE": "kubetune/trainer:bench",
            "KUBETUNE_DEFAULT_STORAGE": "s3://kubetune-bench/runs",
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT / "operator"), str(REPO_ROOT / "trainer_image")]
            ),
        }
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune.operator_main"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited {self.proc.returncode}; log: {log_path}")
            with contextlib.suppress(OSError):
                self.metrics()
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"operator /metrics not up after 120s; log: {log_path}")
            time.sleep(0.25)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return r.read().decode()

    def metric(self, name: str) -> float:
        """Sum of every sample of one metric on the operator's /metrics."""
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in self.metrics().splitlines()
            if line.startswith((f"{name} ", f"{name}{{"))
        )

    def tracked_jobs(self) -> float:
        """The jobs the operator keeps state for (sum of the kubetune_jobs gauge)."""
        return self.metric("kubetune_jobs")

    def reconciles(self) -> tuple[float, float]:
        """Reconcile passes so far and the seconds they took."""
        return (
            self.metric("kubetune_reconcile_duration_seconds_count"),
            self.metric("kubetune_reconcile_duration_seconds_sum"),
        )

    def memory_mib(self) -> dict[str, float]:
        """VmRSS (now) and VmHWM (peak resident set) of the operator process, in MiB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
        return fields

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def create_all(cluster: Any, bodies: list[dict[str, Any]], parallel: int = 8) -> None:
    """Create every body at once: `parallel` kubectl processes, each creating one List."""
    parts = [bodies[k::parallel] for k in range(parallel)]

    def create(part: list[dict[str, Any]]) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": part})
        cluster.kubectl("create", "-n", NAMESPACE, "-f", "-", "-o", "name", input=body, timeout=600)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(create, [p for p in parts if p]))


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def burst(
    cluster: Any,
    jobs: FirstSeen,
    launchers: FirstSeen,
    operator: OperatorProcess,
    prefix: str,
    count: int,
    gpus: int,
    settle: float,
    timeout: float,
) -> dict[str, Any]:
    """Create `count` jobs at once; wait until each has its launcher; measure."""
    bodies = [finetunejob(f"{prefix}-{i:04d}", gpus) for i in range(count)]
    wanted = {b["metadata"]["name"] for b in bodies}
    passes_before, seconds_before = operator.reconciles()
    started = time.monotonic()
    create_all(cluster, bodies)
    applied = time.monotonic() - started
    say(f"{prefix}: {count} jobs created in {applied:.1f}s")
    launcher_names = {names.launcher_name(n, 1): n for n in wanted}
    launchers.wait_for(set(launcher_names), timeout=timeout)
    jobs.wait_for(wanted, timeout=10)
    latencies = [launchers.seen[ln] - jobs.seen[job] for ln, job in launcher_names.items()]
    all_exist = max(launchers.seen[ln] for ln in launcher_names) - started
    say(f"{prefix}: every launcher exists {all_exist:.1f}s after the first create")
    time.sleep(settle)  # the launchers' own status events are reconciled meanwhile
    passes, seconds = operator.reconciles()
    passes, seconds = passes - passes_before, seconds - seconds_before
    return {
        "jobs": count,
        "createSeconds": round(applied, 2),
        "launcherLatencySeconds": {
            "p50": round(percentile(latencies, 50), 2),
            "p99": round(percentile(latencies, 99), 2),
            "max": round(max(latencies), 2),
        },
        "allLaunchersSeconds": round(all_exist, 2),
        # Load-independent: how much work the operator did for these jobs.
        "reconcilePassesPerJob": round(passes / count, 2),
        "meanReconcileSeconds": round(seconds / max(passes, 1), 3),
        "reconcileErrors": operator.metric("kubetune_reconcile_errors_total"),
        "operatorRssMiB": operator.memory_mib()["VmRSS"],
        "trackedJobs": operator.tracked_jobs(),
    }


def delete_all(cluster: Any, operator: OperatorProcess, timeout: float) -> float:
    """Delete every FineTuneJob; return how many jobs the operator still tracks afterwards."""
    # Not --wait=true: kubectl then waits for the objects one after the other.
    cluster.kubectl("delete", "finetunejobs", "--all", "-n", NAMESPACE, "--wait=false", timeout=600)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (
        cluster.kubectl("get", "finetunejobs", "-n", NAMESPACE, "-o", "name").strip()
        or operator.tracked_jobs()
    ):
        time.sleep(1)
    return operator.tracked_jobs()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--warmup-jobs", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--gpus-per-job", type=int, default=2)
    parser.add_argument("--settle", type=float, default=15.0, help="seconds before reading RSS")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--churn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then delete the burst and create as many new jobs: RSS must not grow again",
    )
    args = parser.parse_args()

    bench_started = time.monotonic()
    cluster = kc.start(crds_dir=REPO_ROOT / "crds", timeout=180)
    operator = None
    try:
        say(f"cluster ready in {cluster.started_in:.1f}s")
        t = time.monotonic()
        cluster.add_gpu_nodes(args.nodes, gpus=8, group=NODE_GROUP, timeout=600)
        say(f"{args.nodes} GPU nodes Ready in {time.monotonic() - t:.1f}s")
        cluster.kubectl("create", "namespace", NAMESPACE)
        api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
        jobs = FirstSeen(
            k8s.CustomObjectsApi(api).list_namespaced_custom_object,
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
        )
        launchers = FirstSeen(
            k8s.BatchV1Api(api).list_namespaced_job,
            NAMESPACE,
            label_selector=f"{names.LABEL_MANAGED_BY}={names.MANAGER}",
        )
        for w in (jobs, launchers):
            w.start()
            w.ready.wait(30)
        time.sleep(1)  # let the watches connect before anything is created
        operator = OperatorProcess(cluster.kubeconfig, cluster.workdir / "operator.log")
        idle = operator.memory_mib()["VmRSS"]
        say(f"operator up, RSS {idle} MiB")

        warm = burst(
            cluster,
            jobs,
            launchers,
            operator,
            "warm",
            args.warmup_jobs,
            args.gpus_per_job,
            args.settle,
            args.timeout,
        )
        say(f"warmup: {json.dumps(warm)}")
        warm["trackedAfterDelete"] = delete_all(cluster, operator, timeout=120)
        main_round = burst(
            cluster,
            jobs,
            launchers,
            operator,
            "job",
            args.jobs,
            args.gpus_per_job,
            args.settle,
            args.timeout,
        )
        churn = None
        if args.churn:
            main_round["trackedAfterDelete"] = delete_all(cluster, operator, timeout=300)
            churn = burst(
                cluster,
                jobs,
                launchers,
                operator,
                "again",
                args.jobs,
                args.gpus_per_job,
                args.settle,
                args.timeout,
            )
            say(f"churn: {json.dumps(churn)}")
        memory = operator.memory_mib()
        growth = (main_round["operatorRssMiB"] - warm["operatorRssMiB"]) / (
            args.jobs - args.warmup_jobs
        )
        result = {
            "bench": "operator",
            "nodes": args.nodes,
            "gpusPerNode": 8,
            "gpusPerJob": args.gpus_per_job,
            "burst": main_round,
            "warmup": warm,
            "churn": churn,
            "operatorRssMiB": {
                "idle": idle,
                "afterWarmup": warm["operatorRssMiB"],
                "afterBurst": main_round["operatorRssMiB"],
                "peak": memory["VmHWM"],
                "growthKiBPerJob": round(growth * 1024, 1),
                "afterChurn": churn["operatorRssMiB"] if churn else None,
            },
            "cpus": os.cpu_count(),
            "loadAverage1m": round(os.getloadavg()[0], 1),
            "benchSeconds": round(time.monotonic() - bench_started, 1),
        }
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
