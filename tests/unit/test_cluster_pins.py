"""The e2e control plane's pins agree with each other (no Go toolchain or network needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def _versions() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (CLUSTER / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def test_k8s_module_pins_every_staging_module_to_the_staging_version():
    v = _versions()
    gomod = (CLUSTER / "k8s" / "go.mod").read_text()
    assert re.search(rf"^\s*k8s\.io/kubernetes {re.escape(v['KUBERNETES_VERSION'])}\b", gomod, re.M)
    replaces = re.findall(r"^\s*(k8s\.io/\S+) => (\S+) (v\S+)$", gomod, re.M)
    assert len(replaces) >= 30, "run tests/cluster/build.sh gen-mod"
    for module, target, version in replaces:
        assert module == target, module
        assert version == v["STAGING_VERSION"], f"{module} {version}: run build.sh gen-mod"
    # Staging modules are tagged v0.<minor>.<patch> alongside v1.<minor>.<patch>.
    assert v["STAGING_VERSION"] == "v0." + v["KUBERNETES_VERSION"].split(".", 1)[1]


def test_etcd_module_pins_the_etcd_version():
    v = _versions()
    gomod = (CLUSTER / "etcd" / "go.mod").read_text()
    assert f"go.etcd.io/etcd/server/v3 {v['ETCD_VERSION']}" in gomod


def test_go_sums_are_committed():
    for module in ("k8s", "etcd"):
        assert (CLUSTER / module / "go.sum").stat().st_size > 0


def test_stages_parse_and_are_uniquely_named():
    names = []
    for path in sorted((CLUSTER / "stages").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] == "Stage" and doc["apiVersion"] == "kwok.x-k8s.io/v1alpha1"
            assert doc["spec"]["resourceRef"]["kind"] in ("Node", "Pod")
            names.append(doc["metadata"]["name"])
    assert len(names) == len(set(names))
    # kwokctl drops its defaults once any Stage is given: the lifecycle must be complete.
    assert {"node-initialize", "node-heartbeat", "pod-ready", "pod-delete"} <= set(names)
    assert {"pod-succeed", "pod-fail", "pod-evict"} <= set(names)
