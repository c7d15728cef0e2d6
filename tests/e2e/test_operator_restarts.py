"""The operator process SIGKILLed and restarted 20 times in a row, at random (seeded) moments,
while jobs are being created, launched, failed over to a new attempt, chained and finished:
afterwards no child exists twice, no launcher was ever replaced, every job finished with the
attempts and restart counts an undisturbed operator would have recorded.

Jobs are created throughout the kill cycles (not all up front), so kills land in every kind of
reconcile: first creation of children, attempt N+1 after a failure, a dependency becoming ready,
finishing. Kills only hit the operator; kwok keeps running pods meanwhile, as a kubelet would.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import kc
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch
from kubernetes.dynamic import DynamicClient
from test_operator import (
    CHILD_KINDS,
    Operator,
    create,
    ftj,
    get,
    launcher,
    outcome,
    predicted,
    set_pods,
    status,
    wait_phase,
)

from kubetune.builders import names

pytestmark = pytest.mark.e2e

NODE_GROUP = "restarts"
KILLS = 20
SEED = 20


def _job(name: str, pods: dict[str, str], **spec: Any) -> dict[str, Any]:
    resources = {"nodeSelector": {kc.NODE_GROUP_LABEL: NODE_GROUP}, **spec.pop("resources", {})}
    return ftj(name, pods=pods, resources=resources, **spec)


def _simple(name: str, delay: str, **spec: Any) -> tuple[str, dict[str, Any], int, int, int]:
    return (name, _job(name, outcome("succeed", delay), **spec), 1, 0, 0)


# One job created per kill cycle: (name, manifest, attempts, restarts, disruptions) once done.
SCHEDULE: list[tuple[str, dict[str, Any], int, int, int]] = [
    _simple("first", "3s"),
    _simple("wide", "5s", resources={"nodes": 2}),
    (
        "chained",
        _job(
            "chained",
            outcome("succeed", "2s"),
            method="dpo",
            model={"source": "finetunejob://base"},
            data={"sources": [{"uri": "builtin://arithmetic-preference"}]},
        ),
        1,
        0,
        0,
    ),
    ("crashes", _job("crashes", outcome("fail", "4s", exit_code=1)), 2, 1, 0),
    *(_simple(f"plain-{i}", f"{1 + i % 4}s") for i in range(4)),
    _simple("base", "6s"),
    *(_simple(f"plain-{i}", f"{1 + i % 4}s") for i in range(4, 6)),
    ("evicted", _job("evicted", outcome("evict", "4s")), 2, 0, 1),
    *(_simple(f"plain-{i}", f"{1 + i % 4}s") for i in range(6, 9)),
    _simple("wide-2", "2s", resources={"nodes": 2}),
    *(_simple(f"plain-{i}", f"{1 + i % 4}s") for i in range(9, 13)),
]
assert len(SCHEDULE) == KILLS
# Attempt 1 of these fails; attempt 2 (built after the switch) succeeds.
SWITCH_TO_SUCCESS = {"crashes", "evicted"}


@pytest.fixture
def api(cluster) -> k8s.ApiClient:
    cluster.add_gpu_nodes(4, group=NODE_GROUP)
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture
def operator(cluster, api, namespace, tmp_path) -> Iterator[Operator]:
    op = Operator(cluster.kubeconfig, tmp_path)
    try:
        yield op
    finally:
        op.stop()


class LauncherWatch(threading.Thread):
    """Polls the jobs' launchers: records the uid each launcher Job was first seen with, and
    switches a job's pods to success once its attempt-1 launcher exists (before attempt 2 is
    built)."""

    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        super().__init__(daemon=True)
        self.api, self.namespace = api, namespace
        self.uids: dict[str, set[str]] = {}
        self.switched: set[str] = set()
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        batch = k8s.BatchV1Api(self.api)
        try:
            while not self.stopped.wait(0.2):
                items = batch.list_namespaced_job(
                    self.namespace, label_selector=names.LABEL_JOB
                ).items
                for job in items:
                    self.uids.setdefault(job.metadata.name, set()).add(job.metadata.uid)
                for name in SWITCH_TO_SUCCESS - self.switched:
                    if names.launcher_name(name, 1) in self.uids:
                        set_pods(self.api, self.namespace, name, outcome("succeed", "1s"))
                        self.switched.add(name)
        except BaseException as err:  # surfaced by the test
            self.error = err


class NewPlanConfigMaps(threading.Thread):
    """Sets ``created`` when a plan ConfigMap appears: the operator is in the middle of making
    an attempt's children (ServiceAccount, Role, RoleBinding, ConfigMap, Service, Job)."""

    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        super().__init__(daemon=True)
        self.api, self.namespace = api, namespace
        self.created = threading.Event()
        self.stopped = threading.Event()
        self.seen: set[str] = set()

    def run(self) -> None:
        core = k8s.CoreV1Api(self.api)
        while not self.stopped.is_set():
            with contextlib.suppress(Exception):  # a watch that ends or breaks is started again
                for event in watch.Watch().stream(
                    core.list_namespaced_config_map,
                    self.namespace,
                    label_selector=names.LABEL_JOB,
                    timeout_seconds=30,
                ):
                    name = event["object"].metadata.name
                    if name not in self.seen:
                        self.seen.add(name)
                        self.created.set()


