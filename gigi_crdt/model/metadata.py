"""Conversation metadata, members and delivery/read receipts, as stored in the document."""

from __future__ import annotations

import enum
import functools
import logging
from dataclasses import dataclass
from typing import Any

from ..errors import SchemaError
from .clock import TICKS_PER_MS
from .ops import check_id, check_nickname, parse_timestamp

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 200
DAY_TICKS = 24 * 60 * 60 * 1000 * TICKS_PER_MS


def retention_cutoff(retention_days: int | None, now: int) -> int | None:
    """The timestamp below which a retention of ``retention_days`` has expired messages at
    timestamp ``now`` (``None``: kept forever)."""
    return None if retention_days is None else now - retention_days * DAY_TICKS


class ConversationKind(enum.StrEnum):
    """A two-person chat or a group."""

    DIRECT = "direct"
    GROUP = "group"


class Role(enum.StrEnum):
    """What a member may do: admins change the member list and the title of an unsigned
    group (in a signed one, only its creator does: see ``signed``)."""

    ADMIN = "admin"
    MEMBER = "member"


class ReceiptKind(enum.StrEnum):
    """Delivered means stored on the member's device; read means shown to its user."""

    DELIVERED = "delivered"
    READ = "read"


@dataclass(frozen=True, slots=True)
class Metadata:
    """What a conversation is."""

    id: str
    kind: ConversationKind
    title: str
    created_at: int
    retention_days: int | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """One peer that belongs, or belonged, to a conversation."""

    peer_id: str
    nickname: str
    role: Role
    joined_at: int
    left_at: int | None = None
    removed: bool = False
    """Gone because an admin removed it (``left_at`` is then when), not of its own accord."""

    @property
    def active(self) -> bool:
        """True while the peer has not left or been removed."""
        return self.left_at is None

    @property
    def has_left(self) -> bool:
        """True if the peer left of its own accord (it was not removed)."""
        return self.left_at is not None and not self.removed


@dataclass(frozen=True, slots=True)
class Receipt:
    """``member`` has delivered (or read) ``author``'s stream up to and including ``seq``."""

    member: str
    kind: ReceiptKind
    author: str
    seq: int


def encode_metadata(meta: Metadata) -> dict[str, Any]:
    """The plain values stored in the ``meta`` root map."""
    values: dict[str, Any] = {
        "id": meta.id,
        "kind": meta.kind.value,
        "title": meta.title,
        "created_at": meta.created_at,
    }
    if meta.retention_days is not None:
        values["retention_days"] = meta.retention_days
    return values


def parse_metadata(raw: dict[str, Any]) -> Metadata:
    """Metadata from the ``meta`` root map, or ``SchemaError``."""
    try:
        kind = ConversationKind(str(raw.get("kind")))
    except ValueError:
        raise SchemaError(f"unknown conversation kind {raw.get('kind')!r}") from None
    title = raw.get("title", "")
    if not isinstance(title, str) or len(title) > MAX_TITLE_CHARS:
        raise SchemaError("malformed title")
    retention = raw.get("retention_days")
    if retention is not None:
        retention = parse_timestamp(retention)
    return Metadata(
        check_id(raw.get("id"), "conversation id"), kind, title, parse_timestamp(raw.get("created_at")), retention
    )


def encode_member(member: Member) -> dict[str, Any]:
    """The plain value stored under the member's peer id in the ``members`` root map."""
    value: dict[str, Any] = {"nick": member.nickname, "role": member.role.value, "since": member.joined_at}
    if member.left_at is not None:
        value["left"] = member.left_at
    if member.removed:
        value["removed"] = True
    return value


def parse_member(peer_id: str, raw: object) -> Member:
    """A member record, or ``SchemaError``."""
    if not isinstance(raw, dict):
        raise SchemaError("member record is not a map")
    try:
        role = Role(str(raw.get("role")))
    except ValueError:
        raise SchemaError(f"unknown role {raw.get('role')!r}") from None
    left = raw.get("left")
    return Member(
        check_id(peer_id, "peer id"),
        check_nickname(raw.get("nick")),  # type: ignore[arg-type]
        role,
        parse_timestamp(raw.get("since")),
        None if left is None else parse_timestamp(left),
        left is not None and raw.get("removed") is True,
    )


def receipt_key(member: str, kind: ReceiptKind, author: str) -> str:
    """Key in the ``acks`` root map: one last-writer-wins counter per (member, kind, author)."""
    return f"{member}/{kind.value}/{author}"


def parse_receipt(key: str, value: object) -> Receipt:
    """A receipt from an ``acks`` entry, or ``SchemaError``."""
    member, kind, author = _receipt_key_parts(key)
    return Receipt(member, kind, author, parse_timestamp(value))


@functools.lru_cache(maxsize=4096)
def _receipt_key_parts(key: str) -> tuple[str, ReceiptKind, str]:
    # A conversation has a handful of receipt keys rewritten over and over: parse each once.
    parts = key.split("/")
    if len(parts) != 3:
        raise SchemaError(f"malformed receipt key {key!r}")
    member, kind, author = parts
    try:
        receipt_kind = ReceiptKind(kind)
    except ValueError:
        raise SchemaError(f"unknown receipt kind {kind!r}") from None
    return check_id(member, "peer id"), receipt_kind, check_id(author, "peer id")
