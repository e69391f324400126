"""What ``Node.events()`` yields: the sync engine's events, discovery's, and the node's own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import trio

from ..discovery import PeerFound, PeerLost
from ..sync import Activity, EventsDropped

EVENT_BUFFER = 1024


@dataclass(frozen=True, slots=True)
class ContactKeyChanged:
    """A peer used a known contact's nickname with another key; its link was refused.

    Nothing of the contact was sent to it: conversations are shared by peer id, and a
    different key is a different peer id. Compare safety numbers before trusting it.
    """

    nickname: str
    known_peer_id: str
    peer_id: str


NodeEvent: TypeAlias = Activity | PeerFound | PeerLost | ContactKeyChanged


class EventHub:
    """The node's one bounded event queue, fed by several sources without ever blocking them.

    An application that falls behind loses events (it is told how many, and re-reads the
    state) rather than stalling the links or discovery that produce them.
    """

    def __init__(self, size: int = EVENT_BUFFER) -> None:
        self._send, self._receive = trio.open_memory_channel[NodeEvent](size)
        self._dropped = 0

    def events(self) -> trio.MemoryReceiveChannel[NodeEvent]:
        """The queue's receiving end, for one consumer; it ends when the node closes."""
        return self._receive

    def publish(self, event: NodeEvent) -> None:
        """Queue ``event``, or count it as dropped if the consumer has fallen behind."""
        try:
            if self._dropped:
                self._send.send_nowait(EventsDropped(self._dropped))
                self._dropped = 0
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self._dropped += 1

    def close(self) -> None:
        """End the queue (once nothing publishes any more): a consumer's ``async for`` finishes."""
        self._send.close()
