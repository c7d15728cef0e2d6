"""The checkpoint protocol on a filesystem (docs/checkpoints.md): a checkpoint is visible only
when complete, names carry step and attempt, a new attempt resumes from its own copy of the
newest verified checkpoint, nothing is ever renamed over, leftovers of dead writers go."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from kubetune_trainer.training.checkpoint_fs import CheckpointStore
from kubetune_trainer.training.checkpoints import (
    MANIFEST,
    Checkpoint,
    Listed,
    StaleAttempt,
    checkpoint_name,
    parse_leftover,
    parse_name,
    sha256_file,
    state_of,
    to_prune,
)

pytestmark = pytest.mark.unit


def trainer_checkpoint(tmp: Path, step: int, size: int = 100, fill: bytes = b"w") -> Path:
    """What the HF Trainer leaves in its output directory after a save."""
    src = tmp / f"hf-checkpoint-{step}-{size}-{fill.hex()}"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(fill * size)
    (src / "sub" / "optimizer.pt").write_bytes(b"o" * (size // 2))
    return src


def names(store: CheckpointStore) -> list[str]:
    return sorted(p.name for p in store.checkpoints_dir.iterdir())


def test_publish_makes_a_complete_durable_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run", keep_last=2)
    assert store.register_attempt(1) is None  # nothing to resume from
    info = store.publish(trainer_checkpoint(tmp_path, 10), 10, 1)
    assert info.name == "step-00000010-a1" and info.step == 10 and info.attempt == 1
    manifest = json.loads((info.path / MANIFEST).read_text())
    model = info.path / "model.safetensors"
    assert manifest["files"]["model.safetensors"] == {"bytes": 100, "sha256": sha256_file(model)}
    assert manifest["files"]["sub/optimizer.pt"]["bytes"] == 50
    assert store.latest() == info
    assert names(store) == ["step-00000010-a1"]
    assert json.loads((store.attempts_dir / "1").read_text())["base"] is None


def test_half_written_checkpoints_are_never_picked(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run")
    store.register_attempt(1)
    store.publish(trainer_checkpoint(tmp_path, 10), 10, 1)
    # A write interrupted before its rename.
    interrupted = store.checkpoints_dir / ".incoming-step-00000020-a1-0badc0de"
    interrupted.mkdir()
    (interrupted / "model.safetensors").write_bytes(b"w")
    # A directory with a final name but no manifest (copied by hand, half done).
    (store.checkpoints_dir / "step-00000030-a1").mkdir()
    (store.checkpoints_dir / "step-00000030-a1" / "model.safetensors").write_bytes(b"w")
    # A manifest whose files are not all there.
    partial = store.publish(trainer_checkpoint(tmp_path, 40), 40, 1)
    (partial.path / "sub" / "optimizer.pt").unlink()
    assert store.latest().step == 10
    states = {e.name: state_of(e, store.latest_attempt()) for e in store.listing()}
    assert states == {
        "step-00000010-a1": "complete",
        ".incoming-step-00000020-a1-0badc0de": "incoming",
        "step-00000030-a1": "incoming",
        "step-00000040-a1": "partial",
    }


def test_resume_skips_a_checkpoint_whose_bytes_changed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run", keep_last=3)
    store.register_attempt(1)
    good = store.publish(trainer_checkpoint(tmp_path, 10), 10, 1)
    newest = store.publish(trainer_checkpoint(tmp_path, 20), 20, 1)
    # Same size, other bytes: only the hash can tell.
    (newest.path / "model.safetensors").write_bytes(b"x" * 100)
    assert store.latest() == newest  # sizes alone are checked when listing
    assert store.verify(newest) == ["model.safetensors: SHA-256 differs from the manifest"]
    base = store.register_attempt(2)
    assert base is not None and (base.step, base.attempt, base.adopted_from) == (10, 2, good.name)


def test_keep_last(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run", keep_last=2)
    store.register_attempt(1)
    for step in (10, 20, 30, 40):
        store.publish(trainer_checkpoint(tmp_path, step), step, 1)
    assert [c.step for c in store.complete()] == [30, 40]
    assert names(store) == ["step-00000030-a1", "step-00000040-a1"]


def test_a_new_attempt_resumes_from_its_own_hard_linked_copy(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run", keep_last=2)
    store.register_attempt(1)
    store.publish(trainer_checkpoint(tmp_path, 10), 10, 1)
    old = store.publish(trainer_checkpoint(tmp_path, 20), 20, 1)
    old_inode = (old.path / "model.safetensors").stat().st_ino

    base = store.register_attempt(2)
    assert base is not None
    assert (base.name, base.adopted_from) == ("step-00000020-a2", "step-00000020-a1")
    assert (base.path / "model.safetensors").stat().st_ino == old_inode  # no bytes copied
    assert store.verify(base) == []
    assert json.loads((store.attempts_dir / "2").read_text())["base"] == "step-00000020-a2"
    # Attempt 1's checkpoints are no longer the lineage: the new writer pruned them.
    assert names(store) == ["step-00000020-a2"]
    assert store.latest() == base


def test_without_hard_links_the_base_is_copied(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run", hardlinks=False)
    store.register_attempt(1)
    old = store.publish(trainer_checkpoint(tmp_path, 10), 10, 1)
    old_inode = (old.path / "model.safetensors").stat().st_ino
    base = store.register_attempt(2)
    assert base is not None and store.verify(base) == []
    assert (base.path / "model.safetensors").stat().st_ino != old_inode


def test_saving_a_step_again_never_renames_over_it(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run")
    store.register_attempt(1)
    first = store.publish(trainer_checkpoint(tmp_path, 10, fill=b"a"), 10, 1)
    again = store.publish(trainer_checkpoint(tmp_path, 10, fill=b"b"), 10, 1)
    assert again == first
    assert (first.path / "model.safetensors").read_bytes() == b"a" * 100
    assert names(store) == ["step-00000010-a1"]  # the second copy was discarded


def test_a_damaged_checkpoint_under_the_same_name_is_replaced(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run")
    store.register_attempt(1)
    first = store.publish(trainer_checkpoint(tmp_path, 10, fill=b"a"), 10, 1)
    (first.path / "model.safetensors").write_bytes(b"z" * 100)
    again = store.publish(trainer_checkpoint(tmp_path, 10, fill=b"b"), 10, 1)
    assert (again.path / "model.safetensors").read_bytes() == b"b" * 100
    assert store.verify(again) == []


def test_stale_attempt_is_stopped_early(tmp_path: Path) -> None:
    run = tmp_path / "run"
    old, new = CheckpointStore(run), CheckpointStore(run)
    old.register_attempt(1)
    old.publish(trainer_checkpoint(tmp_path, 10), 10, 1)
    new.register_attempt(2)
    with pytest.raises(StaleAttempt, match="attempt 1 is stale: attempt 2"):
        old.publish(trainer_checkpoint(tmp_path, 20), 20, 1)
    assert [c.name for c in new.complete()] == ["step-00000010-a2"]
    with pytest.raises(StaleAttempt):
        CheckpointStore(run).register_attempt(1)


def test_the_same_attempt_restarted_keeps_its_lineage_and_clears_its_leftovers(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path / "run")
    store.register_attempt(1)
    store.publish(trainer_checkpoint(tmp_path, 10), 10, 1)
    store.register_attempt(2)
    mine = store.publish(trainer_checkpoint(tmp_path, 20), 20, 2)
    dead = store.checkpoints_dir / ".incoming-step-00000030-a2-00000001"
    dead.mkdir()
    # Ray restarts the workers of attempt 2: same number, same lineage.
    assert store.register_attempt(2) == mine
    assert not dead.exists()


def test_leftovers_of_older_attempts_are_cleaned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run")
    store.register_attempt(1)
    store.publish(trainer_checkpoint(tmp_path, 10), 10, 1)
    leftover = store.checkpoints_dir / ".incoming-step-00000020-a1-00c0ffee"
    leftover.mkdir()
    deleting = store.checkpoints_dir / ".deleting-step-00000005-a1-00c0ffee"
    deleting.mkdir()
    store.register_attempt(2)
    assert not leftover.exists() and not deleting.exists()


def test_names_carry_step_and_attempt() -> None:
    assert parse_name("step-00000120-a3") == (120, 3)
    assert parse_name("step-00000120") is None
    assert parse_name("checkpoint-120") is None
    assert parse_leftover(".incoming-step-00000120-a3-9f2c41d0") == ("incoming", 120, 3)
    assert parse_leftover(".retired-step-00000120-a3") is None


def test_files_are_fsynced_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    """Every data file, the manifest and the directories are fsynced before the checkpoint gets
    its name, and checkpoints/ before the save returns (a node crash keeps a returned save)."""
    events: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        events.append("fsync " + Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    store = CheckpointStore(tmp_path / "run", hook=events.append)
    store.register_attempt(1)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    events.clear()
    store.publish(trainer_checkpoint(tmp_path, 10), 10, 1)
    renamed = events.index("renamed")
    for name in ("model.safetensors", "optimizer.pt", "sub", MANIFEST):
        assert f"fsync {name}" in events[:renamed], name
    assert events.index("fsync checkpoints", renamed) < events.index("durable")


def test_pruning_never_touches_a_newer_attempt_nor_its_own_newest() -> None:
    """to_prune over random listings: nothing of a newer attempt, and the writer's newest
    keep_last complete checkpoints always stay."""
    rng = random.Random(0)
    for _ in range(300):
        entries = []
        for _ in range(rng.randint(0, 12)):
            step, attempt = rng.randint(1, 50) * 10, rng.randint(1, 5)
            name = checkpoint_name(step, attempt)
            kind = rng.choice(["complete", "partial", "incoming", "deleting"])
            whole = Checkpoint(name, step, attempt, 0.0, name, {})
            if kind == "complete":
                entries.append(Listed(name, step, attempt, whole))
            elif kind == "partial":
                entries.append(Listed(name, step, attempt, whole, ["a: missing"]))
            else:
                entries.append(Listed(f".{kind}-{name}-00", step, attempt, None, leftover=kind))
        writer, keep = rng.randint(1, 5), rng.randint(1, 3)
        doomed = to_prune(entries, writer, keep)
        assert all(e.attempt <= writer for e in doomed)
        own = sorted(
            (e for e in entries if e.complete and e.attempt == writer), key=lambda e: e.step
        )
        assert not set(e.name for e in own[-keep:]) & {e.name for e in doomed}
