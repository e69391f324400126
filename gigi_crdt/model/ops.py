"""The operations an author appends to its own stream, and their stored form.

Every peer writes only into its own stream (``streams["<author>/<bucket>"]``, arrays of at
most ``BUCKET_SIZE`` entries), so a stream position ``seq`` names one operation forever:
``seq = bucket * BUCKET_SIZE + index``. Posting, editing, deleting and reacting are all
appended operations; a deletion also overwrites the deleted post and its edits in place
with a ``Tombstone`` (for the post) and ``Redacted`` (for its edits) so their content leaves the document.

An entry is stored as the compact JSON text of its fields, not as a Yjs map: yrs holds a
map value as a hash map with each key and string allocated apart, about 1.6 KB a message
against 0.2 KB for the same fields as one string, and applies text ten times faster.
Entries written before 2026-11-28 are maps of the same fields and read the same.

Values from remote peers are untrusted: ``parse_entry`` accepts only what ``encode_op``
produces and raises ``SchemaError`` for anything else.
"""

from __future__ import annotations

import base64
import binascii
import json
import json.encoder
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ..errors import SchemaError
from .content import Content, Text, content_fields, decode_content, encode_content

BUCKET_SIZE = 256
MAX_TIMESTAMP = 2**53 - 1
MAX_NICKNAME_CHARS = 64
MAX_EMOJI_CHARS = 16
LINK_BYTES = 16
_LINK_CHARS = 22  # LINK_BYTES in unpadded base64url
_ANCHOR_CHARS = 88  # an Ed25519 signature in base64
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
# ``canonical_op``'s form; json.dumps would build an encoder per call (a catch-up hashes 10^5 ops)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_quote: Callable[[str], str] = json.encoder.encode_basestring  # a JSON string as _CANONICAL writes it
_STORED = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_STORED_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Posted:
    """A new message."""

    id: str
    timestamp: int
    nickname: str
    content: Content


@dataclass(frozen=True, slots=True)
class Edited:
    """The author replaced the content of one of its messages."""

    target: str
    timestamp: int
    content: Content


@dataclass(frozen=True, slots=True)
class Deleted:
    """The author deleted one of its messages; a tombstone stays in the history."""

    target: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class Reacted:
    """The author added (``on``) or withdrew a reaction to any message."""

    target: str
    timestamp: int
    emoji: str
    on: bool


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What is left where a deleted post stood: who wrote it and when, but no content.

    It names when the post was deleted too: a peer may get it before the deletion op
    (written after it in the same transaction) shows, or long after having folded that op.
    """

    id: str
    timestamp: int
    nickname: str
    deleted_at: int | None = None  # None in tombstones written before it was recorded


@dataclass(frozen=True, slots=True)
class Redacted:
    """What is left where an edit of a deleted post stood."""

    target: str


Op: TypeAlias = Posted | Edited | Deleted | Reacted | Tombstone | Redacted


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One operation at its place in its author's stream.

    In a signed conversation (see ``chain``) it also carries ``prev``, the link of the
    author's entry before it; if it replaced an op in place (a ``Tombstone`` or
    ``Redacted``), ``sealed``: the commitment of the op it replaced; and every
    ``ANCHOR_EVERY`` seqs, ``anchor``: the author's signature of ``prev``.
    """

    author: str
    seq: int
    op: Op
    prev: bytes | None = field(default=None, compare=False)
    sealed: bytes | None = field(default=None, compare=False)
    anchor: bytes | None = field(default=None, compare=False)


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a well-formed id (8 to 64 URL-safe characters)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise SchemaError(f"malformed {what}: {value!r}")
    return value


def bucket_key(author: str, bucket: int) -> str:
    """The key of an author's stream bucket in the ``streams`` root map."""
    return f"{author}/{bucket}"


def split_bucket_key(key: str) -> tuple[str, int]:
    """Inverse of ``bucket_key``; ``SchemaError`` for keys that are not bucket keys."""
    author, _, number = key.rpartition("/")
    if not number.isdigit() or len(number) > 9:
        raise SchemaError(f"malformed bucket key {key!r}")
    return check_id(author, "author"), int(number)


def encode_op(
    op: Op, seq: int, prev: bytes | None = None, sealed: bytes | None = None, anchor: bytes | None = None
) -> str:
    """The JSON text stored for ``op`` at ``seq`` in its author's stream, with the chain
    fields of a signed conversation (see ``StreamEntry``).

    The value names its own sequence number because its position in the bucket can lie
    for a while: an in-place replacement (a deletion's tombstone) is a Yjs delete plus an
    insert, and a peer may apply the delete while the insert still waits for a dependency.
    """
    value = {"s": seq} | _op_fields(op, encode_content)
    if prev is not None:
        value["p"] = _encode_link(prev)
    if sealed is not None:
        value["h"] = _encode_link(sealed)
    if anchor is not None:
        value["g"] = base64.b64encode(anchor).decode("ascii")
    return _STORED.encode(value)


