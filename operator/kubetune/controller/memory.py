"""The operator's resident memory under bursts: glibc's malloc gives each thread that allocates
an arena of its own (up to eight per core) and keeps what is freed in them. The operator's
worker threads each decode JSON answers, so after a burst every arena holds freed pages the
process never uses again: RSS grows with the burst, not with the jobs that exist. Two arenas
serve the workers without contention worth measuring (they wait on the API server), and a trim
after each resync hands freed pages back.

Both are glibc calls (mallopt, malloc_trim); elsewhere (musl, macOS) they do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("kubetune.operator")

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def limit_arenas(arenas: int = ARENAS) -> bool:
    """At most ``arenas`` malloc arenas for the threads started after this call."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, arenas))


def trim() -> None:
    """Hand the pages malloc holds free back to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
