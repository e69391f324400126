"""The Yjs update validator: total on garbage, strict about the schema, open to our own updates.

Nothing here applies a hostile update to pycrdt in this process: updates the validator
accepts from the generators are applied in a child process (``_Applier``).
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hostile import HOSTILE, hostile_updates
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, merge_updates

from gigi_crdt.errors import SchemaError
from gigi_crdt.model import Conversation, ConversationKind, HybridClock, ReceiptKind
from gigi_crdt.model import Text as TextContent
from gigi_crdt.model.metadata import Metadata, encode_metadata
from gigi_crdt.model.signed import CHARTER
from gigi_crdt.model.ydecode import MAX_CLIENT, MAX_CLOCK, decode_update
from gigi_crdt.model.yupdate import META_FIELDS, UnsafeUpdate, UpdateLimits, UpdateSummary, check_update
from gigi_crdt.protocol.yproto import decode_state_vector

ALICE, BOB, CAROL = "alice-peer-01", "bob-peer-0002", "carol-peer-03"
DAY_MS = 24 * 60 * 60 * 1000


# -- writing updates by hand (lib0 encoding.js, Yjs UpdateEncoderV1) ----------------------


def uv(value: int) -> bytes:
    """lib0 writeVarUint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def iv(value: int) -> bytes:
    """lib0 writeVarInt: sign in bit 6 of the first byte."""
    magnitude = abs(value)
    out = bytearray([(0x40 if value < 0 else 0) | (magnitude & 0x3F) | (0x80 if magnitude > 0x3F else 0)])
    magnitude >>= 6
    while magnitude:
        out.append((magnitude & 0x7F) | (0x80 if magnitude > 0x7F else 0))
        magnitude >>= 7
    return bytes(out)


