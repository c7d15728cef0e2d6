"""helm and kubeconform, built with the control plane, work offline against a trivial chart;
kubeconform validates against schemas generated from the live API server (never the network)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from e2e_support import kc

pytestmark = pytest.mark.e2e

CHART = kc.CLUSTER_DIR / "testdata" / "trivial-chart"


@pytest.fixture(scope="module")
def schemas(cluster, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kubeconform-schemas")
    assert kc.write_kubeconform_schemas(cluster, out) > 50
    return out


def _tool(
    cluster, tmp_path: Path, *args: str, input: str | None = None
) -> subprocess.CompletedProcess:
    env = cluster.env
    # Keep helm's cache/config/data out of $HOME.
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(tmp_path / var.lower())
    return subprocess.run(
        [str(cluster.bin_dir / args[0]), *args[1:]],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _kubeconform(
    cluster, tmp_path: Path, schemas: Path, manifests: str
) -> subprocess.CompletedProcess:
    location = str(schemas) + "/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    return _tool(
        cluster,
        tmp_path,
        "kubeconform",
        "-strict",
        "-summary",
        "-schema-location",
        location,
        "-",
        input=manifests,
    )


def test_helm_lint_and_template(cluster, tmp_path):
    lint = _tool(cluster, tmp_path, "helm", "lint", "--strict", str(CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = _tool(cluster, tmp_path, "helm", "template", "e2e", str(CHART))
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d)
    assert kinds == ["Deployment", "Service", "ServiceAccount"]


def test_kubeconform_offline_accepts_chart_and_rejects_typos(cluster, schemas, tmp_path):
    rendered = _tool(cluster, tmp_path, "helm", "template", "e2e", str(CHART)).stdout
    ok = _kubeconform(cluster, tmp_path, schemas, rendered)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Valid: 3" in ok.stdout, ok.stdout

    docs = [d for d in yaml.safe_load_all(rendered) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["replicaz"] = 2  # unknown field
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = (
        "not-a-port"
    )
    bad = _kubeconform(cluster, tmp_path, schemas, yaml.safe_dump_all(docs))
    assert bad.returncode != 0, bad.stdout
    assert "replicaz" in bad.stdout + bad.stderr
