"""Check an incoming Yjs update against the conversation schema before pycrdt sees it.

pycrdt 0.14 (yrs 0.28) can be crashed, hung or corrupted by small crafted updates (a struct
whose clock overflows u32, or lies 2**31 ahead of the receiver's, panics; a string put into
a root read as an Array makes reading it loop forever holding the GIL; Any values nested
~26,000 deep overflow the stack; varint counts of 10^8 allocate a gigabyte; yrs takes
strings without UTF-8 validation).
``check_update`` decodes the update in pure Python (``ydecode``: total and bounded) and then
admits only what a conversation document (``conversation.py``) can hold:

* roots ``meta``, ``members``, ``streams``, ``acks`` and ``heads``, all Maps: every item
  written straight under a root carries a map key of the right form (meta field, peer id,
  bucket key ``<author>/<n>``, receipt key ``<member>/<kind>/<author>``, author's peer id);
* ``streams`` values are Arrays (Type content, type ref Array), the other roots' values
  are Any; stream bucket arrays hold Any values only; any item may be Deleted content
  (what garbage collection leaves of a deleted one);
* nothing else anywhere: no String, Embed, Format, Binary, Doc or JSON content, no type
  but Array, no map inside an array, no array inside an array; Any values bounded in
  size and nesting by ``UpdateLimits``.

What an update alone cannot show: Yjs writes an item's parent only when it has neither an
origin nor a right origin; otherwise the parent is the origin's. When that origin is in the
same update (a full-state diff, a merged update) the place is resolved through it and
checked as above. When it is not (a live append to an existing bucket, a receipt
overwriting its previous value), the item is still held to the rules that hold everywhere
(Deleted, Any or Array content only; an item with a parent id and no key is an array
element, so Any or Deleted only; a key under a parent id means a nested map: refused), and
it is counted as ``unplaced`` in the summary. Such an item cannot do what the hostile
fixtures do: there is no String, Text or nested content left for it to carry. If its
parent id names a document item that is not a type, yrs refuses the update with a
``RuntimeError`` ("block parent ... must be deleted or shared ref type"), having applied
the structs it integrated before that one: callers must catch it, and should apply
remote updates to a scratch copy when a partial application matters.

The ``UpdateSummary`` says which client ids author structs and where their items landed,
for a later layer that binds client ids to peers (see ``ClientWrites``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final, TypeAlias

from ..errors import SchemaError
from .metadata import parse_receipt
from .ops import check_id, split_bucket_key
from .slices import SlicePlan, plan_slices
from .ydecode import (
    ANY,
    ARRAY,
    DEFAULT_LIMITS,
    DELETED,
    GC,
    ID,
    SKIP,
    TYPE,
    DecodedUpdate,
    Struct,
    UnsafeUpdate,
    UpdateLimits,
    decode_update,
    decode_with_offsets,
)

__all__ = ["DEFAULT_LIMITS", "ClientWrites", "UnsafeUpdate", "UpdateLimits", "UpdateSummary", "check_update"]

# What ``encode_metadata`` writes (a test keeps the two in step), and a signed conversation's charter.
META_FIELDS: Final = frozenset({"id", "kind", "title", "created_at", "retention_days", "charter"})

Place: TypeAlias = tuple[str, str, bool]
"""(root, key, inside): an entry of a root map, or (inside) an element of the array stored there."""

# Markers compared by identity; no real place has an empty root.
_GONE: Final[Place] = ("", "gone", False)  # anchored on collected garbage: Yjs turns the item into GC
_UNSET: Final[Place] = ("", "unset", False)
_BUSY: Final[Place] = ("", "busy", False)


@dataclass(frozen=True, slots=True)
class ClientWrites:
    """What one client id's structs in an update do, as far as the update itself shows.

    A binding layer can hold this against the peer the update came from: a peer's own
    client ids may only place items under keys that peer owns (``streams`` buckets
    ``<peer>/<n>``, ``acks`` keys ``<peer>/<kind>/<author>``; ``members`` and ``meta`` only
    for admins, or its own member record when leaving); ``foreign_anchors`` shows items hung
    off another client's items (a stream append never needs that; a map overwrite of
    someone else's value does); ``unplaced`` items are the ones to resolve against the
    document; ``garbage`` is history this client id claims was collected.
    """

    keys: frozenset[tuple[str, str]]
    """(root, key) pairs its items were placed under: the map entry, or the bucket array
    an element was added to."""
    foreign_anchors: frozenset[int]
    """Other client ids whose items its items name as origin, right origin or parent."""
    unplaced: int
    """Items whose place the update alone does not show (their anchor is outside it)."""
    items: int
    """Item structs it authors (however many values each holds)."""
    garbage: int
    """Clock units covered by its GC structs."""
    clocks: tuple[int, int]
    """First clock and end clock of its section of the update (Skip structs included)."""
    skips: bool = False
    """Whether its section has Skip structs: clocks the update does not hold, between others."""


@dataclass(frozen=True, slots=True)
class UpdateSummary:
    """What a checked update writes and deletes, by client id."""

    clients: Mapping[int, ClientWrites]
    deletes: Mapping[int, tuple[tuple[int, int], ...]]
    """Delete set: client id -> (clock, length) ranges it marks deleted."""
    records: tuple[bytes, ...] = ()
    """Any maps shaped like signed heads, encoded (``ydecode.decode_any`` reads them)."""
    slices: SlicePlan | None = None
    """How to apply the update in slices (``check_update`` with ``slice_bytes``), if it is large."""

    @property
    def ends(self) -> dict[int, int]:
        """Per client, the clock after its last struct in the update."""
        return {client: writes.clocks[1] for client, writes in self.clients.items()}

    @property
    def authors(self) -> frozenset[int]:
        """Client ids that author items or GC structs (Skip structs author nothing)."""
        return frozenset(client for client, writes in self.clients.items() if writes.items or writes.garbage)


def check_update(
    update: bytes, *, limits: UpdateLimits = DEFAULT_LIMITS, slice_bytes: int | None = None
) -> UpdateSummary:
    """Decode ``update`` and check it against the conversation schema.

    Returns what the update writes, by client id; raises ``UnsafeUpdate`` (a
    ``SchemaError``) saying what is wrong with a malformed, oversized or off-schema update,
    and never any other exception. Pure Python: never calls pycrdt. With ``slice_bytes``,
    the summary of an update larger than that says how to apply it in slices of about
    that size (``slices.plan_slices``).
    """
    if slice_bytes is None or len(update) <= slice_bytes:
        return _Checker(decode_update(update, limits)).run()
    decoded, offsets, delete_set_at = decode_with_offsets(update, limits)
    summary = _Checker(decoded).run()
    if delete_set_at <= slice_bytes or any(writes.skips for writes in summary.clients.values()):
        return summary  # its structs are one slice already, or it has a gap (``gaps.cut_at_gaps`` cuts it)
    return replace(summary, slices=plan_slices(decoded, offsets, delete_set_at, slice_bytes))


class _Checker:
    def __init__(self, decoded: DecodedUpdate) -> None:
        self.clients = decoded.clients
        self.deletes = decoded.delete_set
        self.records = tuple(decoded.records)
        self.starts = {client: [struct.clock for struct in structs] for client, structs in decoded.clients.items()}
        # The place of every struct, once known. A GC struct is garbage; what a Skip stands
        # for is not in the update.
        self.places: dict[int, list[Place | None]] = {
            client: [_GONE if s.kind == GC else None if s.kind == SKIP else _UNSET for s in structs]
            for client, structs in decoded.clients.items()
        }
        self.keys_seen: set[tuple[str, str]] = set()

    def run(self) -> UpdateSummary:
        summary = {client: self.check_client(client, structs) for client, structs in self.clients.items()}
        deletes = {client: tuple(ranges) for client, ranges in self.deletes.items()}
        return UpdateSummary(summary, deletes, self.records)

    def check_client(self, client: int, structs: list[Struct]) -> ClientWrites:
        keys: set[tuple[str, str]] = set()
        foreign: set[int] = set()
        items = unplaced = garbage = 0
        skips = False
        starts = self.starts[client]
        slots = self.places[client]
        for index, struct in enumerate(structs):
            kind = struct.kind
            if kind == GC:
                garbage += struct.length
                continue
            if kind == SKIP:
                skips = True
                continue
            items += 1
            origin = struct.origin
            if origin is not None and origin[0] == client:
                # The usual case, an item after its own client's earlier one: that one's place
                # is known already (structs are checked in order), or it is not in the update.
                before = bisect_right(starts, origin[1]) - 1
                place = slots[before] if before >= 0 else None
                slots[index] = place
            else:
                place = self.place(client, index)
                if origin is not None:
                    foreign.add(origin[0])
            if kind != DELETED or struct.parent is not None:  # a Deleted sibling fits anywhere
                _check_item(struct, place)
            if place is None:
                unplaced += 1
            elif place is not _GONE:
                keys.add((place[0], place[1]))
            right, parent = struct.right_origin, struct.parent
            if right is not None and right[0] != client:
                foreign.add(right[0])
            if type(parent) is tuple and parent[0] != client:
                foreign.add(parent[0])
        last = structs[-1]
        clocks = (structs[0].clock, last.clock + last.length)
        return ClientWrites(frozenset(keys), frozenset(foreign), unplaced, items, garbage, clocks, skips)

    def place(self, client: int, index: int) -> Place | None:
        """Where the item lands: from its root and key, or through its anchors in this update.

        Walks the chain of anchors without recursion (chains are as long as a bucket) and
        remembers every place found; None when the chain leaves the update.
        """
        chain: list[tuple[int, int, bool]] = []  # items waiting for their anchor's place
        while True:
            slots = self.places[client]
            result = slots[index]
            if result is not _UNSET:
                if result is _BUSY:
                    raise UnsafeUpdate("items name each other as origin or parent in a cycle")
                break
            struct = self.clients[client][index]
            anchor = struct.origin or struct.right_origin
            is_child = anchor is None
            if anchor is None:
                if isinstance(struct.parent, str):
                    result = slots[index] = _root_place(struct.parent, struct.parent_sub, self.keys_seen)
                    break
                anchor = struct.parent
            located = self.locate(anchor) if anchor is not None else None
            if located is None:
                result = slots[index] = None
                break
            slots[index] = _BUSY
            chain.append((client, index, is_child))
            client, index = located
        anchor_struct = self.clients[client][index]
        for waiting_client, waiting_index, is_child in reversed(chain):
            if is_child:
                result = _child_place(anchor_struct, result)
            self.places[waiting_client][waiting_index] = result
            anchor_struct = self.clients[waiting_client][waiting_index]
        return result

    def locate(self, target: ID) -> tuple[int, int] | None:
        """(client, index) of the struct holding ``target`` in this update, if it is there."""
        starts = self.starts.get(target[0])
        if starts is None:
            return None
        structs = self.clients[target[0]]
        last = structs[-1]
        index = bisect_right(starts, target[1]) - 1  # a client's structs are contiguous
        if index < 0 or target[1] >= last.clock + last.length:
            return None
        return target[0], index


def _root_place(root: str, key: str | None, keys_seen: set[tuple[str, str]]) -> Place:
    if root not in ("meta", "streams", "acks", "members", "heads"):
        raise UnsafeUpdate(f"unknown root {root!r}")
    if key is None:
        raise UnsafeUpdate(f"item without a key in root {root!r}, which is a Map")
    if (root, key) not in keys_seen:
        _check_key(root, key)
        keys_seen.add((root, key))
    return (root, key, False)


def _check_key(root: str, key: str) -> None:
    """The key forms ``conversation.py`` writes under each root."""
    if root == "meta":
        if key not in META_FIELDS:
            raise UnsafeUpdate(f"unknown meta field {key!r}")
        return
    try:
        if root == "streams":
            split_bucket_key(key)
        elif root == "acks":
            parse_receipt(key, 0)  # checks the key's three parts
        else:
            check_id(key, "peer id")
    except SchemaError as exc:
        raise UnsafeUpdate(f"bad key in root {root!r}: {exc}") from None


def _child_place(parent: Struct, place: Place | None) -> Place | None:
    """The place of an item whose parent is the type item ``parent``."""
    if place is _GONE or parent.kind in (GC, DELETED):
        return _GONE  # the parent was collected: Yjs collects the child too
    if parent.kind == SKIP:
        return None
    if parent.kind != TYPE or parent.type_ref != ARRAY:
        raise UnsafeUpdate(f"item's parent {parent.client}:{parent.clock} is not an Array")
    if place is None:
        return None
    if place[2]:
        raise UnsafeUpdate(f"array nested in the array under {place[0]}[{place[1]!r}]")
    return (place[0], place[1], True)


def _check_item(struct: Struct, place: Place | None) -> None:
    """The content rules, with what is known of the item's place."""
    kind = struct.kind
    if kind == TYPE:
        if struct.type_ref != ARRAY:
            raise UnsafeUpdate(f"item {struct.client}:{struct.clock}: type ref {struct.type_ref} (only Arrays)")
    elif kind != ANY and kind != DELETED:
        raise UnsafeUpdate(f"item {struct.client}:{struct.clock}: content kind {kind} has no place in a conversation")
    if type(struct.parent) is tuple:
        if struct.parent_sub is not None:
            raise UnsafeUpdate(f"item {struct.client}:{struct.clock}: map entry inside a nested type")
        if kind == TYPE:
            raise UnsafeUpdate(f"item {struct.client}:{struct.clock}: type nested in an array")
    if place is None or place is _GONE or kind == DELETED:
        return
    root, key, inside = place
    if inside:
        if kind != ANY:
            raise UnsafeUpdate(f"item {struct.client}:{struct.clock}: non-Any element in {root}[{key!r}]")
    elif (kind == TYPE) != (root == "streams"):
        raise UnsafeUpdate(f"item {struct.client}:{struct.clock}: wrong content for {root}[{key!r}]")
