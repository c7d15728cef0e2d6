"""Atomic, attempt-fenced checkpoints on a filesystem (local disk or a mounted PVC).

Layout under ``<root>/<run>/``::

    attempts/<N>                 one empty file per attempt that ever started
    checkpoints/step-00000120/   a complete checkpoint (HF Trainer files + kubetune.json)
    checkpoints/.incoming-...    a checkpoint being written; never read

A checkpoint becomes visible by one ``rename`` after its files and its manifest are written, so
a reader never sees half of one. The manifest lists every file with its size and completeness is
re-checked when listing, so a checkpoint damaged later (a truncated file) is skipped rather than
resumed from. An attempt that finds a newer attempt registered refuses to publish: a stale pod
left behind by a partition can never replace the newer attempt's checkpoints.

Under Ray Train the checkpoints go through Ray's own storage instead (see
kubetune_trainer.runtime.ray_train); this store serves the single-process path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "kubetune.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class StaleAttempt(RuntimeError):
    """A newer attempt of the same run exists; this one must stop writing."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    attempt: int
    time: float


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    def __init__(self, run_dir: Path | str, keep_last: int = 2) -> None:
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.checkpoints_dir = self.run_dir / "checkpoints"
        self.attempts_dir = self.run_dir / "attempts"

    # ---------------------------------------------------------------- attempts

    def register_attempt(self, attempt: int) -> None:
        """Record that this attempt started; fails when a newer one already did."""
        self.attempts_dir.mkdir(parents=True, exist_ok=True)
        (self.attempts_dir / str(attempt)).touch()
        self.check_attempt(attempt)

    def latest_attempt(self) -> int:
        if not self.attempts_dir.is_dir():
            return 0
        return max(
            (int(p.name) for p in self.attempts_dir.iterdir() if p.name.isdigit()), default=0
        )

    def check_attempt(self, attempt: int) -> None:
        newest = self.latest_attempt()
        if newest > attempt:
            raise StaleAttempt(
                f"attempt {attempt} is stale: attempt {newest} of this run has started; "
                "not writing checkpoints"
            )

    # ---------------------------------------------------------------- writing

    def publish(
        self, source: Path, step: int, attempt: int, *, move: bool = True
    ) -> CheckpointInfo:
        """Make the checkpoint in `source` the complete checkpoint for `step`."""
        self.check_attempt(attempt)
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        incoming = self.checkpoints_dir / f".incoming-step-{step:08d}-a{attempt}-{os.getpid()}"
        if incoming.exists():
            shutil.rmtree(incoming)
        if move:
            shutil.move(str(source), incoming)
        else:
            shutil.copytree(source, incoming)
        files = {
            str(p.relative_to(incoming)): p.stat().st_size
            for p in sorted(incoming.rglob("*"))
            if p.is_file()
        }
        created = time.time()
        manifest = {"step": step, "attempt": attempt, "time": created, "files": files}
        with open(incoming / MANIFEST, "w") as out:
            json.dump(manifest, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        _fsync_dir(incoming)
        final = self.checkpoints_dir / f"step-{step:08d}"
        self.check_attempt(attempt)
        if final.exists():
            # Same step written again (a resumed attempt re-saving): replace it in two renames.
            retired = self.checkpoints_dir / f".retired-{final.name}-{os.getpid()}"
            final.rename(retired)
            incoming.rename(final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            incoming.rename(final)
        _fsync_dir(self.checkpoints_dir)
        self.prune()
        return CheckpointInfo(final, step, attempt, created)

    def prune(self) -> None:
        """Delete complete checkpoints beyond keep_last, and leftovers of interrupted writes by
        attempts that are no longer current."""
        for old in self.complete()[: -self.keep_last]:
            shutil.rmtree(old.path, ignore_errors=True)
        current = self.latest_attempt()
        for leftover in self.checkpoints_dir.glob(".incoming-*"):
            match = re.search(r"-a(\d+)-", leftover.name)
            if match and int(match.group(1)) < current:
                shutil.rmtree(leftover, ignore_errors=True)

    # ---------------------------------------------------------------- reading

    def complete(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first (by step)."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for path in self.checkpoints_dir.iterdir():
            if not _STEP_DIR.match(path.name):
                continue
            info = read_checkpoint(path)
            if info is not None:
                found.append(info)
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> CheckpointInfo | None:
        done = self.complete()
        return done[-1] if done else None


def read_checkpoint(path: Path) -> CheckpointInfo | None:
    """The checkpoint at path if its manifest exists and every listed file has its size."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        for name, size in manifest["files"].items():
            if (path / name).stat().st_size != size:
                return None
        return CheckpointInfo(
            path, int(manifest["step"]), int(manifest["attempt"]), manifest["time"]
        )
    except (OSError, ValueError, KeyError):
        return None
