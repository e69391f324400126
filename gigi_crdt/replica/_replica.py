"""``Replica``: the local-first API over every conversation of one peer (``open_replica``
opens one). Writes go through its documents (``_documents``) and return once on disk;
reads of history, unread counts and search come from the index and load no document;
remote updates are taken in by ``_receiving``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import trio

from .._collector import run_with_collector_paused
from ..errors import GigiError, UnknownConversation, UnknownMessage
from ..model import (
    Changes,
    Content,
    Conversation,
    ConversationKind,
    HybridClock,
    Message,
    ReceiptKind,
)
from ..model.catchup import covers
from ..model.metadata import Member, Metadata, Role
from ..model.signed import is_signed
from ..model.ydecode import clocks_of
from ..protocol import HeadRecord
from ..protocol.yproto import decode_state_vector
from ..signatures import Signer
from ..store import ConversationSummary, Record, StoreWorker, index
from ._documents import Documents
from ._receipts import DeliveredReceipts
from ._receiving import Receiver
from ._updates import (
    EMPTY_UPDATE,
    UpdateListener,
    authors_of,
    merge_checked_parts,
    parse_held,
    plain_head,
    split_in_parts,
)

log = logging.getLogger(__name__)

HEAD_ROOTS = ("heads", "carried")  # where stored signed records are heads (``take_unstored_records``)


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
        self._receipts = DeliveredReceipts(self._acknowledge_authors)
        self._documents = Documents(worker, peer_id, clock, signer, self._receipts)
        self._receiver = Receiver(self._documents, peer_id, clock, signer, self.acknowledge)
        self._receiving = 0  # calls of ``receive`` under way (see ``settled``)

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
        self._documents.hold(conversation.id, conversation)
        await self._documents.persist(conversation, written)
        return conversation.id

    async def conversations(self) -> list[ConversationSummary]:
        """Every conversation with its last message and unread count, most recent first."""
        return await self._documents.read(index.summaries, self.peer_id, self._clock.now())

    async def conversation_ids(self) -> list[str]:
        """The ids of every conversation stored here."""
        return await self._documents.read(index.conversation_ids)

    async def metadata(self, conversation: str) -> Metadata:
        """A conversation's kind, title and creation time."""
        meta = await self._documents.read(index.metadata, conversation)
        if meta is None:
            raise UnknownConversation(f"no conversation {conversation}")
        return meta

    async def members(self, conversation: str) -> dict[str, Member]:
        """Everyone who is or was a member."""
        return await self._documents.read(index.members, conversation)

    async def add_member(self, conversation: str, peer_id: str, nickname: str, role: Role = Role.MEMBER) -> None:
        """Add (or re-add) ``peer_id`` to a group we administer; raises ``NotAllowed`` otherwise."""
        doc = await self._document(conversation)
        await self._documents.persist(doc, doc.add_member(peer_id, nickname, role))

    async def invite(self, conversation: str, peer_id: str, nickname: str) -> str:
        """Add ``peer_id`` to a group we administer and post a ``GroupInvite``, together;
        returns the invite's message id."""
        doc = await self._document(conversation)
        written = doc.invite(peer_id, nickname, self.nickname)
        await self._documents.persist(doc, written)
        assert written.message_id is not None
        return written.message_id

    async def remove_member(self, conversation: str, peer_id: str) -> None:
        """Remove ``peer_id`` from a group we administer; it is sent nothing written after."""
        doc = await self._document(conversation)
        await self._documents.persist(doc, doc.remove_member(peer_id))

    async def leave(self, conversation: str) -> None:
        """Leave a group: its members stop sending us anything new."""
        await self.remove_member(conversation, self.peer_id)

    # -- writing messages ----------------------------------------------------------

    async def send(self, conversation: str, content: Content) -> str:
        """Post a message; returns its id once it is on disk."""
        doc = await self._document(conversation)
        written = doc.post(content, self.nickname)
        await self._documents.persist(doc, written)
        assert written.message_id is not None
        return written.message_id

    async def edit(self, conversation: str, message_id: str, content: Content) -> None:
        """Replace the content of one of our messages."""
        doc = await self._document(conversation)
        await self._documents.persist(doc, doc.edit(message_id, content))

    async def delete(self, conversation: str, message_id: str) -> None:
        """Delete one of our messages; a tombstone stays in the history."""
        doc = await self._document(conversation)
        await self._documents.persist(doc, doc.delete(message_id))

    async def react(self, conversation: str, message_id: str, emoji: str, on: bool = True) -> None:
        """Add (or withdraw) our reaction to a message."""
        doc = await self._document(conversation)
        await self._documents.persist(doc, doc.react(message_id, emoji, on))

    async def mark_read(self, conversation: str, message_id: str | None = None) -> None:
        """Mark everything up to ``message_id`` (default: the latest message) as read."""
        if message_id is None:
            latest = await self.history(conversation, limit=1)
            if not latest:
                return
            message = latest[-1]
        else:
            found = await self._documents.read(index.find_message, conversation, message_id)
            if found is None:
                raise UnknownMessage(f"no message {message_id} in {conversation}")
            message = found
        upto = await self._documents.read(index.receipts_upto, conversation, message.sort_key)
        doc = await self._document(conversation)
        await self._documents.persist(doc, doc.mark(ReceiptKind.READ, upto))

    # -- reading -------------------------------------------------------------------

    async def history(self, conversation: str, *, before: Message | None = None, limit: int = 50) -> list[Message]:
        """Up to ``limit`` messages before ``before`` (default: the latest), oldest first."""
        await self.metadata(conversation)
        key = None if before is None else before.sort_key
        return await self._documents.read(index.page, conversation, self._clock.now(), key, limit)

    async def unread_count(self, conversation: str) -> int:
        """Messages from others that we have not marked read."""
        return await self._documents.read(index.unread_count, conversation, self.peer_id, self._clock.now())

    async def search(self, text: str, conversation: str | None = None, limit: int = 50) -> list[tuple[str, Message]]:
        """Full-text search, newest first, as (conversation id, message)."""
        return await self._documents.read(index.search, text, self._clock.now(), conversation, limit)

    async def receipts(self, conversation: str, message: Message) -> dict[ReceiptKind, list[str]]:
        """Which members have delivered and read ``message``."""
        return await self._documents.read(index.receipt_state, conversation, message)

    async def export(self, conversation: str) -> list[Message]:
        """The whole ordered history, computed from the document itself."""
        return (await self._document(conversation)).history()

    # -- sync (used by the sync engine and by tests) ---------------------------------

    async def state_vector(self, conversation: str) -> bytes:
        """Our Yjs state vector for a conversation (sync step 1); read from the store
        while its document rests (``rest_idle``), without loading it."""
        if conversation not in self._documents:
            stored = await self._documents.stored_state_vector(conversation)
            if stored is not None:
                return stored
        return (await self._document(conversation)).state_vector()

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
        device): the store answers (``Documents.stored_whole``).
        """
        if conversation not in self._documents:
            if state_vector is None or not clocks_of(state_vector):
                whole = await self._documents.stored_whole(conversation)
                if whole is not None:
                    return whole
            else:
                stored = await self._documents.stored_state_vector(conversation)
                if stored is not None and covers(clocks_of(state_vector), clocks_of(stored)):
                    return EMPTY_UPDATE  # and nothing waits (``stored_state_vector``)
        doc = await self._document(conversation)
        return doc.catch_up(state_vector) or EMPTY_UPDATE

    async def split_update(self, update: bytes, part_bytes: int) -> list[bytes]:
        """``update`` (of ours, from ``diff``) cut into updates of about ``part_bytes`` that,
        applied in order, give what it gives (``model.slices``): a step 2 too large for one
        frame goes in parts (``SyncPart``). ``[update]`` if it cannot be cut (it has a gap)."""
        return await trio.to_thread.run_sync(run_with_collector_paused, split_in_parts, update, part_bytes)

    async def merged_parts(self, parts: Sequence[bytes]) -> bytes:
        """One update holding a step 2's parts from a peer (``SyncPart``, then the step 2
        itself), to ``receive``: each part is checked first (``UnsafeUpdate``: none of them
        is taken), so that pycrdt merges only what passed."""
        return await trio.to_thread.run_sync(run_with_collector_paused, merge_checked_parts, parts)

    async def heads_for(self, conversation: str, state_vector: bytes) -> tuple[HeadRecord, ...]:
        """The signed heads to send beside what a peer with ``state_vector`` lacks (``diff``):
        those our document does not show (``Conversation.unshown_heads``) of authors whose Yjs
        client, as the head names it, wrote something the peer lacks. Without them the peer
        would refuse the structs they cover.

        A peer holding nothing of a document not in memory gets every head we hold (the
        store does not tell which ones the document shows), as ``diff`` answers it from
        the store.
        """
        if conversation not in self._documents and not clocks_of(state_vector):
            # Held in the document's place ("heads") or beside it ("carried": see ``take_unstored_records``).
            rows = parse_held(await self._worker.read(self._store.signed_records, conversation))
            return tuple(
                plain_head(record) for root, _, record in rows if root in HEAD_ROOTS and isinstance(record, Mapping)
            )
        doc = await self._document(conversation)
        heads = doc.unshown_heads()
        if not heads:
            return ()
        theirs, ours = decode_state_vector(state_vector), decode_state_vector(doc.state_vector())
        return tuple(
            plain_head(head.record)
            for head in heads
            if ours.get(head.value.client, 0) > theirs.get(head.value.client, 0)
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
            with self._documents.in_use(conversation):
                return await self._receiver.receive(
                    conversation, update, origin, acknowledge, applied, proving, heads, frozenset(reached)
                )
        finally:
            self._receiving -= 1

    async def acknowledge(self, conversation: str, changes: Changes) -> None:
        """Mark what ``changes`` brought as delivered (only call once it is stored)."""
        await self._acknowledge_authors(conversation, authors_of(changes) - {self.peer_id})

    def acknowledge_nowait(self, conversation: str, changes: Changes) -> None:
        """``acknowledge``, queued: written in the background, soon, and on closing at the
        latest (if the replica is cancelled first, when the conversation next loads: see
        ``Conversation.undelivered``). Receipts queued while one is being written go
        together in the next write, so a busy conversation writes (and sends) one receipt
        per disk flush, not one per update, and the caller (a peer's reader loop) does not
        wait for the disk."""
        self._receipts.queue(conversation, authors_of(changes) - {self.peer_id})

    @property
    def acknowledging(self) -> bool:
        """Whether delivered receipts are queued (``acknowledge_nowait``) or being written."""
        return self._receipts.busy

    @property
    def settled(self) -> bool:
        """Whether nothing is under way that will change a document: no update being
        received or committed, no delivered receipt queued or being written. (A caller of
        ``receive(acknowledge=False)`` must queue its receipt before its next checkpoint.)"""
        return not (self._receiving or self.acknowledging or self._documents.committing)

    async def _acknowledge_authors(self, conversation: str, authors: set[str]) -> None:
        if not authors:
            return
        doc = await self._document(conversation)
        delivered = {author: doc.stream_length(author) - 1 for author in authors}
        await self._documents.persist(doc, doc.mark(ReceiptKind.DELIVERED, delivered))

    async def shared_conversations(self, peer_id: str) -> list[str]:
        """Conversations that list ``peer_id`` as a current member."""
        return await self._documents.read(index.conversations_of, peer_id)

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
        return self._documents.loaded_members(conversation)

    def add_listener(self, listener: UpdateListener) -> None:
        """Hear of every update once it is on disk (the sync engine fans them out)."""
        self._documents.listeners.append(listener)

    def remove_listener(self, listener: UpdateListener) -> None:
        """Stop hearing of updates."""
        self._documents.listeners.remove(listener)

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
        due = await self._documents.read(index.past_retention, self._clock.now())
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
        await self._documents.persist(doc, written)
        await self._worker.write(self._store.purge_expired, conversation, cutoff)
        return bool(written.update)

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
        document's state vector and members stay in memory (``_documents._Resting``).
        """
        return await self._documents.rest_idle(idle_for)

    def is_loaded(self, conversation: str) -> bool:
        """Whether the conversation's document is in memory (see ``rest_idle``)."""
        return conversation in self._documents

    # -- internals -----------------------------------------------------------------

    async def _document(self, conversation: str) -> Conversation:
        """The conversation's document, loaded if need be (``Documents.document``): use it
        before the next checkpoint."""
        return await self._documents.document(conversation)
