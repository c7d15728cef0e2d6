"""The checkpoint store of a run's location: an object store for ``s3://`` prefixes, a
filesystem (local, PVC, NFS) for anything else. Both keep the same protocol
(docs/checkpoints.md) and the same methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune_trainer.training.checkpoint_fs import CheckpointStore
from kubetune_trainer.training.checkpoint_s3 import S3CheckpointStore


def open_store(
    location: str, keep_last: int = 2, **options: Any
) -> CheckpointStore | S3CheckpointStore:
    if location.startswith("s3://"):
        return S3CheckpointStore(location, keep_last, **options)
    return CheckpointStore(Path(location), keep_last, **options)
