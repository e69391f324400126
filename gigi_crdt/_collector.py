"""Pausing CPython's cyclic garbage collector while a large update is read and merged.

A catch-up of 10^5 messages builds about a million long-lived objects (decoded structs,
entries, ops, messages). CPython runs a full collection each time the objects that
survived grew by a quarter: ten of them during one such merge, each walking the whole
heap, a seventh of the merge's time (4.6-4.7 s with the collector, 3.9-4.0 s without,
measured on a 10^5-message signed conversation) and stalls of up to 0.1 s for every
thread. Reference counting frees all that is not in a cycle meanwhile; the collector
catches up once, when the last pause ends.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_lock = threading.Lock()
_pauses = 0  # pauses under way, in any thread
_was_enabled = False  # whether the collector ran before the first of them


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection until the block (and any other pause) ends. The
    collector is turned back on only if it was on when the first pause began."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()


def run_with_collector_paused(function: Callable[[*Ts], T], *args: *Ts) -> T:
    """``function(*args)`` inside ``collector_paused`` (to hand to a worker thread)."""
    with collector_paused():
        return function(*args)