def vs(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return uv(len(raw)) + raw


def any_(value: object) -> bytes:
    """lib0 writeAny."""
    if value is None:
        return b"\x7e"
    if value is True or value is False:
        return b"\x78" if value else b"\x79"
    if isinstance(value, int):
        return b"\x7d" + iv(value)
    if isinstance(value, float):
        return b"\x7b" + struct.pack(">d", value)
    if isinstance(value, str):
        return b"\x77" + vs(value)
    if isinstance(value, bytes):
        return b"\x74" + vs(value)
    if isinstance(value, dict):
        return b"\x76" + uv(len(value)) + b"".join(vs(k) + any_(v) for k, v in value.items())
    assert isinstance(value, list)
    return b"\x75" + uv(len(value)) + b"".join(any_(v) for v in value)


Content = tuple[int, bytes]  # content ref, encoded content


def any_content(*values: object) -> Content:
    return 8, uv(len(values)) + b"".join(any_(v) for v in values)


ARRAY_TYPE: Content = (7, b"\x00")


def deleted(length: int) -> Content:
    return 1, uv(length)


def item(
    content: Content,
    *,
    origin: tuple[int, int] | None = None,
    right: tuple[int, int] | None = None,
    parent: str | tuple[int, int] | None = None,
    key: str | None = None,
) -> bytes:
    """Item.js write: parent and key only when there is neither origin nor right origin."""
    ref, body = content
    info = ref | (0x80 if origin else 0) | (0x40 if right else 0) | (0x20 if key is not None else 0)
    out = bytes([info])
    for anchor in (origin, right):
        if anchor:
            out += uv(anchor[0]) + uv(anchor[1])
    if not origin and not right:
        if isinstance(parent, str):
            out += uv(1) + vs(parent)
        else:
            assert parent is not None
            out += uv(0) + uv(parent[0]) + uv(parent[1])
        if key is not None:
            out += vs(key)
    return out + body


def gc(length: int) -> bytes:
    return b"\x00" + uv(length)


Ranges = Mapping[int, Sequence[tuple[int, int]]]


def update(sections: Sequence[tuple[int, int, Sequence[bytes]]], deletes: Ranges | None = None) -> bytes:
    """Client sections (client, first clock, structs), then the delete set."""
    out = uv(len(sections))
    for client, clock, structs in sections:
        out += uv(len(structs)) + uv(client) + uv(clock) + b"".join(structs)
    deletes = deletes or {}
    out += uv(len(deletes))
    for client, ranges in deletes.items():
        out += uv(client) + uv(len(ranges)) + b"".join(uv(c) + uv(n) for c, n in ranges)
    return out


def post_value(i: int) -> dict[str, object]:
    return {"o": "post", "i": f"message-{i:04}", "t": 1.7e15 + i, "n": "alice", "k": "text", "c": {"text": f"m{i}"}}


# -- conversations written by the model -------------------------------------------------


class ManualClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        self.now += 1
        return self.now


def group(retention_days: int | None = None) -> tuple[Conversation, Conversation, list[bytes], ManualClock]:
    """Alice's and bob's replicas of a group, and every update either wrote so far."""
    clock = ManualClock()
    alice, created = Conversation.create(
        kind=ConversationKind.GROUP,
        title="group",
        local_peer=ALICE,
        nickname="alice",
        clock=HybridClock(clock),
        others={BOB: "bob"},
        retention_days=retention_days,
    )
    bob = Conversation.from_updates([created.update], BOB, HybridClock(clock))
    return alice, bob, [created.update], clock


def every_kind_of_write() -> tuple[Conversation, Conversation, list[bytes]]:
    """Posts, edits, deletes, reactions, receipts, membership and metadata changes, both ways."""
    alice, bob, updates, _ = group()

    def send(reader: Conversation, written: Any) -> Any:
        updates.append(written.update)
        reader.apply_remote(written.update)
        return written

    first = send(bob, alice.post(TextContent("hi 👋"), "alice")).message_id
    for i in range(300):  # past a bucket's end, with receipts in the same transactions
        send(bob, alice.post(TextContent(f"a{i}"), "alice", read_upto={BOB: i - 1} if i else {}))
        send(alice, bob.post(TextContent(f"b{i}"), "bob", read_upto={ALICE: i}))
    send(bob, alice.edit(first, TextContent("edited")))
    send(bob, alice.react(first, "👍"))
    send(alice, bob.react(first, "👍", on=False))
    send(bob, alice.delete(first))
    send(bob, alice.mark(ReceiptKind.DELIVERED, {BOB: 299}))
    send(bob, alice.set_title("renamed"))
    send(bob, alice.add_member(CAROL, "carol"))
    send(bob, alice.remove_member(CAROL))
    send(alice, bob.remove_member(BOB))
    return alice, bob, updates


@pytest.fixture(scope="module")
def history() -> tuple[Conversation, Conversation, list[bytes]]:
    return every_kind_of_write()


def state_vector(update: bytes) -> dict[int, int]:
    """pycrdt's state vector after applying ``update`` (only ever one of our own) to a fresh Doc."""
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return decode_state_vector(doc.get_state())


def document_keys(conversation: Conversation) -> set[tuple[str, str]]:
    doc: Doc[Any] = Doc()
    doc.apply_update(conversation.diff())
    return {(root, key) for root in ("meta", "members", "streams", "acks") for key in doc.get(root, type=Map).keys()}


# -- our own updates pass ---------------------------------------------------------------


def test_every_update_the_model_writes_passes(history: tuple[Conversation, Conversation, list[bytes]]) -> None:
    _, _, updates = history
    for written in updates:
        check_update(written)


def test_a_full_state_update_passes_and_its_summary_matches_the_document(
    history: tuple[Conversation, Conversation, list[bytes]],
) -> None:
    alice, _, _ = history
    full = alice.diff()
    summary = check_update(full)
    placed = {key for writes in summary.clients.values() for key in writes.keys}
    assert placed == document_keys(alice)
    assert {key[0] for key in placed} == {"meta", "members", "streams", "acks"}
    assert all(writes.unplaced == 0 for writes in summary.clients.values())  # everything resolves inside
    assert {client: writes.clocks[1] for client, writes in summary.clients.items()} == state_vector(full)
    assert summary.authors == set(state_vector(full))
    # Receipts overwritten many times leave deleted ranges behind.
    assert summary.deletes
    assert all(length > 0 for ranges in summary.deletes.values() for _, length in ranges)


def test_merged_updates_and_state_vector_diffs_pass(history: tuple[Conversation, Conversation, list[bytes]]) -> None:
    alice, bob, updates = history
    merged = merge_updates(*updates)
    assert check_update(merged).authors == check_update(alice.diff()).authors
    assert check_update(alice.diff(bob.state_vector())).clients == {}  # nothing missing: only the delete set
    behind = Conversation.from_updates(updates[:50], CAROL, HybridClock(ManualClock()))
    catch_up = alice.diff(behind.state_vector())
    assert check_update(catch_up).authors
    # A gap in the middle of a merge is bridged with a Skip struct.
    with_gap = merge_updates(updates[0], updates[10], updates[20])
    assert any(s.kind == 10 for structs in decode_update(with_gap).clients.values() for s in structs)
    check_update(with_gap)


def test_live_updates_name_the_keys_they_write() -> None:
    alice, bob, _, _ = group()
    first = check_update(alice.post(TextContent("first"), "alice").update)
    (alice_client,) = first.authors
    # The first post creates alice's first bucket: the array and its element resolve inside.
    assert first.clients[alice_client].keys == {("streams", f"{ALICE}/0")}
    later = check_update(alice.post(TextContent("second"), "alice", read_upto={BOB: 0}).update)
    writes = later.clients[alice_client]
    # The appended element's origin is the first post, outside this update; the receipt is new.
    assert writes.keys == {("acks", f"{ALICE}/read/{BOB}")}
    assert writes.unplaced == 1
    assert writes.foreign_anchors == set()
    overwrite = check_update(alice.mark(ReceiptKind.READ, {BOB: 1}).update)
    assert overwrite.clients[alice_client].unplaced == 1
    assert overwrite.deletes == {alice_client: ((overwrite.clients[alice_client].clocks[0] - 1, 1),)}
    bob.apply_remote(alice.diff())
    leave = check_update(bob.remove_member(BOB).update)
    (bob_client,) = leave.authors
    assert leave.clients[bob_client].foreign_anchors == {alice_client}  # overwrites alice's record


def test_expired_buckets_dropped_as_garbage_pass() -> None:
    alice, _, _, clock = group(retention_days=1)
    (alice_client,) = check_update(alice.post(TextContent("old"), "alice").update).authors
    for i in range(300):
        check_update(alice.post(TextContent(f"old {i}"), "alice").update)
    clock.now += 2 * DAY_MS
    dropped = alice.expire()
    assert check_update(dropped.update).deletes[alice_client]
    summary = check_update(alice.diff())
    assert summary.clients[alice_client].garbage >= 255  # the bucket's entries were collected
    reloaded = Conversation.from_updates([alice.diff()], BOB, HybridClock(clock))
    check_update(reloaded.diff())


def test_meta_fields_are_what_the_model_writes() -> None:
    written = set(encode_metadata(Metadata("conversation-1", ConversationKind.GROUP, "t", 1, 30))) | {CHARTER}
    assert written == META_FIELDS


def test_decoder_agrees_with_pycrdt_on_clocks() -> None:
    """Structure the schema refuses must still decode right: clocks, UTF-16 lengths, deletes."""
    doc: Doc[Any] = Doc()
    text = doc.get("text", type=Text)
    emoji = doc.get("emoji", type=Text)
    array = doc.get("array", type=Array)
    nested = doc.get("map", type=Map)
    text += "hello wörld"
    emoji += "h😀llo"  # 6 UTF-16 code units
    array.extend([1, "two", {"three": [3.5, None, True]}, b"\x00\xff"])
    nested["inner"] = Map({"a": 1, "b": Array([1, 2])})
    del text[1:3]
    del array[0]
    nested["inner"]["a"] = 2
    snapshots = [doc.get_update()]
    text.insert(0, "🎉")
    snapshots.append(doc.get_update())
    snapshots.append(merge_updates(snapshots[0], doc.get_update(decode_update_sv(snapshots[0]))))
    for full in snapshots:
        decoded = decode_update(full)
        ends = {client: structs[-1].clock + structs[-1].length for client, structs in decoded.clients.items()}
        assert ends == state_vector(full)
        assert decoded.delete_set
        with pytest.raises(UnsafeUpdate, match="type ref|content kind|unknown root"):
            check_update(full)  # text, nested maps, roots we do not have
    # Deleting around an emoji leaves yrs writing an empty String item, which panics a yrs
    # peer that knows the client: refused even by the bare decoder.
    del emoji[1:2]
    with pytest.raises(UnsafeUpdate, match="empty struct"):
        decode_update(doc.get_update())


def decode_update_sv(update: bytes) -> bytes:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return doc.get_state()


def test_empty_update_passes() -> None:
    assert check_update(b"\x00\x00") == UpdateSummary({}, {})


# -- hostile updates are refused --------------------------------------------------------


@pytest.mark.parametrize("fixture", sorted(p.name for p in HOSTILE.glob("*.hex")))
def test_hostile_fixtures_are_refused(fixture: str) -> None:
    *harmless, hostile = hostile_updates(fixture)
    for earlier in harmless:  # a well-formed update setting the stage
        check_update(earlier)
    with pytest.raises(UnsafeUpdate):
        check_update(hostile)


def nested_any(depth: int, container: str) -> bytes:
    opening = b"\x75\x01" if container == "array" else b"\x76\x01\x01k"
    return opening * depth + b"\x7e"


@pytest.mark.parametrize("container", ["array", "map"])
def test_deeply_nested_any_is_refused_without_recursion(container: str) -> None:
    value = nested_any(26_000, container)
    hostile = update([(7, 0, [item((8, uv(1) + value), parent="meta", key="title")])])
    assert 52_000 <= len(hostile) < 110_000
    started = time.perf_counter()
    with pytest.raises(UnsafeUpdate, match="nested deeper"):
        check_update(hostile)
    assert time.perf_counter() - started < 1
    shallow = update([(7, 0, [item((8, uv(1) + nested_any(32, container)), parent="meta", key="title")])])
    check_update(shallow)
    with pytest.raises(UnsafeUpdate, match="nested deeper"):
        check_update(shallow, limits=UpdateLimits(max_depth=31))


HUGE = 10**8


def huge_counts() -> Iterator[tuple[str, bytes]]:
    bucket = f"{ALICE}/0"
    yield "clients", uv(HUGE) + b"\x01\x07\x00" + gc(1) + b"\x00"
    yield "structs", b"\x01" + uv(HUGE) + b"\x07\x00" + gc(1) + b"\x00"
    yield "Any values", update([(7, 0, [item((8, uv(HUGE) + b"\x7e"), parent="meta", key="title")])])
    yield "Any array", update([(7, 0, [item((8, b"\x01\x75" + uv(HUGE) + b"\x7e"), parent="meta", key="title")])])
    yield "Any map", update([(7, 0, [item((8, b"\x01\x76" + uv(HUGE) + b"\x01k\x7e"), parent="meta", key="title")])])
    yield "Any string", update([(7, 0, [item((8, b"\x01\x77" + uv(HUGE) + b"abc"), parent="meta", key="title")])])
    yield "key", update([(7, 0, [b"\x28\x01" + vs("streams") + uv(HUGE) + b"abc"])])
    yield "binary", update([(7, 0, [item((3, uv(HUGE) + b"abc"), parent="streams", key=bucket)])])
    yield "delete set clients", b"\x00" + uv(HUGE) + b"\x07\x01\x00\x01"
    yield "delete set ranges", b"\x00\x01\x07" + uv(HUGE) + b"\x00\x01"


@pytest.mark.parametrize(("what", "hostile"), list(huge_counts()), ids=[what for what, _ in huge_counts()])
def test_huge_declared_counts_are_refused_fast_without_allocating(what: str, hostile: bytes) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(UnsafeUpdate):
            check_update(hostile)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.1
    assert peak < 100_000


def out_of_range() -> Iterator[tuple[str, bytes, str]]:
    yield "first clock", update([(7, 2**32, [gc(1)])]), r"beyond 2\*\*31"
    yield "struct end", update([(7, MAX_CLOCK - 1, [gc(2)])]), r"ends past 2\*\*31"
    yield "struct 2**31 ahead", update([(7, 2**31 + 3, [gc(1)])]), r"beyond 2\*\*31"  # panics yrs if client 7 is known
    yield "deleted length", update([(7, 0, [item(deleted(2**32), parent="meta", key="title")])]), r"ends past 2\*\*31"
    yield "origin clock", update([(7, 0, [item(any_content(1), origin=(8, 2**32))])]), r"beyond 2\*\*31"
    yield "client id", update([(2**53, 0, [gc(1)])]), r"client id .* beyond 2\*\*53"
    yield "origin client", update([(7, 0, [item(any_content(1), origin=(2**53, 0))])]), r"client id .* beyond 2\*\*53"
    yield "parent client", update([(7, 0, [item(any_content(1), parent=(2**53, 0))])]), r"client id .* beyond 2\*\*53"
    yield "delete set client", update([], {2**53: [(0, 1)]}), r"client id .* beyond 2\*\*53"
    yield "delete set range", update([], {7: [(MAX_CLOCK - 1, 2)]}), "deleted range"
    yield "11-byte varint", b"\x01\x01" + b"\x87" + b"\x80" * 9 + b"\x00\x00" + gc(1) + b"\x00", "longer than 10 bytes"
    yield (
        "integer",
        update([(7, 0, [item((8, b"\x01\x7d" + iv(2**53)), parent="meta", key="title")])]),
        r"integer beyond 2\*\*53",
    )
    yield (
        "11-byte integer",
        update([(7, 0, [item((8, b"\x01\x7d" + b"\x81" + b"\x80" * 9 + b"\x00"), parent="meta", key="title")])]),
        "longer than 10 bytes",
    )


@pytest.mark.parametrize(("what", "hostile", "reason"), list(out_of_range()), ids=[case[0] for case in out_of_range()])
def test_clocks_client_ids_and_varints_out_of_range_are_refused(what: str, hostile: bytes, reason: str) -> None:
    with pytest.raises(UnsafeUpdate, match=reason):
        check_update(hostile)


def test_values_at_the_bounds_pass() -> None:
    check_update(update([(MAX_CLIENT, MAX_CLOCK - 1, [gc(1)])], {MAX_CLIENT: [(0, MAX_CLOCK)]}))
    check_update(update([(7, 0, [item((8, b"\x01\x7d" + iv(-(2**53 - 1))), parent="meta", key="created_at")])]))


def off_schema() -> Iterator[tuple[str, bytes, str]]:
    bucket = f"{ALICE}/0"
    post = any_content(post_value(0))
    array = (7, 0, [item(ARRAY_TYPE, parent="streams", key=bucket)])
    yield "string in an unknown root", update([(5, 0, [item((4, vs("😀x")), parent="a")])]), "unknown root 'a'"
    yield "string in a bucket", update([array, (8, 0, [item((4, vs("x")), parent=(7, 0))])]), "content kind 4"
    yield "text type", update([(7, 0, [item((7, b"\x02"), parent="streams", key=bucket)])]), "type ref 2"
    yield "map type", update([(7, 0, [item((7, b"\x01"), parent="members", key=ALICE)])]), "type ref 1"
    yield "xml element", update([(7, 0, [item((7, b"\x03" + vs("p")), parent="streams", key=bucket)])]), "type ref 3"
    yield "xml hook", update([(7, 0, [item((7, b"\x05" + vs("h")), parent="streams", key=bucket)])]), "type ref 5"
    yield "weak link", update([(7, 0, [item((7, b"\x07"), parent="streams", key=bucket)])]), "type ref 7"
    yield "json content", update([(7, 0, [item((2, uv(1) + vs("1")), parent="meta", key="title")])]), "info 0x22"
    yield "binary content", update([(7, 0, [item((3, vs(b"x")), parent="meta", key="title")])]), "content kind 3"
    yield "embed", update([(7, 0, [item((5, vs("{}")), parent="meta", key="title")])]), "content kind 5"
    yield "format", update([(7, 0, [item((6, vs("b") + vs("true")), parent="meta", key="title")])]), "content kind 6"
    yield (
        "subdocument",
        update([(7, 0, [item((9, vs("guid") + any_({})), parent="meta", key="title")])]),
        "content kind 9",
    )
    yield "unknown root", update([(7, 0, [item(any_content(1), parent="other", key="x")])]), "unknown root 'other'"
    yield "root without key", update([(7, 0, [item(any_content(1), parent="acks")])]), "without a key"
    yield "any as a bucket", update([(7, 0, [item(post, parent="streams", key=bucket)])]), "wrong content for streams"
    yield "array in meta", update([(7, 0, [item(ARRAY_TYPE, parent="meta", key="title")])]), "wrong content for meta"
    yield (
        "unknown meta field",
        update([(7, 0, [item(any_content(1), parent="meta", key="admin")])]),
        "unknown meta field",
    )
    yield "bad bucket key", update([(7, 0, [item(ARRAY_TYPE, parent="streams", key="alice")])]), "malformed bucket key"
    yield (
        "bad receipt key",
        update([(7, 0, [item(any_content(1), parent="acks", key=f"{ALICE}/seen/{BOB}")])]),
        "unknown receipt kind",
    )
    yield "bad member key", update([(7, 0, [item(any_content({}), parent="members", key="x/y")])]), "malformed peer id"
    yield (
        "map entry in an array",
        update([array, (8, 0, [item(post, parent=(7, 0), key="k")])]),
        "map entry inside a nested type",
    )
    yield "array in an array", update([array, (8, 0, [item(ARRAY_TYPE, parent=(7, 0))])]), "type nested in an array"
    yield (
        "array appended in a bucket",
        update([(7, 0, [array[2][0], item(post, parent=(7, 0)), item(ARRAY_TYPE, origin=(7, 1))])]),
        "non-Any element",
    )
    yield (
        "any next to a bucket",
        update([(7, 0, [array[2][0], item(post, origin=(7, 0))])]),
        "wrong content for streams",
    )
    yield (
        "parent is not an array",
        update([(7, 0, [item(post, parent="meta", key="title"), item(post, parent=(7, 0))])]),
        "is not an Array",
    )
    yield "origin cycle", update([(8, 0, [item(post, origin=(9, 0))]), (9, 0, [item(post, origin=(8, 0))])]), "cycle"
    yield (
        "value too large",
        update([(7, 0, [item(any_content("x" * 600_000), parent="meta", key="title")])]),
        "Any value of .* exceeds",
    )
    yield (
        "key too long",
        update([(7, 0, [item(any_content(1), parent="meta", key="k" * 2000)])]),
        "string of 2000 bytes",
    )


@pytest.mark.parametrize(("what", "hostile", "reason"), list(off_schema()), ids=[case[0] for case in off_schema()])
def test_off_schema_updates_are_refused(what: str, hostile: bytes, reason: str) -> None:
    with pytest.raises(UnsafeUpdate, match=reason):
        check_update(hostile)


def malformed() -> Iterator[tuple[str, bytes, str]]:
    good = update([(7, 0, [item(any_content("ok"), parent="meta", key="title")])])
    yield "empty", b"", "ends in the middle"
    yield "truncated", good[:-3], "ends in the middle"
    yield "trailing bytes", good + b"\x00", "1 bytes after the delete set"
    yield "empty GC", update([(7, 0, [gc(0)])]), "empty struct"
    yield "empty Skip", update([(7, 0, [gc(1), b"\x0a\x00"])]), "empty struct"
    yield "empty Any item", update([(7, 0, [item((8, b"\x00"), parent="meta", key="title")])]), "empty struct"
    yield "empty deleted item", update([(7, 0, [item(deleted(0), origin=(8, 0))])]), "empty struct"  # panics yrs
    yield "empty string item", update([(7, 0, [item((4, b"\x00"), parent="meta", key="title")])]), "empty struct"
    yield "no structs", b"\x01\x00\x07\x00\x00\x00", "at least 1"
    yield "client twice", update([(7, 0, [gc(1)]), (7, 1, [gc(1)])]), "two struct sections"
    yield "delete set client twice", b"\x00\x02\x07\x01\x00\x01\x07\x01\x02\x01", "twice in the delete set"
    yield "empty deleted range", update([], {7: [(0, 0)]}), "is empty"
    yield "GC with flags", update([(7, 0, [b"\x20\x01"])]), "info 0x20"
    yield "skip with flags", update([(7, 0, [gc(1), b"\x4a\x07\x00\x01"])]), "info 0x4a"
    yield "content ref with bit 0x10", update([(7, 0, [b"\x18\x01\x04meta\x01\x7e"])]), "info 0x18"
    yield "unknown content ref", update([(7, 0, [b"\x0b\x01\x04meta\x00"])]), "info 0xb"
    yield "parent info 2", update([(7, 0, [b"\x08\x02\x04meta\x01\x7e"])]), "parent info 2"
    yield "origin later in its own client", update([(7, 0, [item(any_content(1), origin=(7, 5))])]), "later clock"
    yield "invalid UTF-8 key", update([(7, 0, [b"\x28\x01\x04meta\x02\xc3\x28\x01\x7e"])]), "UTF-8"
    yield (
        "surrogate in a string",
        update([(7, 0, [item((8, b"\x01\x77\x03\xed\xa0\x80"), parent="meta", key="title")])]),
        "UTF-8",
    )
    yield (
        "invalid UTF-8 map key",
        update([(7, 0, [item((8, b"\x01\x76\x01\x01\xff\x7e"), parent="meta", key="title")])]),
        "UTF-8",
    )
    yield (
        "unknown Any tag",
        update([(7, 0, [item((8, b"\x01\x70"), parent="meta", key="title")])]),
        "unknown Any tag 112",
    )
    yield (
        "float past the end",
        update([(7, 0, [item((8, b"\x01\x7b\x00"), parent="meta", key="title")])])[:-1],
        "ends in the middle",
    )
    yield "not bytes", bytearray(good), "bytes, not bytearray"  # type: ignore[misc]


@pytest.mark.parametrize(("what", "hostile", "reason"), list(malformed()), ids=[case[0] for case in malformed()])
def test_malformed_updates_are_refused(what: str, hostile: bytes, reason: str) -> None:
    with pytest.raises(UnsafeUpdate, match=reason):
        check_update(hostile)


def test_unsafe_update_is_a_schema_error_and_limits_apply() -> None:
    assert issubclass(UnsafeUpdate, SchemaError)
    good = update([(7, 0, [item(any_content("x" * 100), parent="meta", key="title")])])
    check_update(good)
    with pytest.raises(UnsafeUpdate, match="exceeds the limit"):
        check_update(good, limits=UpdateLimits(max_bytes=len(good) - 1))
    with pytest.raises(UnsafeUpdate, match="exceeds"):
        check_update(good, limits=UpdateLimits(max_value_bytes=50))


def test_anchors_resolve_through_other_clients_in_the_same_update() -> None:
    bucket = f"{ALICE}/0"
    sections = [
        (9, 0, [item(any_content(post_value(2)), origin=(8, 0))]),  # after client 8's element
        (8, 0, [item(any_content(post_value(1)), parent=(7, 0))]),  # first element of client 7's bucket
        (7, 0, [item(ARRAY_TYPE, parent="streams", key=bucket)]),
    ]
    summary = check_update(update(sections))
    assert {client: writes.keys for client, writes in summary.clients.items()} == {
        9: {("streams", bucket)},
        8: {("streams", bucket)},
        7: {("streams", bucket)},
    }
    assert summary.clients[9].foreign_anchors == {8}
    assert summary.clients[8].foreign_anchors == {7}


# -- fuzzing: anything either passes or raises UnsafeUpdate ------------------------------


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def total(data: bytes) -> UpdateSummary | None:
    try:
        return check_update(data)
    except UnsafeUpdate:
        return None


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_only_ever_raise_unsafe_update(data: bytes) -> None:
    total(data)
    total(b"\x01\x01" + data)


def valid_updates() -> list[bytes]:
    alice, bob, updates, _ = group()
    updates.append(alice.post(TextContent("first 😀"), "alice").update)
    updates.append(alice.post(TextContent("second"), "alice", read_upto={BOB: 0}).update)
    bob.apply_remote(alice.diff())
    updates.append(bob.post(TextContent("reply"), "bob", read_upto={ALICE: 1}).update)
    return [*updates, alice.diff(), merge_updates(*updates)]


VALID = valid_updates()


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        if action == "flip" and where < len(data):
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del data[where:]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        elif where < len(data):
            data[where] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x75, 0x76, 0x77]))
    return bytes(data)


