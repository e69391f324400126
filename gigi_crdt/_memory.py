"""Handing back to the system the memory that large, short-lived work freed.

Compaction rebuilds a whole document in a worker thread to collect its garbage, then
drops it: tens of MiB for a few thousand signed messages. glibc's malloc keeps what a
thread freed in that thread's arena, where the event loop's thread never reuses it, so a
node's resident memory kept the peak of every compaction: two replicas exchanging 8,000
signed messages in one process grew by 134 MiB, against 67-83 MiB with the arenas
trimmed after each compaction (the documents themselves: about 3 KB a message each).
``malloc_trim`` returns the free pages of every arena. Where there is none (musl,
macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc's, among the process's own symbols
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Give the free pages of malloc's arenas back to the system (blocking: a few ms on a
    large heap; ctypes lets other threads run meanwhile)."""
    if _TRIM is not None:
        _TRIM(0)
