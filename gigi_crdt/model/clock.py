"""A hybrid logical clock: wall time that never runs backwards and follows what it has seen.

A timestamp is one integer, ``milliseconds * 1000 + counter``: it stays below 2**53 until the
year 2255, so JavaScript Yjs peers read it exactly. Sorting by ``(timestamp, message id)``
gives every peer the same display order, and a reply always sorts after what its author
had seen when writing it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

TICKS_PER_MS = 1000
# A peer whose clock is this far ahead is not allowed to drag ours along with it.
MAX_FUTURE_MS = 24 * 60 * 60 * 1000


def wall_ms(timestamp: int) -> int:
    """The wall-clock milliseconds of a hybrid timestamp."""
    return timestamp // TICKS_PER_MS


class HybridClock:
    """Issues strictly increasing timestamps close to the wall clock.

    Thread-safe: a replica merges large remote updates in worker threads, which observe
    the timestamps they carry while the event loop ticks for local writes.
    """

    def __init__(self, now_ms: Callable[[], int]) -> None:
        self._now_ms = now_ms
        self._last = 0
        self._lock = threading.Lock()

    def tick(self) -> int:
        """A new timestamp, greater than every one issued or observed so far."""
        with self._lock:
            self._last = max(self._last + 1, self._now_ms() * TICKS_PER_MS)
            return self._last

    def now(self) -> int:
        """The current wall time as a timestamp, without issuing one."""
        return self._now_ms() * TICKS_PER_MS

    def observe(self, timestamp: int) -> None:
        """Move past a timestamp seen on a remote message, unless it is implausibly ahead."""
        if wall_ms(timestamp) <= self._now_ms() + MAX_FUTURE_MS:
            with self._lock:
                self._last = max(self._last, timestamp)
