"""The sans-IO gigi-sync connection: golden vectors, a whole session, state rules, fuzzing.

Plain synchronous tests (no trio), h11-style: bytes go in, events come out, and two
``Connection`` objects joined by a fake link talk to each other. The golden vectors in
``protocols/vectors/`` are the contract other implementations test against.
"""

from __future__ import annotations

import json
import struct
from functools import cache
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigi_crdt.protocol import (
    MAX_REACHED,
    NEED_DATA,
    Announce,
    Awareness,
    AwarenessEntry,
    Close,
    CloseCode,
    Connection,
    ConnectionClosed,
    Event,
    Hello,
    Limits,
    LocalProtocolError,
    NeedData,
    Ping,
    Pong,
    RemoteProtocolError,
    State,
    SyncPart,
    SyncStep1,
    SyncStep2,
    Update,
)

VECTORS = Path(__file__).resolve().parent.parent / "protocols" / "vectors"
FUZZ = settings(max_examples=300, deadline=None)
CONV = "c0nv3rsat10n-AbCd"


# --------------------------------------------------------------------------- helpers


@cache
def manifest() -> dict[str, Any]:
    return json.loads((VECTORS / "vectors.json").read_text())  # type: ignore[no-any-return]


def vector(name: str) -> bytes:
    return bytes.fromhex((VECTORS / name).read_text().strip())


def event_from_json(data: dict[str, Any]) -> Event:
    """The event a manifest entry describes (bytes are hex strings)."""
    kind = data["type"]
    if kind == "Hello":
        return Hello(data["peer_id"], data["nickname"], data["awareness_client_id"],
                     frozenset(data["capabilities"]), data["protocol"], data["version"])  # fmt: skip
    if kind == "Announce":
        return Announce(tuple(data["conversations"]))
    if kind == "SyncStep1":
        return SyncStep1(data["conversation"], bytes.fromhex(data["state_vector"]))
    if kind == "SyncStep2":
        return SyncStep2(
            data["conversation"],
            bytes.fromhex(data["update"]),
            tuple(data.get("heads", ())),
            tuple(data.get("reached", ())),
        )
    if kind == "SyncPart":
        return SyncPart(data["conversation"], bytes.fromhex(data["update"]))
    if kind == "Update":
        return Update(data["conversation"], bytes.fromhex(data["update"]), tuple(data.get("reached", ())))
    if kind == "Awareness":
        entries = tuple(AwarenessEntry(e["client_id"], e["clock"], e["state"]) for e in data["entries"])
        return Awareness(data["conversation"], entries)
    if kind in ("Ping", "Pong"):
        return (Ping if kind == "Ping" else Pong)(data["nonce"])
    if kind == "Close":
        return Close(CloseCode(data["code"]), data["reason"])
    raise AssertionError(f"unknown event type {kind}")


def hello_event() -> Hello:
    event = event_from_json(next(c for c in manifest()["valid"] if c["file"] == "hello.hex")["event"])
    assert isinstance(event, Hello)
    return event


def drain(conn: Connection) -> list[Event | ConnectionClosed]:
    """Every event available now, up to ``NEED_DATA``."""
    events: list[Event | ConnectionClosed] = []
    while not isinstance(event := conn.next_event(), NeedData):
        events.append(event)
    return events


def feed(data: bytes, *, byte_by_byte: bool = False, eof: bool = False, conn: Connection | None = None) -> list[Any]:
    """Feed ``data`` to a (new) connection and collect the events."""
    conn = conn or Connection()
    events: list[Any] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data] if data else []
    for chunk in chunks:
        conn.receive_data(chunk)
        events += drain(conn)
    if eof:
        conn.receive_data(b"")
        events += drain(conn)
    return events


def outcome(data: bytes, *, byte_by_byte: bool, eof: bool) -> tuple[list[Any], int | None]:
    """Events read, and the close code of the error that stopped reading (``None``: no error).

    Fails the test if anything but ``RemoteProtocolError`` escapes.
    """
    conn = Connection()
    events: list[Any] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data] if data else []
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            while not isinstance(event := conn.next_event(), NeedData):
                events.append(event)
        if eof:
            conn.receive_data(b"")
            while not isinstance(event := conn.next_event(), NeedData):
                events.append(event)
    except RemoteProtocolError as exc:
        error: RemoteProtocolError | None = exc
    except Exception as exc:  # noqa: BLE001 - the point of the fuzzer
        pytest.fail(f"{type(exc).__name__} escaped the decoder: {exc!r}")
    else:
        return events, None
    assert error is not None
    assert isinstance(error.code, CloseCode)
    assert conn.their_state is State.FAILED
    return events, int(error.code)


