"""What an application following a node's events would show, to hold against its index.

An application reads each conversation's history once, then keeps it up to date from
``SyncEngine.events()`` and its own writes, re-reading when events were dropped. If the
events left something out (say a message that left the document with no event), its
view would part from the index for good: the harness compares the two at the end.
"""

from __future__ import annotations

import trio

from ..replica import Replica
from ..sync import Activity, EventsDropped, MessageDeleted, MessageReceived, OfflineMessagesReceived, SyncEngine

HISTORY_LIMIT = 10**9


class AppView:
    """The live (not deleted) message ids of each conversation, as such an application knows them."""

    def __init__(self, replica: Replica, engine: SyncEngine) -> None:
        self.live: dict[str, set[str]] = {}
        self._replica = replica
        self._events = engine.events()
        self._rereading = trio.Lock()

    async def follow(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read every history, then fold the engine's events in, until cancelled."""
        await self._reread()
        task_status.started()
        async for event in self._events:
            if not self._fold(event):
                await self._reread()

    async def drained(self) -> None:
        """Fold in every event published so far (beside ``follow``)."""
        while True:
            async with self._rereading:
                pass  # one under way (``follow`` met dropped events) ends first
            try:
                event = self._events.receive_nowait()
            except trio.WouldBlock:
                return
            if not self._fold(event):
                await self._reread()

    def wrote(self, conversation: str, message_id: str) -> None:
        """A message to show: received, or written by this node."""
        self.live.setdefault(conversation, set()).add(message_id)

    def deleted(self, conversation: str, message_id: str) -> None:
        """A message to show no more: deleted, by this node or as an event said."""
        self.live.setdefault(conversation, set()).discard(message_id)

    def _fold(self, event: Activity) -> bool:
        """Take ``event`` in; False if events were dropped and every history must be read again."""
        match event:
            case MessageReceived(conversation, message):
                self.wrote(conversation, message.id)
            case OfflineMessagesReceived(conversation, messages):
                for message in messages:
                    self.wrote(conversation, message.id)
            case MessageDeleted(conversation, message_id):
                self.deleted(conversation, message_id)
            case EventsDropped():
                return False
        return True

    async def _reread(self) -> None:
        # Events published meanwhile wait in the channel and are folded in after: adding
        # or removing an id again, in the order it happened, changes nothing.
        async with self._rereading:
            for conversation in await self._replica.conversation_ids():
                history = await self._replica.history(conversation, limit=HISTORY_LIMIT)
                self.live[conversation] = {m.id for m in history if m.deleted_at is None}
