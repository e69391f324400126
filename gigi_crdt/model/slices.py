"""Cut a large update into slices that pycrdt applies one after another.

pycrdt's ``apply_update`` holds the interpreter for its whole run: 0.2-0.5 s for a
10^5-message catch-up (16 MB). A worker thread applying it so stalls the event loop, and
every other peer, that long. Applied in slices of about ``SLICE_BYTES`` (about 20 ms
each), the loop gets the interpreter back between two slices. yrs takes the slices no
slower than the whole (measured: 0.18 s against 0.21 s).

Slices follow the update's dependencies: an item's origin, right origin and parent id,
when they are in the update, come in an earlier slice or the same one. yrs then never
sets a struct aside for a later slice (it would retry it, silently, at every slice after),
and the slices integrate what the whole update would, in the same way, with one
exception found by fuzzing: yrs refuses, whole, an item whose parent names an item of
the document that is no type, even where another struct of the update overwrites that
item; in slices, if the overwrite comes first, the parent is deleted by then, which yrs
allows. So an update taken in slices is loaded again in the same slices, and never
merged with others as bytes (``gaps.Logged.taken_in_slices``). What an item hangs on
outside the update, the document may lack: then yrs sets the struct aside,
and the client's next slice would start past a gap, which yrs integrates differently
from the whole (see ``gaps``). Whoever applies the slices checks after each that the
document reached its sections' ends (``Section.reached``), and applies the rest whole
if not (``gaps.PastGaps.integrate``). Each slice is a valid v1 update: a section of a client's structs
is its structs' bytes behind a new header, since struct ids are absolute (see
``ydecode.decode_with_offsets``); the delete set goes with the last slice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import NamedTuple

from pycrdt import write_var_uint

from .ydecode import ID, DecodedUpdate, UnsafeUpdate, read_var_uint

SLICE_BYTES = 1024 * 1024  # structs per slice, in bytes of the update; larger updates are sliced
NOTHING = b"\x00"  # a count of zero: an update without structs, or an empty delete set


class Section(NamedTuple):
    """``structs`` structs of ``client`` from ``clock`` on, up to clock ``reached``: the
    update's bytes ``start:end``."""

    client: int
    clock: int
    structs: int
    start: int
    end: int
    reached: int


@dataclass(frozen=True, slots=True)
class SlicePlan:
    """Where to cut an update: its slices' sections, in order, and where its delete set is."""

    slices: tuple[tuple[Section, ...], ...]
    delete_set_at: int


def plan_slices(
    decoded: DecodedUpdate, offsets: dict[int, list[int]], delete_set_at: int, size: int = SLICE_BYTES
) -> SlicePlan:
    """A plan to apply the update ``decoded`` (with its structs' ``offsets``, see
    ``ydecode.decode_with_offsets``) in slices of about ``size`` bytes of structs each. The
    update must hold no Skip struct (a gap: ``gaps.cut_at_gaps`` cuts such an update)."""
    return _Planner(decoded, offsets, size).plan(delete_set_at)


def sliced(update: bytes, plan: SlicePlan) -> Iterator[bytes]:
    """The slices of ``update`` that ``plan`` describes, one at a time."""
    last = len(plan.slices) - 1
    for index, sections in enumerate(plan.slices):
        encoded = [section_of(s.client, s.clock, s.structs, update[s.start : s.end]) for s in sections]
        yield joined(encoded, update[plan.delete_set_at :] if index == last else NOTHING)


def describes(plan: SlicePlan, update: bytes) -> bool:
    """Whether ``plan`` fits the layout of ``update`` (a plan read back from disk may be
    damaged): its sections, in the order of their bytes, cover the update's structs end
    to end, each client's behind a header that names that client, its first clock and as
    many structs as its sections hold, and the delete set follows."""
    sections = sorted((section for sections in plan.slices for section in sections), key=lambda s: s.start)
    left = client = clock = 0  # the current client's structs not covered yet, its id, its next clock
    try:
        _, at = read_var_uint(update, 0)  # the number of clients
        for section in sections:
            if left == 0:  # a client's header comes first
                left, at = read_var_uint(update, at)
                client, at = read_var_uint(update, at)
                clock, at = read_var_uint(update, at)
            if (section.start, section.client, section.clock) != (at, client, clock):
                return False
            if not 0 < section.structs <= left or section.end < section.start:
                return False
            left, clock, at = left - section.structs, section.reached, section.end
    except (IndexError, UnsafeUpdate):
        return False
    return bool(sections) and left == 0 and at == plan.delete_set_at <= len(update)


