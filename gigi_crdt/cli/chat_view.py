"""How ``gigi-crdt chat`` shows things: pure formatting and bookkeeping, no I/O."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from ..model import Content, FileShare, GroupInvite, Member, Message, Metadata, Text
from ..model.clock import wall_ms

SENT, DELIVERED, READ = "·", "✓", "✓✓"
MISSED = "(missed while offline)"
BAR_WIDTH = 20


def content_text(content: Content | None) -> str:
    """One line for a message's content."""
    if content is None:
        return "(deleted)"
    if isinstance(content, Text):
        return content.text.replace("\n", " ")
    if isinstance(content, FileShare):
        return f"[file {content.filename}, {content.size} bytes]"
    assert isinstance(content, GroupInvite)
    return f"[invited to '{content.group_name}' by {content.inviter}]"


def receipt_mark(delivered: int, read: int, others: int) -> str:
    """The mark next to our own message: sent, delivered (to all others) or read (by all)."""
    if others and read >= others:
        return READ
    if others and delivered >= others:
        return DELIVERED
    if delivered:
        return f"{DELIVERED} {delivered}/{others}"
    return SENT


def message_line(number: int, message: Message, *, label: str = "", mark: str = "", missed: bool = False) -> str:
    """``[label] #3 12:04 bob: text ✓✓``; the label only for a conversation other than the current one."""
    when = dt.datetime.fromtimestamp(wall_ms(message.timestamp) / 1000).strftime("%H:%M")
    parts = [f"[{label}]"] if label else []
    parts.append(f"#{number} {when} {message.nickname}: {content_text(message.content)}")
    if message.edited_at is not None and message.content is not None:
        parts.append("(edited)")
    parts.extend(f"{emoji}{len(who)}" for emoji, who in sorted(message.reactions.items()) if who)
    if mark:
        parts.append(mark)
    if missed:
        parts.append(MISSED)
    return " ".join(parts)


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#######.............] 3/9``"""
    return f"{_bar(done, total, width)} {done}/{total}"


def bytes_bar(received: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#######.............] 5.8/16.6 MB``"""
    return f"{_bar(received, total, width)} {received / 1e6:.1f}/{megabytes(total)}"


def megabytes(size: int) -> str:
    """``16.6 MB``"""
    return f"{size / 1e6:.1f} MB"


def _bar(done: int, total: int, width: int) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}]"


def conversation_label(meta: Metadata, members: Mapping[str, Member], me: str) -> str:
    """What a conversation is called in the chat: the other peer's nickname, or ``#title``."""
    if meta.title:
        return f"#{meta.title}"
    others = sorted(m.nickname for peer, m in members.items() if peer != me)
    return ", ".join(others) or "(just you)"


class Numbering:
    """The ``#n`` shown next to each message: per conversation, in the order they are first shown."""

    def __init__(self) -> None:
        self._ids: dict[str, list[str]] = {}
        self._numbers: dict[tuple[str, str], int] = {}

    def number(self, conversation: str, message_id: str) -> int:
        """The message's number, given on first sight."""
        key = (conversation, message_id)
        if key not in self._numbers:
            ids = self._ids.setdefault(conversation, [])
            ids.append(message_id)
            self._numbers[key] = len(ids)
        return self._numbers[key]

    def message_id(self, conversation: str, number: int) -> str | None:
        """The message shown as ``#number`` in ``conversation``, if any."""
        ids = self._ids.get(conversation, [])
        return ids[number - 1] if 1 <= number <= len(ids) else None