def frame(fields: Any) -> bytes:
    body = msgpack.packb(fields, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


VALID = manifest()["valid"]
INVALID = manifest()["invalid"]


# --------------------------------------------------------------------------- golden vectors


def test_manifest_lists_every_vector_file() -> None:
    listed = {c["file"] for c in VALID} | {c["file"] for c in INVALID}
    on_disk = {p.name for p in VECTORS.glob("*.hex")}
    assert listed == on_disk
    assert {"hello.hex", "announce.hex", "sync-step1.hex", "sync-step2.hex", "update.hex", "awareness.hex",
            "ping.hex", "pong.hex", "close.hex"} <= listed  # fmt: skip


@pytest.mark.parametrize("case", VALID, ids=lambda c: c["file"])
def test_valid_vector_is_exactly_one_frame(case: dict[str, Any]) -> None:
    data = vector(case["file"])
    (length,) = struct.unpack(">I", data[:4])
    assert len(data) == 4 + length


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", VALID, ids=lambda c: c["file"])
def test_valid_vector_decodes(case: dict[str, Any], byte_by_byte: bool) -> None:
    conn = Connection()
    for before in case["preceded_by"]:
        feed(vector(before), conn=conn)
    events = feed(vector(case["file"]), byte_by_byte=byte_by_byte, conn=conn)
    assert events == [event_from_json(case["event"])]


@pytest.mark.parametrize("case", VALID, ids=lambda c: c["file"])
def test_valid_vector_encodes(case: dict[str, Any]) -> None:
    conn = Connection()
    if case["preceded_by"]:
        conn.send(hello_event())
    assert conn.send(event_from_json(case["event"])) == vector(case["file"])


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", INVALID, ids=lambda c: c["file"])
def test_invalid_vector_is_rejected(case: dict[str, Any], byte_by_byte: bool) -> None:
    conn = Connection()
    for before in case["preceded_by"]:
        feed(vector(before), conn=conn)
    with pytest.raises(RemoteProtocolError) as info:
        feed(vector(case["file"]), byte_by_byte=byte_by_byte, eof=case["end_of_stream"], conn=conn)
    assert info.value.code == case["close_code"]


def test_version_mismatch_reason_names_both_versions() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        feed(vector("invalid-version.hex"))
    assert info.value.code is CloseCode.VERSION_MISMATCH
    assert "gigi-sync v2" in info.value.reason
    assert "gigi-sync v1" in info.value.reason


# --------------------------------------------------------------------------- a whole session


class FakeLink:
    """Two connections joined by an in-memory byte pipe in each direction."""

    def __init__(self) -> None:
        self.a = Connection()
        self.b = Connection()

    def a_says(self, *events: Event) -> list[Any]:
        return feed(b"".join(self.a.send(e) for e in events), conn=self.b)

    def b_says(self, *events: Event) -> list[Any]:
        return feed(b"".join(self.b.send(e) for e in events), conn=self.a)


def test_whole_session_both_directions() -> None:
    link = FakeLink()
    hello_a = Hello("alice-peer-7Q2x", "Alice", 11)
    hello_b = Hello("bob-peer-Zk81Wm", "Bob", 22, frozenset({"x-files"}))
    sv = vector("sync-step1.hex")  # any realistic payloads will do; reuse the vectors'
    step1 = feed(vector("hello.hex") + sv)[1]
    step2 = feed(vector("hello.hex") + vector("sync-step2.hex"))[1]
    assert isinstance(step1, SyncStep1)
    assert isinstance(step2, SyncStep2)

    # Both sides say hello at once: there is no client or server role.
    assert link.a_says(hello_a) == [hello_a]
    assert link.b_says(hello_b) == [hello_b]
    assert link.a.their_hello == hello_b
    assert link.b.their_hello == hello_a
    assert (link.a.our_state, link.a.their_state) == (State.OPEN, State.OPEN)

    # Announce, then step 1 per shared conversation, and a fetch of an unknown one.
    fetch = SyncStep1("team_room-00000042", b"\x00")
    assert link.a_says(Announce((CONV,)), SyncStep1(CONV, step1.state_vector)) == [
        Announce((CONV,)), SyncStep1(CONV, step1.state_vector)]  # fmt: skip
    assert link.b_says(Announce((CONV, fetch.conversation)), SyncStep1(CONV, b"\x00")) == [
        Announce((CONV, fetch.conversation)), SyncStep1(CONV, b"\x00")]  # fmt: skip
    assert link.a_says(fetch) == [fetch]

    # Step 2 replies, the empty reply to a fetch, live updates, presence, keep-alive.
    replies = [SyncStep2(CONV, step2.update), SyncStep2(fetch.conversation, b"\x00\x00")]
    assert link.b_says(*replies) == replies
    presence_a = Awareness(CONV, (AwarenessEntry(11, 1, {"typing": True}),))
    presence_b = Awareness(CONV, (AwarenessEntry(22, 5, None),))
    traffic_a = [SyncStep2(CONV, step2.update), Update(CONV, step2.update), presence_a, Ping(1), Pong(9)]
    traffic_b = [Update(CONV, b"\x00\x00"), presence_b, Ping(9), Pong(1)]
    assert link.a_says(*traffic_a) == traffic_a
    assert link.b_says(*traffic_b) == traffic_b

    # A closes; B answers with its own Close; each then ends its stream.
    assert link.a_says(Close(CloseCode.NORMAL, "bye")) == [Close(CloseCode.NORMAL, "bye")]
    assert link.b.their_state is State.CLOSED
    assert link.b_says(Close(CloseCode.GOING_AWAY)) == [Close(CloseCode.GOING_AWAY)]
    for conn in (link.a, link.b):
        assert conn.our_state is State.CLOSED
        conn.receive_data(b"")
        assert drain(conn) == [ConnectionClosed(clean=True)]
        assert conn.next_event() is NEED_DATA


def test_refusal_before_hello() -> None:
    link = FakeLink()
    link.a_says(Hello("alice-peer-7Q2x", "Alice", 1))
    refusal = Close(CloseCode.FORBIDDEN, "connected to ourselves")
    assert link.b_says(refusal) == [refusal]
    assert link.a.their_state is State.CLOSED
    assert link.b.our_state is State.CLOSED


# --------------------------------------------------------------------------- state machine rules


def test_no_frame_before_hello() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        feed(frame([5, 1]))
    assert info.value.code is CloseCode.PROTOCOL_ERROR
    for event in (Ping(1), Announce(()), Update(CONV, b"\x00\x00")):
        with pytest.raises(LocalProtocolError):
            Connection().send(event)


def test_awareness_before_hello_is_rejected() -> None:
    # No client id is known yet, but the frame is refused for coming before HELLO anyway.
    with pytest.raises(RemoteProtocolError) as info:
        feed(vector("awareness.hex"))
    assert info.value.code is CloseCode.PROTOCOL_ERROR


def test_second_hello_is_an_error() -> None:
    with pytest.raises(RemoteProtocolError):
        feed(vector("hello.hex") * 2)
    conn = Connection()
    conn.send(hello_event())
    with pytest.raises(LocalProtocolError):
        conn.send(hello_event())


def test_close_before_hello_is_allowed() -> None:
    assert feed(vector("close-before-hello.hex"), eof=True) == [
        Close(CloseCode.FORBIDDEN, "connected to ourselves"), ConnectionClosed(clean=True)]  # fmt: skip
    conn = Connection()
    conn.send(Close(CloseCode.VERSION_MISMATCH, "no"))
    assert conn.our_state is State.CLOSED


def test_send_after_close_is_a_local_error() -> None:
    conn = Connection()
    conn.send(hello_event())
    conn.send(Close(CloseCode.NORMAL))
    for event in (Ping(1), hello_event(), Close(CloseCode.NORMAL)):
        with pytest.raises(LocalProtocolError):
            conn.send(event)
    assert conn.our_state is State.CLOSED


def test_failed_send_does_not_change_state() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError):
        conn.send(Ping(1))
    assert conn.our_state is State.IDLE
    with pytest.raises(LocalProtocolError):
        conn.send(SyncStep1(CONV, b"\x05"))  # not a state vector
    assert conn.our_state is State.IDLE


