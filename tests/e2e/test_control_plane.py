"""The e2e control plane is real: version, CRD validation, server-side dry-run, kubectl explain."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from e2e_support import REPO_ROOT, crd_files, kc

pytestmark = pytest.mark.e2e

DATA = Path(__file__).parent / "data"
EXAMPLES_DIR = Path(
    os.environ.get("KUBETUNE_E2E_EXAMPLES_DIR", REPO_ROOT / "manifests" / "examples")
)


def _versions() -> dict[str, str]:
    out = {}
    for line in (kc.CLUSTER_DIR / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _require_crds() -> list[Path]:
    files = crd_files()
    if not files:
        pytest.skip("no CRD YAML in crds/ yet")
    return files


def _ftj_crd() -> dict:
    for path in _require_crds():
        for doc in yaml.safe_load_all(path.read_text()):
            if (
                doc
                and doc.get("kind") == "CustomResourceDefinition"
                and doc["spec"]["names"]["kind"] == "FineTuneJob"
            ):
                return doc
    pytest.skip("no FineTuneJob CRD in crds/")


def test_server_reports_pinned_version(cluster):
    version = json.loads(cluster.kubectl("version", "-o", "json"))
    expected = _versions()["KUBERNETES_VERSION"]
    assert version["serverVersion"]["gitVersion"] == expected
    assert version["clientVersion"]["gitVersion"] == expected


def test_core_controllers_run(cluster, namespace):
    # The namespace fixture waited for the ServiceAccount controller (kube-controller-manager);
    # a scheduler lease proves kube-scheduler is up and leading.
    leases = cluster.get_json("leases", "-n", "kube-system")["items"]
    names = {lease["metadata"]["name"] for lease in leases}
    assert {"kube-scheduler", "kube-controller-manager"} <= names


def _example_files() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("*.yaml")) if EXAMPLES_DIR.is_dir() else []


@pytest.mark.parametrize("path", _example_files() or [None], ids=lambda p: p.name if p else "none")
def test_examples_accepted_by_server_dry_run(cluster, path):
    if path is None:
        pytest.skip(f"no manifests in {EXAMPLES_DIR} yet")
    _require_crds()
    proc = cluster.kubectl_proc("apply", "--dry-run=server", "-f", str(path))
    assert proc.returncode == 0, f"{path.name} rejected by the API server:\n{proc.stderr}"


def test_bad_finetunejob_rejected_with_field_path(cluster, namespace):
    _ftj_crd()
    proc = cluster.kubectl_proc(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(DATA / "bad-ftj.yaml")
    )
    assert proc.returncode != 0, "the API server accepted spec.method: nope"
    assert "spec.method" in proc.stderr, proc.stderr


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_kubectl_explain_shows_field_docs(cluster):
    crd = _ftj_crd()
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    described = {
        name: prop["description"]
        for name, prop in spec_schema.get("properties", {}).items()
        if prop.get("description")
    }
    if spec_schema.get("description"):
        described[""] = spec_schema["description"]
    assert described, (
        "the FineTuneJob CRD has no descriptions under spec: kubectl explain would be empty"
    )
    out = _norm(cluster.kubectl("explain", "finetunejob.spec"))
    for field_name, text in described.items():
        # kubectl explain re-wraps text; compare the first words, whitespace-normalised.
        snippet = " ".join(_norm(text).split()[:6])
        assert snippet in out, (
            f"description of spec.{field_name} missing from kubectl explain:\n{out}"
        )
        if field_name:
            assert re.search(rf"\b{re.escape(field_name)}\b", out)
