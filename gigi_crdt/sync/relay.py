"""Keeping every conversation of a replica in its room on one relay, reconnecting with backoff.

A relay is any Yjs WebSocket server (``gigi-crdt relay``, the Node y-websocket server,
Hocuspocus, y-redis): it holds each room's document and hands it to whoever joins later,
which is what lets two peers that are never online together exchange messages. Each
conversation gets its own connection (y-websocket has one room per connection) and its
own backoff, so a relay that is down or refuses us costs a few sleeping tasks and never
holds up anything else.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from ..errors import GigiError, RelayRefused
from ..replica import Replica, StoredUpdate
from ..transport.websocket import MAX_MESSAGE_BYTES, RelayAddress, open_room
from .activity import Activity
from .room import RoomLink
from .tcp import MAX_BACKOFF, MIN_BACKOFF

log = logging.getLogger(__name__)


class RelayClient:
    """Syncs every conversation of ``replica``, present and future, through one relay.

    What the relay brings is told to ``publish`` as sync events (``MessageReceived``...).
    It is an ``UpdateListener`` of the replica for as long as ``run`` runs: stored updates
    go to the open room of their conversation, and a conversation it has not seen yet gets
    a room of its own. Updates that came from this relay are not sent back to it.
    """

    def __init__(
        self,
        replica: Replica,
        relay: RelayAddress,
        publish: Callable[[Activity], None],
        *,
        min_backoff: float = MIN_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        rng: random.Random | None = None,
    ) -> None:
        self._replica = replica
        self._relay = relay
        self._publish = publish
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._rng = rng or random.Random()
        #: The origin of updates from this relay (its URL without the token).
        self.origin = f"relay:{relay}"
        self._rooms: dict[str, RoomLink] = {}
        self._known: set[str] = set()
        self._new: list[str] = []
        self._wake = trio.Event()

    def offer(self, stored: StoredUpdate) -> None:
        """Pass a stored update on to its room (``UpdateListener``)."""
        if stored.origin == self.origin:
            return
        conversation, update = stored.conversation, stored.update
        room = self._rooms.get(conversation)
        if room is not None:
            room.offer(update)
        elif conversation not in self._known:  # its room, once open, fetches the update itself
            self._known.add(conversation)
            self._new.append(conversation)
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a room open per conversation until cancelled."""
        self._replica.add_listener(self)
        try:
            async with trio.open_nursery() as nursery:
                for conversation in await self._replica.conversation_ids():
                    if conversation not in self._known:
                        self._known.add(conversation)
                        self._new.append(conversation)
                task_status.started()
                while True:
                    for conversation in self._new:
                        nursery.start_soon(self._keep_in_room, conversation)
                    self._new.clear()
                    self._wake = trio.Event()
                    await self._wake.wait()
        finally:
            self._replica.remove_listener(self)

    async def _keep_in_room(self, conversation: str) -> None:
        """Stay in the conversation's room, rejoining after every loss with backoff and jitter.

        As for peers (``keep_connected``): waits double per failure, from ``min_backoff`` to
        ``max_backoff``, scaled by a random factor in [0.5, 1.5); a visit that went well resets them.
        """
        delay = self._min_backoff
        while True:
            if await self._visit_room(conversation):
                delay = self._min_backoff
            await trio.sleep(delay * self._rng.uniform(0.5, 1.5))
            delay = min(delay * 2, self._max_backoff)

    async def _visit_room(self, conversation: str) -> bool:
        """One connection to the room; True if it synced and ended through no fault of the room's."""
        room = RoomLink(self._replica, conversation, self.origin, self._publish, max_update=MAX_MESSAGE_BYTES)
        try:
            async with open_room(self._relay, conversation) as channel:
                self._rooms[conversation] = room
                try:
                    reason = await room.run(channel)
                except GigiError as exc:  # our side: the conversation's document cannot load now, say
                    log.warning("left room %s on relay %s: %s", conversation, self._relay, exc)
                    return False
                finally:
                    del self._rooms[conversation]
        except RelayRefused as exc:
            log.warning("%s", exc)
            return False
        except OSError as exc:
            log.info("cannot reach relay %s: %s", self._relay, exc)
            return False
        log.info("left room %s on relay %s: %s", conversation, self._relay, reason)
        return not room.faulted