def test_frame_after_peer_close_is_an_error() -> None:
    with pytest.raises(RemoteProtocolError):
        feed(vector("hello.hex") + vector("close.hex") + vector("ping.hex"))


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 6])
def test_eof_mid_frame_is_an_error(cut: int) -> None:
    data = vector("hello.hex") + vector("ping.hex")[:cut]
    conn = Connection()
    assert feed(data, conn=conn) == [hello_event()]
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.code is CloseCode.PROTOCOL_ERROR


def test_eof_after_complete_frames_yields_connection_closed_once() -> None:
    conn = Connection()
    conn.receive_data(vector("hello.hex") + vector("ping.hex"))
    conn.receive_data(b"")
    assert drain(conn) == [hello_event(), Ping(42), ConnectionClosed(clean=False)]
    for _ in range(3):
        assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")  # a second end of stream is harmless
    assert conn.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"late")
    assert feed(b"", eof=True) == [ConnectionClosed(clean=False)]


def test_partial_frames_are_never_half_read() -> None:
    session = session_bytes()
    whole = feed(session, eof=True)
    assert whole[-1] == ConnectionClosed(clean=True)
    assert feed(session, byte_by_byte=True, eof=True) == whole
    conn = Connection()
    conn.receive_data(vector("hello.hex")[:-1])
    for _ in range(3):
        assert conn.next_event() is NEED_DATA
    conn.receive_data(vector("hello.hex")[-1:])
    assert conn.next_event() == hello_event()


