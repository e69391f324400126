"""pycrdt-websocket rooms whose documents live in a pycrdt-store SQLite database.

``WebsocketServer`` creates bare in-memory rooms; here each room is loaded from the
database when first joined, and every change to its document is written back, in order,
by one writer task per room. We do not hand the store to ``YRoom`` itself: it starts one
task per update to write it (unordered, and cancelled mid-write when the room stops), so
a relay stopped right after a burst of updates would lose some of them. Our writer drains
its queue before the relay exits.

Rooms are never dropped from memory while the relay runs (``auto_clean_rooms=False``): a
room reopened while its last writes are still queued would load an incomplete document.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import trio
from pycrdt import Doc, Subscription, TransactionEvent
from pycrdt.store import SQLiteYStore, YDocNotFound
from pycrdt.websocket import WebsocketServer, YRoom

log = logging.getLogger(__name__)

WRITE_QUEUE_SIZE = 1024
"""Updates of one room waiting to be written; past this the room's whole state is written next."""


def _log_and_go_on(exception: Exception, logger: logging.Logger) -> bool:
    # pycrdt-websocket lets any error in one room (a client that vanished mid-send, a
    # malformed update) stop the server's task group, and with it every room: log it and
    # keep the relay up; the room restarts and the client reconnects.
    logger.warning("room error: %r", exception)
    return True


class _RoomStore(SQLiteYStore):
    """One room's updates in the relay's database (pycrdt-store's tables, keyed by room name)."""

    def __init__(self, database: Path, room: str) -> None:
        super().__init__(path=room, log=log)
        self.db_path = str(database)  # pycrdt-store reads it from a class attribute by default


class _Writer:
    """Writes every change of a room's document to its store, in order."""

    def __init__(self, store: _RoomStore, doc: Doc[Any]) -> None:
        self._store = store
        self._doc = doc
        self._queue, self._queued = trio.open_memory_channel[bytes](WRITE_QUEUE_SIZE)
        self._behind = False
        self._subscription: Subscription = doc.observe(self._on_change)

    def _on_change(self, event: TransactionEvent) -> None:
        try:
            self._queue.send_nowait(event.update)
        except trio.WouldBlock:
            self._behind = True  # the next write is the whole document instead

    async def run(self) -> None:
        """Write until ``close`` and everything queued before it is on disk, then stop the store."""
        async with self._queued:
            async for update in self._queued:
                if self._behind:
                    self._behind = False
                    update = self._doc.get_update()
                await self._store.write(update)
        await self._store.stop()

    def close(self) -> None:
        """No more changes will come: let ``run`` finish what is queued."""
        self._doc.unobserve(self._subscription)
        self._queue.close()


class PersistentRooms(WebsocketServer):
    """A ``WebsocketServer`` whose rooms are loaded from and saved to one SQLite database.

    Stores and writers run in ``nursery``, which must outlive the server: call ``close``
    once no client can be served any more, and the nursery ends when all is written.
    """

    def __init__(self, database: Path, nursery: trio.Nursery) -> None:
        super().__init__(auto_clean_rooms=False, exception_handler=_log_and_go_on, log=log)
        self._database = database
        self._nursery = nursery
        self._opening = trio.Lock()
        self._writers: list[_Writer] = []

    async def get_room(self, name: str) -> YRoom:
        """The room called ``name``, loaded from the database the first time it is asked for."""
        # Two first clients of one room must not load it twice, nor start it twice: a second
        # ``YRoom.start`` waits for the first one's lock, forever, and its client hangs.
        async with self._opening:
            if name not in self.rooms:
                self.rooms[name] = await self._open_room(name)
            room = self.rooms[name]
            await self.start_room(room)
        return room

    async def _open_room(self, name: str) -> YRoom:
        store = _RoomStore(self._database, name)
        await self._nursery.start(store.start)
        doc: Doc[Any] = Doc()
        with contextlib.suppress(YDocNotFound):  # a room nobody wrote to yet
            await store.apply_updates(doc)
        writer = _Writer(store, doc)  # observes only from here: what was loaded is not rewritten
        self._writers.append(writer)
        self._nursery.start_soon(writer.run)
        return YRoom(ydoc=doc, exception_handler=_log_and_go_on, log=log)

    def close(self) -> None:
        """Stop taking changes; the writers finish what is queued and stop their stores."""
        for writer in self._writers:
            writer.close()
