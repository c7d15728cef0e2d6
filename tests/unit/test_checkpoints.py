"""Checkpoints are visible only when complete, pruned to keepLast, and fenced by attempt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer.training.checkpoints import MANIFEST, CheckpointStore, StaleAttempt


def fake_checkpoint(tmp: Path, step: int, size: int = 100) -> Path:
    src = tmp / f"hf-checkpoint-{step}"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"w" * size)
    (src / "sub" / "optimizer.pt").write_bytes(b"o" * (size // 2))
    return src


def test_publish_makes_a_complete_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run", keep_last=2)
    store.register_attempt(1)
    info = store.publish(fake_checkpoint(tmp_path, 10), 10, 1)
    assert info.path.name == "step-00000010" and info.step == 10 and info.attempt == 1
    manifest = json.loads((info.path / MANIFEST).read_text())
    assert manifest["files"] == {"model.safetensors": 100, "sub/optimizer.pt": 50}
    assert store.latest() == info
    assert not list(store.checkpoints_dir.glob(".incoming-*"))


def test_half_written_checkpoints_are_never_picked(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run")
    store.register_attempt(1)
    store.publish(fake_checkpoint(tmp_path, 10), 10, 1)
    # A write interrupted before the rename: an .incoming dir with everything but the rename.
    interrupted = store.checkpoints_dir / ".incoming-step-00000020-a1-999"
    interrupted.mkdir()
    (interrupted / "model.safetensors").write_bytes(b"w")
    # A directory with the final name but no manifest (e.g. copied by hand, half done).
    (store.checkpoints_dir / "step-00000030").mkdir()
    assert [c.step for c in store.complete()] == [10]


def test_damaged_checkpoint_is_skipped(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run", keep_last=3)
    store.register_attempt(1)
    store.publish(fake_checkpoint(tmp_path, 10), 10, 1)
    newest = store.publish(fake_checkpoint(tmp_path, 20), 20, 1)
    (newest.path / "model.safetensors").write_bytes(b"truncated")
    assert store.latest().step == 10


def test_keep_last(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run", keep_last=2)
    store.register_attempt(1)
    for step in (10, 20, 30, 40):
        store.publish(fake_checkpoint(tmp_path, step), step, 1)
    assert [c.step for c in store.complete()] == [30, 40]
    assert sorted(p.name for p in store.checkpoints_dir.iterdir()) == [
        "step-00000030",
        "step-00000040",
    ]


def test_stale_attempt_cannot_publish(tmp_path: Path) -> None:
    run = tmp_path / "run"
    old, new = CheckpointStore(run), CheckpointStore(run)
    old.register_attempt(1)
    old.publish(fake_checkpoint(tmp_path, 10), 10, 1)
    new.register_attempt(2)
    with pytest.raises(StaleAttempt, match="attempt 1 is stale: attempt 2"):
        old.publish(fake_checkpoint(tmp_path, 20), 20, 1)
    assert [c.step for c in new.complete()] == [10]
    with pytest.raises(StaleAttempt):
        CheckpointStore(run).register_attempt(1)


def test_resumed_attempt_may_rewrite_a_step(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run")
    store.register_attempt(1)
    store.publish(fake_checkpoint(tmp_path, 10, size=10), 10, 1)
    store.register_attempt(2)
    info = store.publish(fake_checkpoint(tmp_path, 10, size=20), 10, 2)
    assert store.latest() == info and info.attempt == 2
    assert (info.path / "model.safetensors").stat().st_size == 20


def test_leftovers_of_older_attempts_are_cleaned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run")
    store.register_attempt(1)
    store.publish(fake_checkpoint(tmp_path, 10), 10, 1)
    leftover = store.checkpoints_dir / ".incoming-step-00000020-a1-123"
    leftover.mkdir()
    store.register_attempt(2)
    store.publish(fake_checkpoint(tmp_path, 30), 30, 2)
    assert not leftover.exists()
