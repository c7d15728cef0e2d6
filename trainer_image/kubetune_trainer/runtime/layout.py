"""Where a run's files live, on local or PVC storage and on S3 (one layout for the
single-process and the Ray path)::

    <storage.root>/<namespace>/<job>/           the run directory (stable across attempts)
        attempts/ checkpoints/                  kubetune_trainer.training.checkpoints
        staging/attempt-<N>/                    HF Trainer's checkpoints before they are published
        history.jsonl                           every logged step
        result-attempt-<N>.json                 the outcome of a single-process attempt
    <storage.output_dir>                        the final model

On S3 storage the staging and output directories are node-local temporary directories; the
output is uploaded after success (:func:`publish_output`) and Ray Train stores the checkpoints.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kubetune_trainer.plan import Plan
from kubetune_trainer.recipes.common import RecipeResult
from kubetune_trainer.uris import local_storage


def run_dir_of(plan: Plan) -> Path | None:
    """The run directory on local or PVC storage; None on S3 storage."""
    root = local_storage(plan.storage.root)
    return None if root is None else root / plan.storage.run_name


def staging_dir(plan: Plan) -> Path:
    """Where the HF Trainer writes checkpoints before they are published. Shared by the ranks
    of one node (the same path on each), so HF's per-rank files of a checkpoint land
    together."""
    run_dir = run_dir_of(plan)
    if run_dir is not None:
        return run_dir / "staging" / f"attempt-{plan.attempt}"
    safe = plan.storage.run_name.replace("/", "_")
    return Path(tempfile.gettempdir()) / "kubetune-staging" / safe / f"attempt-{plan.attempt}"


def history_path(plan: Plan) -> Path | None:
    """The JSONL file every logged step is appended to (local or PVC storage only)."""
    run_dir = run_dir_of(plan)
    return None if run_dir is None else run_dir / "history.jsonl"


def output_path(plan: Plan) -> Path:
    """Where the recipe writes the final model: the output directory itself on local or PVC
    storage; a node-local directory uploaded by publish_output on S3 storage."""
    path = local_storage(plan.storage.output_dir)
    if path is not None:
        return path
    safe = plan.storage.run_name.replace("/", "_")
    return Path(tempfile.gettempdir()) / "kubetune-output" / safe / f"attempt-{plan.attempt}"


def publish_output(plan: Plan, result: RecipeResult) -> None:
    """Upload the final model to S3 when the run's storage is remote (rank 0, after success)."""
    if result.output_dir is None or local_storage(plan.storage.output_dir) is not None:
        return
    from kubetune_trainer.uris import upload_dir

    upload_dir(result.output_dir, plan.storage.output_dir)


def ray_storage(plan: Plan) -> tuple[str, str]:
    """(storage_path, name) for Ray's RunConfig: the run directory split so Ray's layout
    matches the single-process one (<root>/<namespace>/<job>)."""
    root = local_storage(plan.storage.root)
    base = str(root) if root is not None else plan.storage.root.rstrip("/")
    namespace, name = plan.storage.run_name.split("/", 1)
    return f"{base}/{namespace}", name
