"""One conversation synced with one y-websocket room over one connection.

The room speaks the standard y-websocket protocol (``y-protocols/sync`` and awareness as
binary messages, no framing of ours), so any Yjs WebSocket server can be the other end.
On connect we send sync step 1 (our state vector) and answer the room's step 1 with
step 2 (what it lacks); from then on each stored update of the conversation is forwarded
as it is, and each update from the room is merged into the replica with the relay as its
origin, so it is not sent back to the room, but does reach LAN peers.

Incoming messages go through our total decoder (``gigi_crdt.protocol.yproto``). Awareness
from the room is skipped: relays are for messages, presence stays on direct links.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio
from trio_websocket import ConnectionClosed

from ..errors import GigiError
from ..protocol import RemoteProtocolError
from ..protocol.yproto import MESSAGE_SYNC, SyncKind, decode_sync, encode_sync, read_varuint
from ..replica import Replica
from .activity import Activity, describe_changes, describe_vanished

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
"""Updates waiting to go to one room; past this the room is resynced instead (see ``RoomLink``)."""


class MessageChannel(Protocol):
    """What a room is reached through: a trio-websocket ``WebSocketConnection``, or a test double."""

    async def get_message(self) -> bytes | str:
        """The next whole message; raises ``trio_websocket.ConnectionClosed`` at the end."""
        ...

    async def send_message(self, message: bytes | str) -> None:
        """Send one whole message."""
        ...


class RoomLink:
    """Syncs ``conversation`` of ``replica`` with the room at the other end of one channel.

    What the room brings is described to the application through ``publish`` (the same
    events as for a peer link; it must not block).

    Local updates are queued (``offer``) in a bounded queue. If the room falls so far behind
    that the queue is full, the next message sent is instead the diff against the state
    vector the room announced on connect: it holds everything queued and dropped since, so
    nothing is lost and memory stays bounded.
    """

    def __init__(
        self,
        replica: Replica,
        conversation: str,
        origin: str,
        publish: Callable[[Activity], None],
        *,
        max_update: int,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self._replica = replica
        self._conversation = conversation
        self._origin = origin
        self._publish = publish
        self._max_update = max_update
        self._outbox, self._queued = trio.open_memory_channel[bytes](queue_size)
        self._room_state: bytes | None = None
        self._behind = False
        #: The room sent something malformed or refused: rejoining at once would only fetch it again.
        self.faulted = False

    def offer(self, update: bytes) -> None:
        """Queue a stored update for the room; never blocks."""
        try:
            self._outbox.send_nowait(update)
        except trio.WouldBlock:
            self._behind = True

    async def run(self, channel: MessageChannel) -> str:
        """Sync until the room goes away or misbehaves; returns why it ended (for the log)."""
        state = await self._replica.state_vector(self._conversation)
        try:
            await channel.send_message(encode_sync(SyncKind.STEP1, state))
        except ConnectionClosed as exc:
            return f"room closed ({exc.reason})"
        failed: list[GigiError] = []  # by the forwarder, which then cancels the reader
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward, channel, failed, nursery.cancel_scope)
            reason = await self._read(channel)
            nursery.cancel_scope.cancel()
        if failed:
            raise failed[0]  # as itself, not in a group: ``RelayLink`` leaves the room on it
        return reason

    async def _forward(self, channel: MessageChannel, failed: list[GigiError], scope: trio.CancelScope) -> None:
        async for update in self._queued:
            if self._behind and self._room_state is not None:
                self._behind = False
                try:
                    update = await self._replica.diff(self._conversation, self._room_state)
                except GigiError as exc:  # our side (the store): leave the room, rejoin later
                    failed.append(exc)
                    scope.cancel()
                    return
            try:
                await channel.send_message(encode_sync(SyncKind.UPDATE, update))
            except ConnectionClosed:
                return  # the reader sees the close too, and says why

    async def _read(self, channel: MessageChannel) -> str:
        while True:
            try:
                message = await channel.get_message()
                if isinstance(message, str):
                    self.faulted = True
                    return "the room sent a text message: not a y-websocket server"
                await self._handle(channel, message)
            except ConnectionClosed as exc:
                return f"room closed ({exc.reason})"
            except RemoteProtocolError as exc:
                self.faulted = True
                return f"malformed message from the room: {exc}"
            except GigiError as exc:
                self.faulted = True
                log.warning("closing room %s: refused its update: %s", self._conversation, exc)
                return f"refused an update: {exc}"

    async def _handle(self, channel: MessageChannel, message: bytes) -> None:
        message_type, _ = read_varuint(message, 0)
        if message_type != MESSAGE_SYNC:
            return  # awareness, auth, query-awareness: nothing we act on
        kind, payload = decode_sync(message, max_payload=self._max_update)
        if kind is SyncKind.STEP1:
            self._room_state = payload
            diff = await self._replica.diff(self._conversation, payload)
            await channel.send_message(encode_sync(SyncKind.STEP2, diff))
        else:
            changes = await self._replica.receive(self._conversation, payload, origin=self._origin)
            # The room's step 2 is what we missed while away: an offline batch, as from a peer.
            for activity in describe_changes(self._conversation, changes, catch_up=kind is SyncKind.STEP2):
                self._publish(activity)
            for activity in describe_vanished(self._conversation, changes):
                self._publish(activity)
