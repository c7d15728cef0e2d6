"""Errors of the data stage."""

from __future__ import annotations

from kubetune_trainer.errors import UserError
from kubetune_trainer.exit_codes import EXIT_BAD_DATA

SKIP_HINT = "fix the row, or set spec.data.badRows: skip to drop bad rows (they are counted)"


class DataError(UserError):
    """Training data that cannot be used: a bad row under ``badRows: fail`` (the message names
    the source file and row index, e.g. ``data/train.jsonl: row 17 (line 18): messages[2]:
    assistant turn is empty``), or a source that cannot be read at all. Exit 65: final."""

    exit_code = EXIT_BAD_DATA


class BadRow(Exception):
    """One row that does not fit its format; the message names the field (``messages[2]: …``).
    The reader adds where the row came from."""
