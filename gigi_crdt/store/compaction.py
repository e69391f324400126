"""Folding a conversation's update log into one snapshot, without losing anything.

Pure functions over update bytes, run in a worker thread away from the writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pycrdt import Doc, get_update, merge_updates

from ..model.catchup import unintegrated

# pycrdt's merge_updates is quadratic in the number of updates it is given (40k updates
# took 13 s); merging in groups of this size keeps it O(size x log(count)).
MERGE_FANOUT = 64


def merge_all(updates: Sequence[bytes]) -> bytes:
    """One update equivalent to all of ``updates``, keeping everything they hold."""
    level = list(updates)
    while len(level) > 1:
        level = [
            merge_updates(*level[i : i + MERGE_FANOUT]) if len(level[i : i + MERGE_FANOUT]) > 1 else level[i]
            for i in range(0, len(level), MERGE_FANOUT)
        ]
    return level[0] if level else b""


def build_snapshot(updates: Sequence[bytes], collect_garbage: bool) -> bytes:
    """A snapshot of committed ``updates``, losing nothing.

    Without ``collect_garbage`` it is a plain merge: linear, and cheap enough to run as
    the log grows. With it, the log is applied to a fresh document, which drops deleted
    content (a deleted message's text leaves the disk) but also drops structs still
    waiting for a missing dependency; those are added back from the merged log, so a
    later update that supplies the dependency still finds them.
    """
    merged = merge_all(updates)
    if not collect_garbage:
        return merged
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    waiting = get_update(merged, doc.get_state())
    return merge_updates(doc.get_update(), waiting)


def still_waiting(snapshot: bytes, waiting: Sequence[bytes]) -> bytes:
    """What of the updates in ``waiting`` still waits for a dependency once ``snapshot``
    is applied (``b""`` if nothing): kept beside the snapshot, marked, so a reload can
    tell the document about it."""
    if not waiting:
        return b""
    doc: Doc[Any] = Doc()
    doc.apply_update(snapshot)
    rest = unintegrated(merge_all(waiting), doc.get_state())
    return b"" if rest is None else rest.update