def test_a_frame_under_way_tells_how_much_of_it_is_in() -> None:
    hello, ping = vector("hello.hex"), vector("ping.hex")
    conn = Connection()
    seen = []
    for byte in hello + ping[:5]:
        conn.receive_data(bytes([byte]))
        seen.append(conn.frame_under_way())
    header = struct.calcsize(">I")
    assert seen[: header - 1] == [None] * (header - 1)  # no length known yet
    assert seen[header - 1 : len(hello)] == [(n, len(hello)) for n in range(header, len(hello) + 1)]
    assert seen[len(hello) :] == [(len(hello), len(hello))] * 5  # complete until read
    assert conn.next_event() == hello_event()
    assert conn.frame_under_way() == (5, len(ping))  # the next one
    bad = Connection(Limits(max_frame_bytes=100))
    bad.receive_data(struct.pack(">I", 101))
    assert bad.frame_under_way() is None  # next_event says what is wrong with it
    with pytest.raises(RemoteProtocolError):
        bad.next_event()


def test_errors_are_sticky() -> None:
    conn = Connection()
    conn.receive_data(vector("ping.hex"))
    with pytest.raises(RemoteProtocolError) as first:
        conn.next_event()
    conn.receive_data(vector("hello.hex"))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as again:
            conn.next_event()
        assert again.value is first.value
    assert conn.their_state is State.FAILED


def test_oversized_frame_is_refused_from_its_header() -> None:
    conn = Connection(Limits(max_frame_bytes=100))
    conn.receive_data(struct.pack(">I", 101))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.code is CloseCode.FRAME_TOO_LARGE
    with pytest.raises(LocalProtocolError) as local:
        Connection(Limits(max_frame_bytes=100)).send(Close(CloseCode.NORMAL, "x" * 200))
    assert local.value.code is CloseCode.FRAME_TOO_LARGE


def test_too_many_conversations_is_a_limit_breach() -> None:
    conn = Connection(Limits(max_conversations=2))
    data = vector("hello.hex") + frame([2, [CONV, CONV, CONV]])
    with pytest.raises(RemoteProtocolError) as info:
        feed(data, conn=conn)
    assert info.value.code is CloseCode.LIMIT_EXCEEDED


def test_unknown_close_code_still_closes_and_long_reasons_are_cut() -> None:
    events = feed(vector("hello.hex") + frame([7, 4999, "x" * 600]))
    assert events[1] == Close(CloseCode.PROTOCOL_ERROR, "x" * 512)


def test_hello_capabilities_are_a_set() -> None:
    hello = hello_event()
    data = frame([1, hello.protocol, hello.version, hello.peer_id, hello.nickname, hello.awareness_client_id,
                  ["x-b", "x-a", "x-b"]])  # fmt: skip
    assert feed(data)[0].capabilities == frozenset({"x-a", "x-b"})


def test_integers_of_any_msgpack_width_are_accepted() -> None:
    body = b"\x92\x05\xcf" + (42).to_bytes(8, "big")  # [5, uint64 42]
    assert feed(vector("hello.hex") + struct.pack(">I", len(body)) + body)[1] == Ping(42)


# --------------------------------------------------------------------------- found by review, fixed


def test_boolean_frame_type_is_rejected() -> None:
    hello = hello_event()
    data = frame([True, hello.protocol, hello.version, hello.peer_id, hello.nickname, hello.awareness_client_id, []])
    with pytest.raises(RemoteProtocolError):
        feed(data)


