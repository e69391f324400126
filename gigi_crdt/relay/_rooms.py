"""pycrdt-websocket rooms whose documents live in a pycrdt-store SQLite database.

``WebsocketServer`` creates bare in-memory rooms; here each room is loaded from the
database when first joined, and every change to its document is written back, in order,
by one writer task per room. We do not hand the store to ``YRoom`` itself: it starts one
task per update to write it (unordered, and cancelled mid-write when the room stops), so
a relay stopped right after a burst of updates would lose some of them. Our writer drains
its queue before the relay exits.

Rooms are never dropped from memory while the relay runs (``auto_clean_rooms=False``): a
room reopened while its last writes are still queued would load an incomplete document.

A room's log is compacted by its writer: replaced by one snapshot of the document, which
yrs has garbage-collected (deleted content is gone from it). That happens once the log
has grown by the size of the last snapshot (so the rewriting costs a bounded multiple of
what is written), and within ``GARBAGE_DELAY`` of a deletion: what members delete or let
expire (retention) must not stay on the relay's disk, nor reach a new device from it.
A log of more than one update, left by a relay that was killed or is older than
compaction, may hold deletions no compaction followed: the relay compacts such logs as
it starts (``compact_stored_rooms``), rooms nobody joins included.
pycrdt-store's own squashing is not used: it needs compression callbacks to apply
anything (without them it replaces the history with an empty document).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
from pycrdt import Doc, Subscription, TransactionEvent
from pycrdt.store import SQLiteYStore
from pycrdt.websocket import WebsocketServer, YRoom

log = logging.getLogger(__name__)

WRITE_QUEUE_SIZE = 1024
"""Updates of one room waiting to be written; past this the room's log is compacted next."""
MIN_COMPACTION_BYTES = 1024 * 1024
"""A room's log is compacted once it has grown by this much, or by its last snapshot's size if larger."""
GARBAGE_DELAY = 600.0
"""Seconds from a room's first deletion since its last compaction to the compaction that drops it."""
NO_DELETIONS = b"\x00"  # the delete set of a transaction that deleted nothing (no clients)


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
        # pycrdt-store would rebuild the whole document every 100 writes for a checkpoint,
        # on the event loop (40 ms for a 4 MB room, every room waiting): the writer's
        # compaction bounds the log instead.
        self.checkpoint_interval = None

    async def load(self, doc: Doc[Any]) -> int:
        """Apply the room's stored updates to ``doc``; returns how many there were (none
        for a room nobody wrote to yet). Not ``read``: it reports any failure as an
        absent document, which would serve the room empty.

        A stored update pycrdt cannot read (a damaged disk, a bad copy) is skipped with a
        warning: the rest of the room still loads, the next compaction leaves it out, and
        the members, who each hold the whole document, send the room what it lacks when
        they join."""
        async with self._transaction() as cursor:
            await cursor.execute("SELECT yupdate FROM yupdates WHERE path = ? ORDER BY timestamp", (self.path,))
            rows = await cursor.fetchall()
        for number, (update,) in enumerate(rows, 1):
            try:
                doc.apply_update(update)
            except ValueError as exc:  # pycrdt's word for an update it cannot decode
                log.warning(
                    "room %s: stored update %d of %d is unreadable, skipped: %s", self.path, number, len(rows), exc
                )
        return len(rows)

    async def replace_with(self, snapshot: bytes) -> None:
        """Replace the room's stored updates (and its checkpoint, an old copy of them) with
        ``snapshot``, in one transaction."""
        async with self._transaction() as cursor:
            await cursor.execute("DELETE FROM yupdates WHERE path = ?", (self.path,))
            await cursor.execute("DELETE FROM ycheckpoints WHERE path = ?", (self.path,))
            await cursor.execute(
                "INSERT INTO yupdates VALUES (?, ?, ?, ?)",
                (self.path, snapshot, await self.get_metadata(), time.time()),
            )

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        """A cursor in a transaction of the store's connection, under its lock, as ``write`` uses it."""
        assert self.db_initialized is not None, "started first"
        await self.db_initialized.wait()
        async with self.lock:
            async with self._db:
                yield await self._db.cursor()


