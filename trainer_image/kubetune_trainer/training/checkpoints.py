"""The checkpoint protocol (docs/checkpoints.md): names, manifests, lineage and pruning
decisions, shared by the filesystem store (checkpoint_fs) and the object store (checkpoint_s3);
checkpoint_store opens either.

Everything here is pure except the hashing of a file; the stores do the I/O.

A checkpoint is ``checkpoints/step-<step:08d>-a<attempt>``: names carry the step and the
attempt that wrote it, so no two attempts ever write the same name. The manifest
``kubetune.json`` is its last file: every other file with its size and SHA-256. The lineage is
the checkpoints of the newest attempt that wrote a record in ``attempts/``; a new attempt first
makes its base checkpoint its own (a copy under its own name), then writes its record, so a
stale attempt can neither hide, replace nor outrank what a newer one wrote.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kubetune_trainer.errors import UserError
from kubetune_trainer.exit_codes import EXIT_STALE_ATTEMPT

MANIFEST = "kubetune.json"
MANIFEST_FORMAT = "kubetune.io/checkpoint/v2"

_NAME = re.compile(r"^step-(\d{8})-a(\d+)$")
_LEFTOVER = re.compile(r"^\.(incoming|deleting)-step-(\d{8})-a(\d+)-[0-9a-f]+$")

Hook = Callable[[str], None]
"""Called by a store at each point of its protocol with the point's name (tests kill or pause
the writer there); the default does nothing."""

State = Literal["complete", "stale attempt", "partial", "corrupt", "incoming"]


class StaleAttempt(UserError):
    """A newer attempt of the same run exists; this one must stop writing (exit 76)."""

    exit_code = EXIT_STALE_ATTEMPT


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read back as its manifest says (missing or damaged files)."""


def no_hook(point: str) -> None:
    return None


# ------------------------------------------------------------------------------------ names


def checkpoint_name(step: int, attempt: int) -> str:
    return f"step-{step:08d}-a{attempt}"


def parse_name(name: str) -> tuple[int, int] | None:
    """(step, attempt) of a checkpoint name; None for anything else."""
    match = _NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def leftover_name(kind: Literal["incoming", "deleting"], checkpoint: str) -> str:
    """A hidden, unique name for a checkpoint being written or deleted (filesystem only)."""
    return f".{kind}-{checkpoint}-{secrets.token_hex(4)}"


def parse_leftover(name: str) -> tuple[str, int, int] | None:
    """(kind, step, attempt) of an ``.incoming-``/``.deleting-`` name; None otherwise."""
    match = _LEFTOVER.match(name)
    if not match:
        return None
    return match.group(1), int(match.group(2)), int(match.group(3))


# ------------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint with a manifest. ``location``: its directory, or its ``s3://`` prefix."""

    name: str
    step: int
    attempt: int
    time: float
    location: str
    files: dict[str, FileEntry]
    adopted_from: str | None = None

    @property
    def path(self) -> Path:
        """The directory (filesystem stores only)."""
        return Path(self.location)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())


def manifest_json(
    step: int, attempt: int, files: dict[str, FileEntry], adopted_from: str | None = None
) -> bytes:
    document = {
        "format": MANIFEST_FORMAT,
        "step": step,
        "attempt": attempt,
        "time": time.time(),
        "adoptedFrom": adopted_from,
        "files": {
            name: {"bytes": entry.bytes, "sha256": entry.sha256}
            for name, entry in sorted(files.items())
        },
    }
    return json.dumps(document, indent=1).encode()


