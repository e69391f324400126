"""Messages as a reader sees them: the fold of all authors' streams, in display order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .content import Content
from .ops import Deleted, Edited, Posted, Reacted, StreamEntry, Tombstone

SortKey = tuple[int, str]


@dataclass(frozen=True, slots=True)
class Message:
    """One message with its edits, deletion and reactions applied."""

    id: str
    author: str
    nickname: str
    timestamp: int
    seq: int
    content: Content | None
    edited_at: int | None = None
    deleted_at: int | None = None
    reactions: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def deleted(self) -> bool:
        """True once the author deleted it; ``content`` is then ``None``."""
        return self.content is None

    @property
    def sort_key(self) -> SortKey:
        """Display order: hybrid timestamp, then id, the same on every peer."""
        return (self.timestamp, self.id)


@dataclass(slots=True)
class _Draft:
    author: str
    nickname: str
    timestamp: int
    seq: int
    content: Content | None
    edited_at: int | None = None
    deleted_at: int | None = None


class HistoryFold:
    """Folds stream entries into messages; each author's entries must come in ``seq`` order.

    The result does not depend on how different authors' streams interleave: edits and
    deletions only touch the same author's earlier posts, and a reaction is keyed by
    (reactor, message, emoji).
    """

    def __init__(self) -> None:
        self._drafts: dict[str, _Draft] = {}
        self._reactions: dict[tuple[str, str, str], bool] = {}

    def add(self, entry: StreamEntry) -> None:
        """Fold one entry in."""
        op = entry.op
        if isinstance(op, Posted | Tombstone) and op.id not in self._drafts:
            if isinstance(op, Posted):
                self._drafts[op.id] = _Draft(entry.author, op.nickname, op.timestamp, entry.seq, op.content)
            else:
                self._drafts[op.id] = _Draft(
                    entry.author, op.nickname, op.timestamp, entry.seq, None, deleted_at=op.deleted_at
                )
        elif isinstance(op, Edited | Deleted):
            draft = self._drafts.get(op.target)
            if draft is None or draft.author != entry.author or draft.deleted_at is not None:
                return
            if isinstance(op, Edited) and draft.content is not None:
                draft.content, draft.edited_at = op.content, op.timestamp
            elif isinstance(op, Deleted):
                draft.content, draft.edited_at, draft.deleted_at = None, None, op.timestamp
        elif isinstance(op, Reacted):
            self._reactions[(op.target, op.emoji, entry.author)] = op.on

    def messages(self) -> list[Message]:
        """All messages in display order."""
        reactions: dict[str, dict[str, set[str]]] = {}
        for (target, emoji, reactor), on in self._reactions.items():
            if on:
                reactions.setdefault(target, {}).setdefault(emoji, set()).add(reactor)
        result = [
            Message(
                id=message_id,
                author=d.author,
                nickname=d.nickname,
                timestamp=d.timestamp,
                seq=d.seq,
                content=d.content,
                edited_at=d.edited_at,
                deleted_at=d.deleted_at,
                reactions={emoji: frozenset(who) for emoji, who in reactions.get(message_id, {}).items()}
                if d.content is not None
                else {},
            )
            for message_id, d in self._drafts.items()
        ]
        result.sort(key=lambda m: m.sort_key)
        return result


def fold_history(entries: Iterable[StreamEntry]) -> list[Message]:
    """The ordered messages that ``entries`` describe."""
    history = HistoryFold()
    for entry in entries:
        history.add(entry)
    return history.messages()
