"""Total y-protocols codec: round trips, byte-compatibility with pycrdt, rejections, fuzzing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigi_crdt.protocol.errors import CloseCode, LocalProtocolError, RemoteProtocolError
from gigi_crdt.protocol.yproto import (
    MAX_CLIENT_ID,
    MAX_CLOCK,
    AwarenessEntry,
    AwarenessLimits,
    SyncKind,
    decode_awareness,
    decode_awareness_update,
    decode_state_vector,
    decode_sync,
    encode_awareness,
    encode_awareness_update,
    encode_state_vector,
    encode_sync,
    read_varbytes,
    read_varuint,
    write_varbytes,
    write_varuint,
)

FUZZ = settings(max_examples=300, deadline=None)
LIMITS = AwarenessLimits()
BIG_LIMITS = AwarenessLimits(max_entries=64, max_state_bytes=1 << 20, max_depth=64)
MAX_PAYLOAD = 1 << 20


def _edited_doc(client_ids: list[int]) -> pycrdt.Doc[Any]:
    """A doc holding edits from each of ``client_ids`` (merged into a doc of its own)."""
    merged: pycrdt.Doc[Any] = pycrdt.Doc(client_id=9)
    merged["t"] = pycrdt.Text()
    for client_id in client_ids:
        doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
        doc["t"] = text = pycrdt.Text()
        text += "hello" * (client_id % 7 + 1)
        merged.apply_update(doc.get_update())
    return merged


def _decode_sv(data: bytes) -> Any:
    return decode_state_vector(data)


def _decode_sync(data: bytes) -> Any:
    return decode_sync(data, max_payload=MAX_PAYLOAD)


def _decode_awareness(data: bytes) -> Any:
    return decode_awareness(data, allowed_client_ids=None, limits=LIMITS)


def _decode_awareness_update(data: bytes) -> Any:
    return decode_awareness_update(data, allowed_client_ids=None, limits=LIMITS)


DECODERS: list[Callable[[bytes], Any]] = [_decode_sv, _decode_sync, _decode_awareness, _decode_awareness_update]


def _total(decode: Callable[[bytes], Any], data: bytes) -> None:
    """Assert ``decode`` either returns or raises RemoteProtocolError."""
    try:
        decode(data)
    except RemoteProtocolError:
        pass
    except Exception as exc:  # noqa: BLE001 - the point is to catch anything else
        pytest.fail(f"{decode.__name__} leaked {type(exc).__name__}: {exc}")


def _rejects(data: bytes, decode: Callable[[bytes], Any], code: CloseCode = CloseCode.PROTOCOL_ERROR) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    assert info.value.code == code
    return info.value.reason


# --------------------------------------------------------------------------- varuint / varbytes


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"), (2**14, b"\x80\x80\x01")],
)
def test_varuint_known_encodings(value: int, encoded: bytes) -> None:
    assert write_varuint(value) == encoded
    assert pycrdt.write_var_uint(value) == encoded
    assert read_varuint(encoded, 0) == (value, len(encoded))


@given(st.integers(min_value=0, max_value=2**70 - 1), st.binary(max_size=4))
def test_varuint_round_trip(value: int, suffix: bytes) -> None:
    encoded = write_varuint(value)
    assert len(encoded) <= 10
    assert read_varuint(b"xy" + encoded + suffix, 2) == (value, 2 + len(encoded))
    assert read_varuint(memoryview(encoded + suffix), 0) == (value, len(encoded))


def test_varuint_too_long() -> None:
    assert read_varuint(b"\xff" * 9 + b"\x7f", 0) == (2**70 - 1, 10)
    with pytest.raises(RemoteProtocolError, match="varint too long"):
        read_varuint(b"\xff" * 10 + b"\x01", 0)
    with pytest.raises(RemoteProtocolError, match="varint too long"):
        read_varuint(b"\x80" * 11, 0)


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff", b"\x01"])
def test_varuint_truncated(data: bytes) -> None:
    offset = 1 if data == b"\x01" else 0
    with pytest.raises(RemoteProtocolError, match="truncated"):
        read_varuint(data, offset)


def test_write_varuint_negative() -> None:
    with pytest.raises(LocalProtocolError):
        write_varuint(-1)


def test_varbytes() -> None:
    encoded = write_varbytes(b"abc")
    assert encoded == b"\x03abc"
    assert read_varbytes(encoded + b"z", 0, 3) == (b"abc", 4)
    assert read_varbytes(b"\x00", 0, 0) == (b"", 1)
    assert read_varbytes(memoryview(encoded), 0, 10) == (b"abc", 4)


def test_varbytes_longer_than_data() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        read_varbytes(b"\x05abc", 0, 100)
    assert info.value.code == CloseCode.PROTOCOL_ERROR


def test_varbytes_over_limit() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        read_varbytes(b"\x04abcd", 0, 3)
    assert info.value.code == CloseCode.LIMIT_EXCEEDED


# --------------------------------------------------------------------------- state vectors


def test_state_vector_matches_pycrdt() -> None:
    clients = [5, 300, 2**40, 7, 1000, MAX_CLIENT_ID]
    doc = _edited_doc(clients)
    state = doc.get_state()
    decoded = decode_state_vector(state)
    assert set(decoded) == set(clients)
    assert all(clock > 0 for clock in decoded.values())
    # yrs writes clients in hash-map order; we write them sorted descending, as Yjs does. Same
    # bytes up to entry order; decode -> encode is canonical.
    ours = encode_state_vector(decoded)
    assert len(ours) == len(state)
    assert sorted(ours) == sorted(state)
    assert decode_state_vector(ours) == decoded
    assert list(decode_state_vector(ours)) == sorted(clients, reverse=True)
    assert encode_state_vector(decode_state_vector(ours)) == ours
    # ...and pycrdt accepts our encoding.
    assert doc.get_update(ours) == doc.get_update(state)


def test_single_client_state_vector_is_byte_identical() -> None:
    doc = _edited_doc([2**40 + 3])
    state = doc.get_state()
    assert encode_state_vector(decode_state_vector(state)) == state


def test_empty_doc_state_vector() -> None:
    assert pycrdt.Doc().get_state() == b"\x00"
    assert decode_state_vector(b"\x00") == {}
    assert encode_state_vector({}) == b"\x00"


@given(st.dictionaries(st.integers(0, MAX_CLIENT_ID), st.integers(0, MAX_CLOCK), max_size=20))
def test_state_vector_round_trip(state: dict[int, int]) -> None:
    encoded = encode_state_vector(state)
    assert decode_state_vector(encoded) == state
    assert encode_state_vector(decode_state_vector(encoded)) == encoded


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x01\x05", "exceeds the data"),  # count says 1, entry cannot fit
        (b"\x01\x85\x80", "truncated"),  # count says 1, client varint cut short
        (b"\x02\x05\x01", "exceeds the data"),  # count larger than remaining bytes allow
        (b"\x02\x05\x01\x05\x02", "duplicate"),
        (b"\x01\x05\x01\x00", "trailing"),
        (b"\x00\x00", "trailing"),
        (b"\x01" + write_varuint(2**53) + b"\x01", "client id"),
        (b"\x01\x05" + write_varuint(2**32), "clock"),
        (b"\xff" * 11, "varint too long"),
    ],
)
def test_state_vector_rejects(data: bytes, reason: str) -> None:
    assert reason in _rejects(data, _decode_sv)


def test_encode_state_vector_rejects_out_of_range() -> None:
    for bad in ({-1: 1}, {2**53: 1}, {1: 2**32}, {1: -1}):
        with pytest.raises(LocalProtocolError):
            encode_state_vector(bad)


# --------------------------------------------------------------------------- sync


def test_sync_step1_matches_pycrdt() -> None:
    doc = _edited_doc([3, 2**33, 77])
    message = pycrdt.create_sync_message(doc)
    kind, payload = decode_sync(message, max_payload=MAX_PAYLOAD)
    assert kind is SyncKind.STEP1
    assert payload == doc.get_state()
    assert encode_sync(kind, payload) == message


def test_sync_step2_and_update_match_pycrdt() -> None:
    doc = _edited_doc([3, 4])
    update = doc.get_update()
    step2 = pycrdt.handle_sync_message(pycrdt.create_sync_message(pycrdt.Doc())[1:], doc)
    assert step2 is not None
    for kind, message in [
        (SyncKind.STEP2, step2),
        (SyncKind.UPDATE, pycrdt.create_update_message(update)),
    ]:
        assert decode_sync(message, max_payload=MAX_PAYLOAD) == (kind, update)
        assert encode_sync(kind, update) == message


def test_pycrdt_handles_our_sync_messages() -> None:
    source = _edited_doc([11, 12])
    target: pycrdt.Doc[Any] = pycrdt.Doc()
    target["t"] = text = pycrdt.Text()
    step1 = encode_sync(SyncKind.STEP1, target.get_state())
    reply = pycrdt.handle_sync_message(step1[1:], source)
    assert reply is not None
    kind, payload = decode_sync(reply, max_payload=MAX_PAYLOAD)
    assert kind is SyncKind.STEP2
    assert pycrdt.handle_sync_message(encode_sync(kind, payload)[1:], target) is None
    assert str(text) == str(source["t"])


def test_sync_large_payload_round_trip() -> None:
    payload = bytes(range(256)) * 1000
    message = encode_sync(SyncKind.UPDATE, payload)
    assert message == pycrdt.create_update_message(payload)
    assert decode_sync(message, max_payload=len(payload)) == (SyncKind.UPDATE, payload)


@given(st.sampled_from([SyncKind.STEP2, SyncKind.UPDATE]), st.binary(min_size=1, max_size=500))
def test_sync_round_trip(kind: SyncKind, payload: bytes) -> None:
    message = encode_sync(kind, payload)
    assert decode_sync(message, max_payload=len(payload)) == (kind, payload)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x01\x00\x01\x00", "expected a sync message"),
        (b"\x02\x00\x01\x00", "expected a sync message"),
        (b"\x00\x03\x01\x00", "unknown sync kind"),
        (b"\x00\x80\x01\x01\x00", "unknown sync kind"),
        (b"\x00\x02\x03ab", "remaining"),
        (b"\x00\x02", "truncated"),
        (b"\x00\x02\x02ab\x00", "trailing"),
        (b"\x00\x00\x00", "empty STEP1"),
        (b"\x00\x02\x00", "empty UPDATE"),
        (b"\x00\x00\x01\x01", "exceeds the data"),  # STEP1 payload is not a state vector
        (b"\x00\x00\x02\x00\x00", "trailing"),  # STEP1 state vector with trailing bytes
    ],
)
def test_sync_rejects(data: bytes, reason: str) -> None:
    assert reason in _rejects(data, _decode_sync)


def test_sync_payload_limit() -> None:
    message = encode_sync(SyncKind.UPDATE, b"x" * 101)
    assert decode_sync(message, max_payload=101)[1] == b"x" * 101
    _rejects(message, lambda data: decode_sync(data, max_payload=100), CloseCode.LIMIT_EXCEEDED)


def test_encode_sync_rejects_bad_input() -> None:
    with pytest.raises(LocalProtocolError):
        encode_sync(SyncKind.UPDATE, b"")
    with pytest.raises(LocalProtocolError):
        encode_sync(SyncKind.STEP1, b"\x01")
    with pytest.raises(LocalProtocolError):
        encode_sync(7, b"\x00")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- awareness


def _pycrdt_awareness(state: dict[str, Any] | None, client_id: int = 1234) -> tuple[bytes, int]:
    awareness = pycrdt.Awareness(pycrdt.Doc(client_id=client_id))
    awareness.set_local_state({"first": True})
    awareness.set_local_state(state)
    return awareness.encode_awareness_update([client_id]), client_id


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"user": {"name": "Zoë 🦊", "color": "#f00"}, "cursor": [1, 2.5, None, True, False], "n": -3},
        {"typing": True, "conversation": "abc", "esc": 'quote " backslash \\ [{'},
        None,
    ],
)
def test_awareness_matches_pycrdt(state: dict[str, Any] | None) -> None:
    update, client_id = _pycrdt_awareness(state)
    entries = decode_awareness_update(update, allowed_client_ids=frozenset({client_id}), limits=LIMITS)
    assert entries == [AwarenessEntry(client_id, 2, state)]
    assert encode_awareness_update(entries) == update
    message = encode_awareness(entries)
    assert message == pycrdt.create_awareness_message(update)
    assert decode_awareness(message, allowed_client_ids=None, limits=LIMITS) == entries


def test_pycrdt_applies_our_awareness() -> None:
    awareness = pycrdt.Awareness(pycrdt.Doc(client_id=1))
    state = {"user": {"name": "Zoë"}, "n": 1}
    awareness.apply_awareness_update(encode_awareness_update([AwarenessEntry(77, 3, state)]), "remote")
    assert awareness.states[77] == state
    awareness.apply_awareness_update(encode_awareness_update([AwarenessEntry(77, 4, None)]), "remote")
    assert 77 not in awareness.states


def test_offline_entry_is_json_null() -> None:
    assert encode_awareness_update([AwarenessEntry(5, 2, None)]) == b"\x01\x05\x02\x04null"


def test_awareness_accepts_non_ascii_utf8() -> None:
    # JSON.stringify (Yjs) writes non-ASCII raw, not \\u-escaped.
    raw = '{"name":"Zoë 🦊"}'.encode()
    update = b"\x01\x05\x02" + write_varbytes(raw)
    assert decode_awareness_update(update, allowed_client_ids=None, limits=LIMITS) == [
        AwarenessEntry(5, 2, {"name": "Zoë 🦊"})
    ]


def test_awareness_empty_update() -> None:
    assert decode_awareness(encode_awareness([]), allowed_client_ids=None, limits=LIMITS) == []


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)
_entries = st.lists(
    st.builds(
        AwarenessEntry,
        st.integers(0, MAX_CLIENT_ID),
        st.integers(0, MAX_CLOCK),
        st.none() | st.dictionaries(st.text(max_size=10), _json, max_size=5),
    ),
    max_size=6,
    unique_by=lambda entry: entry.client_id,
)


@FUZZ
@given(_entries)
def test_awareness_round_trip(entries: list[AwarenessEntry]) -> None:
    message = encode_awareness(entries)
    assert decode_awareness(message, allowed_client_ids=None, limits=BIG_LIMITS) == entries
    allowed = frozenset(entry.client_id for entry in entries)
    assert decode_awareness(message, allowed_client_ids=allowed, limits=BIG_LIMITS) == entries


def _entry(state: bytes, client_id: int = 5, clock: int = 1) -> bytes:
    return write_varuint(client_id) + write_varuint(clock) + write_varbytes(state)


def _update(*entries: bytes) -> bytes:
    return write_varuint(len(entries)) + b"".join(entries)


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (b"", "truncated"),
        (_update(_entry(b"")), "not JSON"),  # pycrdt reads "" as offline; Yjs's JSON.parse throws
        (_update(_entry(b"{")), "not JSON"),
        (_update(_entry(b"[]")), "object or null"),
        (_update(_entry(b"1")), "object or null"),
        (_update(_entry(b'"x"')), "object or null"),
        (_update(_entry(b'{"a":NaN}')), "not JSON"),
        (_update(_entry(b'{"a":-Infinity}')), "not JSON"),
        (_update(_entry(b'{"a":1e999}')), "not JSON"),
        (_update(_entry(b'{"a":"\\ud800"}')), "surrogate"),
        (_update(_entry(b'{"\\udfff":1}')), "surrogate"),
        (_update(_entry(b'{"a":"\xff"}')), "UTF-8"),
        (_update(_entry(b'{"a":"\xed\xa0\x80"}')), "UTF-8"),  # UTF-8-encoded surrogate
        (_update(_entry(b"{}", client_id=2**53)), "client id"),
        (_update(_entry(b"{}", clock=2**32)), "clock"),
        (_update(_entry(b"{}", client_id=5), _entry(b"null", client_id=5, clock=2)), "duplicate"),
        (_update(_entry(b"{}")) + b"\x00", "trailing"),
        (b"\x02" + _entry(b"{}"), "exceeds the data"),
        (b"\x01\x05\x01\x05{}", "remaining"),
    ],
)
def test_awareness_rejects(update: bytes, reason: str) -> None:
    assert reason in _rejects(update, _decode_awareness_update)
    assert reason in _rejects(b"\x01" + write_varbytes(update), _decode_awareness)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x03\x01\x05\x01", "expected an awareness message"),
        (b"\x01\x09\x01\x05\x01", "remaining"),
        (b"\x01" + write_varbytes(_update(_entry(b"{}"))) + b"\x00", "trailing"),
    ],
)
def test_awareness_message_rejects(data: bytes, reason: str) -> None:
    assert reason in _rejects(data, _decode_awareness)


def test_awareness_foreign_client_is_forbidden() -> None:
    good = _entry(b"{}", client_id=5)
    bad = _entry(b"{}", client_id=6)
    allowed = frozenset({5})
    assert decode_awareness_update(_update(good), allowed_client_ids=allowed, limits=LIMITS)
    for update in (_update(bad), _update(good, bad), _update(bad, good)):
        _rejects(
            update,
            lambda data: decode_awareness_update(data, allowed_client_ids=allowed, limits=LIMITS),
            CloseCode.FORBIDDEN,
        )
    _rejects(
        _update(good),
        lambda data: decode_awareness_update(data, allowed_client_ids=frozenset(), limits=LIMITS),
        CloseCode.FORBIDDEN,
    )


def test_awareness_no_partial_result() -> None:
    """pycrdt applies the good entries before failing on a bad one; we return nothing."""
    update = _update(_entry(b'{"a":1}', client_id=1), _entry(b"{", client_id=2))
    _rejects(update, _decode_awareness_update)
    awareness = pycrdt.Awareness(pycrdt.Doc(client_id=99))
    with pytest.raises(ValueError):  # noqa: PT011 - documents pycrdt's behaviour
        awareness.apply_awareness_update(update, "remote")
    assert awareness.states.get(1) == {"a": 1}


def test_awareness_entry_limit() -> None:
    limits = AwarenessLimits(max_entries=2)
    two = _update(_entry(b"{}", client_id=1), _entry(b"{}", client_id=2))
    three = _update(_entry(b"{}", client_id=1), _entry(b"{}", client_id=2), _entry(b"{}", client_id=3))
    assert len(decode_awareness_update(two, allowed_client_ids=None, limits=limits)) == 2
    _rejects(
        three,
        lambda data: decode_awareness_update(data, allowed_client_ids=None, limits=limits),
        CloseCode.LIMIT_EXCEEDED,
    )
    # A huge count is refused on the limit before anything else is read.
    _rejects(write_varuint(2**60), _decode_awareness_update, CloseCode.LIMIT_EXCEEDED)


def _decoder_with(limits: AwarenessLimits) -> Callable[[bytes], list[AwarenessEntry]]:
    def decode(data: bytes) -> list[AwarenessEntry]:
        return decode_awareness_update(data, allowed_client_ids=None, limits=limits)

    return decode


def test_awareness_state_size_limit() -> None:
    limits = AwarenessLimits(max_state_bytes=20)
    fits = b'{"a":"' + b"x" * 12 + b'"}'
    assert len(fits) == 20
    decode = _decoder_with(limits)
    assert decode(_update(_entry(fits)))[0].state == {"a": "x" * 12}
    _rejects(_update(_entry(b'{"a":"' + b"x" * 13 + b'"}')), decode, CloseCode.LIMIT_EXCEEDED)


def test_awareness_depth_limit() -> None:
    limits = AwarenessLimits(max_depth=3)
    decode = _decoder_with(limits)
    assert decode(_update(_entry(b'{"a":[{"b":1}]}')))[0].state == {"a": [{"b": 1}]}
    # Brackets inside strings do not count.
    assert decode(_update(_entry(b'{"a":"[[[[{{{{\\"[[[["}')))[0].state == {"a": '[[[[{{{{"[[[['}
    _rejects(_update(_entry(b'{"a":[{"b":[]}]}')), decode, CloseCode.LIMIT_EXCEEDED)


def test_awareness_deep_nesting_is_no_recursion_error() -> None:
    limits = AwarenessLimits(max_state_bytes=1 << 20, max_depth=1 << 20)
    decode = _decoder_with(limits)
    for deep in (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"[" * 100_000):
        _rejects(_update(_entry(deep)), decode)
    _rejects(_update(_entry(b'{"a":' + b"[" * 100_000)), _decode_awareness_update, CloseCode.LIMIT_EXCEEDED)
    _rejects(_update(_entry(b'{"a":' + b"[" * 100)), _decode_awareness_update, CloseCode.LIMIT_EXCEEDED)


def test_encode_awareness_rejects_bad_input() -> None:
    for entry in (
        AwarenessEntry(-1, 0, None),
        AwarenessEntry(2**53, 0, None),
        AwarenessEntry(1, 2**32, None),
        AwarenessEntry(1, 0, {"a": float("nan")}),
        AwarenessEntry(1, 0, {"a": object()}),
        AwarenessEntry(1, 0, {"a": "\ud800"}),
        AwarenessEntry(1, 0, [1]),  # type: ignore[arg-type]
    ):
        with pytest.raises(LocalProtocolError):
            encode_awareness([entry])


# --------------------------------------------------------------------------- totality


def test_huge_garbage_fails_fast() -> None:
    garbage = b"\xff" * 400_000
    for decode in DECODERS:
        with pytest.raises(RemoteProtocolError):
            decode(garbage)
    # A plausible count followed by garbage, and a plausible length followed by garbage.
    for data in (b"\x80\x80\x01" + garbage, b"\x00\x02\x80\x80\x80\x01" + garbage, b"\x01\x80\x80\x80\x01" + garbage):
        for decode in DECODERS:
            with pytest.raises(RemoteProtocolError):
                decode(data)


def test_large_valid_state_vector() -> None:
    state = {client: client % MAX_CLOCK for client in range(1, 50_001)}
    assert decode_state_vector(encode_state_vector(state)) == state


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_state_vector(data: bytes) -> None:
    _total(_decode_sv, data)


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_sync(data: bytes) -> None:
    _total(_decode_sync, data)
    _total(_decode_sync, b"\x00" + data)
    _total(_decode_sync, b"\x00\x00" + write_varbytes(data))


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_awareness(data: bytes) -> None:
    _total(_decode_awareness, data)
    _total(_decode_awareness_update, data)
    _total(_decode_awareness_update, b"\x01\x05\x01" + write_varbytes(data))


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_awareness_json_text(text: str) -> None:
    _total(_decode_awareness_update, b"\x01\x05\x01" + write_varbytes(text.encode("utf-8", "surrogatepass")))


def _valid_messages() -> st.SearchStrategy[tuple[Callable[[bytes], Any], bytes]]:
    sync = st.builds(
        lambda kind, payload: encode_sync(kind, payload),
        st.sampled_from([SyncKind.STEP2, SyncKind.UPDATE]),
        st.binary(min_size=1, max_size=200),
    )
    step1 = st.dictionaries(st.integers(0, MAX_CLIENT_ID), st.integers(0, MAX_CLOCK), max_size=8).map(
        lambda sv: encode_sync(SyncKind.STEP1, encode_state_vector(sv))
    )
    state_vector = st.dictionaries(st.integers(0, MAX_CLIENT_ID), st.integers(0, MAX_CLOCK), max_size=8).map(
        encode_state_vector
    )
    awareness = _entries.map(encode_awareness)
    return st.one_of(
        st.tuples(st.just(_decode_sync), sync | step1),
        st.tuples(st.just(_decode_sv), state_vector),
        st.tuples(st.just(_decode_awareness), awareness),
    )


_mutation = st.tuples(st.sampled_from(["flip", "insert", "delete", "set"]), st.integers(0, 10_000), st.integers(0, 255))


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, where, value in mutations:
        pos = where % (len(buf) + 1)
        if op == "insert":
            buf.insert(pos, value)
        elif buf and pos < len(buf):
            if op == "delete":
                del buf[pos]
            elif op == "flip":
                buf[pos] ^= 1 << (value % 8)
            else:
                buf[pos] = value
    return bytes(buf)


@FUZZ
@given(_valid_messages(), st.lists(_mutation, min_size=1, max_size=4))
def test_fuzz_mutated_valid_messages(case: tuple[Callable[[bytes], Any], bytes], mutations: list[Any]) -> None:
    decode, message = case
    decode(message)
    mutated = _mutate(message, mutations)
    _total(decode, mutated)
    for other in DECODERS:
        _total(other, mutated)


@FUZZ
@given(_valid_messages())
def test_fuzz_prefixes_of_valid_messages(case: tuple[Callable[[bytes], Any], bytes]) -> None:
    decode, message = case
    decode(message)
    for end in range(len(message)):
        with pytest.raises(RemoteProtocolError):
            decode(message[:end])
