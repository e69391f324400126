"""Total encoders/decoders for the y-protocols payloads embedded in gigi-sync frames.

gigi-sync frames carry the standard y-protocols messages unchanged (Yjs ``y-protocols/sync.js``
and ``y-protocols/awareness.js``, lib0 encoding), so any Yjs implementation can sit on the other
end. pycrdt's own ``Decoder``/``Awareness`` are not safe on hostile input; this module replaces
them for everything that comes off the wire.

Rules:

* Pure: no I/O, no clock reads, no trio, no pycrdt. Every function is a function of its arguments.
* Total decoders: every malformed input raises ``RemoteProtocolError`` (never ``IndexError``,
  ``ValueError``, ``UnicodeDecodeError``, ``RecursionError``...). Size-limit breaches use
  ``CloseCode.LIMIT_EXCEEDED``; awareness about a client id the peer may not speak for uses
  ``CloseCode.FORBIDDEN``; everything else ``CloseCode.PROTOCOL_ERROR``.
* Linear time: a varuint is at most 10 bytes; every length or count prefix is checked against
  the bytes actually remaining (and the caller's limit) before anything is allocated or looped.
* All or nothing: a decoder validates the whole message before returning anything; a message
  with trailing bytes is malformed.
* Encoders raise ``LocalProtocolError`` for input they could not encode into something the
  decoders here accept (negative numbers, out-of-range ids/clocks, non-JSON awareness state).

Wire formats (lib0):

* varuint: 7 bits per byte, little-endian groups, high bit = "more follows".
* varbytes: varuint length, then the bytes. varstring: varbytes of UTF-8.
* sync message: varuint(0 = messageSync), varuint(sync kind), varbytes(payload).
  STEP1 payload is a state vector; STEP2/UPDATE payloads are Yjs v1 updates (opaque here, but
  never empty: Yjs never sends a zero-length update or state vector).
* state vector: varuint(count), then count x (varuint client, varuint clock), in any order.
  We write clients sorted descending, as Yjs does (yrs/pycrdt write hash-map order, so their
  bytes match ours only up to entry order); decode -> encode is canonical. Client ids < 2**53,
  clocks < 2**32, no duplicate clients.
* awareness message: varuint(1 = messageAwareness), varbytes(awareness update); the update is
  varuint(n), then n x (varuint client, varuint clock, varstring JSON state). ``"null"`` means
  the client went offline. States are encoded like pycrdt (compact separators, ASCII-escaped),
  which is also what ``JSON.stringify`` produces for ASCII text. A decoded state must be a JSON
  object or null, at most ``max_state_bytes`` of UTF-8, nested at most ``max_depth`` deep (the
  top-level object is depth 1), no NaN/Infinity, no lone surrogates; an update holds at most
  ``max_entries`` entries and names each client at most once.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from .errors import CloseCode, LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_CLIENT_ID",
    "MAX_CLOCK",
    "MESSAGE_AWARENESS",
    "MESSAGE_SYNC",
    "AwarenessEntry",
    "AwarenessLimits",
    "SyncKind",
    "decode_awareness",
    "decode_awareness_update",
    "decode_state_vector",
    "decode_sync",
    "encode_awareness",
    "encode_awareness_update",
    "encode_state_vector",
    "encode_sync",
    "read_varbytes",
    "read_varuint",
    "write_varbytes",
    "write_varuint",
]

MESSAGE_SYNC = 0
MESSAGE_AWARENESS = 1

MAX_CLIENT_ID = 2**53 - 1
"""Largest client id accepted (Yjs client ids are JS safe integers)."""
MAX_CLOCK = 2**32 - 1
"""Largest clock accepted (state-vector clock or awareness clock)."""

_MAX_VARUINT_BYTES = 10
_MIN_SV_ENTRY_BYTES = 2  # varuint client + varuint clock
_MIN_AWARENESS_ENTRY_BYTES = 3  # varuint client + varuint clock + varuint string length

Buffer: TypeAlias = bytes | bytearray | memoryview


# --------------------------------------------------------------------------- primitives


def read_varuint(data: Buffer, offset: int) -> tuple[int, int]:
    """Read a lib0 varuint at ``offset``; return ``(value, offset after it)``."""
    if offset < 0:
        raise LocalProtocolError(f"negative offset {offset}")
    end = len(data)
    value = 0
    shift = 0
    pos = offset
    for _ in range(_MAX_VARUINT_BYTES):
        if pos >= end:
            raise RemoteProtocolError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise RemoteProtocolError("varint too long")


def write_varuint(n: int) -> bytes:
    """Encode a non-negative integer as a lib0 varuint."""
    if n < 0:
        raise LocalProtocolError(f"cannot encode negative varuint {n}")
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varbytes(data: Buffer, offset: int, limit: int) -> tuple[bytes, int]:
    """Read length-prefixed bytes; the length must fit in ``data`` and be at most ``limit``.

    A length beyond the data is malformed (PROTOCOL_ERROR) even if it is also over ``limit``;
    LIMIT_EXCEEDED means the peer really sent more than ``limit`` bytes.
    """
    length, pos = read_varuint(data, offset)
    if length > len(data) - pos:
        raise RemoteProtocolError(f"length {length} exceeds the {len(data) - pos} bytes remaining")
    if length > limit:
        raise RemoteProtocolError(f"length {length} exceeds limit {limit}", CloseCode.LIMIT_EXCEEDED)
    return bytes(data[pos : pos + length]), pos + length


def write_varbytes(payload: Buffer) -> bytes:
    """Encode bytes with a varuint length prefix."""
    return write_varuint(len(payload)) + bytes(payload)


def _read_bounded(data: Buffer, offset: int, maximum: int, what: str) -> tuple[int, int]:
    value, pos = read_varuint(data, offset)
    if value > maximum:
        raise RemoteProtocolError(f"{what} {value} out of range")
    return value, pos


def _expect_end(data: Buffer, offset: int) -> None:
    if offset != len(data):
        raise RemoteProtocolError(f"{len(data) - offset} trailing bytes")


def _check_local_range(value: int, maximum: int, what: str) -> None:
    if not 0 <= value <= maximum:
        raise LocalProtocolError(f"{what} {value} out of range")


# --------------------------------------------------------------------------- state vectors


def decode_state_vector(data: Buffer) -> dict[int, int]:
    """Decode a Yjs state vector into ``{client id: clock}``."""
    count, pos = read_varuint(data, 0)
    if count > (len(data) - pos) // _MIN_SV_ENTRY_BYTES:
        raise RemoteProtocolError(f"state vector count {count} exceeds the data")
    result: dict[int, int] = {}
    for _ in range(count):
        client, pos = _read_bounded(data, pos, MAX_CLIENT_ID, "client id")
        clock, pos = _read_bounded(data, pos, MAX_CLOCK, "clock")
        if client in result:
            raise RemoteProtocolError(f"duplicate client {client} in state vector")
        result[client] = clock
    _expect_end(data, pos)
    return result


def encode_state_vector(state: dict[int, int]) -> bytes:
    """Encode ``{client id: clock}`` as Yjs does (clients sorted descending: canonical)."""
    parts = [write_varuint(len(state))]
    for client in sorted(state, reverse=True):
        clock = state[client]
        _check_local_range(client, MAX_CLIENT_ID, "client id")
        _check_local_range(clock, MAX_CLOCK, "clock")
        parts.append(write_varuint(client))
        parts.append(write_varuint(clock))
    return b"".join(parts)


# --------------------------------------------------------------------------- sync


class SyncKind(enum.IntEnum):
    """The y-protocols sync message kinds."""

    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


def encode_sync(kind: SyncKind, payload: bytes) -> bytes:
    """Encode a y-protocols sync message (``messageSync``, kind, payload)."""
    kind = _local_sync_kind(kind)
    if not payload:
        raise LocalProtocolError("empty sync payload")
    if kind is SyncKind.STEP1:
        try:
            decode_state_vector(payload)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(f"STEP1 payload is not a state vector: {exc.reason}") from exc
    return write_varuint(MESSAGE_SYNC) + write_varuint(kind) + write_varbytes(payload)


def _local_sync_kind(kind: int) -> SyncKind:
    try:
        return SyncKind(kind)
    except ValueError:
        raise LocalProtocolError(f"unknown sync kind {kind!r}") from None


def decode_sync(data: Buffer, *, max_payload: int) -> tuple[SyncKind, bytes]:
    """Decode a y-protocols sync message; the payload may be at most ``max_payload`` bytes."""
    message_type, pos = read_varuint(data, 0)
    if message_type != MESSAGE_SYNC:
        raise RemoteProtocolError(f"expected a sync message, got type {message_type}")
    raw_kind, pos = read_varuint(data, pos)
    if raw_kind > max(SyncKind):
        raise RemoteProtocolError(f"unknown sync kind {raw_kind}")
    kind = SyncKind(raw_kind)
    payload, pos = read_varbytes(data, pos, max_payload)
    _expect_end(data, pos)
    if not payload:
        raise RemoteProtocolError(f"empty {kind.name} payload")
    if kind is SyncKind.STEP1:
        decode_state_vector(payload)
    return kind, payload


# --------------------------------------------------------------------------- awareness


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's awareness: ``state`` None means the client went offline."""

    client_id: int
    clock: int
    state: dict[str, Any] | None


