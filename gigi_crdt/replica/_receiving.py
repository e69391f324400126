"""Remote updates taken in (``Receiver``): checked, merged into their document (or one
created from them), committed, then acknowledged; signed records someone replaced are
written back.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping

import trio

from ..errors import GigiError, NotAllowed, UnknownConversation
from ..model import Changes, Conversation, HybridClock, Written
from ..model.ydecode import clocks_of
from ..model.yupdate import UpdateSummary
from ..signatures import Signer
from ..store import index
from ._documents import Documents
from ._updates import EMPTY_UPDATE, check_remote_update, held_at, left_waiting

RESTORE_INTERVAL = 30.0  # seconds between write-backs of signed records, per conversation


class Receiver:
    """Takes remote updates into ``documents`` for ``Replica.receive``; ``acknowledge`` is
    ``Replica.acknowledge`` (mark what an update brought as delivered)."""

    def __init__(
        self,
        documents: Documents,
        peer_id: str,
        clock: HybridClock,
        signer: Signer | None,
        acknowledge: Callable[[str, Changes], Awaitable[None]],
    ) -> None:
        self._documents = documents
        self._peer_id = peer_id
        self._clock = clock
        self._signer = signer
        self._acknowledge = acknowledge
        self._restored: dict[str, float] = {}  # conversation -> when we last wrote signed records back

    async def receive(
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
        """``Replica.receive``, the conversation's document kept from resting meanwhile."""
        if update == EMPTY_UPDATE and not proving and await self._known_at_rest(conversation):
            return Changes()  # a peer that had nothing for us (a catch-up's usual answer)
        summary = await check_remote_update(update)
        heads = tuple(heads)
        # Heads sent beside may verify entries the document holds (a head it lost): load it.
        if not (proving or heads) and conversation not in self._documents:
            if await self._holds_all(conversation, summary):
                return Changes()
        doc, changes = await self._merge(conversation, update, summary, heads, origin, proving)
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
        changes.vanished_messages = await self._documents.persist(
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
            await self._acknowledge(conversation, changes)
        return changes

    async def _known_at_rest(self, conversation: str) -> bool:
        """Whether the conversation is ours and its document not in memory (it rests, or
        was not loaded since the replica opened): an update that brings nothing leaves it
        there."""
        if conversation in self._documents:
            return False
        if self._documents.rests(conversation):
            return True
        return await self._documents.read(index.metadata, conversation) is not None

    async def _merge(
        self,
        conversation: str,
        update: bytes,
        summary: UpdateSummary,
        heads: tuple[Mapping[str, object], ...],
        origin: str | None,
        proving: bool,
    ) -> tuple[Conversation, Changes]:
        """Merge a checked update into the conversation's document, or into a new one if
        the conversation is new to us (which must then list us and ``origin`` as members,
        as must the document of an update ``proving`` that ``origin`` is one)."""
        new = False
        try:
            doc = await self._documents.document(conversation)
        except UnknownConversation:
            doc, new = Conversation.from_updates([], self._peer_id, self._clock, self._signer), True
            self._documents.hold(conversation, doc)
        try:
            changes = await self._documents.merges.merge(conversation, doc, update, summary, heads)
            if (new or proving) and not (doc.is_member(self._peer_id) and (origin is None or doc.is_member(origin))):
                raise NotAllowed(f"{origin} sent an update of {conversation} that does not list us both as members")
        except GigiError:
            self._documents.release(conversation, doc)  # it may be half-applied: reload what is on disk
            raise
        return doc, changes

    async def _holds_all(self, conversation: str, summary: UpdateSummary) -> bool:
        """Whether a document not in memory holds everything the update ``summary``
        describes, as its stored state vector tells: every struct, and no deletion of an
        item past it. Then the update brings no deletion it lacks either: every write
        carries its deletions with its structs, and whatever passes structs on carries
        them too (see ``model.catchup``), so a document that counts a write's structs
        holds its deletions, or has them waiting (its state vector is then not stored).
        The one write without structs, an expiry, every replica makes itself
        (``Replica.apply_retention``). A peer's catch-up with its whole delete set (a relay
        room's join, say) so leaves a resting document at rest."""
        stored = await self._documents.stored_state_vector(conversation)
        if stored is None:
            return False
        return held_at(summary, clocks_of(stored))

    async def _restore_records(self, conversation: str, doc: Conversation) -> None:
        """Write back signed records someone replaced with older or invalid ones (see
        ``Conversation.restore_records``), at most once per ``RESTORE_INTERVAL`` per
        conversation: every member does it, so a member replaying records over and over
        must not make each of them write (and everyone pass on) an update per replay.
        What waits is written back by the first update received after the interval."""
        await self._documents.merges.wait(conversation)
        if self._documents.get(conversation) is not doc:
            return  # released (a write failed): its next load restores them
        if not doc.has_stale_records() or not doc.is_member(self._peer_id):
            return
        now = trio.current_time()
        if now - self._restored.get(conversation, -math.inf) < RESTORE_INTERVAL:
            return
        restored = doc.restore_records()
        if restored is not None:
            self._restored[conversation] = now
            await self._documents.persist(doc, restored)
