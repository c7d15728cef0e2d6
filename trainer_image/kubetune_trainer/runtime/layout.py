"""Where a run's files live, on local or PVC storage and on S3 (one layout for the
single-process and the Ray path)::

    <storage.root>/<namespace>/<job>/           the run directory (stable across attempts)
        attempts/ checkpoints/                  the checkpoint store (docs/checkpoints.md)
        staging/attempt-<N>/                    HF Trainer's checkpoints before they are published
        history.jsonl                           every logged step
        result-attempt-<N>.json                 the outcome of an attempt (write_result)
    <storage.output_dir>                        the final model

On S3 storage the run directory is the prefix ``<storage.root>/<namespace>/<job>/`` (attempts/
and checkpoints/ only); staging and output are node-local temporary directories, and the output
is uploaded after success (:func:`publish_output`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubetune_trainer.plan import Plan
from kubetune_trainer.recipes.common import RecipeResult
from kubetune_trainer.training.checkpoint_store import open_store
from kubetune_trainer.uris import local_storage

log = logging.getLogger("kubetune.trainer")


def run_dir_of(plan: Plan) -> Path | None:
    """The run directory on local or PVC storage; None on S3 storage."""
    root = local_storage(plan.storage.root)
    return None if root is None else root / plan.storage.run_name


def run_location(plan: Plan) -> str:
    """The run directory, or its ``s3://`` prefix on S3 storage."""
    run_dir = run_dir_of(plan)
    if run_dir is not None:
        return str(run_dir)
    return f"{plan.storage.root.rstrip('/')}/{plan.storage.run_name}"


def checkpoint_store(plan: Plan) -> Any:
    """The run's checkpoint store, on its filesystem or its object store: the one source of
    truth for where an attempt resumes, in single-process and Ray modes alike."""
    return open_store(run_location(plan), plan.recipe.checkpoint.keep_last)


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
    matches the single-process one (<root>/<namespace>/<job>). Ray keeps only its own run
    state there; checkpoints go through the run's checkpoint store. On S3, Ray's pyarrow
    filesystem reaches the server boto3 reaches: pyarrow reads ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL`` itself."""
    root = local_storage(plan.storage.root)
    base = str(root) if root is not None else plan.storage.root.rstrip("/")
    namespace, name = plan.storage.run_name.split("/", 1)
    return f"{base}/{namespace}", name


def write_result(
    run_dir: Path,
    plan: Plan,
    *,
    final_step: int,
    preempted: bool,
    metrics: dict[str, float],
    output: Path | str | None,
    resumed_from: int | None,
    started: float,
) -> None:
    """``result-attempt-<N>.json``: how the attempt ended (what ``kubetune status`` shows),
    written atomically. ``started`` is the attempt's start, as ``time.time()``."""
    finished = time.time()
    summary: dict[str, Any] = {
        "attempt": plan.attempt,
        "finalStep": final_step,
        "preempted": preempted,
        "resumedFrom": resumed_from,
        "started": _rfc3339(started),
        "finished": _rfc3339(finished),
        "seconds": round(finished - started, 1),
        "metrics": metrics,
        "output": str(output) if output else None,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkstemp(dir=run_dir, prefix=".result-")[1])
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(run_dir / f"result-attempt-{plan.attempt}.json")
    log.info(
        "event=%s job=%s step=%d output=%s",
        "preempted" if preempted else "finished",
        plan.storage.run_name,
        final_step,
        summary["output"],
    )


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
