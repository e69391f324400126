"""Frames on the wire: a 4-byte big-endian length, then one msgpack array.

``[type, field, ...]`` with a small integer type (see ``FrameType``). Decoding is total:
every malformed frame raises ``RemoteProtocolError``; sizes are checked against
``Limits`` before anything is allocated for them.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped]

from .errors import CloseCode, LocalProtocolError, RemoteProtocolError
from .events import (
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    Announce,
    Awareness,
    Close,
    Event,
    HeadRecord,
    Hello,
    Ping,
    Pong,
    SyncPart,
    SyncStep1,
    SyncStep2,
    Update,
)
from .yproto import AwarenessLimits, SyncKind, decode_awareness, decode_sync, encode_awareness, encode_sync

HEADER = struct.Struct(">I")
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_NICKNAME_CHARS = 64
MAX_REASON_CHARS = 512
MAX_CAPABILITIES = 32
MAX_NONCE = 2**63 - 1
MAX_CLIENT_ID = 2**53 - 1
MAX_HEADS = 1024
MAX_HEAD_FIELDS = 16
MAX_HEAD_KEY_CHARS = 16
MAX_HEAD_VALUE_CHARS = 256
MAX_REACHED = 64


class FrameType(enum.IntEnum):
    """The first element of every frame."""

    HELLO = 1
    ANNOUNCE = 2
    SYNC = 3
    AWARENESS = 4
    PING = 5
    PONG = 6
    CLOSE = 7
    SYNC_PART = 8


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard limits on what a peer may send; breaching one ends the link."""

    max_frame_bytes: int = 64 * 1024 * 1024
    max_update_bytes: int = 64 * 1024 * 1024 - 1024
    max_conversations: int = 10_000
    max_parts_bytes: int = 256 * 1024 * 1024
    """Step 2 parts (``SyncPart``) waiting on one link for the step 2 that ends them."""
    awareness: AwarenessLimits = field(default_factory=AwarenessLimits)


def encode_frame(event: Event, limits: Limits, awareness_client_id: int | None = None) -> bytes:
    """The bytes of one frame carrying ``event``, checked as the peer will check them.

    ``awareness_client_id`` is our own (from our Hello): the only one we may announce.
    """
    try:
        body: bytes = msgpack.packb(_fields(event), use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as exc:  # out-of-range ints, unencodable strings
        raise LocalProtocolError(f"cannot encode {type(event).__name__}: {exc}") from None
    if len(body) > limits.max_frame_bytes:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds the limit", CloseCode.FRAME_TOO_LARGE)
    try:
        decode_body(body, limits, awareness_client_id)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"the peer would reject this {type(event).__name__}: {exc.reason}", exc.code) from None
    return HEADER.pack(len(body)) + body


def _fields(event: Event) -> list[Any]:
    if isinstance(event, Hello):
        capabilities = sorted(event.capabilities)
        return [FrameType.HELLO, event.protocol, event.version, event.peer_id, event.nickname,
                event.awareness_client_id, capabilities]  # fmt: skip
    if isinstance(event, Announce):
        return [FrameType.ANNOUNCE, list(event.conversations)]
    if isinstance(event, SyncStep1):
        return [FrameType.SYNC, event.conversation, encode_sync(SyncKind.STEP1, event.state_vector)]
    if isinstance(event, SyncStep2):
        fields = [FrameType.SYNC, event.conversation, encode_sync(SyncKind.STEP2, event.update)]
        return fields + ([list(event.heads)] if event.heads else []) + ([list(event.reached)] if event.reached else [])
    if isinstance(event, SyncPart):
        return [FrameType.SYNC_PART, event.conversation, encode_sync(SyncKind.STEP2, event.update)]
    if isinstance(event, Update):
        fields = [FrameType.SYNC, event.conversation, encode_sync(SyncKind.UPDATE, event.update)]
        return fields + [list(event.reached)] if event.reached else fields
    if isinstance(event, Awareness):
        return [FrameType.AWARENESS, event.conversation, encode_awareness(list(event.entries))]
    if isinstance(event, Ping):
        return [FrameType.PING, event.nonce]
    if isinstance(event, Pong):
        return [FrameType.PONG, event.nonce]
    if isinstance(event, Close):
        return [FrameType.CLOSE, int(event.code), event.reason]
    raise LocalProtocolError(f"not a protocol event: {event!r}")


