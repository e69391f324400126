"""Message content kinds and their encoding as plain Yjs values.

Content is stored as a small JSON-like dict (a Yjs ``Any``), never as a nested shared
type: plain values cost one struct each and read back without walking a tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from ..errors import SchemaError

MAX_TEXT_CHARS = 64 * 1024
MAX_FIELD_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Text:
    """A plain text message."""

    text: str


@dataclass(frozen=True, slots=True)
class FileShare:
    """An offer of a file, fetched out of band with ``share_code``."""

    share_code: str
    filename: str
    size: int
    mime_type: str


@dataclass(frozen=True, slots=True)
class GroupInvite:
    """An invitation to join a group conversation."""

    group_id: str
    group_name: str
    inviter: str


Content: TypeAlias = Text | FileShare | GroupInvite


def _text(raw: dict[str, Any], key: str, limit: int = MAX_FIELD_CHARS) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise SchemaError(f"content field {key!r} must be a string")
    if len(value) > limit:
        raise SchemaError(f"content field {key!r} is longer than {limit} characters")
    return value


def _size(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    # Yjs numbers may come back as floats; accept only whole, non-negative, JS-safe values.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise SchemaError(f"content field {key!r} must be a whole number of bytes")
    return value


def encode_content(content: Content) -> tuple[str, dict[str, Any]]:
    """Return ``(kind, fields)`` for storing ``content``; validate it on the way."""
    kind, fields = content_fields(content)
    decode_content(kind, fields)  # one validator for local and remote values
    return kind, fields


def content_fields(content: Content) -> tuple[str, dict[str, Any]]:
    """``(kind, fields)`` of content that was validated already (see ``encode_content``)."""
    if isinstance(content, Text):
        return "text", {"text": content.text}
    if isinstance(content, FileShare):
        return "file", {
            "share_code": content.share_code,
            "filename": content.filename,
            "size": content.size,
            "mime_type": content.mime_type,
        }
    if isinstance(content, GroupInvite):
        return "invite", {
            "group_id": content.group_id,
            "group_name": content.group_name,
            "inviter": content.inviter,
        }
    raise SchemaError(f"not a message content: {content!r}")


def decode_content(kind: object, raw: object) -> Content:
    """Rebuild content from stored values, raising ``SchemaError`` if they do not fit."""
    if not isinstance(raw, dict):
        raise SchemaError("content must be a map")
    if kind == "text":
        return Text(_text(raw, "text", MAX_TEXT_CHARS))
    if kind == "file":
        return FileShare(_text(raw, "share_code"), _text(raw, "filename"), _size(raw, "size"), _text(raw, "mime_type"))
    if kind == "invite":
        return GroupInvite(_text(raw, "group_id"), _text(raw, "group_name"), _text(raw, "inviter"))
    raise SchemaError(f"unknown content kind {kind!r}")


def searchable_text(content: Content) -> str:
    """The words of ``content`` that full-text search should find."""
    if isinstance(content, Text):
        return content.text
    if isinstance(content, FileShare):
        return content.filename
    return content.group_name