@dataclass(frozen=True)
class AwarenessLimits:
    """Bounds on a decoded awareness update."""

    max_entries: int = 16
    max_state_bytes: int = 4096
    max_depth: int = 8


def encode_awareness_update(entries: Iterable[AwarenessEntry]) -> bytes:
    """Encode the inner awareness update, byte-compatible with ``encodeAwarenessUpdate``."""
    entries = list(entries)
    parts = [write_varuint(len(entries))]
    for entry in entries:
        _check_local_range(entry.client_id, MAX_CLIENT_ID, "client id")
        _check_local_range(entry.clock, MAX_CLOCK, "clock")
        parts.append(write_varuint(entry.client_id))
        parts.append(write_varuint(entry.clock))
        parts.append(write_varbytes(_dump_state(entry.state)))
    return b"".join(parts)


def encode_awareness(entries: Iterable[AwarenessEntry]) -> bytes:
    """Encode a y-protocols awareness message (``messageAwareness`` + update)."""
    return write_varuint(MESSAGE_AWARENESS) + write_varbytes(encode_awareness_update(entries))


def _dump_state(state: dict[str, Any] | None) -> bytes:
    if state is not None and not isinstance(state, dict):
        raise LocalProtocolError(f"awareness state must be a dict or None, not {type(state).__name__}")
    try:
        text = json.dumps(state, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"awareness state is not JSON: {exc}") from None
    if _has_lone_surrogate(state):
        raise LocalProtocolError("awareness state holds a lone surrogate")
    return text.encode("ascii")


