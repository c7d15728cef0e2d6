"""Helpers shared by the e2e tests (importable as ``e2e_support``; conftest puts this directory
on sys.path so it works under any pytest import mode)."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_cluster_module():
    name = "kubetune_e2e_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "tests" / "cluster" / "cluster.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


kc = _load_cluster_module()


def crds_dir() -> Path:
    """The CRDs applied to the cluster (override with KUBETUNE_E2E_CRDS_DIR)."""
    return Path(os.environ.get("KUBETUNE_E2E_CRDS_DIR", REPO_ROOT / "crds"))


def crd_files() -> list[Path]:
    d = crds_dir()
    return sorted(p for p in d.glob("*.y*ml")) if d.is_dir() else []


def wait_for(
    check: Callable[[], Any], timeout: float = 60, interval: float = 0.25, what: str = ""
) -> Any:
    """Poll ``check`` until it returns something truthy; return that value or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)