@FUZZ
@given(mutations())
def test_mutated_valid_updates_only_ever_raise_unsafe_update(data: bytes) -> None:
    total(data)


def test_every_prefix_of_a_valid_update_is_refused() -> None:
    full = VALID[-2]
    for end in range(len(full)):
        with pytest.raises(UnsafeUpdate):
            check_update(full[:end])


# -- structure-aware generation, and what pycrdt makes of what passes ---------------------
#
# Random bytes and bit flips almost never get past the first few fields (and found none of
# the hostile fixtures); these strategies build updates that are well-formed in outline,
# with adversarial counts, clocks, depths, content kinds and anchors into a real document.

BASE = VALID[-2]  # alice's whole document: the anchors below point into it
_BASE_DECODED = decode_update(BASE)
BASE_IDS = sorted(
    {
        (s.client, s.clock + offset)
        for structs in _BASE_DECODED.clients.values()
        for s in structs
        for offset in (0, s.length - 1)
    }
)
BASE_NEXT = {client: structs[-1].clock + structs[-1].length for client, structs in _BASE_DECODED.clients.items()}
ROOTS = ["meta", "members", "streams", "acks"]
KEYS = [f"{ALICE}/0", f"{ALICE}/1", f"{BOB}/0", f"{ALICE}/read/{BOB}", f"{BOB}/delivered/{ALICE}", ALICE, CAROL]
KEYS += sorted(META_FIELDS)


