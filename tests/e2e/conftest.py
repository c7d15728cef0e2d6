"""Fixtures for the e2e tier: one real control plane (kube-apiserver, kube-controller-manager,
kube-scheduler, etcd, kwok) per test session. Binaries come from tests/cluster/build.sh; when they
are missing the e2e tests skip (or fail when KUBETUNE_REQUIRE_E2E=1)."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_support import crds_dir, kc, wait_for


@pytest.fixture(scope="session")
def cluster():
    """A running cluster (tests/cluster/cluster.py ``Cluster``): ``.kubeconfig``,
    ``.kubectl(*args)``, ``.add_gpu_nodes(n)``, ``.apply(objs)``, ``.get_json(...)``.

    KUBECONFIG points at it for the whole session."""
    binaries = kc.bin_dir()
    if kc.background_build_running(binaries):
        # Waiting here would count against this test's timeout; scripts/run_tiers.py waits for
        # the build before the e2e tier starts.
        reason = "the control plane is still building: run `tests/cluster/build.sh --wait` first"
        if os.environ.get("KUBETUNE_REQUIRE_E2E") == "1":
            pytest.fail(reason + " [KUBETUNE_REQUIRE_E2E=1]", pytrace=False)
        pytest.skip(reason)
    missing = kc.missing_binaries(binaries)
    if missing:
        reason = (
            f"control plane binaries not built ({', '.join(missing)} missing in {binaries}): "
            "run `make cluster-build` (tests/cluster/build.sh)"
        )
        log = binaries.parent / "build.log"
        if log.exists():
            reason += f"; last build log: {log}"
        if os.environ.get("KUBETUNE_REQUIRE_E2E") == "1":
            pytest.fail(reason + " [KUBETUNE_REQUIRE_E2E=1]", pytrace=False)
        pytest.skip(reason)
    c = kc.start(binaries=binaries, crds_dir=crds_dir())
    sys.stderr.write(f"\n[e2e] cluster {c.name} ready in {c.started_in:.1f}s\n")
    # For the session, anything that talks to "the cluster" (kubectl, kopf, the kubernetes
    # client) finds this one, and kubectl's discovery cache stays out of $HOME.
    exported = {"KUBECONFIG": str(c.kubeconfig), "KUBECACHEDIR": str(c.workdir / "kube-cache")}
    saved = {key: os.environ.get(key) for key in exported}
    os.environ.update(exported)
    try:
        yield c
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        c.stop()


@pytest.fixture
def namespace(cluster) -> str:
    """A fresh namespace (with its default ServiceAccount), deleted after the test."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: (
            cluster.kubectl_proc("get", "serviceaccount", "default", "-n", name).returncode == 0
        ),
        timeout=30,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used an operator gets the operator's log tail in its report."""
    report = yield
    operator = getattr(item, "funcargs", {}).get("operator")
    if report.failed and call.when == "call" and hasattr(operator, "logs"):
        report.sections.append(("operator log", operator.logs()))
    return report
