"""Operator benchmark: kubetune beside JobSet and Kubeflow Trainer, one cluster, one JSON line.

On a fresh e2e control plane (tests/cluster: kube-apiserver with an audit log, controller-manager,
scheduler, etcd, kwok) with 250 fake 8-GPU nodes, each system (``bench/systems.py``) runs alone,
in its own namespace, through the same phases; jobs are deleted and drained between phases so
capacity never runs out:

* ``warmup``: arrivals at a low rate for a few seconds (not reported).
* ``rates``: open-loop arrivals at fixed rates (2, 5, 10, 15, 20 jobs/s by default, 60 s each):
  create requests are sent by a scheduled thread pool whether or not earlier ones were answered;
  each job's pod runs ``--pod-seconds`` then succeeds, so occupancy stays bounded. Reported:
  p50/p99 apply → launcher Job and apply → pod Running, and ``maxRateP99Within2s``.
* ``burst``: 1000 jobs at once (pods keep running): drain rate (jobs/s between the 10th and 90th
  percentile launcher), time to the last launcher, API requests per job by verb and by client
  (from the audit log), CPU-seconds per job of the controllers, the API server and etcd.
* ``idle``: 1000 jobs existing, nothing changing: requests/s and CPU/s.
* ``churn`` (kubetune only): the burst deleted and 1000 new jobs created: operator RSS after.

Clocks: "apply" is when the bench sent the create request; a launcher or pod is timestamped when
the bench's watch decodes its event (raw JSON: ``bench/kube_raw.py``). The watch's lag is
checked against the launchers' creationTimestamps (``watcherLagSeconds``) and the bench's own
CPU is reported, so a slow watcher would show.

Run: ``python bench/bench_operator.py`` (needs tests/cluster/build.sh and bench/peers/build.sh;
see bench/README.md). Phase lengths are parameters; short ones are for trying the bench out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "cluster"))

import cluster as kc  # noqa: E402  (tests/cluster is not a package)
import systems as sy  # noqa: E402
from audit import AUDIT_POLICY, AuditLog, Requests, request_total  # noqa: E402
from kube_raw import ApiError, Arrivals, Obj, RawClient, Watcher, collection_path  # noqa: E402

BENCH_AGENT = "kubetune-bench"
P99_TARGET_SECONDS = 2.0


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50": round(percentile(values, 50), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2),
    }


def created_at(obj: Obj) -> float:
    stamp = obj["metadata"]["creationTimestamp"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- what the watches saw


@dataclass
class Timeline:
    """One system's namespace as the watches see it: which roots, Jobs and pods exist, and when
    each root's first Job appeared and its first pod ran (wall clock, keyed by root name)."""

    root_label: str
    roots: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)
    pods: set[str] = field(default_factory=set)
    launcher_seen: dict[str, float] = field(default_factory=dict)
    launcher_created: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    last_root_change: float = field(default_factory=time.monotonic)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def _root(self, obj: Obj) -> str | None:
        return (obj["metadata"].get("labels") or {}).get(self.root_label)

    def on_root(self, kind: str, obj: Obj, seen: float) -> None:
        with self.changed:
            (self.roots.discard if kind == "DELETED" else self.roots.add)(obj["metadata"]["name"])
            self.last_root_change = time.monotonic()
            self.changed.notify_all()

    def on_job(self, kind: str, obj: Obj, seen: float) -> None:
        with self.changed:
            (self.jobs.discard if kind == "DELETED" else self.jobs.add)(obj["metadata"]["name"])
            root = self._root(obj)
            if root and kind != "DELETED" and root not in self.launcher_seen:
                self.launcher_seen[root] = seen
                self.launcher_created[root] = created_at(obj)
            self.changed.notify_all()

    def on_pod(self, kind: str, obj: Obj, seen: float) -> None:
        with self.changed:
            (self.pods.discard if kind == "DELETED" else self.pods.add)(obj["metadata"]["name"])
            root = self._root(obj)
            phase = (obj.get("status") or {}).get("phase")
            if root and kind != "DELETED" and phase == "Running":
                self.running.setdefault(root, seen)
            self.changed.notify_all()

    def wait(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what}: not done after {timeout:.0f}s")
                self.changed.wait(min(left, 1.0))

    def wait_quiet(self, seconds: float, what: str, timeout: float) -> None:
        """Until no root has changed for ``seconds``: its controller has written every status
        the last changes called for (a backlog of status passes is work, not idle load)."""
        self.wait(lambda: time.monotonic() - self.last_root_change >= seconds, what, timeout)


