"""Row difficulties for a curriculum (spec.training.curriculum.difficulty), lower is easier:

- ``column``: the row's number in that column (negated with ``higherIsEasier``);
- ``length``: the row's tokens as SFT sees them (chat template applied, cut to maxLength);
- ``referenceLoss``: the reference model's mean loss per trained token of the row
  (:func:`kubetune_trainer.evaluation.measures.example_losses`). It is computed once and
  cached in the run directory, keyed by the model, the rows and maxLength, so a resumed
  attempt reads it instead of loading the reference model again. A row left with no trained
  token after truncation counts as the hardest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubetune_trainer.evaluation.measures import example_losses, loss_tokens
from kubetune_trainer.plan import CurriculumSpec, ModelSpec

log = logging.getLogger("kubetune.trainer")

Row = dict[str, Any]


def column_difficulties(rows: Sequence[Row], column: str, higher_is_easier: bool) -> list[float]:
    sign = -1.0 if higher_is_easier else 1.0
    return [sign * float(row[column]) for row in rows]


def length_difficulties(rows: Sequence[Row], tokenizer: Any, max_length: int) -> list[float]:
    return [float(len(loss_tokens(tokenizer, row, max_length)[0])) for row in rows]


def cache_key(model: ModelSpec, rows: Sequence[Row], max_length: int) -> str:
    """What a cached reference loss depends on: the model, the rows and the length cut."""
    digest = hashlib.sha256()
    digest.update(model.model_dump_json(by_alias=True, exclude_none=True).encode())
    digest.update(str(max_length).encode())
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(temporary, path)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _compute(
    model_spec: ModelSpec, rows: Sequence[Row], max_length: int, path: Path, device: str
) -> None:
    from kubetune_trainer.models import load_model_and_tokenizer

    log.info("event=reference_loss_start model=%s rows=%d", model_spec.source, len(rows))
    model, tokenizer = load_model_and_tokenizer(model_spec)
    losses = example_losses(model.to(device), tokenizer, rows, max_length=max_length)
    record = {"model": model_spec.source, "rows": len(rows), "losses": losses}
    _write_atomically(path, json.dumps(record))
    log.info("event=reference_loss_cached path=%s rows=%d", path, len(rows))


def reference_losses(
    model_spec: ModelSpec,
    rows: Sequence[Row],
    *,
    max_length: int,
    cache_dir: Path,
    is_main: bool,
    device: str = "cpu",
) -> list[float]:
    """The reference model's loss per row, from the cache or computed (by the main rank, the
    others waiting) and cached."""
    path = cache_dir / f"reference-loss-{cache_key(model_spec, rows, max_length)}.json"
    if is_main and not path.is_file():
        _compute(model_spec, rows, max_length, path, device)
    _barrier()
    if not path.is_file():  # the main rank's cache is on another node's disk
        _compute(model_spec, rows, max_length, path, device)
    losses = json.loads(path.read_text())["losses"]
    hardest = max((x for x in losses if x is not None), default=0.0) + 1.0
    return [hardest if x is None else float(x) for x in losses]


def difficulties(
    spec: CurriculumSpec,
    rows: Sequence[Row],
    *,
    tokenizer: Any,
    max_length: int,
    starting_model: ModelSpec,
    cache_dir: Path,
    is_main: bool,
    device: str = "cpu",
) -> list[float]:
    """Each row's difficulty under ``spec`` (lower is easier)."""
    if spec.difficulty == "column":
        assert spec.column is not None  # CurriculumSpec validation
        return column_difficulties(rows, spec.column, spec.higher_is_easier)
    if spec.difficulty == "length":
        return length_difficulties(rows, tokenizer, max_length)
    return reference_losses(
        spec.reference_model or starting_model,
        rows,
        max_length=max_length,
        cache_dir=cache_dir,
        is_main=is_main,
        device=device,
    )
