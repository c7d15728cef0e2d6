"""Read raw rows from a located source, each tagged with where it came from.

Row indices are 0-based per file: for JSON lines the index counts records (blank lines are not
records), and the 1-based line number is given too, so a message reads
``data/train.jsonl: row 17 (line 19): …``. A line that is not valid JSON, or not UTF-8, is a bad row
like any other.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kubetune_trainer.data.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")


@dataclass(frozen=True)
class RawRow:
    """One record as read, or the reason it could not be read."""

    origin: str
    """Display name of the file (or dataset) it came from."""
    index: int
    """0-based row index within that file."""
    line: int | None
    """1-based line number, for JSON lines."""
    value: dict[str, Any] | None
    error: str | None = None

    @property
    def where(self) -> str:
        line = f" (line {self.line})" if self.line is not None else ""
        return f"{self.origin}: row {self.index}{line}"


def data_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(DATA_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def _open_bytes(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _undecodable(err: UnicodeDecodeError) -> str:
    bad = err.object[err.start : err.start + 1].hex()
    return f"not valid UTF-8: byte 0x{bad} at column {err.start + 1} ({err.reason})"


def read_file(path: Path, origin: str) -> Iterator[RawRow]:
    """Rows of one jsonl / json / parquet file (gzip-compressed JSON too)."""
    suffix = data_suffix(path)
    try:
        if suffix in (".jsonl", ".jsonl.gz"):
            yield from _read_jsonl(path, origin)
        elif suffix in (".json", ".json.gz"):
            yield from _read_json(path, origin)
        elif suffix == ".parquet":
            yield from _read_parquet(path, origin)
        else:
            raise DataError(f"{origin}: not a jsonl, json or parquet file")
    except (OSError, EOFError) as exc:  # unreadable, or a broken gzip stream
        raise DataError(f"{origin}: cannot read: {exc}") from exc


def _read_jsonl(path: Path, origin: str) -> Iterator[RawRow]:
    index = 0
    with _open_bytes(path) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield RawRow(origin, index, number, None, _undecodable(exc))
                index += 1
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except ValueError as exc:
                yield RawRow(origin, index, number, None, f"malformed JSON: {exc}")
            else:
                if isinstance(value, dict):
                    yield RawRow(origin, index, number, value)
                else:
                    yield RawRow(origin, index, number, None, "not a JSON object")
            index += 1


def _read_json(path: Path, origin: str) -> Iterator[RawRow]:
    with _open_bytes(path) as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{origin}: line {line}: not valid UTF-8: byte 0x{bad} at byte offset {exc.start} "
            f"({exc.reason})"
        ) from None
    try:
        document = json.loads(text)
    except ValueError:
        # Many ".json" files are JSON lines.
        yield from _read_jsonl(path, origin)
        return
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise DataError(f"{origin}: expected a JSON array of objects (or JSON lines)")
    for index, value in enumerate(document):
        if isinstance(value, dict):
            yield RawRow(origin, index, None, value)
        else:
            yield RawRow(origin, index, None, None, "not a JSON object")


def _read_parquet(path: Path, origin: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{origin}: cannot read parquet: {exc}") from exc
    index = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            yield RawRow(origin, index, None, value)
            index += 1


def read_dataset(dataset: Dataset, origin: str) -> Iterator[RawRow]:
    """Rows of an in-memory or memory-mapped ``datasets.Dataset``."""
    for index, value in enumerate(dataset):
        yield RawRow(origin, index, None, dict(value))