def mostly(common: Sequence[Any], rare: Sequence[Any]) -> st.SearchStrategy[Any]:
    """One of ``common`` four times in five, else one of ``rare`` (the adversarial choices)."""
    return st.sampled_from([*common] * (4 * max(1, len(rare)) // max(1, len(common)) + 1) + [*rare])


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=6),
)
plain_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def any_bytes(draw: st.DrawFn) -> bytes:
    shape = draw(mostly(["plain"], ["deep", "lying count", "odd tag"]))
    if shape == "plain":
        return any_(draw(plain_values))
    if shape == "deep":
        return nested_any(draw(st.integers(25, 40)), draw(st.sampled_from(["array", "map"])))
    if shape == "lying count":
        tag = draw(st.sampled_from([b"\x75", b"\x76", b"\x77", b"\x74"]))
        return tag + uv(draw(st.integers(2, 2**40))) + any_(draw(leaves))
    return bytes([draw(st.integers(0x60, 0x80))]) + draw(st.binary(max_size=4))


@st.composite
def contents(draw: st.DrawFn) -> Content:
    kind = draw(mostly(["any", "any", "deleted", "array"], ["type", "string", "other"]))
    if kind == "any":
        values = draw(st.lists(any_bytes(), min_size=1, max_size=3))
        return 8, uv(draw(mostly([len(values)], [0, 2**31]))) + b"".join(values)
    if kind == "deleted":
        return deleted(draw(mostly([1, 2, 3], [0, 1000, 2**31])))
    if kind == "array":
        return ARRAY_TYPE
    if kind == "type":
        ref = draw(st.integers(0, 9))
        return 7, bytes([ref]) + (vs("p") if ref in (3, 5) else b"")
    if kind == "string":
        return 4, vs(draw(st.text(min_size=1, max_size=6)))
    ref = draw(st.sampled_from([2, 3, 5, 6, 9, 0, 10, 11, 31]))
    return ref, draw(st.sampled_from([vs("{}"), uv(1) + vs("1"), vs("g") + any_({}), b""]))