class _Writer:
    """Writes every change of a room's document to its store, in order, and compacts it."""

    def __init__(self, store: _RoomStore, doc: Doc[Any], garbage_delay: float, *, stored: int) -> None:
        """``stored``: how many stored updates ``doc`` was loaded from (``_RoomStore.load``)."""
        self._store = store
        self._doc = doc
        self._queue, self._queued = trio.open_memory_channel[tuple[bytes, bool]](WRITE_QUEUE_SIZE)
        self._behind = False
        self._garbage_delay = garbage_delay
        # Trio time of the first deletion written since compacting. A stored log of more than
        # one update may hold deletions no compaction followed (a relay killed, or older
        # than compaction); a lone snapshot holds no deleted content.
        self._garbage_since: float | None = trio.current_time() if stored > 1 else None
        self._written = 0  # bytes written since compacting
        self._snapshot_size = 0
        self._subscription: Subscription = doc.observe(self._on_change)

    def _on_change(self, event: TransactionEvent) -> None:
        try:
            deletes = event.delete_set != NO_DELETIONS  # type: ignore[attr-defined]  # pycrdt's stub omits it
            self._queue.send_nowait((event.update, deletes))
        except trio.WouldBlock:
            self._behind = True  # the next write is a compaction instead

    async def run(self) -> None:
        """Write until ``close`` and everything queued before it is on disk, then stop the store."""
        async with self._queued:
            while True:
                deadline = math.inf if self._garbage_since is None else self._garbage_since + self._garbage_delay
                with trio.move_on_at(deadline):
                    try:
                        update, deletes = await self._queued.receive()
                    except trio.EndOfChannel:
                        break
                    if self._behind:  # changes were dropped: the document holds them all
                        self._behind = False
                        self._drop_queued()
                        await self._compact()
                    else:
                        await self._write(update, deletes)
                if trio.current_time() >= deadline or self._written >= max(MIN_COMPACTION_BYTES, self._snapshot_size):
                    await self._compact()
            if self._garbage_since is not None:  # a restart would forget it
                await self._compact()
        await self._store.stop()

    def _drop_queued(self) -> None:
        """Forget the changes queued: a snapshot taken now holds them."""
        while True:
            try:
                self._queued.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    async def _write(self, update: bytes, deletes: bool) -> None:
        with trio.CancelScope(shield=True):  # the deadline must not cut a write in half
            await self._store.write(update)
        self._written += len(update)
        if deletes and self._garbage_since is None:
            self._garbage_since = trio.current_time()

    async def _compact(self) -> None:
        # The document holds everything queued too: rewriting those after the snapshot
        # changes nothing (an update applies once).
        snapshot = self._doc.get_update()
        try:
            with trio.CancelScope(shield=True):
                await self._store.replace_with(snapshot)
        except (sqlite3.Error, OSError) as exc:
            # Tried again after the delay, or as the relay stops: the log still holds what
            # it held, but maybe not the changes a writer that fell behind dropped.
            log.warning("compacting room %s failed: %s", self._store.path, exc)
            self._written, self._garbage_since = 0, trio.current_time()
            return
        self._written, self._snapshot_size, self._garbage_since = 0, len(snapshot), None

    def close(self) -> None:
        """No more changes will come: let ``run`` finish what is queued."""
        self._doc.unobserve(self._subscription)
        self._queue.close()


class _Room(YRoom):
    """pycrdt-websocket's room (0.16), whose update stream nothing closes: it stays open
    after the server stops the room, and anyio warns of it when the room is collected."""

    def release(self) -> None:
        """Close what the room left open; only once it has stopped."""
        stream = getattr(self, "_update_send_stream", None)  # made when the room starts
        if stream is not None:
            stream.close()


