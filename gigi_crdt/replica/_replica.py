"""The local-first replica: every conversation of one peer, readable and writable offline.

``open_replica`` ties the conversation documents (``model``) to the durable store
(``store``). Every write returns only once its update is on disk. Reads of history,
unread counts and search come from the index and never load a document; a document is
loaded on first write or sync and kept in memory.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, TypeVarTuple

import trio
from pycrdt import merge_updates

from .._collector import run_with_collector_paused
from .._memory import release_free_memory
from ..errors import (
    GigiError,
    NotAllowed,
    SchemaError,
    StorageError,
    StoreClosed,
    UnknownConversation,
    UnknownMessage,
    single_errors_unwrapped,
)
from ..model import (
    Changes,
    Content,
    Conversation,
    ConversationKind,
    HybridClock,
    Message,
    ReceiptKind,
    Written,
    check_update,
)
from ..model.catchup import RecentUpdates, covers, deletions_past
from ..model.gaps import Logged
from ..model.metadata import Member, Metadata, Role
from ..model.ops import check_id, check_nickname
from ..model.signed import is_signed
from ..model.slices import SLICE_BYTES, SlicePlan, sliced
from ..model.ydecode import clocks_of
from ..model.yupdate import UpdateSummary
from ..protocol import HeadRecord
from ..protocol.yproto import decode_state_vector
from ..signatures import Signer
from ..store import ConversationSummary, Record, Store, StoreWorker, index
from ..store.compaction import is_snapshot, merge_all, slice_plan, whole_update
from ..store.store import MIN_COMPACTION_BYTES, stored_state_vector

log = logging.getLogger(__name__)

T = TypeVar("T")
_GENERATIONS = itertools.count(1)  # each document loaded into memory gets a new one
IN_THREAD_BYTES = 64 * 1024  # remote updates larger than this are checked and merged in a worker thread
HEAD_ROOTS = ("heads", "carried")  # where stored signed records are heads (``take_unstored_records``)
RESTING_RECENT_BYTES = 8 * 1024 * 1024  # recent updates kept for resting documents, in all
REST_AFTER = 300.0  # seconds a conversation document stays in memory unused (see ``rest_idle``)
RETENTION_EVERY = 3600.0  # seconds between checks for messages past retention (see ``apply_retention``)
RETENTION_FIRST = 60.0  # seconds after opening before the first such check
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True, slots=True)
class StoredUpdate:
    """An update just committed, as listeners hear of it."""

    conversation: str
    update: bytes
    origin: str | None = None
    """The peer it came from (a relay room's origin for a relay's); ``None`` if written here."""
    reached: frozenset[str] = frozenset()
    """Other peers that hold it or were sent it already, as far as ``origin`` said."""
    ends: Mapping[int, int] | None = None
    """Per Yjs client, the clock after its last struct in ``update`` (``None``: not known,
    as for our own writes): a peer whose state vector reaches them all holds its structs."""


class UpdateListener(Protocol):
    """Something that must hear of each stored update without ever blocking the writer."""

    def offer(self, stored: StoredUpdate) -> None:
        """Take note of an update committed just now."""


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@contextlib.asynccontextmanager
async def open_replica(
    data_dir: str | Path,
    *,
    nickname: str,
    peer_id: str | None = None,
    signer: Signer | None = None,
    now_ms: Callable[[], int] = _wall_ms,
    rest_after: float | None = REST_AFTER,
    retention_every: float | None = RETENTION_EVERY,
) -> AsyncIterator[Replica]:
    """Open the replica stored in ``data_dir`` (created if missing) for the duration of the block.

    ``peer_id`` is fixed on first open (a random id if not given) and checked afterwards.
    With a ``signer`` (the peer's identity; its peer id is then the replica's), the
    conversations it creates are signed and it signs the member records it writes (see
    ``gigi_crdt.model.signed``).

    A conversation document unused for ``rest_after`` seconds leaves memory (``rest_idle``;
    ``None``: documents stay loaded until the replica closes).

    Every ``retention_every`` seconds (the first time a minute after opening, at most),
    conversations with messages past their retention have it applied (``apply_retention``;
    ``None``: only when the application calls it, or ``compact``).
    """
    for name, value in (("rest_after", rest_after), ("retention_every", retention_every)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, not {value}")
    if signer is not None:
        if peer_id is not None and peer_id != signer.peer_id:
            raise ValueError(f"peer id {peer_id} is not the signer's ({signer.peer_id})")
        peer_id = signer.peer_id
    store = await trio.to_thread.run_sync(Store.open, Path(data_dir))
    try:
        worker = StoreWorker(store)
        stored_id = store.setting("peer_id")
        if stored_id is None:
            stored_id = check_id(peer_id or secrets.token_urlsafe(12), "peer id")
            store.set_setting("peer_id", stored_id)
        elif peer_id is not None and peer_id != stored_id:
            raise ValueError(f"{data_dir} belongs to peer {stored_id}, not {peer_id}")
        with single_errors_unwrapped():
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                replica = Replica(worker, stored_id, check_nickname(nickname), HybridClock(now_ms), signer)
                nursery.start_soon(replica._write_acknowledgements)
                if rest_after is not None:
                    nursery.start_soon(replica._rest_idle_documents, rest_after)
                if retention_every is not None:
                    nursery.start_soon(replica._apply_retention_periodically, retention_every)
                try:
                    yield replica
                finally:
                    # Receipts queued by ``acknowledge_nowait`` are owed to their senders.
                    with trio.move_on_after(FLUSH_SECONDS, shield=True):
                        await replica._flush_acknowledgements()
                nursery.cancel_scope.cancel()
    finally:
        store.close()


EMPTY_UPDATE = b"\x00\x00"  # a Yjs v1 update with no structs and no deletions
RESTORE_INTERVAL = 30.0  # seconds between write-backs of signed records, per conversation
FLUSH_SECONDS = 5.0  # at most this long, on closing, to write the delivered receipts still queued
ACKNOWLEDGE_DELAY = 0.05  # seconds a queued delivered receipt waits for others to share its write
ACKNOWLEDGE_RETRY = 2.0  # seconds before receipts whose write failed are tried again


async def check_remote_update(update: bytes) -> UpdateSummary:
    """``check_update``, in a worker thread when the update is large: it is pure Python,
    about as slow as applying the update, and other peers' links must not wait."""
    if len(update) > IN_THREAD_BYTES:
        return await trio.to_thread.run_sync(run_with_collector_paused, _check, update)
    return check_update(update)