@st.composite
def anchors(draw: st.DrawFn, clients: list[int]) -> tuple[int, int]:
    where = draw(mostly(["base", "own"], ["junk"]))
    if where == "base" or not clients:
        return draw(st.sampled_from(BASE_IDS))
    if where == "own":
        return draw(st.sampled_from(clients)), draw(st.integers(0, 6))
    return draw(st.sampled_from([0, 1, MAX_CLIENT, 2**53])), draw(st.sampled_from([0, 5, MAX_CLOCK, 2**31, 2**32]))


@st.composite
def structs(draw: st.DrawFn, clients: list[int]) -> bytes:
    shape = draw(mostly(["item"], ["gc", "skip"]))
    if shape != "item":
        return bytes([0 if shape == "gc" else 10]) + uv(draw(mostly([1, 3], [0, 2**31, 2**32])))
    how = draw(st.sampled_from(["root", "parent", "origin", "right", "both"]))
    content = draw(contents())
    if how == "root":
        key = draw(mostly(KEYS, [None, "k", ""]))
        return item(content, parent=draw(mostly(ROOTS, ["a", ""])), key=key)
    if how == "parent":
        return item(content, parent=draw(anchors(clients)), key=draw(mostly([None], ["k"])))
    origin = draw(anchors(clients)) if how in ("origin", "both") else None
    right = draw(anchors(clients)) if how in ("right", "both") else None
    return item(content, origin=origin, right=right)