class Watches:
    """The three watches of one system's namespace feeding one Timeline."""

    def __init__(self, client: RawClient, system: sy.System) -> None:
        self.timeline = Timeline(system.root_label)
        ns = system.namespace
        self.watchers = [
            Watcher(client, system.roots_path, self.timeline.on_root),
            Watcher(client, collection_path("batch/v1", "jobs", ns), self.timeline.on_job),
            Watcher(client, collection_path("v1", "pods", ns), self.timeline.on_pod),
        ]
        for w in self.watchers:
            w.start()
        for w in self.watchers:
            if not w.synced.wait(30):
                raise RuntimeError(f"watch {w.path} did not sync")

    def stop(self) -> None:
        for w in self.watchers:
            w.stop()


# --------------------------------------------------------------------------- accounting


@dataclass
class Accounts:
    """CPU seconds of the processes that matter, and the requests the API server served."""

    cluster: Any
    client: RawClient
    audit: AuditLog
    system: sy.System | None = None
    cpu_start: dict[str, float] = field(default_factory=dict)
    metric_start: float = 0.0

    def pids(self) -> dict[str, int]:
        pids = dict(self.cluster.component_pids())
        pids["bench"] = os.getpid()
        for process in self.system.processes if self.system else []:
            pids[process.name] = process.pid
        return pids

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids().items():
            with contextlib.suppress(OSError):  # exited meanwhile
                out[name] = sy.cpu_seconds(pid)
        return out

    def start(self) -> None:
        self.metric_start = request_total(self.client.text("/metrics"))
        self.audit.mark()
        self.cpu_start = self.cpu()

    def read(self) -> tuple[dict[str, float], Requests, float]:
        """CPU seconds per process and requests since start(); the metric's count too."""
        cpu_now = self.cpu()
        requests = self.audit.read()
        metric = request_total(self.client.text("/metrics")) - self.metric_start
        cpu = {k: cpu_now[k] - self.cpu_start.get(k, 0.0) for k in cpu_now}
        return cpu, requests, metric


def controller_cpu(system: sy.System, cpu: dict[str, float]) -> float:
    return sum(cpu.get(p.name, 0.0) for p in system.processes)


def cpu_report(system: sy.System, cpu: dict[str, float], per: float) -> dict[str, float]:
    """CPU seconds per ``per`` (jobs, or seconds) of the controllers and the control plane."""
    out = {"controllers": controller_cpu(system, cpu)}
    for name in ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok"):
        out[name] = cpu.get(name, 0.0)
    out["bench"] = cpu.get("bench", 0.0)
    return {k: round(v / per, 4) for k, v in out.items()}


def requests_report(system: sy.System, requests: Requests, metric: float, per: float) -> Obj:
    mine = requests.matching(*system.products())
    others = Requests()
    for (client, verb), n in requests.by_client_verb.items():
        product = client.rsplit(" ", 1)[-1]
        if product not in system.products() and product != BENCH_AGENT:
            others.by_client[client] += n
            others.by_client_verb[(client, verb)] += n
    return {
        "controllers": mine.per(per),
        "restOfControlPlane": others.per(per),
        "bench": round(requests.matching(BENCH_AGENT).total / per, 2),
        # Audit events against the API server's own counter (all clients): ~1 when complete.
        "auditOverMetric": round(requests.total / metric, 3) if metric else None,
    }


# --------------------------------------------------------------------------- phases