def left_waiting(summary: UpdateSummary, state_vector: bytes) -> bool:
    """True if, after applying the update ``summary`` describes, the document's state vector
    does not count all of its structs, or all the items it deletes: some wait for a
    dependency (or may: a section that ends in a Skip struct counts as waiting, which only
    costs a diff later)."""
    return not held_at(summary, clocks_of(state_vector))  # our own document's: pycrdt made it


def held_at(summary: UpdateSummary, have: Mapping[int, int]) -> bool:
    """Whether a document at clocks ``have`` holds all of the update ``summary`` describes:
    every struct it writes and every item it deletes."""
    return all(have.get(client, 0) >= end for client, end in summary.ends.items()) and not deletions_past(
        summary.deletes, have
    )


def _authors(changes: Changes) -> set[str]:
    return {entry.author for entry in changes.entries}


def _plain(record: Mapping[str, Any]) -> HeadRecord:
    """A head as it travels beside a catch-up: Yjs gives its integers back as floats."""
    return {key: int(value) if isinstance(value, float) else value for key, value in record.items()}


def _parse_held(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, object]]:
    """Stored signed records, for ``Conversation.from_updates``; a damaged row is skipped
    (the document's own records still count: only what was held beyond them is lost)."""
    held: list[tuple[str, str, object]] = []
    for root, key, record in rows:
        try:
            held.append((root, key, json.loads(record)))
        except ValueError:
            log.warning("stored signed record %s/%s is damaged; skipped", root, key)
    return held


def _split(update: bytes, part_bytes: int) -> list[bytes]:
    plan = slice_plan(update, part_bytes)
    return [update] if plan is None else list(sliced(update, plan))


def _merged_parts(parts: Sequence[bytes]) -> bytes:
    for part in parts:
        check_update(part)
    return merge_all(parts)


def _check(update: bytes) -> UpdateSummary:
    # With the slices the merge applies it in (see ``model.slices``).
    return check_update(update, slice_bytes=SLICE_BYTES)


def _check_and_apply(
    doc: Conversation, conversation: str, update: bytes, summary: UpdateSummary, heads: tuple[Mapping[str, object], ...]
) -> Changes:
    """Check the clients an update of ``conversation`` writes as and the heads beside it,
    then apply it to ``doc``. Raises ``GigiError`` (``UnsafeUpdate``, ``SchemaError``...)
    with ``doc`` maybe half-applied."""
    doc.check_clients(summary, heads, conversation)
    changes = doc.apply_remote(update, summary)
    if doc.metadata().id != conversation:
        raise SchemaError(f"update for {conversation} describes conversation {doc.metadata().id}")
    changes.posted()  # made here, in a worker thread if the update is large: the events need them
    return changes


@dataclass(frozen=True, slots=True)
class _Merging:
    """A document a worker thread is merging a remote update into (``Replica._merge``):
    nothing else may touch it until ``done``."""

    done: trio.Event
    members: dict[str, Member]  # as they were before the update (``Replica.loaded_members``)


@dataclass(frozen=True, slots=True)
class _Resting:
    """What stays in memory of a document that rested (``Replica.rest_idle``): nothing
    changes it without loading the document again, which drops this."""

    state_vector: bytes
    members: dict[str, Member]
    client_id: int  # the Yjs client id it wrote under


