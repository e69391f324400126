"""What applications observe: the events of ``SyncEngine.events()``, as frozen values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from ..model import Changes, Content, Message, Receipt
from ..model.ops import Deleted, Edited, Reacted


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A message arrived live."""

    conversation: str
    message: Message


@dataclass(frozen=True, slots=True)
class OfflineMessagesReceived:
    """Messages written while we were apart arrived in one catch-up, in display order."""

    conversation: str
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class MessageEdited:
    """A message's author replaced its content."""

    conversation: str
    message_id: str
    content: Content


@dataclass(frozen=True, slots=True)
class MessageDeleted:
    """A message's author deleted it, or it left the conversation's document (see
    ``describe_vanished``)."""

    conversation: str
    message_id: str


@dataclass(frozen=True, slots=True)
class ReactionChanged:
    """``reactor`` added (``on``) or withdrew a reaction."""

    conversation: str
    message_id: str
    reactor: str
    emoji: str
    on: bool


@dataclass(frozen=True, slots=True)
class ReceiptUpdated:
    """A member delivered or read further into an author's messages."""

    conversation: str
    receipt: Receipt


@dataclass(frozen=True, slots=True)
class PeerOnline:
    """A link to a peer is up and handshaken."""

    peer_id: str
    nickname: str


@dataclass(frozen=True, slots=True)
class PeerOffline:
    """The link to a peer ended."""

    peer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """A peer came, went, or started or stopped typing in a conversation."""

    conversation: str
    peer_id: str
    nickname: str
    online: bool
    typing: bool


@dataclass(frozen=True, slots=True)
class SyncProgress:
    """Catch-up with a peer: ``done`` of ``total`` shared conversations are in sync."""

    peer_id: str
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """A large frame from a peer is arriving (a catch-up of a big conversation, say):
    ``received`` of its ``total`` bytes are in.

    Told for frames of at least ``LinkSettings.progress_bytes``, at most once per percent,
    and once more when all of it is in. The update is then checked, merged and stored
    (seconds for 10^5 messages) before the events for what it brought follow."""

    peer_id: str
    received: int
    total: int


@dataclass(frozen=True, slots=True)
class EventsDropped:
    """The application fell behind and ``count`` events were not kept; re-read the state."""

    count: int


Activity: TypeAlias = (
    MessageReceived
    | OfflineMessagesReceived
    | MessageEdited
    | MessageDeleted
    | ReactionChanged
    | ReceiptUpdated
    | PeerOnline
    | PeerOffline
    | PresenceChanged
    | SyncProgress
    | TransferProgress
    | EventsDropped
)


def describe_changes(conversation: str, changes: Changes, *, catch_up: bool) -> list[Activity]:
    """The events an application should see for ``changes`` received from a peer."""
    posted = changes.posted()
    events: list[Activity] = []
    for entry in changes.entries:
        op = entry.op
        if isinstance(op, Edited):
            events.append(MessageEdited(conversation, op.target, op.content))
        elif isinstance(op, Deleted):
            events.append(MessageDeleted(conversation, op.target))
        elif isinstance(op, Reacted):
            events.append(ReactionChanged(conversation, op.target, entry.author, op.emoji, op.on))
    if catch_up and posted:
        head: list[Activity] = [OfflineMessagesReceived(conversation, tuple(posted))]
    else:
        head = [MessageReceived(conversation, message) for message in posted]
    receipts: list[Activity] = [ReceiptUpdated(conversation, receipt) for receipt in changes.receipts]
    return head + events + receipts


def describe_vanished(conversation: str, changes: Changes) -> list[Activity]:
    """The events for shown messages ``changes`` took away, known once committed: their
    entries were deleted with nothing in their place (``Changes.vanished``), the first
    half of a deletion whose second half waits; the application stops showing them, as
    the index does."""
    return [MessageDeleted(conversation, message_id) for message_id in changes.vanished_messages]