def section_of(client: int, clock: int, count: int, structs: bytes) -> bytes:
    """A client's section of a v1 update: ``count`` structs' bytes from ``clock`` on."""
    return write_var_uint(count) + write_var_uint(client) + write_var_uint(clock) + structs


def joined(sections: list[bytes], deletions: bytes) -> bytes:
    """A v1 update of client ``sections`` and an encoded delete set."""
    return write_var_uint(len(sections)) + b"".join(sections) + deletions


class _Planner:
    """Walks each client's structs as far as the ones they hang on are walked, cutting a
    slice whenever ``size`` bytes have been walked. A client that must wait is walked
    again only once the struct it waits for is: every walk then moves on, so planning
    stays O(n log n) whatever a crafted update's dependencies look like."""

    def __init__(self, decoded: DecodedUpdate, offsets: dict[int, list[int]], size: int) -> None:
        self.clients = decoded.clients
        self.offsets = offsets
        self.size = size
        self.first = {client: structs[0].clock for client, structs in self.clients.items()}
        self.reached = dict(self.first)  # per client, the clock its walked structs end at
        self.walked = dict.fromkeys(self.clients, 0)  # per client, structs walked
        self.cut = dict.fromkeys(self.clients, 0)  # per client, structs in slices already
        self.pending = 0  # bytes walked since the last cut
        self.slices: list[tuple[Section, ...]] = []

    def plan(self, delete_set_at: int) -> SlicePlan:
        to_walk = deque(self.clients)
        waiting: dict[int, list[tuple[int, int]]] = {}  # per client, (clock, client waiting for it)
        while to_walk:
            client = to_walk.popleft()
            needs = self.walk(client)
            woken = waiting.get(client, [])
            while woken and woken[0][0] < self.reached[client]:
                to_walk.append(heappop(woken)[1])
            if needs is not None:
                heappush(waiting.setdefault(needs[0], []), (needs[1], client))
        # What was never walked hangs on something later in the update that waits in turn
        # (no encoder writes that): it goes last, in one piece, as it would whole.
        for client, structs in self.clients.items():
            self.walked[client] = len(structs)
        self.cut_slice()
        return SlicePlan(tuple(self.slices), delete_set_at)

    def walk(self, client: int) -> ID | None:
        """Walk ``client``'s structs while the ones they hang on are walked; return the
        first one it must wait for, if any."""
        structs, at = self.clients[client], self.offsets[client]
        index = begin = self.walked[client]
        needs = None
        while index < len(structs):
            struct = structs[index]
            parent = struct.parent
            needs = self.unwalked(struct.origin, client) or self.unwalked(struct.right_origin, client)
            if needs is None and type(parent) is tuple:
                needs = self.unwalked(parent, client)
            if needs is not None:
                break
            self.reached[client] = struct.clock + struct.length
            index += 1
            if self.pending + at[index] - at[begin] >= self.size:
                self.walked[client] = index
                self.cut_slice()
                begin = index
        self.pending += at[index] - at[begin]
        self.walked[client] = index
        return needs

    def unwalked(self, anchor: ID | None, client: int) -> ID | None:
        """``anchor``, if it names a struct of the update not walked yet."""
        if anchor is None:
            return None
        owner, clock = anchor
        first = self.first.get(owner)
        if first is None or clock < first or clock < self.reached[owner]:
            return None
        return anchor

    def cut_slice(self) -> None:
        sections = []
        for client, walked in self.walked.items():
            cut = self.cut[client]
            if cut < walked:
                at = self.offsets[client]
                structs = self.clients[client]
                last = structs[walked - 1]
                sections.append(
                    Section(client, structs[cut].clock, walked - cut, at[cut], at[walked], last.clock + last.length)
                )
                self.cut[client] = walked
        if sections:
            self.slices.append(tuple(sections))
        self.pending = 0
