"""What a conversation's catch-ups add to a state-vector diff, or send instead of one.

Two things no state vector tells:

* **What waits.** yrs keeps structs whose dependencies it lacks, and deletions of items
  it lacks, until those come (and a conversation holds back structs past a gap in their
  client's clocks: see ``gaps``); no state vector counts them, so no diff carries them.
  ``unintegrated`` finds them in an update, and a conversation adds them to every
  catch-up until they are integrated (``Pending``).
* **Which deletions a peer lacks.** A diff from yrs carries the document's whole delete
  set, and every write overwrites something (in a signed conversation its author's head;
  in any, a receipt): 4 bytes per past write, 384 KB after 10^5 messages. So a peer
  whose state vector covers the ``RecentUpdates`` base gets the recent updates it lacks
  instead, each with its own deletions only. That is enough because every way a
  conversation passes structs on carries the deletions made with them: the update that
  wrote them, a diff (whole delete set), or a pending remainder (deletions that wait).
  So a peer holding a write's structs holds, or waits to apply, its deletions; peers
  keep those that wait and pass them on like the rest. Retention deletes without
  writing, but every member expires its own copy.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pycrdt import get_update, merge_updates

from .ydecode import SKIP, DecodedUpdate, UnsafeUpdate, clocks_of, decode_update

log = logging.getLogger(__name__)

RECENT_BYTES = 64 * 1024  # recent updates kept per loaded conversation (``RecentUpdates``): 300-odd messages
RECENT_UPDATE_BYTES = 4096  # a larger update (most likely a catch-up with a whole delete set) starts them again


def covers(theirs: Mapping[int, int], ours: Mapping[int, int]) -> bool:
    """True if the clocks ``theirs`` count every struct ``ours`` count."""
    return all(theirs.get(client, 0) >= clock for client, clock in ours.items())


Runs = dict[tuple[bool, int], list[tuple[int, int]]]
"""(deletions?, client) -> sorted, disjoint (start, end) clock runs."""


@dataclass(frozen=True, slots=True)
class Pending:
    """What of an update waits: its structs past a state vector, with its whole delete set."""

    update: bytes
    needs: dict[int, int]
    """Per client, the clock a state vector must reach before all of it is integrated."""
    runs: Runs = field(default_factory=dict)
    """The clocks of what waits: its structs, and its deletions past the state vector."""

    def holds(self, other: Pending) -> bool:
        """True if everything that waits in ``other`` waits here too: an update bringing
        only that brings nothing new (catch-ups carry what waits, round after round)."""
        return all(
            any(start <= low and high <= end for start, end in self.runs.get(key, ()))
            for key, runs in other.runs.items()
            for low, high in runs
        )


def unintegrated(update: bytes, state_vector: bytes) -> Pending | None:
    """What of ``update`` a document at ``state_vector`` has not integrated (structs past
    it, deletions of items past it), or ``None`` if nothing."""
    rest = get_update(update, state_vector)
    decoded = _decoded(rest)
    have = clocks_of(state_vector)
    needs = _ends(decoded)
    for client, end in deletions_past(decoded.delete_set, have).items():
        needs[client] = max(needs.get(client, 0), end)
    if not needs:
        return None
    runs: Runs = {}
    for client, structs in decoded.clients.items():
        spans = [(s.clock, s.clock + s.length) for s in structs if s.kind != SKIP]
        runs[(False, client)] = _union([], spans)
    for client, ranges in decoded.delete_set.items():
        past = [(clock, clock + length) for clock, length in ranges if clock + length > have.get(client, 0)]
        if past:
            runs[(True, client)] = _union([], past)
    return Pending(rest, needs, runs)


def _union(first: Sequence[tuple[int, int]], second: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Two sets of clock runs as one: sorted, touching or overlapping runs joined."""
    joined: list[tuple[int, int]] = []
    for start, end in sorted([*first, *second]):
        if joined and start <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], end))
        else:
            joined.append((start, end))
    return joined


def deletions_past(deletes: Mapping[int, Sequence[tuple[int, int]]], have: Mapping[int, int]) -> dict[int, int]:
    """Per client, the end of the deletions that reach past clock ``have`` of it: yrs keeps
    a deletion of items it does not hold waiting (and puts none of it in a diff)."""
    ends = {client: max(clock + length for clock, length in ranges) for client, ranges in deletes.items() if ranges}
    return {client: end for client, end in ends.items() if end > have.get(client, 0)}


def _ends(decoded: DecodedUpdate) -> dict[int, int]:
    return {client: structs[-1].clock + structs[-1].length for client, structs in decoded.clients.items()}


def _decoded(update: bytes) -> DecodedUpdate:
    try:
        return decode_update(update)
    except UnsafeUpdate as exc:  # yrs wrote it, or we checked it before: not expected
        log.warning("cannot read an update of our own (%s): counted as integrated", exc)
        return DecodedUpdate()


def merge_pending(first: Pending | None, second: Pending | None) -> Pending | None:
    """Both remainders as one."""
    if first is None or second is None:
        return first or second
    needs = dict(first.needs)
    for client, clock in second.needs.items():
        needs[client] = max(needs.get(client, 0), clock)
    runs = dict(first.runs)
    for key, spans in second.runs.items():
        runs[key] = _union(runs.get(key, []), spans)
    return Pending(merge_updates(first.update, second.update), needs, runs)


