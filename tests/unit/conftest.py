from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))

BASE_JOB: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "demo", "namespace": "team-a"},
    "spec": {
        "method": "sft",
        "model": {"source": "builtin://tiny-llama"},
        "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
    },
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/unit/" in str(item.fspath):
            item.add_marker(pytest.mark.unit)
            if "helm" in getattr(item, "fixturenames", ()):
                # Needs the helm binary of the control-plane build: the `chart` tier runs these
                # once that build stage is done, the rest of the unit tier runs at once.
                item.add_marker(pytest.mark.helm)


@pytest.fixture
def job() -> dict[str, Any]:
    """A minimal valid FineTuneJob, as a dict a test may change."""
    return copy.deepcopy(BASE_JOB)


@pytest.fixture
def write_yaml(tmp_path: Path):
    """Write documents (dicts or raw text) to a YAML file and return its path."""

    def write(*docs: dict[str, Any] | str, name: str = "job.yaml") -> Path:
        path = tmp_path / name
        parts = [d if isinstance(d, str) else yaml.safe_dump(d, sort_keys=False) for d in docs]
        path.write_text("---\n".join(parts))
        return path

    return write
