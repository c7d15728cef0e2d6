"""The export manifest: what was exported, where, its size and checksum, what it came from, and
how it was verified. Written beside the artifacts as ``manifest.json``; the artifact list also
goes into the FineTuneJob's ``status.artifacts``."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_trainer.export.verification import Verification

MANIFEST = "manifest.json"
MANIFEST_VERSION = "kubetune.io/export-manifest/v1"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Artifact:
    format: str
    """safetensors, gguf-TYPE or onnx."""
    path: str
    """The artifact's file or directory, relative to the export directory."""
    files: list[dict[str, Any]]
    """Every file of the artifact: relative path, bytes, sha256."""
    verification: Verification

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in self.files)

    @property
    def sha256(self) -> str:
        """The file's checksum; for a directory, the checksum of its sorted file list."""
        if len(self.files) == 1:
            return self.files[0]["sha256"]
        lines = "".join(f"{f['sha256']}  {f['path']}\n" for f in self.files)
        return hashlib.sha256(lines.encode()).hexdigest()

    @classmethod
    def of(cls, format: str, root: Path, target: Path, verification: Verification) -> Artifact:
        paths = (
            [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        )
        files = [
            {
                "path": p.relative_to(root).as_posix(),
                "bytes": p.stat().st_size,
                "sha256": sha256_file(p),
            }
            for p in paths
        ]
        return cls(format, target.relative_to(root).as_posix(), files, verification)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": self.path,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "verification": self.verification.to_dict(),
            "files": self.files,
        }

    def status_entry(self, export_uri: str) -> dict[str, Any]:
        """The FineTuneJob status.artifacts entry."""
        return {
            "format": self.format,
            "uri": f"{export_uri.rstrip('/')}/{self.path}",
            "bytes": self.bytes,
            "sha256": self.sha256,
            "verified": self.verification.ok,
        }


@dataclass
class Manifest:
    job: str
    """namespace/name of the job that trained the model."""
    source: str
    """Where the trained model was read from."""
    checkpoint: dict[str, Any] | None
    """The latest checkpoint of the run (step, attempt), for provenance."""
    artifacts: list[Artifact] = field(default_factory=list)
    gate: dict[str, Any] | None = None
    """The export gate's metric, value and bound, when the spec had one."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "job": self.job,
            "source": self.source,
            "checkpoint": self.checkpoint,
            "gate": self.gate,
            "artifacts": [a.to_dict() for a in self.artifacts],
        }

    def write(self, directory: Path) -> Path:
        """Atomically: readers see the previous manifest or this one, never half of it."""
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest-")
        with os.fdopen(fd, "w") as handle:
            json.dump(self.to_dict(), handle, indent=1)
        Path(tmp).replace(directory / MANIFEST)
        return directory / MANIFEST


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())