@dataclass
class Bench:
    args: argparse.Namespace
    cluster: Any
    client: RawClient
    accounts: Accounts

    def send(self, system: sy.System, bodies: list[Obj], rate: float | None) -> Arrivals:
        arrivals = Arrivals(self.client, system.roots_path, workers=self.args.sender_workers)
        arrivals.run(bodies, rate)
        failed = [n for n, s in arrivals.sent.items() if s.status != 201]
        if failed:
            raise RuntimeError(f"{len(failed)} creates failed, e.g. {failed[:3]}")
        return arrivals

    def wait_running(self, timeline: Timeline, names: list[str], what: str) -> None:
        timeline.wait(
            lambda: all(n in timeline.running for n in names),
            f"{what}: every pod Running",
            self.args.timeout,
        )

    def latencies(self, timeline: Timeline, arrivals: Arrivals, names: list[str]) -> Obj:
        sent = {n: arrivals.sent[n].sent for n in names}
        return {
            "applyToLauncherSeconds": spread([timeline.launcher_seen[n] - sent[n] for n in names]),
            "applyToRunningSeconds": spread([timeline.running[n] - sent[n] for n in names]),
            "senderLagSeconds": spread(
                [arrivals.sent[n].sent - arrivals.sent[n].due for n in names]
            ),
            "watcherLagSeconds": spread(
                [timeline.launcher_seen[n] - timeline.launcher_created[n] for n in names]
            ),
        }

    def delete_all(self, system: sy.System, watches: Watches) -> float:
        """Delete every root of the system; wait until no root, Job or pod is left. Seconds.
        One DELETE per root from the sender's pool (a deletecollection of a thousand custom
        objects is one request the API server works through for minutes)."""
        started = time.monotonic()
        t = watches.timeline
        with t.changed:
            roots = sorted(t.roots)
        body = {"propagationPolicy": "Background"}

        def delete(name: str) -> None:
            with contextlib.suppress(ApiError):  # 404: gone already
                self.client.request("DELETE", f"{system.roots_path}/{name}", body, timeout=300)

        with ThreadPoolExecutor(self.args.sender_workers) as pool:
            list(pool.map(delete, roots))
        t.wait(lambda: not (t.roots or t.jobs or t.pods), f"{system.key}: drain", self.args.timeout)
        if isinstance(system, sy.Kubetune):
            deadline = time.monotonic() + 60
            while system.metric("kubetune_jobs") and time.monotonic() < deadline:
                time.sleep(0.5)
        return round(time.monotonic() - started, 1)

    def arrival_phase(
        self, system: sy.System, watches: Watches, rate: float, seconds: float, tag: str
    ) -> Obj:
        count = max(1, round(rate * seconds))
        names = [f"{tag}-{i:05d}" for i in range(count)]
        bodies = [system.body(n, "succeed", self.args.pod_seconds) for n in names]
        self.accounts.start()
        arrivals = self.send(system, bodies, rate)
        self.wait_running(watches.timeline, names, f"{system.key} {tag}")
        cpu, requests, metric = self.accounts.read()
        result = {"rate": rate, "jobs": count, **self.latencies(watches.timeline, arrivals, names)}
        result["requestsPerJob"] = requests_report(system, requests, metric, count)
        result["cpuSecondsPerJob"] = cpu_report(system, cpu, count)
        result["drainSeconds"] = self.delete_all(system, watches)
        return result

    def burst_phase(self, system: sy.System, watches: Watches, tag: str) -> Obj:
        count = self.args.burst
        names = [f"{tag}-{i:05d}" for i in range(count)]
        bodies = [system.body(n, "run", 0) for n in names]
        passes_before = (
            system.metric("kubetune_reconcile_duration_seconds_count")
            if isinstance(system, sy.Kubetune)
            else 0.0
        )
        self.accounts.start()
        first = time.time()
        arrivals = self.send(system, bodies, None)
        sent_all = time.time() - first
        t = watches.timeline
        t.wait(
            lambda: all(n in t.launcher_seen for n in names), f"{tag}: launchers", self.args.timeout
        )
        self.wait_running(t, names, f"{system.key} {tag}")
        t.wait_quiet(self.args.settle, f"{system.key} {tag}: statuses", self.args.timeout)
        self.accounts.audit.wait_quiet(system.products(), self.args.settle, self.args.timeout)
        cpu, requests, metric = self.accounts.read()
        launched = sorted(t.launcher_seen[n] for n in names)
        p10, p90 = percentile(launched, 10), percentile(launched, 90)
        result = {
            "jobs": count,
            "sendSeconds": round(sent_all, 2),
            "drainRateJobsPerSecond": round(0.8 * count / max(p90 - p10, 1e-3), 2),
            "lastLauncherSeconds": round(launched[-1] - first, 2),
            "lastRunningSeconds": round(max(t.running[n] for n in names) - first, 2),
            **self.latencies(t, arrivals, names),
            "requestsPerJob": requests_report(system, requests, metric, count),
            "cpuSecondsPerJob": cpu_report(system, cpu, count),
            "controllerRssMiB": {p.name: sy.rss_mib(p.pid)["VmRSS"] for p in system.processes},
        }
        if isinstance(system, sy.Kubetune):
            passes = system.metric("kubetune_reconcile_duration_seconds_count") - passes_before
            result["reconcilePassesPerJob"] = round(passes / count, 2)
            result["reconcileErrors"] = system.metric("kubetune_reconcile_errors_total")
        return result

    def idle_phase(self, system: sy.System) -> Obj:
        seconds = self.args.idle_seconds
        self.accounts.start()
        time.sleep(seconds)
        cpu, requests, _ = self.accounts.read()
        mine = requests.matching(*system.products())
        return {
            "seconds": seconds,
            "requestsPerSecond": round(mine.total / seconds, 3),
            "byVerb": {v: round(n / seconds, 3) for v, n in mine.verbs().items()},
            "allClientsPerSecond": round(requests.total / seconds, 2),
            "cpuSecondsPerSecond": cpu_report(system, cpu, seconds),
        }

    def run_system(self, system: sy.System) -> Obj:
        args = self.args
        say(f"{system.key}: starting")
        watches = Watches(self.client, system)
        system.start(self.cluster.kubeconfig, self.cluster.workdir, self.client)
        self.accounts.system = system
        out: Obj = {"controllers": [p.name for p in system.processes]}
        try:
            out["idleRssMiB"] = {p.name: sy.rss_mib(p.pid)["VmRSS"] for p in system.processes}
            if args.warmup_seconds:
                self.arrival_phase(system, watches, args.warmup_rate, args.warmup_seconds, "warm")
                say(f"{system.key}: warmed up")
            rates: Obj = {}
            for rate in args.matched_rates if system.variant == "matched" else args.rates:
                rates[f"{rate:g}"] = r = self.arrival_phase(
                    system, watches, rate, args.rate_seconds, f"r{rate:g}".replace(".", "p")
                )
                say(f"{system.key} rate {rate:g}/s: {json.dumps(r['applyToLauncherSeconds'])}")
            out["rates"] = rates
            within = [
                float(k)
                for k, r in rates.items()
                if r["applyToLauncherSeconds"]["p99"] <= P99_TARGET_SECONDS
            ]
            out["maxRateP99Within2s"] = max(within) if within else None
            out["burst"] = self.burst_phase(system, watches, "burst")
            say(f"{system.key} burst: {json.dumps(out['burst']['drainRateJobsPerSecond'])} jobs/s")
            out["idle"] = self.idle_phase(system)
            say(f"{system.key} idle: {out['idle']['requestsPerSecond']} requests/s")
            rss = {p.name: sy.rss_mib(p.pid) for p in system.processes}
            out["rssMiB"] = {"after1000": {k: v["VmRSS"] for k, v in rss.items()}}
            out["burst"]["deleteSeconds"] = self.delete_all(system, watches)
            if args.churn and isinstance(system, sy.Kubetune):
                out["churn"] = self.burst_phase(system, watches, "churn")
                out["churn"]["deleteSeconds"] = self.delete_all(system, watches)
                out["rssMiB"]["afterChurn"] = {
                    p.name: sy.rss_mib(p.pid)["VmRSS"] for p in system.processes
                }
            out["rssMiB"]["peak"] = {p.name: sy.rss_mib(p.pid)["VmHWM"] for p in system.processes}
        finally:
            self.accounts.system = None
            system.stop(self.client)
            watches.stop()
        return out


