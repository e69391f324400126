"""Structs that come after a gap in their client's clocks wait outside the document.

yrs integrates a struct whose clock lies past a gap (clocks of its client the document
lacks) whenever the items it hangs on are at hand, leaving a hole in its store; its state
vector stops at the hole (pycrdt 0.14; see also jpcamara/yrby#42). What a document shows
then depends on how the structs were split into updates: yrs sets aside the rest of a
client's structs in an update after the first one that must wait, so a peer that got
the structs past a gap in one update shows none of them, and a peer that got them in two
shows those of the second. Their state vectors are equal, so no sync ever repairs the
difference; and if the gap is never filled (its author lost its store), it lasts.

Yjs's own rule avoids that: a struct is integrated only after every earlier clock of its
client. ``PastGaps`` keeps it: what an update holds past a gap is cut off before yrs sees
it, held, and tried again whenever the document's clocks reach it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pycrdt import Doc, merge_updates

from .slices import NOTHING, SlicePlan, joined, section_of, sliced
from .ydecode import SKIP, clocks_of, decode_update, decode_with_offsets
from .yupdate import UpdateSummary


@dataclass(frozen=True, slots=True)
class Cut:
    """An update cut at the first gap of each client (see ``cut_at_gaps``)."""

    ready: bytes | None
    """What a document can integrate in clock order, with the whole delete set
    (``None``: nothing)."""
    held: bytes | None
    """The structs past a gap, without deletions (``None``: none)."""
    needs: dict[int, int]
    """Per client held, the clock the document must reach before its structs can go in."""


class Span(NamedTuple):
    """One client's structs in an update: the clock of the first, the clock after the last,
    and whether Skip structs leave clocks out between them."""

    first: int
    end: int
    skips: bool


def spans_of(update: bytes, summary: UpdateSummary | None = None) -> dict[int, Span]:
    """Per client, its ``Span`` in ``update``: from the ``summary`` ``check_update`` made of
    it if at hand, else decoded (``UnsafeUpdate`` if it does not decode)."""
    if summary is not None:
        return {client: Span(*writes.clocks, bool(writes.skips)) for client, writes in summary.clients.items()}
    return {
        client: Span(structs[0].clock, structs[-1].clock + structs[-1].length, any(s.kind == SKIP for s in structs))
        for client, structs in decode_update(update).clients.items()
    }


def has_gaps(spans: Mapping[int, Span], state: Mapping[int, int]) -> bool:
    """Whether an update of these ``spans`` holds structs past a gap for a document at
    clocks ``state``: a client's structs start past the document's clock, or skip clocks."""
    return any(span.skips or span.first > state.get(client, 0) for client, span in spans.items())


def cut_at_gaps(update: bytes, state: Mapping[int, int]) -> Cut:
    """``update`` cut, for a document at clocks ``state``, in what it can integrate in clock
    order and the structs past each client's first gap (a clock neither the document nor
    the update holds). ``UnsafeUpdate`` if it does not decode."""
    decoded, offsets, delete_set_at = decode_with_offsets(update)
    ready: list[bytes] = []
    held: list[bytes] = []
    needs: dict[int, int] = {}
    for client, structs in decoded.clients.items():
        frontier = state.get(client, 0)
        cut = len(structs)
        for index, struct in enumerate(structs):
            if struct.kind == SKIP or struct.clock > frontier:
                cut = index
                break
            frontier = max(frontier, struct.clock + struct.length)
        at = offsets[client]
        if cut:
            ready.append(section_of(client, structs[0].clock, cut, update[at[0] : at[cut]]))
        first = next((i for i in range(cut, len(structs)) if structs[i].kind != SKIP), None)
        if first is not None:
            clock = structs[first].clock
            held.append(section_of(client, clock, len(structs) - first, update[at[first] : at[-1]]))
            needs[client] = clock
    if not needs:
        return Cut(update, None, {})
    deletions = update[delete_set_at:]
    ready_update = joined(ready, deletions) if ready or deletions != NOTHING else None
    return Cut(ready_update, joined(held, NOTHING), needs)


Apply = Callable[[Doc[Any], bytes], None]


def _apply_plain(doc: Doc[Any], update: bytes) -> None:
    doc.apply_update(update)


class PastGaps:
    """Applies updates to ``doc`` with ``apply``, holding back the structs past a gap until
    the document's clocks reach them (see the module's docstring)."""

    def __init__(self, doc: Doc[Any], apply: Apply = _apply_plain) -> None:
        self._doc = doc
        self._apply_to = apply
        self.held: bytes | None = None
        self.needs: dict[int, int] = {}

    def _apply(self, update: bytes) -> None:
        self._apply_to(self._doc, update)

    def _clocks(self) -> dict[int, int]:
        return clocks_of(self._doc.get_state())

    def integrate(self, update: bytes, *, gappy: bool = True, slices: SlicePlan | None = None) -> None:
        """Apply ``update``; with ``gappy`` (the caller could not rule it out), cut it first;
        else in the ``slices`` planned for it, if any (see ``slices``)."""
        if gappy:
            cut = cut_at_gaps(update, self._clocks())
            if cut.held is not None:
                self._hold(cut.held, cut.needs)
            if cut.ready is not None:
                self._apply(cut.ready)
        elif slices is not None:
            for piece, sections in zip(sliced(update, slices), slices.slices, strict=True):
                self._apply(piece)
                clocks = self._clocks()
                if any(clocks.get(section.client, 0) < section.reached for section in sections):
                    # Something waits for what the document lacks: the next slices would
                    # start past a gap. The whole update skips what is in already.
                    self._apply(update)
                    break
        else:
            self._apply(update)
        self._retry()

    def _hold(self, held: bytes, needs: Mapping[int, int]) -> None:
        self.held = held if self.held is None else merge_updates(self.held, held)
        for client, clock in needs.items():
            self.needs[client] = min(self.needs.get(client, clock), clock)

    def _retry(self) -> None:
        """Apply what the document's clocks now reach, as long as they reach more."""
        while self.held is not None:
            clocks = self._clocks()
            if not any(clocks.get(client, 0) >= clock for client, clock in self.needs.items()):
                return
            cut = cut_at_gaps(self.held, clocks)
            self.held, self.needs = cut.held, cut.needs
            if cut.ready is None:
                return
            self._apply(cut.ready)


class Logged(NamedTuple):
    """One stored update, and whether it left structs waiting when it came: only such an
    update can hold structs past a gap in the document it goes into (see ``load_document``).
    A large one that did not may come with the plan to apply it in slices."""

    update: bytes
    waiting: bool
    slices: SlicePlan | None = None
    taken_in_slices: bool = False
    """It came from a peer and was applied in ``slices``, in which yrs may take what it
    refuses whole (an item whose parent names an item that is no type, which another
    struct of the update overwrites): its bytes are never merged with others'."""


def load_document(
    log: Iterable[Logged], apply: Apply = _apply_plain, client_id: int | None = None
) -> tuple[Doc[Any], PastGaps]:
    """A new document holding a stored ``log`` (``apply`` applies one update), and what it
    holds back. The log is in the order its updates were applied: an update that left
    nothing waiting integrated whole then, and does again now, so only the others are cut.
    ``client_id``: the Yjs client id it writes under (default: a new one)."""
    doc: Doc[Any] = Doc() if client_id is None else Doc(client_id=client_id)
    past_gaps = PastGaps(doc, apply)
    for logged in log:
        past_gaps.integrate(logged.update, gappy=logged.waiting, slices=logged.slices)
    return doc, past_gaps