def _attempts_without_launcher(api: k8s.ApiClient, namespace: str) -> int:
    """Attempts whose plan ConfigMap exists but whose launcher Job does not (yet)."""
    selector = names.LABEL_JOB
    plans = k8s.CoreV1Api(api).list_namespaced_config_map(namespace, label_selector=selector)
    jobs = k8s.BatchV1Api(api).list_namespaced_job(namespace, label_selector=selector)
    launchers = {job.metadata.name for job in jobs.items}
    return sum(
        names.launcher_name(cm.metadata.labels[names.LABEL_JOB], int(attempt)) not in launchers
        for cm in plans.items
        if (attempt := cm.metadata.labels.get(names.LABEL_ATTEMPT))
    )


def _children_by_attempt(api: k8s.ApiClient, namespace: str, name: str) -> Counter:
    """(kind, attempt label) -> how many objects labelled as the job's children."""
    dyn = DynamicClient(api)
    counts: Counter = Counter()
    for api_version, kind in CHILD_KINDS:
        items = dyn.resources.get(api_version=api_version, kind=kind).get(
            namespace=namespace, label_selector=f"{names.LABEL_JOB}={name}"
        )
        for item in items.items:
            attempt = (item.metadata.labels or {}).get(names.LABEL_ATTEMPT)
            counts[(kind, attempt)] += 1
    return counts


def test_operator_killed_and_restarted_20_times_during_reconciles(api, namespace, operator):
    rng = random.Random(SEED)
    watch = LauncherWatch(api, namespace)
    plans = NewPlanConfigMaps(api, namespace)
    watch.start()
    plans.start()
    expected: dict[str, tuple[int, int, int]] = {}
    kills: Counter = Counter()
    started = time.monotonic()
    try:
        operator.start()
        for name, body, *counts in SCHEDULE:
            plans.created.clear()
            create(api, namespace, body)
            expected[name] = tuple(counts)
            # Half the kills (seeded) land mid-creation: as soon as a plan ConfigMap appears,
            # with the Service and Job of that attempt possibly not made yet. The others after
            # a random pause, anywhere in the operator's work.
            if rng.random() < 0.5 and plans.created.wait(timeout=10):
                kills["mid-creation"] += 1
            else:
                kills["random"] += 1
                time.sleep(rng.uniform(0.0, 1.5))
            operator.kill()
            if _attempts_without_launcher(api, namespace):
                kills["left an attempt half-made"] += 1
            operator.start()
            assert watch.error is None, watch.error
        killed_for = time.monotonic() - started
        for name in expected:
            wait_phase(api, namespace, name, "Succeeded", timeout=120)
    finally:
        watch.stopped.set()
        plans.stopped.set()
        watch.join(timeout=10)
    assert watch.error is None, watch.error
    assert operator.starts == KILLS + 1
    assert watch.switched == SWITCH_TO_SUCCESS

    for name, (attempts, restarts, disruptions) in expected.items():
        s = status(api, namespace, name)
        assert (s["attempt"], s.get("restarts") or 0, s.get("disruptions") or 0) == (
            attempts,
            restarts,
            disruptions,
        ), (name, s)
        # Every child the builders predict for each attempt exists, and nothing else does.
        job = get(api, namespace, name)
        predicted_children = {
            (m["kind"], m["metadata"]["name"]): m
            for attempt in range(1, attempts + 1)
            for m in predicted(job, attempt)
        }
        want = Counter(
            (kind, m["metadata"].get("labels", {}).get(names.LABEL_ATTEMPT))
            for (kind, _), m in predicted_children.items()
        )
        assert _children_by_attempt(api, namespace, name) == want, name
        for attempt in range(1, attempts + 1):
            # Never deleted and made again by a restarted operator: one uid per launcher name.
            launcher_name = names.launcher_name(name, attempt)
            assert len(watch.uids[launcher_name]) == 1, (launcher_name, watch.uids)
            assert (
                launcher(api, namespace, name, attempt)["metadata"]["uid"]
                in (watch.uids[launcher_name])
            )
    sys.stderr.write(
        f"\n[restarts] {KILLS} kills ({dict(kills)}) over {killed_for:.1f}s, {len(expected)} jobs\n"
    )
