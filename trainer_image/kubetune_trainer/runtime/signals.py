"""Stop requests by signal: SIGTERM (eviction, preemption, node drain) or a first SIGINT (Ctrl-C)
asks the run to save a checkpoint at the next step boundary and stop; a second SIGINT stops at
once (KeyboardInterrupt). The runtime polls :meth:`StopSignals.requested` at every step (single
process) or passes the request on to the Ray workers (``on_request``)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger("kubetune.trainer")


class StopSignals:
    """Installs the handlers while in a ``with`` block (main thread only) and restores the
    previous ones after it."""

    def __init__(self, on_request: Callable[[], None] | None = None) -> None:
        self.on_request = on_request
        self._requested = False
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self._requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._requested and signum == signal.SIGINT:
            log.warning("event=interrupted_again action=stop-now")
            raise KeyboardInterrupt
        if self._requested:
            return
        self._requested = True
        name = signal.Signals(signum).name
        log.warning("event=%s action=save-and-stop", name.lower())
        if self.on_request is not None:
            self.on_request()

    def install(self) -> None:
        """(Re)install the handlers: after a library installed its own (ray.init does)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
