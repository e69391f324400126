"""The operations an author appends to its own stream, and their stored form.

Every peer writes only into its own stream (``streams["<author>/<bucket>"]``, arrays of at
most ``BUCKET_SIZE`` plain dicts), so a stream position ``seq`` names one operation forever:
``seq = bucket * BUCKET_SIZE + index``. Posting, editing, deleting and reacting are all
appended operations; a deletion also overwrites the deleted post and its edits in place
with a ``Tombstone`` (for the post) and ``Redacted`` (for its edits) so their content leaves the document.

Values from remote peers are untrusted: ``parse_op`` accepts only what ``encode_op``
produces and raises ``SchemaError`` for anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeAlias

from ..errors import SchemaError
from .content import Content, decode_content, encode_content

BUCKET_SIZE = 256
MAX_TIMESTAMP = 2**53 - 1
MAX_NICKNAME_CHARS = 64
MAX_EMOJI_CHARS = 16
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


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
    """One operation at its place in its author's stream."""

    author: str
    seq: int
    op: Op


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


def encode_op(op: Op, seq: int) -> dict[str, Any]:
    """The plain value stored for ``op`` at ``seq`` in its author's stream.

    The value names its own sequence number because its position in the bucket can lie
    for a while: an in-place replacement (a deletion's tombstone) is a Yjs delete plus an
    insert, and a peer may apply the delete while the insert still waits for a dependency.
    """
    return {"s": seq} | _op_fields(op)


def _op_fields(op: Op) -> dict[str, Any]:
    if isinstance(op, Posted):
        kind, fields = encode_content(op.content)
        return {"o": "post", "i": op.id, "t": op.timestamp, "n": op.nickname, "k": kind, "c": fields}
    if isinstance(op, Edited):
        kind, fields = encode_content(op.content)
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
    if not isinstance(raw, dict):
        raise SchemaError("stream entry is not a map")
    seq = raw.get("s")
    if isinstance(seq, float) and seq.is_integer():  # Yjs may hand integers back as floats
        seq = int(seq)
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq - bucket * BUCKET_SIZE < BUCKET_SIZE:
        raise SchemaError(f"stream entry with a sequence number {seq!r} outside its bucket")
    return StreamEntry(author, seq, parse_op(raw))


def parse_op(raw: object) -> Op:
    """Rebuild an operation from its stored value, or raise ``SchemaError``."""
    if not isinstance(raw, dict):
        raise SchemaError("stream entry is not a map")
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
    """A hybrid timestamp from a stored value (Yjs may hand integers back as floats)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMESTAMP:
        raise SchemaError(f"malformed timestamp {value!r}")
    return value


def _nickname(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_NICKNAME_CHARS:
        raise SchemaError("malformed nickname")
    return value


def check_nickname(value: str) -> str:
    """Validate a nickname written locally."""
    return _nickname(value)
