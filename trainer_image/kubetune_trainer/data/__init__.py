"""Training data: read a DataSpec's sources, check every row, mix them, split off eval rows.

One entry point::

    loaded = load_data(recipe.data, kind="sft")          # or "preference", "prompt"
    loaded.train, loaded.eval, loaded.skipped_rows

Rows come out in TRL's formats (see :mod:`kubetune_trainer.data.formats`), mixed and split as
:mod:`kubetune_trainer.data.mixture` describes. A bad row either stops loading with a
:class:`DataError` naming its file and row index (``badRows: fail``) or is dropped and counted
(``badRows: skip``). ``evalSources`` are read the same way and concatenated in order (each
capped by its own maxSamples; no weights, repeats or shuffling).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer.data.errors import SKIP_HINT, BadRow, DataError
from kubetune_trainer.data.formats import (
    Kind,
    check_supported,
    normalize,
    number,
    score_column,
    shape,
)
from kubetune_trainer.data.mixture import hold_out, mix
from kubetune_trainer.data.readers import RawRow, read_dataset, read_file
from kubetune_trainer.data.sources import locate, native_format
from kubetune_trainer.plan import DataSource, DataSpec

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

MAX_REPORTED = 20
Row = dict[str, Any]

__all__ = ["DataError", "Kind", "LoadedData", "SourceRows", "load_data", "read_source"]


@dataclass
class SourceRows:
    """The valid rows of one source, and what was skipped."""

    uri: str
    rows: list[Row]
    skipped: int = 0
    bad_rows: list[str] = field(default_factory=list)
    """The first few bad-row messages (all of them are counted in ``skipped``)."""


@dataclass
class LoadedData:
    """What the recipes train and evaluate on."""

    train: Dataset
    eval: Dataset | None
    """None when there are no evalSources and evalRatio is 0."""
    skipped_rows: int
    """Bad rows dropped under ``badRows: skip`` (train and eval sources together)."""
    skipped_by_source: dict[str, int] = field(default_factory=dict)
    bad_rows: list[str] = field(default_factory=list)
    """The first few bad-row messages, for the log."""
    mixture: dict[str, int] = field(default_factory=dict)
    """Training rows taken from each source (a source listed twice appears as ``uri#2``)."""
    generated: Path | None = None
    """A dataset generated for the training rows (self-critique's steps), saved with the
    model."""


def _raw_rows(source: DataSource) -> Iterator[RawRow]:
    located = locate(source)
    if located.dataset is not None:
        yield from read_dataset(located.dataset, located.dataset_origin)
    for path, origin in located.files:
        yield from read_file(path, origin)


def read_source(
    source: DataSource,
    kind: Kind,
    *,
    bad_rows: str = "fail",
    extra_columns: Sequence[str] = (),
    numeric_columns: Sequence[str] = (),
    require_score: bool = False,
) -> SourceRows:
    """Every valid row of ``source`` as ``kind`` rows, up to its maxSamples; ``extra_columns``
    are copied from the raw row as they are and ``numeric_columns`` as numbers (a row without
    one is bad); with ``require_score`` a row without a score is bad."""
    fmt = native_format(source)
    check_supported(fmt, kind, source.uri)
    result = SourceRows(uri=source.uri, rows=[])
    for raw in _raw_rows(source):
        if source.max_samples is not None and len(result.rows) >= source.max_samples:
            break
        try:
            if raw.error is not None:
                raise BadRow(raw.error)
            assert raw.value is not None
            row = normalize(raw.value, fmt, kind, source.columns)
            for column in (*extra_columns, *numeric_columns):
                if raw.value.get(column) is None:
                    raise BadRow(f"missing field '{column}'")
                row[column] = raw.value[column]
            for column in numeric_columns:
                row[column] = number(row[column], column)
            if require_score and "score" not in row:
                raise BadRow(f"missing field '{score_column(fmt, source.columns)}'")
            result.rows.append(row)
        except BadRow as exc:
            message = f"{raw.where}: {exc}"
            if bad_rows == "fail":
                raise DataError(message, hint=SKIP_HINT) from None
            result.skipped += 1
            if len(result.bad_rows) < MAX_REPORTED:
                result.bad_rows.append(message)
    if result.skipped:
        log.warning(
            "event=bad_rows_skipped source=%s skipped=%d kept=%d first=%r",
            source.uri,
            result.skipped,
            len(result.rows),
            result.bad_rows[0],
        )
    if not result.rows and result.skipped:
        raise DataError(
            f"{source.uri}: no usable rows: all {result.skipped} were bad, the first "
            f"{result.bad_rows[0]}"
        )
    if not result.rows:
        raise DataError(f"{source.uri}: no rows (the data is empty)")
    log.info(
        "event=data_source_read source=%s format=%s rows=%d", source.uri, fmt, len(result.rows)
    )
    return result


def _unify(groups: list[list[Row]], kind: Kind) -> list[list[Row]]:
    """Make every source's rows one TRL shape: sft mixes of messages and prompt-completion become
    messages; text cannot be mixed with conversations."""
    shapes = {shape(rows[0]) for rows in groups if rows}
    if len(shapes) <= 1:
        return groups
    if kind == "sft" and shapes == {"messages", "prompt-completion"}:
        merged = []
        for rows in groups:
            merged.append([_as_messages(r) if "completion" in r else r for r in rows])
        return merged
    raise DataError(f"cannot mix sources of row shapes {', '.join(sorted(shapes))}")


def _as_messages(row: Row) -> Row:
    rest = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
    return {"messages": row["prompt"] + row["completion"], **rest}


def _to_dataset(rows: list[Row]) -> Dataset:
    from datasets import Dataset

    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    return Dataset.from_list([{c: row.get(c) for c in columns} for row in rows])


def _keys(sources: list[DataSource]) -> list[str]:
    keys: list[str] = []
    for source in sources:
        key, n = source.uri, 1
        while key in keys:
            n += 1
            key = f"{source.uri}#{n}"
        keys.append(key)
    return keys


def load_data(
    spec: DataSpec,
    *,
    kind: Kind,
    extra_columns: Sequence[str] = (),
    numeric_columns: Sequence[str] = (),
    require_score: bool = False,
) -> LoadedData:
    """Train and eval datasets for ``kind`` (sft, preference or prompt) from ``spec``, with
    ``extra_columns`` of the raw rows kept as they are (e.g. a reward margin) and
    ``numeric_columns`` as numbers (e.g. a curriculum's difficulty); ``require_score`` makes a
    row without a score bad (score-conditioned SFT)."""
    train_keys = _keys(spec.sources)
    options: dict[str, Any] = {
        "bad_rows": spec.bad_rows,
        "extra_columns": extra_columns,
        "numeric_columns": numeric_columns,
        "require_score": require_score,
    }
    read = [read_source(s, kind, **options) for s in spec.sources]
    pools: list[list[Row]] = []
    held: list[list[Row]] = []
    for index, source_rows in enumerate(read):
        ratio = 0.0 if spec.eval_sources else spec.eval_ratio
        train_rows, eval_rows = hold_out(source_rows.rows, ratio, spec.seed, index)
        pools.append(train_rows)
        held.append(eval_rows)
    eval_keys = _keys(spec.eval_sources)
    eval_read = [read_source(s, kind, **options) for s in spec.eval_sources]
    if eval_read:
        held = [r.rows for r in eval_read]
    groups = _unify(pools + held, kind)
    pools, held = groups[: len(pools)], groups[len(pools) :]
    mixed, counts = mix(pools, [s.weight for s in spec.sources], spec.seed, spec.max_samples)
    eval_rows = [row for rows in held for row in rows]

    skipped_by_source: dict[str, int] = {}
    bad: list[str] = []
    for key, r in zip(train_keys + eval_keys, read + eval_read, strict=True):
        if r.skipped:
            skipped_by_source[key] = r.skipped
            bad.extend(r.bad_rows)
    loaded = LoadedData(
        train=_to_dataset(mixed),
        eval=_to_dataset(eval_rows) if eval_rows else None,
        skipped_rows=sum(skipped_by_source.values()),
        skipped_by_source=skipped_by_source,
        bad_rows=bad[:MAX_REPORTED],
        mixture=dict(zip(train_keys, counts, strict=True)),
    )
    log.info(
        "event=data_loaded kind=%s train=%d eval=%d skipped_rows=%d mixture=%s",
        kind,
        len(loaded.train),
        len(loaded.eval) if loaded.eval is not None else 0,
        loaded.skipped_rows,
        ",".join(f"{k}:{v}" for k, v in loaded.mixture.items()),
    )
    return loaded