class Replica:
    """All conversations of one peer. Get one from ``open_replica``."""

    def __init__(
        self, worker: StoreWorker, peer_id: str, nickname: str, clock: HybridClock, signer: Signer | None = None
    ) -> None:
        self._worker = worker
        self._signer = signer
        self._store = worker.store
        self.peer_id = peer_id
        self.nickname = nickname
        self._clock = clock
        self._conversations: dict[str, Conversation] = {}
        self._last_used: dict[str, float] = {}  # conversation -> when its document was last used
        self._users: dict[str, int] = {}  # conversation -> tasks holding its document across a checkpoint
        self._merging: dict[str, _Merging] = {}  # documents a worker thread is merging an update into
        self._resting: dict[str, _Resting] = {}  # what stays in memory of documents that rested
        self._resting_recent: dict[str, RecentUpdates] = {}  # theirs, the last to rest last
        self._resting_bytes = 0
        self._state_stored: set[str] = set()  # conversations whose last commit stored their state vector
        self._loading = trio.Lock()
        self._unchecked_bytes: dict[str, int] = {}
        self._listeners: list[UpdateListener] = []
        self._generations: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}  # commits not yet settled, per conversation
        self._commits_begun = self._commits_ended = 0  # reads wait for the commits begun before them
        self._offered = 0  # commits whose updates listeners were told of (``_offer_in_order``)
        self._committed: dict[int, StoredUpdate | None] = {}
        self._commit_ended = trio.Event()
        self._settled: dict[str, trio.Event] = {}
        self._restored: dict[str, float] = {}  # conversation -> when we last wrote signed records back
        self._unacknowledged: dict[str, set[str]] = {}  # conversation -> authors owed a delivered receipt
        self._flushes = 0  # writes of queued receipts under way
        self._receiving = 0  # calls of ``receive`` under way (see ``settled``)
        self._acknowledgements_wanted = trio.Event()

    # -- conversations -------------------------------------------------------------

    async def create_conversation(
        self,
        kind: ConversationKind,
        *,
        title: str = "",
        others: dict[str, str],
        retention_days: int | None = None,
    ) -> str:
        """Create a conversation with ``others`` (peer id -> nickname); returns its id."""
        conversation, written = Conversation.create(
            kind=kind,
            title=title,
            local_peer=self.peer_id,
            nickname=self.nickname,
            clock=self._clock,
            others=others,
            retention_days=retention_days,
            signer=self._signer,
        )
        self._hold(conversation.id, conversation)
        await self._persist(conversation, written)
        return conversation.id

    async def conversations(self) -> list[ConversationSummary]:
        """Every conversation with its last message and unread count, most recent first."""
        return await self._read(index.summaries, self.peer_id, self._clock.now())

    async def conversation_ids(self) -> list[str]:
        """The ids of every conversation stored here."""
        return await self._read(index.conversation_ids)

    async def metadata(self, conversation: str) -> Metadata:
        """A conversation's kind, title and creation time."""
        meta = await self._read(index.metadata, conversation)
        if meta is None:
            raise UnknownConversation(f"no conversation {conversation}")
        return meta

    async def members(self, conversation: str) -> dict[str, Member]:
        """Everyone who is or was a member."""
        return await self._read(index.members, conversation)

    async def add_member(self, conversation: str, peer_id: str, nickname: str, role: Role = Role.MEMBER) -> None:
        """Add (or re-add) ``peer_id`` to a group we administer; raises ``NotAllowed`` otherwise."""
        doc = await self._document(conversation)
        await self._persist(doc, doc.add_member(peer_id, nickname, role))

    async def invite(self, conversation: str, peer_id: str, nickname: str) -> str:
        """Add ``peer_id`` to a group we administer and post a ``GroupInvite``, together;
        returns the invite's message id."""
        doc = await self._document(conversation)
        written = doc.invite(peer_id, nickname, self.nickname)
        await self._persist(doc, written)
        assert written.message_id is not None
        return written.message_id

    async def remove_member(self, conversation: str, peer_id: str) -> None:
        """Remove ``peer_id`` from a group we administer; it is sent nothing written after."""
        doc = await self._document(conversation)
        await self._persist(doc, doc.remove_member(peer_id))

    async def leave(self, conversation: str) -> None:
        """Leave a group: its members stop sending us anything new."""
        await self.remove_member(conversation, self.peer_id)

    # -- writing messages ----------------------------------------------------------

    async def send(self, conversation: str, content: Content) -> str:
        """Post a message; returns its id once it is on disk."""
        doc = await self._document(conversation)
        written = doc.post(content, self.nickname)
        await self._persist(doc, written)
        assert written.message_id is not None
        return written.message_id

    async def edit(self, conversation: str, message_id: str, content: Content) -> None:
        """Replace the content of one of our messages."""
        doc = await self._document(conversation)
        await self._persist(doc, doc.edit(message_id, content))

    async def delete(self, conversation: str, message_id: str) -> None:
        """Delete one of our messages; a tombstone stays in the history."""
        doc = await self._document(conversation)
        await self._persist(doc, doc.delete(message_id))

    async def react(self, conversation: str, message_id: str, emoji: str, on: bool = True) -> None:
        """Add (or withdraw) our reaction to a message."""
        doc = await self._document(conversation)
        await self._persist(doc, doc.react(message_id, emoji, on))

    async def mark_read(self, conversation: str, message_id: str | None = None) -> None:
        """Mark everything up to ``message_id`` (default: the latest message) as read."""
        if message_id is None:
            latest = await self.history(conversation, limit=1)
            if not latest:
                return
            message = latest[-1]
        else:
            found = await self._read(index.find_message, conversation, message_id)
            if found is None:
                raise UnknownMessage(f"no message {message_id} in {conversation}")
            message = found
        upto = await self._read(index.receipts_upto, conversation, message.sort_key)
        doc = await self._document(conversation)
        await self._persist(doc, doc.mark(ReceiptKind.READ, upto))

    # -- reading -------------------------------------------------------------------

    async def history(self, conversation: str, *, before: Message | None = None, limit: int = 50) -> list[Message]:
        """Up to ``limit`` messages before ``before`` (default: the latest), oldest first."""
        await self.metadata(conversation)
        key = None if before is None else before.sort_key
        return await self._read(index.page, conversation, self._clock.now(), key, limit)

    async def unread_count(self, conversation: str) -> int:
        """Messages from others that we have not marked read."""
        return await self._read(index.unread_count, conversation, self.peer_id, self._clock.now())

    async def search(self, text: str, conversation: str | None = None, limit: int = 50) -> list[tuple[str, Message]]:
        """Full-text search, newest first, as (conversation id, message)."""
        return await self._read(index.search, text, self._clock.now(), conversation, limit)

    async def receipts(self, conversation: str, message: Message) -> dict[ReceiptKind, list[str]]:
        """Which members have delivered and read ``message``."""
        return await self._read(index.receipt_state, conversation, message)

    async def export(self, conversation: str) -> list[Message]:
        """The whole ordered history, computed from the document itself."""
        return (await self._document(conversation)).history()

    # -- sync (used by the sync engine and by tests) ---------------------------------

    async def state_vector(self, conversation: str) -> bytes:
        """Our Yjs state vector for a conversation (sync step 1); read from the store
        while its document rests (``rest_idle``), without loading it."""
        if conversation not in self._conversations:
            stored = await self._stored_state_vector(conversation)
            if stored is not None:
                return stored
        return (await self._document(conversation)).state_vector()

    async def _stored_state_vector(self, conversation: str) -> bytes | None:
        """The state vector of a document not in memory, if known without loading it."""
        rest = self._resting.get(conversation)
        if rest is not None:
            return rest.state_vector
        return await self._read(stored_state_vector, conversation)

    async def diff(self, conversation: str, state_vector: bytes | None) -> bytes:
        """What a peer with ``state_vector`` lacks (sync step 2): ``EMPTY_UPDATE`` if nothing.

        When the peer's state vector covers ours, a diff would still carry our whole delete
        set, which grows with every receipt; a peer here lately gets the recent updates it
        lacks instead (see ``Conversation.catch_up``). Structs and deletions that wait for a
        dependency are added: no state vector counts them, yet yrs shows structs whose
        origins it has, so without them two replicas with equal state vectors would show
        different messages (say the one struct they wait for was lost with its author's
        store).

        A document not in memory is not loaded for a peer that lacks nothing of it
        (anti-entropy asks that of every shared conversation) or all of it (a new member or
        device): the store answers (``_stored_whole``).
        """
        if conversation not in self._conversations:
            if state_vector is None or not clocks_of(state_vector):
                whole = await self._stored_whole(conversation)
                if whole is not None:
                    return whole
            else:
                stored = await self._stored_state_vector(conversation)
                if stored is not None and covers(clocks_of(state_vector), clocks_of(stored)):
                    return EMPTY_UPDATE  # and nothing waits (``stored_state_vector``)
        doc = await self._document(conversation)
        return doc.catch_up(state_vector) or EMPTY_UPDATE

    async def split_update(self, update: bytes, part_bytes: int) -> list[bytes]:
        """``update`` (of ours, from ``diff``) cut into updates of about ``part_bytes`` that,
        applied in order, give what it gives (``model.slices``): a step 2 too large for one
        frame goes in parts (``SyncPart``). ``[update]`` if it cannot be cut (it has a gap)."""
        return await trio.to_thread.run_sync(run_with_collector_paused, _split, update, part_bytes)

    async def merged_parts(self, parts: Sequence[bytes]) -> bytes:
        """One update holding a step 2's parts from a peer (``SyncPart``, then the step 2
        itself), to ``receive``: each part is checked first (``UnsafeUpdate``: none of them
        is taken), so that pycrdt merges only what passed."""
        return await trio.to_thread.run_sync(run_with_collector_paused, _merged_parts, parts)

    async def _stored_whole(self, conversation: str) -> bytes | None:
        """Everything stored of a conversation whose document is not in memory, as one
        update: what the document's catch-up would send a peer holding nothing of it,
        without loading it (a second for 10^5 messages, and the memory they take). A log
        of one update without garbage is sent as it is; any other is compacted first, and
        the snapshot compaction stores is the answer (made once: for this peer and the
        next ones). ``None`` if the store holds no such conversation, or the document was
        loaded meanwhile: a commit made while the log was read may reach the peer before
        this answer, which lacks it."""
        await self._settle(conversation)
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

    async def heads_for(self, conversation: str, state_vector: bytes) -> tuple[HeadRecord, ...]:
        """The signed heads to send beside what a peer with ``state_vector`` lacks (``diff``):
        those our document does not show (``Conversation.unshown_heads``) of authors whose Yjs
        client, as the head names it, wrote something the peer lacks. Without them the peer
        would refuse the structs they cover.

        A peer holding nothing of a document not in memory gets every head we hold (the
        store does not tell which ones the document shows), as ``diff`` answers it from
        the store.
        """
        if conversation not in self._conversations and not clocks_of(state_vector):
            # Held in the document's place ("heads") or beside it ("carried": see ``take_unstored_records``).
            rows = _parse_held(await self._worker.read(self._store.signed_records, conversation))
            return tuple(
                _plain(record) for root, _, record in rows if root in HEAD_ROOTS and isinstance(record, Mapping)
            )
        doc = await self._document(conversation)
        heads = doc.unshown_heads()
        if not heads:
            return ()
        theirs, ours = decode_state_vector(state_vector), decode_state_vector(doc.state_vector())
        return tuple(
            _plain(head.record) for head in heads if ours.get(head.value.client, 0) > theirs.get(head.value.client, 0)
        )

    async def receive(
        self,
        conversation: str,
        update: bytes,
        origin: str | None = None,
        *,
        acknowledge: bool = True,
        applied: Callable[[Changes], None] | None = None,
        proving: bool = False,
        heads: Iterable[Mapping[str, object]] = (),
        reached: Iterable[str] = (),
    ) -> Changes:
        """Merge and persist an update from peer ``origin``, then acknowledge it as delivered.

        The update is checked against the conversation schema before pycrdt sees it
        (``UnsafeUpdate``: nothing of it is applied or stored). A conversation seen for
        the first time is created from the update, if it lists
        both us and ``origin`` as members (else ``NotAllowed``, and nothing is stored).
        With ``proving``, ``origin`` is not a member as far as we know, and the update is
        taken only if it makes it one (``NotAllowed`` otherwise, and nothing is stored).
        Listeners hear of the update (to pass it on) only if it brought something new.
        With ``acknowledge=False`` the caller sends the delivered receipt itself, later
        (``acknowledge``), e.g. after telling the application.

        ``applied`` hears what the update changed once it is merged, before the commit: the
        application can show a message without waiting for the disk, while reads still see
        it (they wait for commits under way) and the delivered receipt still waits for the
        commit. If the commit fails, the document is reloaded from disk and the sender
        sends the update again later: the change may then be heard twice. Which shown
        messages the update took away (``Changes.vanished_messages``) is known only once
        it is committed.

        ``heads`` are signed heads sent beside the update (``heads_for``); ``reached``, the
        peers ``origin`` says hold it or were sent it (listeners need not pass it on to them).
        """
        self._receiving += 1
        try:
            with self._in_use(conversation):
                return await self._receive(
                    conversation, update, origin, acknowledge, applied, proving, heads, frozenset(reached)
                )
        finally:
            self._receiving -= 1

    async def _receive(
        self,
        conversation: str,
        update: bytes,
        origin: str | None,
        acknowledge: bool,
        applied: Callable[[Changes], None] | None,
        proving: bool,
        heads: Iterable[Mapping[str, object]],
        reached: frozenset[str],
    ) -> Changes:
        if update == EMPTY_UPDATE and not proving and conversation not in self._conversations:
            # A peer that had nothing for us (a catch-up's usual answer): leave it at rest.
            if conversation in self._resting or await self._read(index.metadata, conversation) is not None:
                return Changes()
        summary = await check_remote_update(update)
        heads = tuple(heads)
        # Heads sent beside may verify entries the document holds (a head it lost): load it.
        if not (proving or heads) and conversation not in self._conversations:
            if await self._holds_all(conversation, summary):
                return Changes()
        new = False
        try:
            doc = await self._document(conversation)
        except UnknownConversation:
            doc, new = Conversation.from_updates([], self.peer_id, self._clock, self._signer), True
            self._hold(conversation, doc)
        try:
            changes = await self._merge(conversation, doc, update, summary, heads)
            if (new or proving) and not (doc.is_member(self.peer_id) and (origin is None or doc.is_member(origin))):
                raise NotAllowed(f"{origin} sent an update of {conversation} that does not list us both as members")
        except GigiError:
            self._release(conversation, doc)  # it may be half-applied: reload what is on disk
            raise
        state_vector = doc.state_vector()
        waiting = left_waiting(summary, state_vector)
        if waiting:
            changes.waiting = doc.note_waiting(update)
        # Structs left waiting may change nothing yet, but they are integrated when the gap
        # fills: they must be stored too, or a restart loses them while our state vector
        # tells peers we have them. Only once, though: catch-ups carry them round after round.
        news = bool(changes) or changes.merged or changes.waiting
        if applied is not None and changes:
            applied(changes)
        changes.vanished_messages = await self._persist(
            doc,
            Written(update if news else b"", changes),
            conversation,
            origin or "",
            reached,
            summary.ends,
            waiting=waiting,
            slices=summary.slices,
        )
        await self._restore_records(conversation, doc)
        if acknowledge:
            await self.acknowledge(conversation, changes)
        return changes

    async def _merge(
        self,
        conversation: str,
        doc: Conversation,
        update: bytes,
        summary: UpdateSummary,
        heads: tuple[Mapping[str, object], ...],
    ) -> Changes:
        """``_check_and_apply`` the update to ``doc``; in a worker thread if it is large. A
        10^5-message catch-up spends seconds in Python reading and verifying the new
        entries: on the event loop, every other peer and conversation would wait that long
        (in a thread, they wait only while pycrdt applies one slice of it, see
        ``model.slices``; the collector is paused, see ``_collector``). Until the thread is done, the
        document is nobody else's: ``_document`` and ``_merged`` wait for it. A cancellation
        waits for the thread and comes at the caller's next checkpoint, which must be the
        shielded commit of what was merged (``_persist``), as after an apply on the loop."""
        if len(update) <= IN_THREAD_BYTES:
            return _check_and_apply(doc, conversation, update, summary, heads)
        merging = self._merging[conversation] = _Merging(trio.Event(), doc.members())
        try:
            return await trio.to_thread.run_sync(
                run_with_collector_paused, _check_and_apply, doc, conversation, update, summary, heads
            )
        finally:
            del self._merging[conversation]
            merging.done.set()

    async def _merged(self, conversation: str) -> None:
        """Wait until no worker thread is merging into the conversation's document (a task
        that holds a document across a checkpoint must call this before touching it again)."""
        while (merging := self._merging.get(conversation)) is not None:
            await merging.done.wait()

    async def _holds_all(self, conversation: str, summary: UpdateSummary) -> bool:
        """Whether a document not in memory holds everything the update ``summary``
        describes, as its stored state vector tells: every struct, and no deletion of an
        item past it. Then the update brings no deletion it lacks either: every write
        carries its deletions with its structs, and whatever passes structs on carries
        them too (see ``model.catchup``), so a document that counts a write's structs
        holds its deletions, or has them waiting (its state vector is then not stored).
        The one write without structs, an expiry, every replica makes itself
        (``apply_retention``). A peer's catch-up with its whole delete set (a relay
        room's join, say) so leaves a resting document at rest."""
        stored = await self._stored_state_vector(conversation)
        if stored is None:
            return False
        return held_at(summary, clocks_of(stored))

    async def _restore_records(self, conversation: str, doc: Conversation) -> None:
        """Write back signed records someone replaced with older or invalid ones (see
        ``Conversation.restore_records``), at most once per ``RESTORE_INTERVAL`` per
        conversation: every member does it, so a member replaying records over and over
        must not make each of them write (and everyone pass on) an update per replay.
        What waits is written back by the first update received after the interval."""
        await self._merged(conversation)
        if self._conversations.get(conversation) is not doc:
            return  # released (a write failed): its next load restores them
        if not doc.has_stale_records() or not doc.is_member(self.peer_id):
            return
        now = trio.current_time()
        if now - self._restored.get(conversation, -math.inf) < RESTORE_INTERVAL:
            return
        restored = doc.restore_records()
        if restored is not None:
            self._restored[conversation] = now
            await self._persist(doc, restored)

    async def acknowledge(self, conversation: str, changes: Changes) -> None:
        """Mark what ``changes`` brought as delivered (only call once it is stored)."""
        await self._acknowledge_authors(conversation, _authors(changes) - {self.peer_id})

    def acknowledge_nowait(self, conversation: str, changes: Changes) -> None:
        """``acknowledge``, queued: written in the background, soon, and on closing at the
        latest (if the replica is cancelled first, when the conversation next loads: see
        ``Conversation.undelivered``). Receipts queued while one is being written go
        together in the next write, so a busy conversation writes (and sends) one receipt
        per disk flush, not one per update, and the caller (a peer's reader loop) does not
        wait for the disk."""
        self._queue_receipts(conversation, _authors(changes) - {self.peer_id})

    def _queue_receipts(self, conversation: str, authors: Iterable[str]) -> None:
        queued = self._unacknowledged.setdefault(conversation, set())
        queued.update(authors)
        if queued:
            self._acknowledgements_wanted.set()
        else:
            del self._unacknowledged[conversation]

    async def _write_acknowledgements(self) -> None:
        while True:
            if self._unacknowledged:  # left by a write that failed: try again a little later
                with trio.move_on_after(ACKNOWLEDGE_RETRY):
                    await self._acknowledgements_wanted.wait()
            else:
                await self._acknowledgements_wanted.wait()
            # The receipts of a burst of updates (live chat, a backlog) then share one write:
            # one commit, one update on the wire and one signed head, instead of one each.
            await trio.sleep(ACKNOWLEDGE_DELAY)
            self._acknowledgements_wanted = trio.Event()
            await self._flush_acknowledgements()

    @property
    def acknowledging(self) -> bool:
        """Whether delivered receipts are queued (``acknowledge_nowait``) or being written."""
        return bool(self._unacknowledged) or self._flushes > 0

    @property
    def settled(self) -> bool:
        """Whether nothing is under way that will change a document: no update being
        received or committed, no delivered receipt queued or being written. (A caller of
        ``receive(acknowledge=False)`` must queue its receipt before its next checkpoint.)"""
        return not (self._receiving or self.acknowledging or any(self._in_flight.values()))

    async def _flush_acknowledgements(self) -> None:
        """Write every queued delivered receipt, the conversations side by side (the store
        commits what is queued together)."""
        queued, self._unacknowledged = self._unacknowledged, {}
        self._flushes += 1
        try:
            async with trio.open_nursery() as nursery:
                for conversation, authors in queued.items():
                    nursery.start_soon(self._acknowledge_queued, conversation, authors)
        finally:
            self._flushes -= 1

    async def _acknowledge_queued(self, conversation: str, authors: set[str]) -> None:
        try:
            await self._acknowledge_authors(conversation, authors)
        except StoreClosed as exc:  # cancelled while closing: nothing is lost (``Conversation.undelivered``)
            log.info("delivered receipts of %s left for its next load: %s", conversation, exc)
        except GigiError as exc:
            # Queued again, and tried again after ACKNOWLEDGE_RETRY: a disk that failed now
            # would most likely fail again at once.
            log.warning("delivered receipts of %s not written yet: %s", conversation, exc)
            self._unacknowledged.setdefault(conversation, set()).update(authors)
        except trio.Cancelled:
            self._unacknowledged.setdefault(conversation, set()).update(authors)  # for the flush on closing
            raise

    async def _acknowledge_authors(self, conversation: str, authors: set[str]) -> None:
        if not authors:
            return
        doc = await self._document(conversation)
        delivered = {author: doc.stream_length(author) - 1 for author in authors}
        await self._persist(doc, doc.mark(ReceiptKind.DELIVERED, delivered))

    async def shared_conversations(self, peer_id: str) -> list[str]:
        """Conversations that list ``peer_id`` as a current member."""
        return await self._read(index.conversations_of, peer_id)

    async def is_member(self, conversation: str, peer_id: str) -> bool:
        """True if ``peer_id`` is a current member of ``conversation``."""
        member = await self._member(conversation, peer_id)
        return member is not None and member.active

    async def is_stranger(self, conversation: str, peer_id: str) -> bool:
        """True if ``conversation`` is signed and we know no member record of ``peer_id``.

        Such a peer may be a member all the same, added by a record we have not seen (the
        admin who wrote it lost its store before we heard of it, say): the creator's
        signature lets it prove that (see ``receive(proving=True)``).
        """
        return is_signed(conversation) and await self._member(conversation, peer_id) is None

    async def has_left(self, conversation: str, peer_id: str) -> bool:
        """True if ``peer_id`` was a member of ``conversation`` and left (was not removed)."""
        member = await self._member(conversation, peer_id)
        return member is not None and member.has_left

    async def _member(self, conversation: str, peer_id: str) -> Member | None:
        """``peer_id``'s member record, read from the document if it is in memory or rests
        (asked for every update a peer sends: no I/O then), else from the index."""
        members = self.loaded_members(conversation)
        if members is not None:
            return members.get(peer_id)
        return (await self.members(conversation)).get(peer_id)

    def loaded_members(self, conversation: str) -> dict[str, Member] | None:
        """Members from the document if it is in memory or rests (no I/O), else ``None``.
        While an update is being merged into it, they are those from before the update."""
        merging = self._merging.get(conversation)
        if merging is not None:
            return merging.members
        doc = self._conversations.get(conversation)
        if doc is not None:
            return doc.members()
        rest = self._resting.get(conversation)
        return None if rest is None else rest.members

    def add_listener(self, listener: UpdateListener) -> None:
        """Hear of every update once it is on disk (the sync engine fans them out)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: UpdateListener) -> None:
        """Stop hearing of updates."""
        self._listeners.remove(listener)

    # -- maintenance ---------------------------------------------------------------

    async def compact(self, conversation: str) -> None:
        """Fold a conversation's update log into one garbage-collected snapshot, after
        applying its retention, and plan how loads apply it in slices if it is large."""
        await self._expire(conversation)
        await self._worker.compact(conversation, collect_garbage=True)
        await self._worker.plan_snapshots()

    async def apply_retention(self) -> list[str]:
        """Apply retention where the index holds a message past it: expired messages leave
        the index, and the buckets whose every entry expired the document, then the disk
        (the log is compacted, collecting them as garbage). Returns the conversations
        checked. Peers do the same on their own; the deletions also go out to them like
        any write."""
        due = await self._read(index.past_retention, self._clock.now())
        for conversation in due:
            try:
                if await self._expire(conversation):
                    await self._worker.compact(conversation, collect_garbage=True)
            except GigiError as exc:  # tried again at the next check; the others go on
                log.warning("applying the retention of %s failed: %s", conversation, exc)
        return due

    async def _expire(self, conversation: str) -> bool:
        """Apply the conversation's retention, if it has one, to its document and index;
        True if buckets left the document."""
        if (await self.metadata(conversation)).retention_days is None:
            return False
        doc = await self._document(conversation)
        written = doc.expire()
        cutoff = doc.retention_cutoff()
        assert cutoff is not None  # the metadata says there is a retention
        await self._persist(doc, written)
        await self._worker.write(self._store.purge_expired, conversation, cutoff)
        return bool(written.update)

    async def _apply_retention_periodically(self, every: float) -> None:
        await trio.sleep(min(RETENTION_FIRST, every))
        while True:
            try:
                await self.apply_retention()
            except GigiError as exc:  # the store could not be read: a chore, tried again later
                log.warning("checking for messages past their retention failed: %s", exc)
            await trio.sleep(every)

    async def rebuild_index(self, conversation: str) -> None:
        """Recreate a conversation's index rows from its document."""
        doc = await self._document(conversation)
        record = Record(
            conversation,
            b"",
            Changes(list(doc.entries()), doc.receipts()),
            doc.metadata(),
            list(doc.members().values()),
        )
        await self._worker.write(self._store.rebuild_index, conversation, [record])

    async def rest_idle(self, idle_for: float) -> list[str]:
        """Let the documents unused for ``idle_for`` seconds leave memory (they *rest*);
        returns their conversations. The next use loads one again, but not asking for its
        state vector or a catch-up a peer does not need (``state_vector``, ``diff``): a
        node with many quiet conversations holds only the ones in use.

        A document stays while anything of it is under way (a commit, a queued receipt,
        an update being received) or held only in memory (``Conversation.unsettled``).
        Their state vectors are stored first, if their last commit did not; a resting
        document's state vector and members stay in memory (``_Resting``).
        """
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
            self._release(conversation, doc)
            self._keep_recent(conversation, doc.recent_updates)
            self._resting[conversation] = _Resting(doc.state_vector(), doc.members(), doc.client_id)
        return list(rested)

    def _idle(self, idle_for: float) -> dict[str, Conversation]:
        """The documents ``rest_idle`` would let go."""
        now = trio.current_time()
        idle = {}
        for conversation, doc in self._conversations.items():
            unused = now - self._last_used.get(conversation, now) >= idle_for
            busy = (
                self._in_flight.get(conversation)
                or self._users.get(conversation)
                or conversation in self._unacknowledged
            )
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

    async def _rest_idle_documents(self, rest_after: float) -> None:
        while True:
            await trio.sleep(rest_after / 4)  # so a document rests within 1.25 x rest_after
            rested = await self.rest_idle(rest_after)
            if rested:
                log.debug("%d idle conversation documents left memory", len(rested))

    async def _store_state_vectors(self, documents: Mapping[str, Conversation]) -> None:
        """Store the state vectors of settled ``documents`` about to rest: their last commit
        may have stored none (``_persist``; a store of version 3), and without one every
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
    def _in_use(self, conversation: str) -> Iterator[None]:
        """Keep the conversation's document from resting for the duration of the block."""
        self._users[conversation] = self._users.get(conversation, 0) + 1
        try:
            yield
        finally:
            self._users[conversation] -= 1
            if not self._users[conversation]:
                del self._users[conversation]

    def is_loaded(self, conversation: str) -> bool:
        """Whether the conversation's document is in memory (see ``rest_idle``)."""
        return conversation in self._conversations

    # -- internals -----------------------------------------------------------------

    async def _document(self, conversation: str) -> Conversation:
        """The conversation's document, loaded if need be, once no thread merges into it
        (``_merge``); no checkpoint if it is in memory and free. Use it before the next
        checkpoint, or call ``_merged`` again first."""
        while True:
            await self._merged(conversation)
            doc = self._conversations.get(conversation)
            if doc is None:
                async with self._loading:
                    doc = self._conversations.get(conversation)
                    if doc is None:
                        with self._in_use(conversation):
                            doc = await self._load(conversation)
            if conversation not in self._merging:  # a receive may have started one while it loaded
                self._last_used[conversation] = trio.current_time()
                return doc

    async def _load(self, conversation: str) -> Conversation:
        """Read a conversation's document from the store and hold it (``_document``)."""
        await self._settle(conversation)
        log = await self._worker.read(self._store.load_log, conversation)
        held = _parse_held(await self._worker.read(self._store.signed_records, conversation))
        # If it rested, everything it wrote is in the log: it may write on under its client id.
        rest = self._resting.pop(conversation, None)
        client_id = None if rest is None else rest.client_id
        doc = await trio.to_thread.run_sync(
            Conversation.from_log, log, self.peer_id, self._clock, self._signer, held, client_id
        )
        recent = self._take_recent(conversation)
        if recent is not None:  # it rested: nothing was committed since (that needs it loaded)
            doc.continue_recent(recent)
        for logged in log:
            if logged.waiting:
                doc.note_waiting(logged.update)
        self._hold(conversation, doc)
        if doc.is_member(self.peer_id):
            self._queue_receipts(conversation, doc.undelivered().keys())
        await self._index_missed(conversation, doc)
        return doc

    async def _settle(self, conversation: str) -> None:
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
        cursors = await self._read(index.stream_cursors, conversation)
        await self._merged(conversation)
        if self._conversations.get(conversation) is not doc:
            return  # released while we read (a write failed): whoever loads it again indexes it
        missed = doc.changes_since(cursors)
        if missed:
            log.info("indexing %d entries of %s that the index lacked", len(missed.entries), conversation)
            await self._persist(doc, Written(b"", missed), conversation)

    async def _persist(
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
        generation = self._generations.get(conv, 0)
        if self._conversations.get(conv) is not doc:
            raise StorageError(f"conversation {conv} was reloaded after a failed write; try again")
        meta: Metadata | None = None
        members: tuple[Member, ...] = ()
        if written.changes.metadata_changed:
            meta, members = doc.metadata(), tuple(doc.members().values())
        signed = [(root, key, json.dumps(record)) for root, key, record in doc.take_unstored_records()]
        # Not told from the store while a delivered receipt is owed: loading the document
        # is what writes it (``_document``), should the replica close before it does.
        owes = conv in self._unacknowledged or bool(_authors(written.changes) - {self.peer_id})
        record = Record(
            conv,
            written.update,
            written.changes,
            meta,
            members,
            doc.retention_cutoff(),
            generation,
            waiting,
            slices,
            signed,
            doc.state_vector() if written.update and not doc.waits and not owes else None,
        )
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
            self._release(conv, doc)
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
        self._unchecked_bytes[conv] = self._unchecked_bytes.get(conv, 0) + len(written.update)
        if self._unchecked_bytes[conv] >= MIN_COMPACTION_BYTES:
            self._unchecked_bytes[conv] = 0
            if await self._worker.read(self._store.needs_compaction, conv):
                self._worker.request_compaction(conv)
        return vanished

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
                for listener in self._listeners:
                    listener.offer(done)

    def _hold(self, conversation: str, doc: Conversation) -> None:
        """Keep ``doc`` in memory as a new generation of the conversation."""
        self._conversations[conversation] = doc
        self._generations[conversation] = next(_GENERATIONS)
        self._last_used[conversation] = trio.current_time()

    def _release(self, conversation: str, doc: Conversation) -> None:
        """Forget ``doc`` (if it is still the one in memory) so the next use reloads from disk."""
        if self._conversations.get(conversation) is doc:
            del self._conversations[conversation]

    async def _read(self, function: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        # Commits are queued in order: once as many have ended as had begun, every change
        # made before this read (a remote one may already have been announced, see
        # ``receive``) is in the index.
        begun = self._commits_begun
        while self._commits_ended < begun:
            await self._commit_ended.wait()
        return await self._worker.read(self._store.query, lambda db: function(db, *args))
