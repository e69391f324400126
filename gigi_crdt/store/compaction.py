"""Folding a conversation's update log into one snapshot, without losing anything.

Pure functions over update bytes, run in a worker thread away from the writer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pycrdt import Doc, merge_updates

from ..model.catchup import unintegrated
from ..model.gaps import Logged, load_document
from ..model.slices import SLICE_BYTES, SlicePlan
from ..model.yupdate import UnsafeUpdate, check_update

log = logging.getLogger(__name__)

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


def build_snapshot(log: Sequence[Logged], collect_garbage: bool) -> bytes:
    """A snapshot of a committed ``log``, losing nothing but deleted content, and holding
    no struct past a gap (so that it loads whole, as an update that left nothing waiting).

    Without ``collect_garbage``, and if no update of the log left structs waiting or was
    taken in slices (``Logged.taken_in_slices``: merged, its bytes could make a snapshot
    no load applies), it is a plain merge: linear, and cheap enough to run as the log
    grows. Else the log is applied to a fresh document (as a load applies it), which
    drops deleted content (a deleted message's text leaves the disk) and holds back or
    sets aside structs that wait; ``still_waiting`` keeps those.
    """
    if not collect_garbage and not any(logged.waiting or logged.taken_in_slices for logged in log):
        return merge_all([logged.update for logged in log])
    doc, _ = load_document(log)
    return doc.get_update()


def is_snapshot(log: Sequence[Logged], collect_garbage: bool) -> bool:
    """Whether ``log`` already is what compaction would make of it: a lone update (say, a
    catch-up that arrived whole), with no garbage to collect."""
    return len(log) == 1 and not collect_garbage


def whole_update(log: Sequence[Logged], collect_garbage: bool) -> bytes:
    """Everything a committed ``log`` holds, as one update for a peer that holds nothing:
    what a snapshot would keep (deleted content collected if deletions left some, so that
    a deleted message's text never reaches a new member) and what still waits beside it."""
    if is_snapshot(log, collect_garbage):
        return log[0].update
    snapshot, rest = snapshot_and_rest(log, collect_garbage)
    return merge_updates(snapshot, rest) if rest else snapshot


def snapshot_and_rest(log: Sequence[Logged], collect_garbage: bool) -> tuple[bytes, bytes]:
    """``build_snapshot`` of a committed ``log``, and what of its updates that left structs
    waiting still waits once the snapshot is applied (``still_waiting``)."""
    snapshot = build_snapshot(log, collect_garbage)
    return snapshot, still_waiting(snapshot, [logged.update for logged in log if logged.waiting])


def slice_plan(update: bytes, size: int = SLICE_BYTES) -> SlicePlan | None:
    """How to apply an update of ours in slices of about ``size`` bytes (``model.slices``),
    if it is larger: a snapshot, planned once after compaction so that loads do not decode
    it again (0.8 s of Python for 10^5 messages), or a step 2 too large for one frame.
    ``None`` too if it fails the schema check: it is then applied (or sent) whole."""
    try:
        return check_update(update, slice_bytes=size).slices
    except UnsafeUpdate as exc:
        log.warning("an update of %d bytes fails the schema check, so it has no slice plan: %s", len(update), exc)
        return None


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