def canonical_op(op: Op, seq: int) -> bytes:
    """The bytes an op's commitment hashes (see ``chain``): its stored fields, chain fields
    left out, as JSON with sorted keys, no spaces and UTF-8 text. ``op`` is valid already."""
    if type(op) is Posted and type(op.content) is Text:
        # The common op, its keys written in sorted order: a sixth of the time of sorting
        # them (a 10^5-message catch-up hashed its posts in 0.28 s, now 0.05).
        quote = _quote
        return (
            f'{{"c":{{"text":{quote(op.content.text)}}},"i":{quote(op.id)},"k":"text",'
            f'"n":{quote(op.nickname)},"o":"post","s":{seq},"t":{op.timestamp}}}'
        ).encode()
    return canonical_fields(op, seq)


def canonical_fields(op: Op, seq: int) -> bytes:
    """``canonical_op`` of any op, by sorting its fields."""
    fields = {"s": seq} | _op_fields(op, content_fields)
    return _CANONICAL.encode(fields).encode("utf-8")


def _op_fields(op: Op, content: Callable[[Content], tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    if isinstance(op, Posted):
        kind, fields = content(op.content)
        return {"o": "post", "i": op.id, "t": op.timestamp, "n": op.nickname, "k": kind, "c": fields}
    if isinstance(op, Edited):
        kind, fields = content(op.content)
        return {"o": "edit", "i": op.target, "t": op.timestamp, "k": kind, "c": fields}
    if isinstance(op, Deleted):
        return {"o": "delete", "i": op.target, "t": op.timestamp}
    if isinstance(op, Reacted):
        return {"o": "react", "i": op.target, "t": op.timestamp, "e": op.emoji, "on": op.on}
    if isinstance(op, Tombstone):
        fields = {"o": "tombstone", "i": op.id, "t": op.timestamp, "n": op.nickname}
        return fields if op.deleted_at is None else fields | {"d": op.deleted_at}
    return {"o": "redacted", "i": op.target}


def parse_entry(author: str, bucket: int, raw: object) -> StreamEntry:
    """Rebuild the entry stored in ``author``'s bucket ``bucket``, or raise ``SchemaError``."""
    raw = _stored_fields(raw)
    first = bucket * BUCKET_SIZE
    seq = parse_whole(raw.get("s"), first, first + BUCKET_SIZE, f"sequence number in bucket {bucket}")
    prev, sealed, anchor = raw.get("p"), raw.get("h"), raw.get("g")
    return StreamEntry(
        author,
        seq,
        parse_op(raw),
        None if prev is None else _decode_link(prev),
        None if sealed is None else _decode_link(sealed),
        None if anchor is None else _decode_anchor(anchor),
    )


def _stored_fields(raw: object) -> dict[str, Any]:
    """The fields of a stored entry: JSON text, or a map as written before 2026-11-28."""
    if isinstance(raw, str):
        try:
            raw = _STORED_DECODER.decode(raw)
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            raise SchemaError("stream entry is not JSON") from None
    if not isinstance(raw, dict):
        raise SchemaError("stream entry is not an object")
    return raw


def _encode_link(link: bytes) -> str:
    return base64.urlsafe_b64encode(link).decode("ascii").rstrip("=")


def _decode_anchor(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != _ANCHOR_CHARS:
        raise SchemaError("malformed anchor signature")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SchemaError("malformed anchor signature") from None


def _decode_link(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != _LINK_CHARS:
        raise SchemaError(f"malformed chain link {value!r}")
    try:
        link = base64.urlsafe_b64decode(value + "==")
    except (binascii.Error, ValueError):
        link = b""
    if len(link) != LINK_BYTES:  # the decoder skips characters outside the alphabet
        raise SchemaError(f"malformed chain link {value!r}")
    return link


def parse_op(raw: dict[str, Any]) -> Op:
    """Rebuild an operation from a stored entry's fields, or raise ``SchemaError``."""
    name = raw.get("o")
    target = check_id(raw.get("i"), "message id")
    if name == "redacted":
        return Redacted(target)
    timestamp = parse_timestamp(raw.get("t"))
    if name == "post":
        return Posted(target, timestamp, _nickname(raw.get("n")), decode_content(raw.get("k"), raw.get("c")))
    if name == "tombstone":
        deleted_at = raw.get("d")
        return Tombstone(
            target, timestamp, _nickname(raw.get("n")), None if deleted_at is None else parse_timestamp(deleted_at)
        )
    if name == "edit":
        return Edited(target, timestamp, decode_content(raw.get("k"), raw.get("c")))
    if name == "delete":
        return Deleted(target, timestamp)
    if name == "react":
        emoji, on = raw.get("e"), raw.get("on")
        if not isinstance(emoji, str) or not 0 < len(emoji) <= MAX_EMOJI_CHARS or not isinstance(on, bool):
            raise SchemaError("malformed reaction")
        return Reacted(target, timestamp, emoji, on)
    raise SchemaError(f"unknown operation {name!r}")


def parse_timestamp(value: object) -> int:
    """A hybrid timestamp from a stored value."""
    return parse_whole(value, 0, MAX_TIMESTAMP + 1, "timestamp")


def parse_whole(value: object, low: int, high: int, what: str) -> int:
    """``value`` as an int with ``low <= value < high``, or ``SchemaError`` naming ``what``.
    Yjs may hand integers back as floats: an integral float counts (a bool does not)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise SchemaError(f"malformed {what}: {value!r}")
    return value


def _nickname(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_NICKNAME_CHARS:
        raise SchemaError("malformed nickname")
    return value


def check_nickname(value: str) -> str:
    """Validate a nickname written locally."""
    return _nickname(value)
