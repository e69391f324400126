"""The trio side of the store: every database call in a worker thread, commits batched.

Writers queue a record and wait until it is on disk. One task takes everything queued
so far and commits it in one SQLite transaction (group commit): with many concurrent
senders the cost of an fsync is shared, with one sender it is paid at once. Beside it,
a thread of its own checkpoints the write-ahead log, so that commits do not (see
``Store.checkpoint``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from .._collector import run_with_collector_paused
from .._memory import release_free_memory
from ..errors import GigiError, StorageError, StoreClosed
from ..model.slices import SLICE_BYTES
from .compaction import is_snapshot, slice_plan, snapshot_and_rest
from .store import Record, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 512
QUEUE_SIZE = 1024
CHECKPOINT_INTERVAL = 0.2  # seconds from one background checkpoint to the next, while commits come


@dataclass(slots=True)
class _Pending:
    record: Record
    done: trio.Event = field(default_factory=trio.Event)
    error: GigiError | None = None
    vanished: list[str] = field(default_factory=list)  # see ``Store.commit``


class StoreWorker:
    """Runs ``Store`` calls off the trio thread; start ``run`` in a nursery first."""

    def __init__(self, store: Store, *, max_batch: int = MAX_BATCH, queue_size: int = QUEUE_SIZE) -> None:
        self.store = store
        self._max_batch = max_batch
        # Bounded: when the disk cannot keep up, senders wait instead of piling up memory.
        self._send, self._receive = trio.open_memory_channel[_Pending](queue_size)
        self._write_thread = trio.CapacityLimiter(1)
        self._read_thread = trio.CapacityLimiter(1)
        self._compaction_wanted: set[str] = set()
        self._failed_generations: set[int] = set()
        self._compacting: str | None = None
        self._compaction_wake = trio.Event()
        # One compaction at a time: each swaps the rows it read for its snapshot and writes
        # the rows committed since after it, so a second one overlapping would write the
        # first one's snapshot back after its own (with whatever garbage it had collected).
        self._compaction_turn = trio.Lock()
        self._plans_wanted: dict[str, bytes] = {}  # snapshots to plan slices for, by conversation
        self._planning = trio.Lock()
        self._checkpoint_thread = trio.CapacityLimiter(1)
        self._committed = trio.Event()  # set by each write, cleared by the checkpoint after it

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit queued records, checkpoint and compact in the background, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._compact_requested)
            nursery.start_soon(self._checkpoint_committed)
            task_status.started()
            await self._commit_queued()

    async def _commit_queued(self) -> None:
        try:
            async for first in self._receive:
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._commit(batch)
        finally:
            self._fail_queued()

    def _fail_queued(self) -> None:
        """The worker is stopping: whoever still waits on a commit learns it did not happen."""
        while True:
            try:
                pending = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            pending.error = StoreClosed(f"{self.store.path} closed before this write was committed")
            pending.done.set()
        self._receive.close()  # no await since draining: later senders get StoreClosed at once

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            await self._commit_batch(batch)
        finally:
            # Cancelled before the thread took the batch: these waiters must not wait forever.
            for pending in batch:
                if not pending.done.is_set():
                    pending.error = StoreClosed(f"{self.store.path} closed before this write was committed")
                    pending.done.set()

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        doomed = [pending for pending in batch if pending.record.generation in self._failed_generations]
        for pending in doomed:
            # Built on a document whose earlier write failed: it depends on what is not on disk.
            pending.error = StorageError(f"an earlier write to {pending.record.conversation} failed; try again")
            pending.done.set()
        batch = [pending for pending in batch if pending.error is None]
        if not batch:
            return
        try:
            vanished = await self.write(self.store.commit, [pending.record for pending in batch])
        except GigiError as exc:
            if len(batch) > 1:
                # One bad record must not fail its neighbours: retry them one by one.
                for pending in batch:
                    await self._commit_batch([pending])
                return
            batch[0].error = exc
            if batch[0].record.generation:
                self._failed_generations.add(batch[0].record.generation)
        else:
            for pending, ids in zip(batch, vanished, strict=True):
                pending.vanished = ids
        for pending in batch:
            pending.done.set()

    async def commit(self, record: Record) -> list[str]:
        """Return once ``record`` is durably stored, with the ids of the messages it took
        out of the index (``Store.commit``); raise ``StorageError`` if it cannot be."""
        (vanished,) = await self.commit_all([record])
        return vanished

    async def commit_all(self, records: Sequence[Record]) -> list[list[str]]:
        """``commit`` for several records at once: queued together, they usually share
        one transaction. Raises the first record's error, once every one is done."""
        batch = [_Pending(record) for record in records]
        try:
            for pending in batch:
                await self._send.send(pending)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StoreClosed(f"{self.store.path} is closed") from None
        for pending in batch:
            await pending.done.wait()
        for pending in batch:
            if pending.error is not None:
                raise pending.error
        return [pending.vanished for pending in batch]

    async def write(self, function: Callable[..., T], *args: object) -> T:
        """Run a writing ``Store`` method in the writer thread (serialised with commits)."""
        result = await trio.to_thread.run_sync(function, *args, limiter=self._write_thread)
        self._committed.set()
        return result

    async def read(self, function: Callable[..., T], *args: object) -> T:
        """Run a reading ``Store`` method in the reader thread (never waits for an fsync)."""
        return await trio.to_thread.run_sync(function, *args, limiter=self._read_thread)

    async def _checkpoint_committed(self) -> None:
        """Checkpoint what commits wrote (``Store.checkpoint``), in a thread of its own, at
        most every ``CHECKPOINT_INTERVAL`` while commits come: the writer then almost never
        runs one inside a commit."""
        failing = False
        while True:
            await self._committed.wait()
            self._committed = trio.Event()
            try:
                await trio.to_thread.run_sync(self.store.checkpoint, limiter=self._checkpoint_thread)
            except GigiError as exc:
                # Nothing is lost: the log keeps every commit, and the writer checkpoints
                # it itself once it grows (``WRITER_AUTOCHECKPOINT``). Told once a streak.
                if not failing:
                    log.warning("background checkpoints of %s fail: %s", self.store.path, exc)
                failing = True
            else:
                failing = False
            await trio.sleep(CHECKPOINT_INTERVAL)

    # -- compaction ------------------------------------------------------------------

    def request_compaction(self, conversation: str) -> None:
        """Ask for a conversation's log to be compacted soon; never blocks the caller."""
        if conversation != self._compacting:  # the running one already covers this request
            self._compaction_wanted.add(conversation)
            self._compaction_wake.set()

    async def compact(self, conversation: str, *, collect_garbage: bool | None = None) -> tuple[bytes, bytes] | None:
        """Fold everything committed so far for ``conversation`` into one snapshot, and
        return it with what still waits beside it (``snapshot_and_rest``): together, all
        that the log held. None if the log is empty.

        Garbage (deleted content) is collected if ``collect_garbage``, or by default when
        deletions left some. Only the final swap runs in the writer thread; reading the
        log and building the snapshot happen beside it, so senders do not wait for it.
        """
        async with self._compaction_turn:
            built = await self._compact(conversation, collect_garbage)
        # The log it read and the document it rebuilt are garbage now, freed in worker
        # threads' malloc arenas, which the event loop's thread does not reuse: hand them
        # back, or every compaction leaves the node larger (see ``_memory``).
        await trio.to_thread.run_sync(release_free_memory)
        return built

    async def _compact(self, conversation: str, collect_garbage: bool | None) -> tuple[bytes, bytes] | None:
        upto, updates, garbage = await self.read(self.store.committed_log, conversation)
        collect = garbage if collect_garbage is None else collect_garbage
        if not updates:
            return None
        if is_snapshot(updates, collect):
            await self.write(self.store.adopt_snapshot, conversation, upto)
            if updates[0].slices is None and not updates[0].waiting:
                self._request_plan(conversation, updates[0].update)
            return updates[0].update, b""
        snapshot, rest = await trio.to_thread.run_sync(snapshot_and_rest, updates, collect)
        await self.write(self.store.replace_log, conversation, upto, snapshot, collect, rest)
        self._request_plan(conversation, snapshot)
        return snapshot, rest

    def _request_plan(self, conversation: str, snapshot: bytes) -> None:
        """Have ``snapshot``, just made the conversation's first log row, planned in slices
        soon (``plan_snapshots``). Planned after the swap, not before: a new peer that
        waits for the snapshot (``Replica.diff``) must not wait for that too."""
        if len(snapshot) > SLICE_BYTES:
            self._plans_wanted[conversation] = snapshot
            self._compaction_wake.set()

    async def plan_snapshots(self) -> None:
        """Plan the slices of the snapshots compactions made, so that loads apply them in
        slices (``Store.set_slice_plan``); return once every plan requested so far is stored
        or given up."""
        async with self._planning:
            while self._plans_wanted:
                conversation, snapshot = self._plans_wanted.popitem()
                # Half a million decoded structs: collected once at the end, not every few ms.
                slices = await trio.to_thread.run_sync(run_with_collector_paused, slice_plan, snapshot, SLICE_BYTES)
                if slices is None:
                    continue
                try:
                    await self.write(self.store.set_slice_plan, conversation, snapshot, slices)
                except GigiError as exc:  # it loads whole, as without a plan: nothing is lost
                    log.warning("storing the slice plan of %s failed: %s", conversation, exc)

    async def _compact_requested(self) -> None:
        while True:
            await self._compaction_wake.wait()
            self._compaction_wake = trio.Event()
            await self.plan_snapshots()
            while self._compaction_wanted:
                conversation = self._compacting = self._compaction_wanted.pop()
                try:
                    await self.compact(conversation)
                except GigiError:
                    # Compaction is an optimisation: the log stays complete and valid
                    # without it, and the next write failure will surface to a caller.
                    log.exception("compacting %s failed; its log is left as it is", conversation)
                finally:
                    self._compacting = None