@st.composite
def generated_updates(draw: st.DrawFn) -> bytes:
    base_clients = list(BASE_NEXT)
    clients = draw(st.lists(mostly([*base_clients, 1, 2], [MAX_CLIENT, 2**53]), max_size=3, unique=True))
    sections = []
    for client in clients:
        clock = draw(mostly([BASE_NEXT.get(client, 0), 0, 3], [MAX_CLOCK - 2, 2**31 + 5, 2**32 - 3]))
        sections.append((client, clock, draw(st.lists(structs(clients), min_size=1, max_size=4))))
    ranges = st.tuples(st.integers(0, 20), mostly([1, 2], [0, MAX_CLOCK]))
    deletes = draw(
        st.dictionaries(mostly(base_clients, [1, 2**53]), st.lists(ranges, min_size=1, max_size=3), max_size=2)
    )
    return update(sections, deletes)


CHILD = r"""
import itertools, sys
from pycrdt import Array, Doc, Map
from gigi_crdt.errors import SchemaError
from gigi_crdt.model import Conversation, HybridClock
from gigi_crdt.model.gaps import Logged, PastGaps
from gigi_crdt.model.yupdate import check_update

def read(updates, in_slices):
    doc = Doc()
    past_gaps = PastGaps(doc)
    refused = ""
    logged = []  # as a replica stores them, and loads them again
    for update in updates:
        try:
            if in_slices:  # of a struct or two, as a replica applies a large update
                slices = check_update(update, slice_bytes=4).slices
                logged.append(Logged(update, False, slices))
                past_gaps.integrate(update, gappy=False, slices=slices)
            else:
                logged.append(Logged(update, True))
                doc.apply_update(update)
        except Exception as exc:  # a clean refusal; the document must stay readable
            refused = f"{type(exc).__name__}: {exc}"
    for root in ("meta", "members", "streams", "acks"):
        values = doc.get(root, type=Map)
        values.to_py()
        for value in values.values():
            if isinstance(value, Array):
                len(value), str(value), list(value), value.to_py()
    if not refused:
        tick = itertools.count(1_700_000_000_000)
        # Loaded as stored: in the same slices (which may take what yrs refuses whole).
        conversation = Conversation.from_log(logged, "reader-peer-01", HybridClock(lambda: next(tick)))
        conversation.history(), conversation.members(), conversation.receipts()
        try:
            conversation.metadata()
        except SchemaError:
            pass
    return refused

base = bytes.fromhex(sys.stdin.readline())
for line in sys.stdin:
    if line.strip() == "abort":  # the test of this harness
        import os
        os.abort()
    in_slices, line = line.startswith("sliced "), line.removeprefix("sliced ")
    updates = [bytes.fromhex(part) for part in line.split(",")]
    try:
        refused = read(updates, in_slices) or read([base, *updates], in_slices)
        print(f"ok {refused}".replace("\n", " ").strip(), flush=True)
    except BaseException as exc:  # PanicException is a BaseException
        print(f"failed: {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
"""


