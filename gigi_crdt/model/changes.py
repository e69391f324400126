"""What a write or a merge changed in a conversation document, as the replica needs to know it."""

from __future__ import annotations

from dataclasses import dataclass, field

from .metadata import Receipt
from .ops import Posted, StreamEntry
from .view import Message


@dataclass(slots=True)
class Changes:
    """What one transaction (local or remote) changed, as the index needs to know it."""

    entries: list[StreamEntry] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    metadata_changed: bool = False
    complete_upto: dict[str, int] = field(default_factory=dict)
    """Author -> how much of its stream the document holds with no entry missing below,
    where that is less than the entries suggest (see ``Conversation.apply_remote``)."""
    waiting: bool = False
    """A remote update left structs or deletions waiting for a dependency, not all of
    which were waiting already (set by ``Replica.receive``)."""
    vanished: list[tuple[str, int]] = field(default_factory=list)
    """(author, seq) of entries a remote update deleted with nothing in their place yet:
    a deletion's redaction deletes and inserts, and the insert may wait (``gaps``), for
    good if its author lost its store. The document shows no message there meanwhile."""
    merged: bool = False
    """A remote update changed the document: yrs integrated structs of it or applied some
    of its deletions. It may show nowhere else here: a peer's expiry of buckets past
    retention deletes without writing anything (set by ``Conversation.apply_remote``)."""
    vanished_messages: list[str] = field(default_factory=list)
    """The ids of the messages shown until now that ``vanished`` took out of the index
    (set by ``Replica.receive`` once the update is committed)."""
    _posted: list[Message] | None = field(default=None, init=False, repr=False, compare=False)

    def __bool__(self) -> bool:
        return bool(self.entries or self.receipts or self.metadata_changed or self.vanished)

    def posted(self) -> list[Message]:
        """The messages the entries post, in display order (ask once the entries are final).
        Made once: a catch-up's 10^5 take a fifth of a second or more, which a replica
        spends in a worker thread."""
        if self._posted is None:
            posted = [
                Message(entry.op.id, entry.author, entry.op.nickname, entry.op.timestamp, entry.seq, entry.op.content)
                for entry in self.entries
                if isinstance(entry.op, Posted)
            ]
            posted.sort(key=lambda message: message.sort_key)
            self._posted = posted
        return self._posted


@dataclass(frozen=True, slots=True)
class Written:
    """The result of a local write: the update to persist and forward, and what it changed."""

    update: bytes
    changes: Changes
    message_id: str | None = None
