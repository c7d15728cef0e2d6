"""Cluster teardown leaves no processes, ports or files behind, even when kwokctl cannot help."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from e2e_support import kc, wait_for

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it holds no ports and counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize(
    "kwokctl_state_lost", [False, True], ids=["kwokctl-delete", "fallback-kill"]
)
def test_stop_leaves_nothing_behind(cluster, kwokctl_state_lost):
    # `cluster` first: skips/fails like every e2e test when the binaries are missing.
    c = kc.start(binaries=cluster.bin_dir, crds_dir=None)
    try:
        pids, ports = c._component_pids(), c._ports()
        assert len(pids) >= 5, pids  # etcd, apiserver, controller-manager, scheduler, kwok
        assert ports
        # Readiness only covers the API server; the other components may still be binding.
        wait_for(
            lambda: all(kc._port_open("127.0.0.1", p) for p in ports),
            timeout=30,
            what=f"component ports {ports} to listen",
        )
        if kwokctl_state_lost:
            # kwokctl no longer knows the cluster: stop() must still find and kill everything.
            state = c.workdir / "kwok" / "clusters" / c.name
            shutil.copy(state / "kwok.yaml", c.workdir / "kwok.yaml.saved")
            shutil.rmtree(state)
            (state).mkdir(parents=True)
            shutil.copy(c.workdir / "kwok.yaml.saved", state / "kwok.yaml")
    finally:
        c.stop()
    assert not [p for p in pids if _alive(p)]
    assert not [p for p in ports if kc._port_open("127.0.0.1", p)]
    assert not c.workdir.exists()
