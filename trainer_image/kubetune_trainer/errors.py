"""Expected failures and how a command line shows them: one line, a hint, a documented exit code.

Code that meets a failure the user can act on (bad data, a model that cannot be found, a plan
this trainer cannot run) raises a :class:`UserError` carrying its exit code and, where one
helps, a hint. Each command's ``main()`` catches it in one place and calls :func:`report`::

    error: data/train.jsonl: row 4 (line 5): malformed JSON: ... (exit 65: bad data)
    hint: fix the row, or set spec.data.badRows: skip to drop bad rows

The traceback is printed only in debug mode (``--debug`` or ``KUBETUNE_LOG_LEVEL=DEBUG``).
Anything else that escapes a command is a bug: :func:`report` prints its traceback and exits 1.
In a pod, the error line is also the container's termination message, which the operator puts
into the job's condition.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

from kubetune_trainer.exit_codes import EXIT_FAILED, exit_meaning

TERMINATION_LOG_ENV = "KUBETUNE_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
TERMINATION_MESSAGE_LIMIT = 4000
"""The kubelet keeps at most 4096 bytes of a termination message."""


class UserError(Exception):
    """A failure the user can act on: shown as one line (and a hint), never a traceback."""

    exit_code: int = EXIT_FAILED
    """The process exit code (see exit_codes); subclasses set their own."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps hint and exit code when the error crosses a process (Ray workers pickle it).
        return (type(self), (self.message,), {"hint": self.hint, "exit_code": self.exit_code})


def debug_mode(flag: bool = False) -> bool:
    """Whether tracebacks are shown: ``--debug``, or ``KUBETUNE_LOG_LEVEL=DEBUG``."""
    return flag or os.environ.get("KUBETUNE_LOG_LEVEL", "").strip().upper() == "DEBUG"


def error_line(message: str, exit_code: int) -> str:
    """``error: MESSAGE (exit N: meaning)`` on one line (newlines in MESSAGE are folded)."""
    text = " ".join(message.split()) or "unknown error"
    return f"error: {text} (exit {exit_code}: {exit_meaning(exit_code)})"


def report(err: BaseException, *, debug: bool = False, stream: TextIO | None = None) -> int:
    """Show a failure that ended a command and return the exit code to leave with.

    A :class:`UserError` is one ``error:`` line, then its ``hint:`` (the traceback first in
    debug mode). Anything else is a bug: its traceback, then the ``error:`` line."""
    out = stream or sys.stderr
    if isinstance(err, UserError):
        if debug:
            traceback.print_exception(err, file=out)
        line = error_line(err.message, err.exit_code)
        print(line, file=out)
        if err.hint:
            print(f"hint: {err.hint}", file=out)
        write_termination_message(line)
        return err.exit_code
    traceback.print_exception(err, file=out)
    line = error_line(f"unexpected {type(err).__name__}: {err}", EXIT_FAILED)
    print(line, file=out)
    write_termination_message(line)
    return EXIT_FAILED


def write_termination_message(message: str) -> None:
    """The pod's termination message (the operator reads it into the job's condition). Written
    to ``$KUBETUNE_TERMINATION_LOG``, else to /dev/termination-log when it exists (the kubelet
    creates it in a pod); nowhere on a workstation."""
    configured = os.environ.get(TERMINATION_LOG_ENV)
    path = Path(configured) if configured else DEFAULT_TERMINATION_LOG
    if not configured and not path.exists():
        return
    try:
        path.write_text(message[:TERMINATION_MESSAGE_LIMIT])
    except OSError as err:
        print(f"warning: cannot write the termination message to {path}: {err}", file=sys.stderr)


__all__ = ["UserError", "debug_mode", "error_line", "report", "write_termination_message"]