class RecentUpdates:
    """The updates a document applied or wrote since its state was ``base``, in at most
    ``RECENT_BYTES``; past that, or on a larger update, they start again from the
    document's state then."""

    def __init__(self, state_vector: bytes) -> None:
        self._base = clocks_of(state_vector)
        self._updates: list[bytes] = []
        # Per client, (struct end, index in ``_updates``) of the updates with its structs,
        # sorted: what a peer lacks is found without looking at every update.
        self._ends: dict[int, list[tuple[int, int]]] = {}
        self._bytes = 0

    def add(self, update: bytes, ends: Mapping[int, int], state_vector: bytes, pending: Pending | None) -> None:
        """Keep ``update`` (``ends``: per client, the clock after its last struct; pycrdt's
        ``get_state`` of an update names only clients whose structs start at clock 0),
        applied or written by a document now at ``state_vector``; ``pending`` is what the
        document holds unintegrated:
        carried over a new start, as the base does not count it, yet once integrated a peer
        covering the base may lack it.

        An update without structs is not kept: no peer needs its deletions from us (see the
        module's docstring: they are expiry's, or deletions that wait for their item, which
        whoever lacks the item keeps and passes on in turn)."""
        if not ends:
            return
        self._bytes += len(update)
        if self._bytes <= RECENT_BYTES and len(update) <= RECENT_UPDATE_BYTES:
            self._keep(update, ends)
            return
        self._base = clocks_of(state_vector)
        self._updates, self._ends, self._bytes = [], {}, 0
        if pending is not None:
            self._keep(pending.update, pending.needs)
            self._bytes = len(pending.update)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes

    def _keep(self, update: bytes, ends: Mapping[int, int]) -> None:
        for client, end in ends.items():
            bisect.insort(self._ends.setdefault(client, []), (end, len(self._updates)))
        self._updates.append(update)

    def lacked_by(self, theirs: Mapping[int, int], state_vector: bytes) -> bytes | None:
        """What a peer at ``state_vector`` (``theirs``, decoded) lacks of the recent
        updates, each with its own deletions: ``b""`` if nothing, ``None`` if it does not
        cover the base (it may then lack what came before)."""
        if not covers(theirs, self._base):
            return None
        lacked: set[int] = set()
        for client, ends in self._ends.items():
            have = theirs.get(client, 0)
            if ends[-1][0] > have:
                lacked.update(index for _, index in ends[bisect.bisect_right(ends, (have, len(self._updates))) :])
        if not lacked:
            return b""
        updates = [self._updates[index] for index in sorted(lacked)]
        return get_update(merge_updates(*updates) if len(updates) > 1 else updates[0], state_vector)


class CatchUps:
    """What one document answers a peer's state vector with, and what of it waits."""

    def __init__(self, state_vector: bytes) -> None:
        self.recent = RecentUpdates(state_vector)
        """What ``answer`` serves peers that were here lately from."""
        self.waiting: Pending | None = None
        """Structs and deletions that wait for a dependency."""

    def add(self, update: bytes, ends: Mapping[int, int], state_vector: bytes) -> None:
        """Keep an update the document applied or wrote (see ``RecentUpdates.add``)."""
        self.recent.add(update, ends, state_vector, self.waiting)

    def note_waiting(self, update: bytes, state_vector: bytes) -> bool:
        """Keep what ``update`` left waiting in a document now at ``state_vector``; True if
        any of it was not waiting already (see ``Conversation.note_waiting``)."""
        rest = unintegrated(update, state_vector)
        if rest is None or (self.waiting is not None and self.waiting.holds(rest)):
            return False
        self.waiting = merge_pending(self.waiting, rest)
        self.recent.add(rest.update, rest.needs, state_vector, self.waiting)
        return True

    def waits(self, state_vector: bytes) -> bool:
        """Whether anything waits still in a document now at ``state_vector``."""
        if self.waiting is not None:
            self._forget_integrated(clocks_of(state_vector))
        return self.waiting is not None

    def answer(self, theirs: bytes | None, state_vector: bytes, diff: Callable[[bytes | None], bytes]) -> bytes | None:
        """What a peer at ``theirs`` lacks of a document at ``state_vector`` whose
        ``diff`` against a state vector is at hand, or ``None`` for nothing (see
        ``Conversation.catch_up``)."""
        ours = clocks_of(state_vector)
        self._forget_integrated(ours)
        parts = [self._lacked(theirs, ours, diff), b"" if self.waiting is None else self.waiting.update]
        parts = [part for part in parts if part]
        return merge_updates(*parts) if len(parts) > 1 else parts[0] if parts else None

    def _forget_integrated(self, ours: Mapping[int, int]) -> None:
        if self.waiting is not None and covers(ours, self.waiting.needs):
            self.waiting = None  # all integrated

    def _lacked(self, theirs: bytes | None, ours: Mapping[int, int], diff: Callable[[bytes | None], bytes]) -> bytes:
        """What a peer at ``theirs`` lacks of what our clocks ``ours`` count (``b""``: nothing)."""
        if theirs is None:
            return diff(None)
        their_clocks = clocks_of(theirs)
        if covers(their_clocks, ours):
            return b""
        recent = self.recent.lacked_by(their_clocks, theirs)
        return diff(theirs) if recent is None else recent