def frame_length(header: bytes, limits: Limits) -> int:
    """The body length announced by a 4-byte header, checked before reading the body."""
    (length,) = HEADER.unpack(header)
    if length > limits.max_frame_bytes:
        raise RemoteProtocolError(
            f"frame of {length} bytes exceeds the limit of {limits.max_frame_bytes}", CloseCode.FRAME_TOO_LARGE
        )
    if length == 0:
        raise RemoteProtocolError("empty frame")
    return int(length)


def decode_body(body: bytes, limits: Limits, awareness_client_id: int | None) -> Event:
    """The event in one frame body; ``awareness_client_id`` is the only client id the peer may announce."""
    try:
        fields = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=limits.max_frame_bytes,
            max_str_len=limits.max_frame_bytes,
            max_array_len=max(limits.max_conversations, MAX_CAPABILITIES) + 8,
            max_map_len=64,  # only a step 2's heads are maps (of at most MAX_HEAD_FIELDS)
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; all mean a malformed frame
        raise RemoteProtocolError(f"malformed frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(fields, list) or not fields or not isinstance(fields[0], int) or isinstance(fields[0], bool):
        raise RemoteProtocolError("a frame must be an array starting with its type")
    try:
        kind = FrameType(fields[0])
    except ValueError:
        raise RemoteProtocolError(f"unknown frame type {fields[0]!r}") from None
    return _DECODERS[kind](fields[1:], limits, awareness_client_id)


def _expect(fields: list[Any], *types: type) -> list[Any]:
    if len(fields) != len(types) or not all(isinstance(v, t) and not (t is int and isinstance(v, bool))
                                            for v, t in zip(fields, types, strict=True)):  # fmt: skip
        names = ", ".join(t.__name__ for t in types)
        raise RemoteProtocolError(f"frame fields must be ({names})")
    return fields


def _conversation_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise RemoteProtocolError(f"malformed conversation id {value[:80]!r}")
    return value


def _hello(fields: list[Any], limits: Limits, _: int | None) -> Hello:
    # Protocol and version come first and are checked first: a later version may change
    # everything after them, and must still get a clear VERSION_MISMATCH.
    protocol, version = (fields + [None, None])[:2]
    if protocol != PROTOCOL_NAME or version != PROTOCOL_VERSION or isinstance(version, bool):
        raise RemoteProtocolError(
            f"peer speaks {str(protocol)[:40]} v{str(version)[:20]}; "
            f"this node speaks {PROTOCOL_NAME} v{PROTOCOL_VERSION}",
            CloseCode.VERSION_MISMATCH,
        )
    protocol, version, peer_id, nickname, client_id, capabilities = _expect(fields, str, int, str, str, int, list)
    if not _ID.fullmatch(peer_id):
        raise RemoteProtocolError(f"malformed peer id {peer_id[:80]!r}")
    if len(nickname) > MAX_NICKNAME_CHARS:
        raise RemoteProtocolError("nickname too long")
    if not 0 <= client_id <= MAX_CLIENT_ID:
        raise RemoteProtocolError("awareness client id out of range")
    if len(capabilities) > MAX_CAPABILITIES or not all(isinstance(c, str) and len(c) <= 64 for c in capabilities):
        raise RemoteProtocolError("malformed capabilities")
    return Hello(peer_id, nickname, client_id, frozenset(capabilities), protocol, version)


def _announce(fields: list[Any], limits: Limits, _: int | None) -> Announce:
    (conversations,) = _expect(fields, list)
    if len(conversations) > limits.max_conversations:
        raise RemoteProtocolError("too many conversations announced", CloseCode.LIMIT_EXCEEDED)
    if not all(isinstance(c, str) for c in conversations):
        raise RemoteProtocolError("conversation ids must be strings")
    return Announce(tuple(_conversation_id(c) for c in conversations))


def _sync(fields: list[Any], limits: Limits, _: int | None) -> SyncStep1 | SyncStep2 | Update:
    beside: list[list[Any]] = []  # a step 2's heads and reached peers, an update's reached peers
    if len(fields) in (3, 4):
        beside = _expect(fields[2:], *(list,) * (len(fields) - 2))
        fields = fields[:2]
    conversation, payload = _expect(fields, str, bytes)
    kind, data = decode_sync(payload, max_payload=limits.max_update_bytes)
    conversation = _conversation_id(conversation)
    if kind is SyncKind.STEP1:
        if beside:
            raise RemoteProtocolError("a step 1 carries nothing beside it")
        return SyncStep1(conversation, data)
    if kind is SyncKind.STEP2:
        raw_heads, raw_reached = beside if len(beside) == 2 else (None, None)
        if len(beside) == 1:  # which one: heads are maps, reached peers strings
            if beside[0] and all(isinstance(peer, str) for peer in beside[0]):
                raw_reached = beside[0]
            else:
                raw_heads = beside[0]
        heads = () if raw_heads is None else _heads(raw_heads)
        return SyncStep2(conversation, data, heads, () if raw_reached is None else _reached(raw_reached))
    if len(beside) > 1:
        raise RemoteProtocolError("an update carries at most its reached peers beside it")
    return Update(conversation, data, _reached(beside[0]) if beside else ())


def _sync_part(fields: list[Any], limits: Limits, _: int | None) -> SyncPart:
    conversation, payload = _expect(fields, str, bytes)
    kind, data = decode_sync(payload, max_payload=limits.max_update_bytes)
    if kind is not SyncKind.STEP2:
        raise RemoteProtocolError("a step 2 part carries a step 2")
    return SyncPart(_conversation_id(conversation), data)


def _heads(raw: list[Any]) -> tuple[HeadRecord, ...]:
    """The shape of a step 2's heads; their meaning and signatures are the document's to check."""
    if not 0 < len(raw) <= MAX_HEADS:
        raise RemoteProtocolError(f"a step 2 carries 1 to {MAX_HEADS} heads")
    for head in raw:
        if not isinstance(head, dict) or len(head) > MAX_HEAD_FIELDS:
            raise RemoteProtocolError(f"a head is a map of at most {MAX_HEAD_FIELDS} fields")
        for key, value in head.items():
            if not isinstance(key, str) or len(key) > MAX_HEAD_KEY_CHARS:
                raise RemoteProtocolError(f"head field names are strings of at most {MAX_HEAD_KEY_CHARS} characters")
            if isinstance(value, str) and len(value) <= MAX_HEAD_VALUE_CHARS:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise RemoteProtocolError(
                    f"head values are integers or strings of at most {MAX_HEAD_VALUE_CHARS} characters"
                )
    return tuple(raw)


def _reached(raw: list[Any]) -> tuple[str, ...]:
    if not 0 < len(raw) <= MAX_REACHED:
        raise RemoteProtocolError(f"reached peers are 1 to {MAX_REACHED} peer ids")
    for peer in raw:
        if not isinstance(peer, str) or not _ID.fullmatch(peer):
            raise RemoteProtocolError("reached peers are peer ids")
    return tuple(raw)


def _awareness(fields: list[Any], limits: Limits, client_id: int | None) -> Awareness:
    conversation, payload = _expect(fields, str, bytes)
    allowed = None if client_id is None else frozenset({client_id})
    entries = decode_awareness(payload, allowed_client_ids=allowed, limits=limits.awareness)
    return Awareness(_conversation_id(conversation), tuple(entries))


def _ping(fields: list[Any], limits: Limits, _: int | None) -> Ping:
    (nonce,) = _expect(fields, int)
    if not 0 <= nonce <= MAX_NONCE:
        raise RemoteProtocolError("nonce out of range")
    return Ping(nonce)


def _pong(fields: list[Any], limits: Limits, _: int | None) -> Pong:
    return Pong(_ping(fields, limits, _).nonce)


def _close(fields: list[Any], limits: Limits, _: int | None) -> Close:
    code, reason = _expect(fields, int, str)
    try:
        close_code = CloseCode(code)
    except ValueError:
        close_code = CloseCode.PROTOCOL_ERROR  # unknown codes from newer peers still close
    return Close(close_code, reason[:MAX_REASON_CHARS])


_DECODERS: dict[FrameType, Callable[[list[Any], Limits, int | None], Event]] = {
    FrameType.HELLO: _hello,
    FrameType.ANNOUNCE: _announce,
    FrameType.SYNC: _sync,
    FrameType.AWARENESS: _awareness,
    FrameType.PING: _ping,
    FrameType.PONG: _pong,
    FrameType.CLOSE: _close,
    FrameType.SYNC_PART: _sync_part,
}
