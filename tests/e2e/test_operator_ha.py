"""HA smoke test: two operator processes with kopf peering (``KUBETUNE_HA=1``). Only the one
with the higher priority acts; when it is killed, the standby takes over once the dead one's
keep-alive has expired.

kopf's Python package ships no peering CRDs (its repository's peering.yaml does); the two CRDs
below are written from the schema kopf documents: group kopf.dev, version v1, ClusterKopfPeering
(cluster-scoped) and KopfPeering (namespaced), a free-form status that kopf fills with one entry
per operator (priority, lastseen, lifetime).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from e2e_support import kc, wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from test_operator import Operator, create, ftj, outcome, wait_phase

pytestmark = pytest.mark.e2e

NODE_GROUP = "ha"
PEERING = "kubetune"  # kubetune.controller.peering.PEERING
LIFETIME_SECONDS = 10


def peering_crd(kind: str, scope: str) -> dict:
    plural = f"{kind.lower()}s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {
            "group": "kopf.dev",
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture
def api(cluster, tmp_path) -> Iterator[k8s.ApiClient]:
    cluster.add_gpu_nodes(2, group=NODE_GROUP)
    crds = tmp_path / "peering-crds"
    crds.mkdir()
    names = []
    for kind, scope in (("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")):
        crd = peering_crd(kind, scope)
        names.append(crd["metadata"]["name"])
        (crds / f"{kind.lower()}.yaml").write_text(yaml.safe_dump(crd))
    kc.apply_crds(cluster, crds)
    yield k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    # Other modules (the Helm chart's HA install) bring their own copies of these CRDs.
    cluster.kubectl("delete", "crd", *names, "--ignore-not-found", "--wait=true")


@pytest.fixture
def pair(cluster, api, namespace, tmp_path) -> Iterator[tuple[Operator, Operator]]:
    cluster.apply(
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "KopfPeering",
            "metadata": {"name": PEERING, "namespace": namespace},
        }
    )
    operators = []
    try:
        for label, priority in (("active", 100), ("standby", 50)):
            log_dir = tmp_path / label
            log_dir.mkdir()
            operator = Operator(cluster.kubeconfig, log_dir)
            operators.append(operator)
            operator.start(
                KUBETUNE_HA="1",
                KUBETUNE_NAMESPACE=namespace,
                KUBETUNE_PEERING_PRIORITY=str(priority),
                KUBETUNE_PEERING_LIFETIME_SECONDS=str(LIFETIME_SECONDS),
            )
        yield operators[0], operators[1]
    finally:
        for operator in operators:
            operator.stop()


def _log(operator: Operator) -> str:
    return Path(operator.log_path).read_text(errors="replace")


def _created(operator: Operator, namespace: str) -> set[str]:
    """Names of the jobs this operator created children for."""
    return set(re.findall(rf"job={namespace}/(\S+) .*actions=created", _log(operator)))


def _reconciles(operator: Operator) -> float:
    for line in operator.metrics().splitlines():
        if line.startswith("kubetune_reconcile_duration_seconds_count"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no kubetune_reconcile_duration_seconds_count in /metrics")


def _job(name: str) -> dict:
    return ftj(
        name,
        pods=outcome("succeed", "1s"),
        resources={"nodeSelector": {kc.NODE_GROUP_LABEL: NODE_GROUP}},
    )


def test_only_the_higher_priority_replica_acts_and_the_standby_takes_over(api, namespace, pair):
    active, standby = pair

    def priorities() -> list[int]:
        peering = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", PEERING
        )
        return sorted(info["priority"] for info in (peering.get("status") or {}).values())

    wait_for(lambda: priorities() == [50, 100], timeout=30, what="both replicas in the peering")
    # kopf starts paused until it has seen the peering; only the higher priority resumes.
    wait_for(lambda: "Resuming operations" in _log(active), timeout=30, what="active resumes")
    create(api, namespace, _job("first"))
    wait_phase(api, namespace, "first", "Succeeded", timeout=60)
    assert _created(active, namespace) == {"first"}
    assert _created(standby, namespace) == set()
    assert "Resuming operations" not in _log(standby)
    # Not even a read-only pass: the standby's own timers (resync every 5 s here) are held too.
    assert _reconciles(standby) == 0

    active.kill()
    create(api, namespace, _job("second"))
    # The standby resumes once the killed replica's keep-alive (lifetime) has expired.
    wait_phase(api, namespace, "second", "Succeeded", timeout=LIFETIME_SECONDS + 60)
    assert "Resuming operations after the pause" in _log(standby)
    assert _created(standby, namespace) == {"second"}
