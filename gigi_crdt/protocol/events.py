"""The events of the gigi-sync protocol: what a peer says, as frozen values.

One event is one frame on the wire (see ``protocols/gigi-sync-v1.md``). Updates and state
vectors travel as opaque Yjs bytes; this layer never looks inside a document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from .errors import CloseCode
from .yproto import AwarenessEntry

PROTOCOL_NAME = "gigi-sync"
PROTOCOL_VERSION = 1


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame each side sends: who it is and what it speaks."""

    peer_id: str
    nickname: str
    awareness_client_id: int
    capabilities: frozenset[str] = frozenset()
    protocol: str = PROTOCOL_NAME
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Announce:
    """The conversations the sender holds that list the receiver as a member."""

    conversations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """y-protocols sync step 1: the sender's state vector; answer with ``SyncStep2``."""

    conversation: str
    state_vector: bytes


HEADS_CAPABILITY = "heads"
"""A HELLO capability: the sender takes signed stream heads beside a step 2 (``SyncStep2.heads``)."""

HeadRecord: TypeAlias = dict[str, "str | int"]
"""A signed stream head as a plain map (appendix A.2 of the spec); opaque to this layer."""


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """y-protocols sync step 2: everything the step-1 sender lacked; with ``heads``, the
    signed heads that cover its structs (only to a peer with ``HEADS_CAPABILITY``)."""

    conversation: str
    update: bytes
    heads: tuple[HeadRecord, ...] = ()
    reached: tuple[str, ...] = ()
    """The sender's other peers that share the conversation: each gets from the sender all
    it holds, so the receiver need not pass this on to them (only to a peer with
    ``REACH_CAPABILITY``; empty: not known)."""


PARTS_CAPABILITY = "parts"
"""A HELLO capability: the sender takes a step 2 too large for one frame in parts (``SyncPart``)."""


@dataclass(frozen=True, slots=True)
class SyncPart:
    """A part of the next step 2 for the conversation, which is too large for one frame:
    a Yjs v1 update of its own, the parts and the step 2 that ends them applied in order
    (only to a peer with ``PARTS_CAPABILITY``)."""

    conversation: str
    update: bytes


REACH_CAPABILITY = "reach"
"""A HELLO capability: the sender takes, beside a live update, the peers it has reached
(``Update.reached``), and does not pass the update on to them."""


@dataclass(frozen=True, slots=True)
class Update:
    """One live transaction's own update, first-hand or passed on."""

    conversation: str
    update: bytes
    reached: tuple[str, ...] = ()
    """Peers that hold the update or were sent it already: the receiver need not pass it on
    to them (only to a peer with ``REACH_CAPABILITY``; empty: not known)."""


@dataclass(frozen=True, slots=True)
class Awareness:
    """Presence of the sender (online, typing, last seen) in one conversation."""

    conversation: str
    entries: tuple[AwarenessEntry, ...]


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; answer with a ``Pong`` carrying the same nonce."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a ``Ping``."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Close:
    """The sender ends the link, saying why."""

    code: CloseCode
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The transport ended (end of stream), with or without a ``Close`` first."""

    clean: bool = field(default=False)


@dataclass(frozen=True, slots=True)
class NeedData:
    """No complete frame is buffered: feed more bytes with ``receive_data``."""


NEED_DATA = NeedData()

Event: TypeAlias = Hello | Announce | SyncStep1 | SyncStep2 | SyncPart | Update | Awareness | Ping | Pong | Close
"""Everything that travels as a frame."""
