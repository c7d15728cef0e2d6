"""Checkpoints of one run on a POSIX filesystem: local disk, a mounted PVC, NFS.

Layout under the run directory (docs/checkpoints.md)::

    attempts/<N>                               attempt N's record (written once, durable)
    checkpoints/step-00000120-a3/              a checkpoint: the trainer's files + kubetune.json
    checkpoints/.incoming-step-...-a3-<hex>/   being written; never read
    checkpoints/.deleting-step-...-a2-<hex>/   being deleted; never read

A checkpoint appears by one ``rename`` of a directory whose every file, the manifest last, is
fsynced; renaming onto an existing non-empty directory fails, so nothing is ever replaced.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from kubetune_trainer.training.checkpoints import (
    MANIFEST,
    Checkpoint,
    CheckpointError,
    FileEntry,
    Hook,
    Listed,
    StaleAttempt,
    checkpoint_name,
    hash_problems,
    leftover_name,
    lineage_attempt,
    manifest_json,
    no_hook,
    own_leftovers,
    parse_leftover,
    parse_manifest,
    parse_name,
    record_json,
    resume_candidates,
    sha256_file,
    size_problems,
    to_prune,
)

log = logging.getLogger("kubetune.trainer")

_CHUNK = 1 << 16
_NO_HARD_LINKS = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP}


@contextlib.contextmanager
def _ignore_missing() -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno != errno.ENOTEMPTY:
            raise


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes its entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """The run's checkpoints on a filesystem. ``hardlinks=False`` copies bytes where a new
    attempt adopts its base (for filesystems without hard links); ``hook`` is called at every
    point of the protocol (tests kill or pause the writer there)."""

    def __init__(
        self,
        run_dir: Path | str,
        keep_last: int = 2,
        *,
        hardlinks: bool = True,
        hook: Hook = no_hook,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.hardlinks = hardlinks
        self.hook = hook
        self.checkpoints_dir = self.run_dir / "checkpoints"
        self.attempts_dir = self.run_dir / "attempts"

    @property
    def location(self) -> str:
        return str(self.run_dir)

    # ------------------------------------------------------------------------- attempts

    def recorded_attempts(self) -> list[int]:
        if not self.attempts_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.attempts_dir.iterdir() if p.name.isdigit())

    def latest_attempt(self) -> int:
        return lineage_attempt(self.recorded_attempts()) or 0

    def check_attempt(self, attempt: int) -> None:
        """Stops a stale writer early (exit 76). Safety does not depend on it."""
        newest = self.latest_attempt()
        if newest > attempt:
            raise StaleAttempt(
                f"attempt {attempt} is stale: attempt {newest} of this run has started; "
                "not writing checkpoints"
            )

    def register_attempt(self, attempt: int) -> Checkpoint | None:
        """Start ``attempt``: make the newest verified checkpoint of the lineage its own, record
        the attempt, prune. Returns the checkpoint to resume from (None: start fresh)."""
        self.check_attempt(attempt)
        self._make_dirs()
        if (self.attempts_dir / str(attempt)).exists():
            # The same attempt started again (Ray restarting its workers): its lineage stands.
            for leftover in own_leftovers(self.listing(), attempt):
                self._delete(leftover)
            return self.newest_verified(attempt)
        base = self.newest_verified(self.latest_attempt())
        adopted = self._adopt(base, attempt) if base is not None else None
        self._write_record(attempt, adopted.name if adopted else None)
        self.prune(attempt)
        return adopted

    def _make_dirs(self) -> None:
        """attempts/ and checkpoints/, their entries durable (a node crash keeps the run)."""
        created = [d for d in (self.attempts_dir, self.checkpoints_dir) if not d.is_dir()]
        for directory in created:
            directory.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_path(self.run_dir)
            fsync_path(self.run_dir.parent)

    def _write_record(self, attempt: int, base: str | None) -> None:
        for stray in self.attempts_dir.glob(".record-*"):
            if int(stray.name.split("-")[1]) < attempt:  # a dead or stale writer's
                stray.unlink(missing_ok=True)
        tmp = self.attempts_dir / f".record-{attempt}-{os.getpid()}"
        self._write_file(tmp, record_json(attempt, base))
        self.hook("record-written")
        os.replace(tmp, self.attempts_dir / str(attempt))
        self.hook("record-renamed")
        fsync_path(self.attempts_dir)
        self.hook("record-durable")

    def _adopt(self, base: Checkpoint, attempt: int) -> Checkpoint:
        """Attempt's own copy of ``base`` (hard links where the filesystem has them)."""
        if base.attempt == attempt:
            return base
        name = checkpoint_name(base.step, attempt)
        incoming = self.checkpoints_dir / leftover_name("incoming", name)
        incoming.mkdir()
        self.hook("adopt-started")
        for rel in sorted(base.files):
            target = incoming / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self._link_or_copy(base.path / rel, target)
            self.hook("adopt-file")
        self._fsync_dirs(incoming)
        manifest = manifest_json(base.step, attempt, base.files, adopted_from=base.name)
        self._write_file(incoming / MANIFEST, manifest)
        fsync_path(incoming)
        self.hook("adopt-manifest-durable")
        return self._install(incoming, name)

    def _link_or_copy(self, source: Path, target: Path) -> None:
        if self.hardlinks:
            try:
                os.link(source, target)
                return
            except OSError as err:
                if err.errno not in _NO_HARD_LINKS:
                    raise
                log.info("event=checkpoint_copy reason=no-hard-links path=%s", target.parent)
        with source.open("rb") as src, target.open("wb") as dst:
            for block in iter(lambda: src.read(_CHUNK), b""):
                dst.write(block)
                self.hook("copy-bytes")
            dst.flush()
            os.fsync(dst.fileno())

    # ------------------------------------------------------------------------- writing

    def publish(self, source: Path, step: int, attempt: int, *, move: bool = True) -> Checkpoint:
        """Make the trainer's checkpoint directory ``source`` the checkpoint of (step, attempt);
        returns once it is durable under its name."""
        self.check_attempt(attempt)
        self._make_dirs()
        name = checkpoint_name(step, attempt)
        incoming = self.checkpoints_dir / leftover_name("incoming", name)
        if move:
            shutil.move(str(source), str(incoming))
        else:
            shutil.copytree(source, incoming)
        self.hook("incoming-placed")
        stray = incoming / MANIFEST
        if stray.exists():
            stray.unlink()  # the manifest is ours to write, last
        files: dict[str, FileEntry] = {}
        for path in sorted(p for p in incoming.rglob("*") if p.is_file()):
            files[path.relative_to(incoming).as_posix()] = self._make_durable(path)
            self.hook("file-durable")
        self._fsync_dirs(incoming)
        self._write_file(incoming / MANIFEST, manifest_json(step, attempt, files))
        fsync_path(incoming)
        self.hook("manifest-durable")
        checkpoint = self._install(incoming, name)
        self.prune(attempt)
        self.check_attempt(attempt)
        return checkpoint

    def _make_durable(self, path: Path) -> FileEntry:
        """fsync the file and hash it (one read, from the page cache)."""
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
        return FileEntry(path.stat().st_size, sha256_file(path))

    def _install(self, incoming: Path, name: str) -> Checkpoint:
        """Give the incoming directory its final name, never replacing a checkpoint."""
        final = self.checkpoints_dir / name
        self.hook("before-rename")
        try:
            os.rename(incoming, final)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # The same attempt saved this step before: keep that checkpoint when it is whole.
            existing = self._read(name)
            if existing is not None and not hash_problems(existing, existing.path):
                log.info("event=checkpoint_exists name=%s action=keep-existing", name)
                self._remove_tree(incoming)
                return existing
            self._delete(self._listed(name))
            os.rename(incoming, final)
        self.hook("renamed")
        fsync_path(self.checkpoints_dir)
        self.hook("durable")
        checkpoint = self._read(name)
        if checkpoint is None:
            raise CheckpointError(f"{final}: unreadable right after it was written")
        return checkpoint

    def prune(self, attempt: int) -> None:
        for entry in to_prune(self.listing(), attempt, self.keep_last):
            self._delete(entry)

    def _delete(self, entry: Listed) -> None:
        """Rename out of sight first (atomic), then remove: never a half-deleted checkpoint
        under its name."""
        path = self.checkpoints_dir / entry.name
        if entry.leftover is None:
            hidden = self.checkpoints_dir / leftover_name("deleting", entry.name)
            try:
                os.rename(path, hidden)
            except FileNotFoundError:
                return  # someone else deleted it
            self.hook("delete-renamed")
            path = hidden
        self._remove_tree(path)
        self.hook("deleted")

    def _remove_tree(self, path: Path) -> None:
        """Remove files bottom-up; what a concurrent writer still adds stays for the next
        prune."""
        for root, _, files in os.walk(path, topdown=False):
            for name in files:
                with _ignore_missing():
                    os.unlink(os.path.join(root, name))
                self.hook("delete-file")
            with _ignore_missing():
                os.rmdir(root)

    # ------------------------------------------------------------------------- reading

    def listing(self) -> list[Listed]:
        """Every checkpoint-like name under checkpoints/, with sizes checked (no hashing)."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for path in self.checkpoints_dir.iterdir():
            leftover = parse_leftover(path.name)
            if leftover is not None:
                kind, step, attempt = leftover
                found.append(Listed(path.name, step, attempt, None, leftover=kind))
            elif parse_name(path.name) is not None:
                found.append(self._listed(path.name))
        return sorted(found, key=lambda e: (e.step, e.attempt, e.name))

    def _listed(self, name: str) -> Listed:
        step, attempt = parse_name(name) or (0, 0)
        checkpoint = self._read(name)
        if checkpoint is None:
            return Listed(name, step, attempt, None, ["no manifest"])
        sizes = {}
        for rel in checkpoint.files:
            with contextlib.suppress(OSError):
                sizes[rel] = (checkpoint.path / rel).stat().st_size
        return Listed(name, step, attempt, checkpoint, size_problems(checkpoint, sizes))

    def _read(self, name: str) -> Checkpoint | None:
        path = self.checkpoints_dir / name
        try:
            return parse_manifest(name, str(path), (path / MANIFEST).read_bytes())
        except (OSError, ValueError):
            return None

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint of the lineage (sizes checked, not hashes)."""
        candidates = resume_candidates(self.listing(), self.latest_attempt() or None)
        return candidates[0] if candidates else None

    def complete(self) -> list[Checkpoint]:
        """The lineage's complete checkpoints, oldest first."""
        return resume_candidates(self.listing(), self.latest_attempt() or None)[::-1]

    def newest_verified(self, attempt: int) -> Checkpoint | None:
        """The newest checkpoint of ``attempt`` whose every file has its hash."""
        for candidate in resume_candidates(self.listing(), attempt or None):
            problems = self.verify(candidate)
            if not problems:
                return candidate
            log.warning(
                "event=checkpoint_corrupt name=%s problems=%s action=try-older",
                candidate.name,
                "; ".join(problems),
            )
        return None

    def checkpoint(self, name: str) -> Checkpoint:
        found = self._read(name)
        if found is None:
            raise CheckpointError(f"{self.checkpoints_dir / name}: no manifest")
        return found

    def verify(self, checkpoint: Checkpoint) -> list[str]:
        return hash_problems(checkpoint, checkpoint.path)

    def local_copy(self, checkpoint: Checkpoint) -> Path:
        """Where a trainer reads the checkpoint from: the directory itself."""
        return checkpoint.path

    # ------------------------------------------------------------------------- helpers

    def _write_file(self, path: Path, data: bytes) -> None:
        with path.open("wb") as out:
            for start in range(0, len(data), 4096):
                out.write(data[start : start + 4096])
                out.flush()
                self.hook("write-bytes")
            os.fsync(out.fileno())

    @staticmethod
    def _fsync_dirs(root: Path) -> None:
        for directory in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
            fsync_path(directory)
