"""The documents of a replica's conversations in memory, and the commits that put their
changes on disk (``Documents``): a document loads on first use, rests when idle, and is
reloaded from disk after a failed write; listeners hear of each commit in order.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar, TypeVarTuple

import trio
from pycrdt import merge_updates

from .._memory import release_free_memory
from ..errors import GigiError, StorageError, StoreClosed
from ..model import Changes, Conversation, HybridClock, Written
from ..model.catchup import RecentUpdates
from ..model.gaps import Logged
from ..model.metadata import Member, Metadata
from ..model.slices import SlicePlan
from ..signatures import Signer
from ..store import Record, StoreWorker, index
from ..store.compaction import is_snapshot, whole_update
from ..store.store import MIN_COMPACTION_BYTES, stored_state_vector
from ._receipts import DeliveredReceipts
from ._updates import Merges, StoredUpdate, UpdateListener, authors_of, parse_held

log = logging.getLogger(__name__)

T = TypeVar("T")
_GENERATIONS = itertools.count(1)  # each document loaded into memory gets a new one
RESTING_RECENT_BYTES = 8 * 1024 * 1024  # recent updates kept for resting documents, in all
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True, slots=True)
class _Resting:
    """What stays in memory of a document that rested (``Replica.rest_idle``): nothing
    changes it without loading the document again, which drops this."""

    state_vector: bytes
    members: dict[str, Member]
    client_id: int  # the Yjs client id it wrote under


class Documents:
    """The conversation documents of one peer in memory, each loaded on first use
    (``document``), and every commit of their changes (``persist``)."""

    def __init__(
        self,
        worker: StoreWorker,
        peer_id: str,
        clock: HybridClock,
        signer: Signer | None,
        receipts: DeliveredReceipts,
    ) -> None:
        self._worker = worker
        self._store = worker.store
        self._peer_id = peer_id
        self._clock = clock
        self._signer = signer
        self._receipts = receipts  # a document owing receipts neither rests nor stores its state vector
        self.merges = Merges()
        self._conversations: dict[str, Conversation] = {}
        self._last_used: dict[str, float] = {}  # conversation -> when its document was last used
        self._users: dict[str, int] = {}  # conversation -> tasks holding its document across a checkpoint
        self._resting: dict[str, _Resting] = {}  # what stays in memory of documents that rested
        self._resting_recent: dict[str, RecentUpdates] = {}  # theirs, the last to rest last
        self._resting_bytes = 0
        self._state_stored: set[str] = set()  # conversations whose last commit stored their state vector
        self._loading = trio.Lock()
        self._unchecked_bytes: dict[str, int] = {}
        self.listeners: list[UpdateListener] = []
        self._generations: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}  # commits not yet settled, per conversation
        self._commits_begun = self._commits_ended = 0  # reads wait for the commits begun before them
        self._offered = 0  # commits whose updates listeners were told of (``_offer_in_order``)
        self._committed: dict[int, StoredUpdate | None] = {}
        self._commit_ended = trio.Event()
        self._settled: dict[str, trio.Event] = {}

    def __contains__(self, conversation: object) -> bool:
        """Whether the conversation's document is in memory (see ``rest_idle``)."""
        return conversation in self._conversations

    def get(self, conversation: str) -> Conversation | None:
        """The conversation's document if it is in memory (merged into, maybe: see ``merges``)."""
        return self._conversations.get(conversation)

    def rests(self, conversation: str) -> bool:
        """Whether the conversation's document rests (``rest_idle``)."""
        return conversation in self._resting

    @property
    def committing(self) -> bool:
        """Whether a commit is under way."""
        return any(self._in_flight.values())

    def loaded_members(self, conversation: str) -> dict[str, Member] | None:
        """Members from the document if it is in memory or rests (no I/O), else ``None``.
        While an update is being merged into it, they are those from before the update."""
        members = self.merges.members_before(conversation)
        if members is not None:
            return members
        doc = self._conversations.get(conversation)
        if doc is not None:
            return doc.members()
        rest = self._resting.get(conversation)
        return None if rest is None else rest.members

    async def stored_state_vector(self, conversation: str) -> bytes | None:
        """The state vector of a document not in memory, if known without loading it."""
        rest = self._resting.get(conversation)
        if rest is not None:
            return rest.state_vector
        return await self.read(stored_state_vector, conversation)

    async def stored_whole(self, conversation: str) -> bytes | None:
        """Everything stored of a conversation whose document is not in memory, as one
        update: what the document's catch-up would send a peer holding nothing of it,
        without loading it (a second for 10^5 messages, and the memory they take). A log
        of one update without garbage is sent as it is; any other is compacted first, and
        the snapshot compaction stores is the answer (made once: for this peer and the
        next ones). ``None`` if the store holds no such conversation, or the document was
        loaded meanwhile: a commit made while the log was read may reach the peer before
        this answer, which lacks it."""
        await self.settle(conversation)
        generation = self._generations.get(conversation)
        _, stored, garbage = await self._worker.read(self._store.committed_log, conversation)
        whole = None
        if is_snapshot(stored, garbage):
            whole = stored[0].update
        elif stored:
            whole = await self._compacted_whole(conversation, stored, garbage)
        if conversation in self._conversations or self._generations.get(conversation) != generation:
            return None
        return whole

    async def _compacted_whole(self, conversation: str, stored: list[Logged], garbage: bool) -> bytes | None:
        try:
            built = await self._worker.compact(conversation)
        except StoreClosed:
            raise
        except StorageError as exc:  # a full or read-only disk: the peer is answered all the same
            log.warning("compacting %s to answer a peer failed: %s", conversation, exc)
            return await trio.to_thread.run_sync(whole_update, stored, garbage)
        if built is None:
            return None
        snapshot, rest = built
        return await trio.to_thread.run_sync(merge_updates, snapshot, rest) if rest else snapshot

    async def rest_idle(self, idle_for: float) -> list[str]:
        """``Replica.rest_idle``: let the documents unused for ``idle_for`` seconds leave
        memory, their state vectors stored first; returns their conversations."""
        idle = self._idle(idle_for)
        if not idle:
            return []
        await self._store_state_vectors(idle)
        rested = self._let_rest(idle, idle_for)
        del idle  # the documents' last references
        if rested:
            # Freed, their memory is still the process's until malloc hands it back (``_memory``).
            await trio.to_thread.run_sync(release_free_memory)
        return rested

    def _let_rest(self, stored: dict[str, Conversation], idle_for: float) -> list[str]:
        """Let go of the documents that are still idle and whose state vectors ``stored`` holds."""
        rested = {conv: doc for conv, doc in self._idle(idle_for).items() if stored.get(conv) is doc}
        for conversation, doc in rested.items():
            self.release(conversation, doc)
            self._keep_recent(conversation, doc.recent_updates)
            self._resting[conversation] = _Resting(doc.state_vector(), doc.members(), doc.client_id)
        return list(rested)

    def _idle(self, idle_for: float) -> dict[str, Conversation]:
        """The documents ``rest_idle`` would let go."""
        now = trio.current_time()
        idle = {}
        for conversation, doc in self._conversations.items():
            unused = now - self._last_used.get(conversation, now) >= idle_for
            busy = self._in_flight.get(conversation) or self._users.get(conversation) or conversation in self._receipts
            if unused and not busy and not doc.unsettled:
                idle[conversation] = doc
        return idle

    def _keep_recent(self, conversation: str, recent: RecentUpdates) -> None:
        """Keep a resting document's recent updates for when it loads again (within
        ``RESTING_RECENT_BYTES`` in all; past that, the ones that rest longest go)."""
        self._resting_recent[conversation] = recent
        self._resting_bytes += recent.size
        while self._resting_bytes > RESTING_RECENT_BYTES:
            self._resting_bytes -= self._resting_recent.pop(next(iter(self._resting_recent))).size

    def _take_recent(self, conversation: str) -> RecentUpdates | None:
        recent = self._resting_recent.pop(conversation, None)
        if recent is not None:
            self._resting_bytes -= recent.size
        return recent

    async def _store_state_vectors(self, documents: Mapping[str, Conversation]) -> None:
        """Store the state vectors of settled ``documents`` about to rest: their last commit
        may have stored none (``persist``; a store of version 3), and without one every
        anti-entropy round would load them again. Queued like commits, so any later
        commit of theirs stores its own after this."""
        records = [
            Record(conv, b"", Changes(), generation=self._generations.get(conv, 0), state_vector=doc.state_vector())
            for conv, doc in documents.items()
            if conv not in self._state_stored
        ]
        used = {record.conversation: self._last_used.get(record.conversation) for record in records}
        try:
            await self._worker.commit_all(records)
        except GigiError as exc:  # only an optimisation: they load to answer instead
            log.warning("state vectors of %d idle documents not stored: %s", len(records), exc)
        else:  # but not those a commit since stored its own (or none) for
            self._state_stored.update(conv for conv, when in used.items() if self._last_used.get(conv) == when)

    @contextlib.contextmanager
    def in_use(self, conversation: str) -> Iterator[None]:
        """Keep the conversation's document from resting for the duration of the block."""
        self._users[conversation] = self._users.get(conversation, 0) + 1
        try:
            yield
        finally:
            self._users[conversation] -= 1
            if not self._users[conversation]:
                del self._users[conversation]

    async def document(self, conversation: str) -> Conversation:
        """The conversation's document, loaded if need be, once no thread merges into it
        (``Merges.merge``); no checkpoint if it is in memory and free. Use it before the next
        checkpoint, or call ``merges.wait`` again first."""
        while True:
            await self.merges.wait(conversation)
            doc = self._conversations.get(conversation)
            if doc is None:
                async with self._loading:
                    doc = self._conversations.get(conversation)
                    if doc is None:
                        with self.in_use(conversation):
                            doc = await self._load(conversation)
            if conversation not in self.merges:  # a receive may have started one while it loaded
                self._last_used[conversation] = trio.current_time()
                return doc

    async def _load(self, conversation: str) -> Conversation:
        """Read a conversation's document from the store and hold it (``document``)."""
        await self.settle(conversation)
        log = await self._worker.read(self._store.load_log, conversation)
        held = parse_held(await self._worker.read(self._store.signed_records, conversation))
        # If it rested, everything it wrote is in the log: it may write on under its client id.
        rest = self._resting.pop(conversation, None)
        client_id = None if rest is None else rest.client_id
        doc = await trio.to_thread.run_sync(
            Conversation.from_log, log, self._peer_id, self._clock, self._signer, held, client_id
        )
        recent = self._take_recent(conversation)
        if recent is not None:  # it rested: nothing was committed since (that needs it loaded)
            doc.continue_recent(recent)
        for logged in log:
            if logged.waiting:
                doc.note_waiting(logged.update)
        self.hold(conversation, doc)
        if doc.is_member(self._peer_id):
            self._receipts.queue(conversation, doc.undelivered().keys())
        await self._index_missed(conversation, doc)
        return doc

    async def settle(self, conversation: str) -> None:
        """Wait until no commit of the conversation is in flight. A released document may
        still have some: what reads its log from the store (to load it again, or to answer
        a peer) must wait for them, or it would miss them (and a reloaded copy would later
        write beside them)."""
        while self._in_flight.get(conversation):
            await self._settled.setdefault(conversation, trio.Event()).wait()

    async def _index_missed(self, conversation: str, doc: Conversation) -> None:
        """Fold into the index what the stored log holds but the index lacks.

        Normally nothing: log and index are written together. But an update can reach the
        log before its entries could be read (they waited for a dependency that arrived
        in a document since dropped), and the index must not depend on that never happening.
        """
        cursors = await self.read(index.stream_cursors, conversation)
        await self.merges.wait(conversation)
        if self._conversations.get(conversation) is not doc:
            return  # released while we read (a write failed): whoever loads it again indexes it
        missed = doc.changes_since(cursors)
        if missed:
            log.info("indexing %d entries of %s that the index lacked", len(missed.entries), conversation)
            await self.persist(doc, Written(b"", missed), conversation)

    async def persist(
        self,
        doc: Conversation,
        written: Written,
        conversation: str | None = None,
        origin: str | None = None,
        reached: frozenset[str] = frozenset(),
        ends: Mapping[int, int] | None = None,
        *,
        waiting: bool = False,
        slices: SlicePlan | None = None,
    ) -> list[str]:
        """Commit ``written`` and tell listeners; ``origin`` is the peer it came from (None:
        local), ``reached`` the peers it says hold it too, ``ends`` its structs' ends (see
        ``StoredUpdate``); ``waiting``: the update left structs waiting for a dependency;
        ``slices``: how a load applies it in slices (stored beside it). Returns the ids of
        the messages the commit took out of the index (``Store.commit``)."""
        if not written.update and not written.changes:
            return []
        conv = conversation or doc.id
        if self._conversations.get(conv) is not doc:
            raise StorageError(f"conversation {conv} was reloaded after a failed write; try again")
        record = self._record_of(doc, written, conv, waiting, slices)
        self._in_flight[conv] = self._in_flight.get(conv, 0) + 1
        ticket = self._commits_begun
        self._commits_begun += 1
        committed: StoredUpdate | None = None
        try:
            # The document already holds the change: cancelling now would leave it in memory
            # but not on disk (nor in the index). Commits are short; let this one finish.
            with trio.CancelScope(shield=True):
                vanished = await self._worker.commit(record)
            if record.state_vector is not None:
                self._state_stored.add(conv)
            elif written.update:
                self._state_stored.discard(conv)
            if written.update:
                committed = StoredUpdate(conv, written.update, origin or None, reached, ends)
        except GigiError:
            # The document holds a change the disk does not: reload it from disk. Writes
            # queued on top of this one fail too (the worker refuses their generation).
            self.release(conv, doc)
            raise
        finally:
            self._last_used[conv] = trio.current_time()
            self._in_flight[conv] -= 1
            if not self._in_flight[conv]:
                self._settled.pop(conv, trio.Event()).set()
            self._commits_ended += 1
            self._commit_ended.set()
            self._commit_ended = trio.Event()
            self._offer_in_order(ticket, committed)
        await self._compact_if_grown(conv, len(written.update))
        return vanished

    def _record_of(
        self, doc: Conversation, written: Written, conv: str, waiting: bool, slices: SlicePlan | None
    ) -> Record:
        """What ``persist`` commits of ``written``: the update, the index's changes, and
        what is kept beside the document (signed records, its state vector)."""
        meta: Metadata | None = None
        members: tuple[Member, ...] = ()
        if written.changes.metadata_changed:
            meta, members = doc.metadata(), tuple(doc.members().values())
        signed = [(root, key, json.dumps(record)) for root, key, record in doc.take_unstored_records()]
        # Not told from the store while a delivered receipt is owed: loading the document
        # is what writes it (``document``), should the replica close before it does.
        owes = conv in self._receipts or bool(authors_of(written.changes) - {self._peer_id})
        return Record(
            conv,
            written.update,
            written.changes,
            meta,
            members,
            doc.retention_cutoff(),
            self._generations.get(conv, 0),
            waiting,
            slices,
            signed,
            doc.state_vector() if written.update and not doc.waits and not owes else None,
        )

    async def _compact_if_grown(self, conv: str, written_bytes: int) -> None:
        """Ask for a compaction once the log may have grown enough to need one."""
        self._unchecked_bytes[conv] = self._unchecked_bytes.get(conv, 0) + written_bytes
        if self._unchecked_bytes[conv] >= MIN_COMPACTION_BYTES:
            self._unchecked_bytes[conv] = 0
            if await self._worker.read(self._store.needs_compaction, conv):
                self._worker.request_compaction(conv)

    def _offer_in_order(self, ticket: int, committed: StoredUpdate | None) -> None:
        """Tell listeners of committed updates in the order their changes were made.

        Commits end in order, but the tasks waiting on them resume in any order, and an
        author's updates must reach peers in order: in a signed conversation each of its
        heads hangs on the one before, so one overtaken would leave the next waiting.
        """
        self._committed[ticket] = committed
        while self._offered in self._committed:
            done = self._committed.pop(self._offered)
            self._offered += 1
            if done is not None:
                for listener in self.listeners:
                    listener.offer(done)

    def hold(self, conversation: str, doc: Conversation) -> None:
        """Keep ``doc`` in memory as a new generation of the conversation."""
        self._conversations[conversation] = doc
        self._generations[conversation] = next(_GENERATIONS)
        self._last_used[conversation] = trio.current_time()

    def release(self, conversation: str, doc: Conversation) -> None:
        """Forget ``doc`` (if it is still the one in memory) so the next use reloads from disk."""
        if self._conversations.get(conversation) is doc:
            del self._conversations[conversation]

    async def read(self, function: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        # Commits are queued in order: once as many have ended as had begun, every change
        # made before this read (a remote one may already have been announced, see
        # ``Replica.receive``) is in the index.
        begun = self._commits_begun
        while self._commits_ended < begun:
            await self._commit_ended.wait()
        return await self._worker.read(self._store.query, lambda db: function(db, *args))