class PersistentRooms(WebsocketServer):
    """A ``WebsocketServer`` whose rooms are loaded from and saved to one SQLite database.

    Stores and writers run in ``nursery``, which must outlive the server: call ``close``
    once no client can be served any more, and the nursery ends when all is written.
    """

    def __init__(self, database: Path, nursery: trio.Nursery) -> None:
        super().__init__(auto_clean_rooms=False, exception_handler=_log_and_go_on, log=log)
        self._database = database
        self._nursery = nursery
        self._opening: dict[str, trio.Lock] = {}  # rooms being opened or compacted (``_room_lock``)
        self._writers: list[_Writer] = []
        self._sweep = trio.CancelScope()  # ``compact_stored_rooms``, until ``close``

    async def get_room(self, name: str) -> YRoom:
        """The room called ``name``, loaded from the database the first time it is asked for."""
        async with self._room_lock(name):
            if name not in self.rooms:
                self.rooms[name] = await self._open_room(name)
            room = self.rooms[name]
            await self.start_room(room)
        return room

    @contextlib.asynccontextmanager
    async def _room_lock(self, name: str) -> AsyncIterator[None]:
        """Held while room ``name`` is opened, started or compacted. Two first clients of
        one room must not load it twice, nor start it twice (a second ``YRoom.start`` waits
        for the first one's lock, forever, and its client hangs); other rooms go on, so a
        join never waits for a large room's load."""
        lock = self._opening.setdefault(name, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked():  # else handed on to a task that waited for it
                del self._opening[name]

    async def _load_room(self, name: str) -> tuple[_RoomStore, Doc[Any], int]:
        """A started store of room ``name``, the room's document loaded from it, and how
        many stored updates it was loaded from. If loading fails, nothing is left running."""
        store = _RoomStore(self._database, name)
        await self._nursery.start(store.start)
        doc: Doc[Any] = Doc()
        try:
            return store, doc, await store.load(doc)
        except BaseException:
            with trio.CancelScope(shield=True):  # else its task would keep the nursery open
                await store.stop()
            raise

    async def _open_room(self, name: str) -> YRoom:
        store, doc, stored = await self._load_room(name)
        # The writer observes only from here: what was loaded is not written again.
        writer = _Writer(store, doc, GARBAGE_DELAY, stored=stored)
        self._writers.append(writer)
        self._nursery.start_soon(writer.run)
        return _Room(ydoc=doc, exception_handler=_log_and_go_on, log=log)

    async def compact_stored_rooms(self) -> None:
        """Compact the stored log of every room not yet opened whose log holds more than
        one update (a lone snapshot holds no deleted content), one room at a time. A room
        opened first is left to its writer, which compacts such a log in time too. Run it
        once, beside the server; ``close`` stops it."""
        with self._sweep:
            compacted = 0
            for name in await trio.to_thread.run_sync(_rooms_with_logs, self._database):
                # Under the lock that opening the room takes: a room is never loaded twice at once.
                async with self._room_lock(name):
                    if name not in self.rooms:
                        compacted += await self._compact_closed_room(name)
            log.info("compacted the stored logs of %d rooms", compacted)

    async def _compact_closed_room(self, name: str) -> bool:
        try:
            store, doc, _ = await self._load_room(name)
            try:
                await store.replace_with(doc.get_update())
            finally:
                with trio.CancelScope(shield=True):
                    await store.stop()
        except (sqlite3.Error, OSError) as exc:
            log.warning("compacting room %s failed, its log stays as it is: %s", name, exc)
            return False
        return True

    def close(self) -> None:
        """Stop taking changes and compacting stored rooms; the writers finish what is
        queued and stop their stores."""
        self._sweep.cancel()
        for writer in self._writers:
            writer.close()
        for room in self.rooms.values():
            if isinstance(room, _Room):
                room.release()


def _rooms_with_logs(database: Path) -> list[str]:
    """The rooms whose stored log holds more than one update."""
    if not database.exists():
        return []  # a new relay: no room stored yet
    try:
        # Not read-only: a relay killed mid-write leaves a hot journal, which only a
        # connection that may write rolls back (a read-only one is refused).
        with contextlib.closing(sqlite3.connect(database)) as db:
            rows = db.execute("SELECT path FROM yupdates GROUP BY path HAVING count(*) > 1").fetchall()
    except sqlite3.Error as exc:
        log.warning("cannot list the stored rooms to compact: %s", exc)
        return []
    return [name for (name,) in rows]