# --------------------------------------------------------------------------- the run


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def targets(result: Obj) -> Obj:
    """The issue's targets, each with its measured value and whether it is met."""
    ours = result.get("kubetune") or {}
    peers = result.get("peers") or {}
    drain = (ours.get("burst") or {}).get("drainRateJobsPerSecond")
    out: Obj = {}
    for peer, floor in (("trainer", 1.0), ("jobset", 0.8)):
        variants = {
            v: ratio(drain, r["burst"]["drainRateJobsPerSecond"])
            for v, r in (peers.get(peer) or {}).items()
            if isinstance(r, dict) and "burst" in r
        }
        if variants:
            out[f"drainRateOver{peer.capitalize()}"] = {
                "ratio": variants,
                "target": floor,
                "met": all(v is not None and v >= floor for v in variants.values()),
            }
    at10 = ((ours.get("rates") or {}).get("10") or {}).get("applyToLauncherSeconds")
    if at10:
        out["p99ApplyToLauncherAt10"] = {
            "seconds": at10["p99"],
            "target": P99_TARGET_SECONDS,
            "met": at10["p99"] <= P99_TARGET_SECONDS,
        }
    if "burst" in ours:
        per_job = ours["burst"]["requestsPerJob"]["controllers"]["total"]
        out["operatorRequestsPerJob"] = {"value": per_job, "target": 12, "met": per_job <= 12}
        idle = ours["idle"]["requestsPerSecond"]
        out["idleRequestsPerSecond"] = {"value": idle, "target": 1.0, "met": idle <= 1.0}
        rss = ours["rssMiB"]["after1000"]["kubetune-operator"]
        out["operatorRssMiBAt1000"] = {"value": rss, "target": 200, "met": rss <= 200}
        churn = (ours["rssMiB"].get("afterChurn") or {}).get("kubetune-operator")
        if churn:
            growth = ratio(churn, rss)
            out["operatorRssAfterChurnOver1000"] = {
                "value": growth,
                "target": 1.05,
                "met": growth is not None and growth <= 1.05,
            }
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", default="kubetune,jobset,trainer")
    parser.add_argument("--variants", default="defaults,matched", help="of each peer")
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--rates", default="2,5,10,15,20", help="jobs/s, comma-separated")
    parser.add_argument(
        "--matched-rates", default=None, help="rates for the peers' matched runs (default: --rates)"
    )
    parser.add_argument("--rate-seconds", type=float, default=60.0)
    parser.add_argument("--warmup-rate", type=float, default=5.0)
    parser.add_argument("--warmup-seconds", type=float, default=20.0)
    parser.add_argument("--pod-seconds", type=float, default=30.0, help="pods run, then succeed")
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="a burst is settled when every pod is Running, no root changed for this long and "
        "its controllers sent no request (watches aside) for this long",
    )
    parser.add_argument("--churn", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--sender-workers", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    args.variants = [v for v in args.variants.split(",") if v]
    args.rates = [float(r) for r in args.rates.split(",") if r]
    matched = args.matched_rates
    args.matched_rates = [float(r) for r in matched.split(",") if r] if matched else args.rates
    return args


def make_systems(args: argparse.Namespace, certs: sy.WebhookCerts | None) -> list[sy.System]:
    made: list[sy.System] = []
    for name in args.systems:
        if name == "kubetune":
            made.append(sy.Kubetune())
            continue
        for variant in args.variants:
            matched = variant == "matched"
            ns = f"bench-{name}-{variant}"
            made.append(
                sy.JobSet(matched, certs, ns)
                if name == "jobset"
                else sy.Trainer(matched, certs, ns, args.pod_seconds)
            )
    return made


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bench_started = time.monotonic()
    load_at_start = round(os.getloadavg()[0], 1)
    peers_wanted = [s for s in args.systems if s != "kubetune"]
    skipped = sy.peers_built() if peers_wanted else None
    if skipped:
        say(skipped)
        args.systems = [s for s in args.systems if s == "kubetune"]
    cluster = kc.start(crds_dir=REPO_ROOT / "crds", audit_policy=AUDIT_POLICY, timeout=180)
    result: Obj = {"bench": "operator"}
    try:
        say(f"cluster ready in {cluster.started_in:.1f}s")
        t = time.monotonic()
        cluster.add_gpu_nodes(args.nodes, gpus=8, group=sy.NODE_GROUP, timeout=600)
        say(f"{args.nodes} GPU nodes Ready in {time.monotonic() - t:.1f}s")
        client = RawClient(cluster.kubeconfig, BENCH_AGENT, pool_size=args.sender_workers + 8)
        certs = sy.peer_certs() if peers_wanted and not skipped else None
        systems = make_systems(args, certs)
        for system in systems:
            sy.apply(
                client,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": system.namespace}},
            )
        if certs is not None:
            sy.install_peers(client, certs)
        bench = Bench(args, cluster, client, Accounts(cluster, client, AuditLog(cluster.audit_log)))
        result.update(
            nodes=args.nodes,
            gpusPerNode=8,
            gpusPerJob=sy.GPUS_PER_JOB,
            phases={
                "rates": args.rates,
                "matchedRates": args.matched_rates,
                "rateSeconds": args.rate_seconds,
                "podSeconds": args.pod_seconds,
                "burst": args.burst,
                "idleSeconds": args.idle_seconds,
            },
        )
        peers: Obj = {name: {"skipped": skipped} for name in peers_wanted} if skipped else {}
        for system in systems:
            try:
                measured = bench.run_system(system)
            except Exception as err:  # one system failing must not lose the others' figures
                say(f"{system.key} failed: {err!r}")
                measured = {"error": f"{type(err).__name__}: {err}"[:500]}
            if isinstance(system, sy.Kubetune):
                result["kubetune"] = measured
            else:
                peers.setdefault(system.name, {})[system.variant] = measured
        result["peers"] = peers
        result["targets"] = targets(result)
    finally:
        sy.remove_cert_dir()
        cluster.stop()
    result.update(
        cpus=os.cpu_count(),
        loadAverage1m={"start": load_at_start, "end": round(os.getloadavg()[0], 1)},
        benchSeconds=round(time.monotonic() - bench_started, 1),
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