def decode_awareness(
    data: Buffer, *, allowed_client_ids: frozenset[int] | None, limits: AwarenessLimits
) -> list[AwarenessEntry]:
    """Decode a y-protocols awareness message (``messageAwareness`` + update)."""
    message_type, pos = read_varuint(data, 0)
    if message_type != MESSAGE_AWARENESS:
        raise RemoteProtocolError(f"expected an awareness message, got type {message_type}")
    update, pos = read_varbytes(data, pos, len(data))
    _expect_end(data, pos)
    return decode_awareness_update(update, allowed_client_ids=allowed_client_ids, limits=limits)


def decode_awareness_update(
    update: Buffer, *, allowed_client_ids: frozenset[int] | None, limits: AwarenessLimits
) -> list[AwarenessEntry]:
    """Decode an inner awareness update; all entries are validated before any is returned.

    ``allowed_client_ids``: if not None, an entry for any other client id is FORBIDDEN.
    """
    count, pos = read_varuint(update, 0)
    if count > limits.max_entries:
        raise RemoteProtocolError(
            f"{count} awareness entries exceed the limit {limits.max_entries}", CloseCode.LIMIT_EXCEEDED
        )
    if count > (len(update) - pos) // _MIN_AWARENESS_ENTRY_BYTES:
        raise RemoteProtocolError(f"awareness count {count} exceeds the data")
    entries: list[AwarenessEntry] = []
    seen: set[int] = set()
    for _ in range(count):
        entry, pos = _read_awareness_entry(update, pos, allowed_client_ids, limits)
        if entry.client_id in seen:
            raise RemoteProtocolError(f"duplicate awareness entry for client {entry.client_id}")
        seen.add(entry.client_id)
        entries.append(entry)
    _expect_end(update, pos)
    return entries


def _read_awareness_entry(
    data: Buffer, pos: int, allowed_client_ids: frozenset[int] | None, limits: AwarenessLimits
) -> tuple[AwarenessEntry, int]:
    client_id, pos = _read_bounded(data, pos, MAX_CLIENT_ID, "client id")
    if allowed_client_ids is not None and client_id not in allowed_client_ids:
        raise RemoteProtocolError(f"awareness for foreign client id {client_id}", CloseCode.FORBIDDEN)
    clock, pos = _read_bounded(data, pos, MAX_CLOCK, "awareness clock")
    raw, pos = read_varbytes(data, pos, limits.max_state_bytes)
    return AwarenessEntry(client_id, clock, _parse_state(raw, limits.max_depth)), pos


# Tokens that matter for nesting depth: whole strings (possibly unterminated) and brackets.
_DEPTH_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bracket_depth(text: str) -> int:
    """Maximum bracket nesting outside strings; exact for valid JSON, linear time."""
    depth = 0
    deepest = 0
    for match in _DEPTH_TOKEN.finditer(text):
        token = match.group()
        if token == "[" or token == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif token == "]" or token == "}":
            depth -= 1
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows")
    return value


def _parse_state(raw: bytes, max_depth: int) -> dict[str, Any] | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("awareness state is not UTF-8") from None
    if _bracket_depth(text) > max_depth:
        raise RemoteProtocolError(f"awareness state nested deeper than {max_depth}", CloseCode.LIMIT_EXCEEDED)
    try:
        state = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except (ValueError, RecursionError):
        raise RemoteProtocolError("awareness state is not JSON") from None
    if state is not None and not isinstance(state, dict):
        raise RemoteProtocolError("awareness state must be a JSON object or null")
    if _has_lone_surrogate(state):
        raise RemoteProtocolError("awareness state holds a lone surrogate")
    return state


def _has_lone_surrogate(state: Any) -> bool:
    """True if any string (key or value) holds a lone surrogate, which UTF-8 cannot encode."""
    stack: list[Any] = [state]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and _SURROGATE.search(node):
            return True
    return False
