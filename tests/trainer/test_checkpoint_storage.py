"""Checkpoints under SIGKILL and under races, on local disk and on a real S3 server
(docs/checkpoints.md). No training: the writers save checkpoint-like directories of random
bytes (tests/storage/fake_checkpoints.py).

The kill harness (tests/storage/kill_harness.py) kills a writer process at seeded points of its
work, then checks in a fresh process what a reader and the next attempt get. The race tests
(tests/storage/races.py) pause a stale writer at every point of its save, prune or registration
while a newer attempt works. KUBETUNE_KILL_TRIALS sets the trials per backend (CI: 30)."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune_trainer.training.checkpoint_fs import CheckpointStore
from kubetune_trainer.training.checkpoint_s3 import S3CheckpointStore
from kubetune_trainer.training.checkpoints import Hook
from kubetune_trainer.uris import s3_client
from tests.storage import kill_harness, races

pytestmark = pytest.mark.trainer


def summary(tally: kill_harness.Tally) -> str:
    return json.dumps({k: v for k, v in vars(tally).items() if k != "details"})


def assert_nothing_lost(tally: kill_harness.Tally, trials: int) -> None:
    assert tally.trials == trials >= 30
    assert (tally.lost, tally.rolled_back, tally.corrupt) == (0, 0, 0), tally.details
    assert (tally.wrong_resume, tally.uncleaned, tally.errors) == (0, 0, 0), tally.details
    # Every category of kill point was hit, not only the easy ones.
    assert set(tally.kills) == set(kill_harness.CATEGORIES), tally.kills


@pytest.fixture
def bucket(s3_env: str) -> Iterator[str]:
    name = f"ckpt-{uuid.uuid4().hex[:10]}"
    s3_client().create_bucket(Bucket=name)
    yield f"s3://{name}"


# ------------------------------------------------------------------------------ local disk


def test_sigkill_at_seeded_points_loses_nothing_on_local_disk(tmp_path: Path) -> None:
    trials = kill_harness.trials_from_env()
    tally = kill_harness.run_trials("fs", str(tmp_path), trials, seed=1)
    print(summary(tally))
    assert_nothing_lost(tally, trials)


def test_the_harness_catches_a_store_that_removes_before_replacing(tmp_path: Path) -> None:
    """The harness has teeth: the same kills against a broken store lose checkpoints."""
    tally = kill_harness.run_trials("fs", str(tmp_path), 12, seed=1, broken=True)
    assert tally.lost + tally.rolled_back > 0, vars(tally)


def fs_store(location: str, hook: Hook) -> CheckpointStore:
    return CheckpointStore(Path(location), races.KEEP_LAST, hook=hook)


def test_a_stale_writer_paused_anywhere_cannot_hide_replace_or_outrank_on_a_filesystem() -> None:
    # tmpfs when there is one: renames behave as on disk, fsync costs nothing.
    parent = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=parent, prefix="kubetune-races-") as scratch:
        results = races.run_all(fs_store, f"{scratch}/runs", Path(scratch) / "staging")
    print(json.dumps([vars(r) | {"breaches": len(r.breaches)} for r in results]))
    for result in results:
        assert result.runs == result.points >= 10, vars(result)
        assert result.breaches == [], result.breaches


# -------------------------------------------------------------------------------------- S3


def test_sigkill_at_seeded_points_loses_nothing_on_s3(bucket: str) -> None:
    trials = kill_harness.trials_from_env()
    tally = kill_harness.run_trials("s3", f"{bucket}/runs", trials, seed=2, env=dict(os.environ))
    print(summary(tally))
    assert_nothing_lost(tally, trials)


def test_a_stale_writer_paused_anywhere_cannot_hide_replace_or_outrank_on_s3(
    bucket: str, tmp_path: Path
) -> None:
    def s3_store(location: str, hook: Hook) -> S3CheckpointStore:
        cache = tmp_path / "cache" / uuid.uuid4().hex[:8]
        return S3CheckpointStore(location, races.KEEP_LAST, hook=hook, cache_dir=cache)

    results = races.run_all(s3_store, f"{bucket}/races", tmp_path / "staging")
    print(json.dumps([vars(r) | {"breaches": len(r.breaches)} for r in results]))
    for result in results:
        assert result.runs == result.points >= 10, vars(result)
        assert result.breaches == [], result.breaches