@pytest.mark.parametrize("fields", [
    [1, "gigi-sync", 2, "alice-peer-7Q2x", "Alice", 1, [], {"new": "field"}],
    [1, "gigi-sync", 2, "alice-peer-7Q2x", "Alice", 1, [], "extra"],
    [1, "gigi-sync", 2, "alice-peer-7Q2x"],
    [1, "other-sync", 7],
])  # fmt: skip
def test_any_foreign_hello_is_a_version_mismatch(fields: list[Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        feed(frame(fields))
    assert info.value.code is CloseCode.VERSION_MISMATCH


@pytest.mark.parametrize("event", [Ping(2**64), Close(CloseCode.NORMAL, "\udc00")], ids=["nonce", "surrogate"])
def test_send_raises_only_local_protocol_error(event: Event) -> None:
    conn = Connection()
    conn.send(hello_event())
    with pytest.raises(LocalProtocolError):
        conn.send(event)


@pytest.mark.parametrize("event", [
    SyncStep1("bad id", b"\x00"),
    Announce(("x",)),
    Ping(-1),
    Awareness(CONV, (AwarenessEntry(999, 1, {}),)),
])  # fmt: skip
def test_send_refuses_what_the_peer_would_reject(event: Event) -> None:
    conn = Connection()
    conn.send(hello_event())
    with pytest.raises(LocalProtocolError):
        conn.send(event)


# --------------------------------------------------------------------------- fuzzing


def session_bytes() -> bytes:
    """One side's whole valid session, built from the valid vectors."""
    skip = {"hello.hex", "hello-capabilities.hex", "close.hex", "close-before-hello.hex"}
    middle = [c["file"] for c in VALID if c["file"] not in skip]
    return b"".join(vector(name) for name in ["hello.hex", *middle, "close.hex"])


SESSION = session_bytes()

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
)


def mutate(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    buf = bytearray(data)
    for op, *args in mutations:
        pos = args[0] % (len(buf) + 1)
        if op == "flip" and pos < len(buf):
            buf[pos] ^= 1 << args[1]
        elif op == "insert":
            buf[pos:pos] = args[1]
        elif op == "delete":
            del buf[pos : pos + args[1]]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


def check_total(data: bytes, eof: bool) -> None:
    whole = outcome(data, byte_by_byte=False, eof=eof)
    bytewise = outcome(data, byte_by_byte=True, eof=eof)
    assert bytewise == whole  # feeding in pieces changes nothing, not even the error


@FUZZ
@given(data=st.binary(max_size=512), eof=st.booleans())
def test_fuzz_random_bytes(data: bytes, eof: bool) -> None:
    check_total(data, eof)


@FUZZ
@given(data=st.binary(max_size=256), eof=st.booleans())
def test_fuzz_random_bytes_after_hello(data: bytes, eof: bool) -> None:
    check_total(vector("hello.hex") + data, eof)


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=4), eof=st.booleans())
def test_fuzz_mutated_session(mutations: list[tuple[Any, ...]], eof: bool) -> None:
    check_total(mutate(SESSION, mutations), eof)


@FUZZ
@given(items=st.lists(st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=20), st.binary(max_size=20),
                                 st.booleans(), st.none(), st.floats(), st.lists(st.text(max_size=20), max_size=3)),
                      max_size=8),
       kind=st.integers(0, 8))  # fmt: skip
def test_fuzz_structured_frames(items: list[Any], kind: int) -> None:
    check_total(vector("hello.hex") + frame([kind, *items]), eof=True)


head_value = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=300), st.floats(), st.booleans(), st.none())


head_key = st.one_of(st.text(max_size=20), st.integers(0, 2**32))


@FUZZ
@given(heads=st.one_of(st.lists(st.dictionaries(head_key, head_value, max_size=18), max_size=3), head_value))
def test_fuzz_heads_beside_a_step2(heads: Any) -> None:
    step2 = vector("sync-step2.hex")
    fields = msgpack.unpackb(step2[4:], raw=False)
    check_total(vector("hello.hex") + frame([*fields, heads]), eof=True)


@FUZZ
@given(reached=st.one_of(st.lists(st.one_of(st.text(max_size=70), head_value), max_size=70), head_value))
def test_fuzz_reached_beside_an_update(reached: Any) -> None:
    update = vector("update.hex")
    fields = msgpack.unpackb(update[4:], raw=False)
    check_total(vector("hello.hex") + frame([*fields, reached]), eof=True)


@pytest.mark.parametrize("count", [MAX_REACHED, MAX_REACHED + 1])
def test_an_update_names_at_most_max_reached_peers(count: int) -> None:
    reached = tuple(f"peer-{i:04d}-xyz" for i in range(count))
    fields = msgpack.unpackb(vector("update.hex")[4:], raw=False)
    events, code = outcome(vector("hello.hex") + frame([*fields, list(reached)]), byte_by_byte=False, eof=False)
    if count <= MAX_REACHED:
        assert code is None
        assert events[-1] == Update(CONV, events[-1].update, reached)
        sender = Connection()
        sender.send(hello_event())
        assert sender.send(events[-1]) == frame([*fields, list(reached)])
    else:
        assert code == CloseCode.PROTOCOL_ERROR