class _Applier:
    """A child process that applies updates to pycrdt documents and reads them back."""

    TIMEOUT = 20.0

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": str(root)}
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root, env=env
        )
        assert process.stdin is not None
        process.stdin.write(BASE.hex() + "\n")
        return process

    def apply(self, *updates: bytes, in_slices: bool = False) -> str:
        """Fail the test if pycrdt panics, hangs or dies on ``updates`` (applied in order to a
        fresh document, and to one holding ``BASE``; ``in_slices``: each as ``PastGaps``
        applies it in the slices ``check_update`` plans) or cannot read the document after
        them; return why pycrdt refused an update, if it did (cleanly)."""
        return self.ask(("sliced " if in_slices else "") + ",".join(update.hex() for update in updates))

    def ask(self, line: str) -> str:
        if self.process is None or self.process.poll() is not None:
            self.process = self.start()
        process = self.process
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(line + "\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], self.TIMEOUT)
        if not ready:
            self.close()
            pytest.fail(f"pycrdt did not finish with an accepted update in {self.TIMEOUT} s: {line}")
        answer = process.stdout.readline().strip()
        if not answer.startswith("ok"):
            code = process.wait(self.TIMEOUT) if answer == "" else None
            self.close()
            pytest.fail(f"pycrdt on an accepted update: {answer or f'died with {code}'}: {line}")
        return answer[3:]

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.communicate()  # waits, and closes the pipes
            self.process = None


@pytest.fixture(scope="module")
def applier() -> Iterator[_Applier]:
    child = _Applier()
    yield child
    child.close()


def test_the_applier_sees_a_crash(applier: _Applier) -> None:
    """The child reports failures instead of hiding them (its own check, on our own data)."""
    assert applier.apply(VALID[0]) == ""
    assert applier.apply(b"\x01").startswith("ValueError")  # pycrdt refuses it, cleanly
    with pytest.raises(pytest.fail.Exception, match="died with -6"):
        applier.ask("abort")
    assert applier.apply(VALID[0]) == ""  # a new child


def _generated_case(applier: _Applier, updates: list[bytes]) -> None:
    accepted = []
    for data in updates:
        try:
            check_update(data)
        except UnsafeUpdate as exc:
            event("refused", str(exc).split(" ")[0])  # see --hypothesis-show-statistics
            continue
        event("accepted")
        accepted.append(data)
    if accepted:
        # Several in a row reach yrs's pending structs and delete sets. pycrdt refuses an
        # item whose parent id names a non-type item of the document: the update alone
        # cannot show that (see yupdate's docstring).
        refused = applier.apply(*accepted)
        event("pycrdt: " + (refused.split(":")[0] if refused else "applied"))
        # In slices, as a large update is applied (``model.slices``): pycrdt survives those
        # too, and refuses none of what it took whole. (It may take slices of what it
        # refused whole: a parent named before it is known to be no type.)
        refused_sliced = applier.apply(*accepted, in_slices=True)
        assert refused or not refused_sliced, refused_sliced


generated_sequences = st.lists(generated_updates(), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(generated_sequences)
def test_generated_updates_either_fail_the_check_or_apply_cleanly(applier: _Applier, updates: list[bytes]) -> None:
    _generated_case(applier, updates)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(generated_sequences)
def test_many_generated_updates_either_fail_the_check_or_apply_cleanly(applier: _Applier, updates: list[bytes]) -> None:
    _generated_case(applier, updates)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutations(), st.binary(max_size=2000)))
def test_many_mutations_only_ever_raise_unsafe_update(data: bytes) -> None:
    total(data)