def parse_manifest(name: str, location: str, data: bytes) -> Checkpoint:
    """The checkpoint a manifest describes; ValueError when it is not one for ``name``."""
    try:
        document = json.loads(data)
        files = {
            str(rel): FileEntry(int(entry["bytes"]), str(entry["sha256"]))
            for rel, entry in document["files"].items()
        }
        checkpoint = Checkpoint(
            name=name,
            step=int(document["step"]),
            attempt=int(document["attempt"]),
            time=float(document["time"]),
            location=location,
            files=files,
            adopted_from=document.get("adoptedFrom"),
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
        raise ValueError(f"{name}: not a checkpoint manifest ({err})") from None
    if parse_name(name) != (checkpoint.step, checkpoint.attempt):
        raise ValueError(f"{name}: manifest says step {checkpoint.step} a{checkpoint.attempt}")
    if any(rel == MANIFEST or ".." in Path(rel).parts for rel in files):
        raise ValueError(f"{name}: manifest lists a forbidden path")
    return checkpoint


def size_problems(checkpoint: Checkpoint, sizes: dict[str, int]) -> list[str]:
    """What is missing or of another size, given the sizes of the files that exist."""
    problems = []
    for rel, entry in sorted(checkpoint.files.items()):
        if rel not in sizes:
            problems.append(f"{rel}: missing")
        elif sizes[rel] != entry.bytes:
            problems.append(f"{rel}: {sizes[rel]} bytes, manifest says {entry.bytes}")
    return problems


def sha256_file(path: Path, *, on_block: Callable[[], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            if on_block is not None:
                on_block()
    return digest.hexdigest()


def hash_problems(checkpoint: Checkpoint, root: Path) -> list[str]:
    """Files under ``root`` whose bytes are not the manifest's (size, then SHA-256)."""
    problems = []
    for rel, entry in sorted(checkpoint.files.items()):
        path = root / rel
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{rel}: missing")
            continue
        if size != entry.bytes:
            problems.append(f"{rel}: {size} bytes, manifest says {entry.bytes}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{rel}: SHA-256 differs from the manifest")
    return problems


# ---------------------------------------------------------------------- attempt records


def record_json(attempt: int, base: str | None) -> bytes:
    return json.dumps({"attempt": attempt, "base": base, "time": time.time()}).encode()


def lineage_attempt(recorded: Iterable[int]) -> int | None:
    """The attempt whose checkpoints are the lineage: the newest with a record."""
    return max(recorded, default=None)


# ------------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Listed:
    """One name under ``checkpoints/`` as a store sees it without hashing."""

    name: str
    step: int
    attempt: int
    checkpoint: Checkpoint | None
    """Parsed manifest, None when it is missing or unreadable."""
    problems: list[str] = field(default_factory=list)
    """Missing files or wrong sizes (empty for a complete checkpoint)."""
    leftover: str | None = None
    """'incoming' or 'deleting' for a filesystem store's hidden directories."""

    @property
    def complete(self) -> bool:
        return self.leftover is None and self.checkpoint is not None and not self.problems


def state_of(entry: Listed, lineage: int | None, corrupt: bool = False) -> State:
    if entry.leftover is not None or entry.checkpoint is None:
        return "incoming"
    if entry.problems:
        return "partial"
    if corrupt:
        return "corrupt"
    return "complete" if entry.attempt == lineage else "stale attempt"


def resume_candidates(entries: Iterable[Listed], lineage: int | None) -> list[Checkpoint]:
    """Complete checkpoints of the lineage, newest first: the reader tries them in order."""
    found = [e.checkpoint for e in entries if e.complete and e.attempt == lineage]
    return sorted((c for c in found if c is not None), key=lambda c: c.step, reverse=True)


def to_prune(entries: Iterable[Listed], attempt: int, keep_last: int) -> list[Listed]:
    """What the writer of ``attempt`` deletes after a save returned (docs/checkpoints.md,
    Pruning): its own complete checkpoints beyond the newest ``keep_last``, then anything of an
    older attempt, leftovers included. Nothing of a newer attempt, ever."""
    entries = list(entries)
    own = sorted(
        (e for e in entries if e.complete and e.attempt == attempt),
        key=lambda e: e.step,
        reverse=True,
    )
    doomed = own[max(keep_last, 1) :]
    doomed += [e for e in entries if e.attempt < attempt]
    doomed += [e for e in entries if e.leftover == "deleting" and e.attempt == attempt]
    return doomed


def own_leftovers(entries: Iterable[Listed], attempt: int) -> list[Listed]:
    """Unfinished writes of this attempt's number: when the attempt (re)starts, the process
    that left them is gone."""
    return [e for e in entries if e.attempt == attempt and not e.complete]


def describe(checkpoint: Checkpoint) -> dict[str, Any]:
    return {"name": checkpoint.name, "step": checkpoint.step, "attempt": checkpoint.attempt}
