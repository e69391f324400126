"""One conversation as one Yjs document, behind typed accessors.

Document layout (root types of the pycrdt ``Doc``)::

    meta     Map   id, kind, title, created_at, retention_days, charter? (signed: see ``signed``)
    members  Map   peer id -> {nick, role, since, left?, removed?, by?, key?, sig?}
                   (members are never deleted; signed records: see ``signed``)
    streams  Map   "<author>/<bucket>" -> Array of at most BUCKET_SIZE ops as JSON text (see ``ops``)
    acks     Map   "<member>/<delivered|read>/<author>" -> highest seq of author's stream
    heads    Map   author -> its signed stream head (signed conversations: see ``chain``)

Why this shape: pycrdt slows down with long arrays and with arrays of nested maps, so each
author appends plain strings to its own short buckets; nobody else ever writes there, so a
stream position is stable and receipts can name it. Receipts are per-author counters that
only their member writes and that only grow, so they converge and never shift under
concurrent inserts. Finding what a remote update brought costs one length check per
member, not a scan of history.

``Conversation`` holds its parts as collaborators, each in a module of its own: its
metadata and members (``roster``), the streams (``streams``), the receipts (``acks``),
the signed records (``records``) and which entries they verify (``verifier``), what
catch-ups answer (``catchup``). Nothing outside these modules touches a conversation's
pycrdt structures.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from pycrdt import Array, Doc, Map, Transaction, merge_updates

from ..errors import NotAllowed, SchemaError, UnknownMessage
from ..signatures import Signer
from .acks import Acks
from .catchup import CatchUps, RecentUpdates
from .chain import commitment, genesis, is_anchor_seq, link_of
from .changes import Changes, Written
from .clock import HybridClock
from .content import Content, GroupInvite
from .gaps import Logged, PastGaps, has_gaps, load_document, spans_of
from .ids import new_conversation_id, new_id
from .metadata import (
    ConversationKind,
    Member,
    Metadata,
    Receipt,
    ReceiptKind,
    Role,
    encode_member,
    encode_metadata,
    parse_metadata,
    receipt_key,
    retention_cutoff,
)
from .ops import (
    BUCKET_SIZE,
    Deleted,
    Edited,
    Op,
    Posted,
    Reacted,
    Redacted,
    StreamEntry,
    Tombstone,
    check_id,
    check_nickname,
    encode_op,
)
from .records import SignedRecords
from .roster import Roster
from .signed import (
    CHARTER,
    Head,
    Signed,
    is_creator_key,
    is_signed,
    new_signed_conversation_id,
    sign_anchor,
    sign_charter,
    sign_head,
    sign_member,
)
from .streams import Streams
from .verifier import StreamVerifier
from .view import Message, fold_history
from .ydecode import UnsafeUpdate, client_clock, clocks_of, decode_any
from .yupdate import UpdateSummary

log = logging.getLogger(__name__)

T = TypeVar("T")
SWEEP_EVERY = 64  # remote updates between sweeps for entries integrated without an event


class Conversation:
    """A conversation document. Create with ``create`` or ``from_updates``.

    ``signer`` (the local peer's identity, if it has one) signs the records it writes;
    without one, the replica cannot change the member list or the charter of a signed
    conversation (see ``signed``).
    """

    def __init__(self, doc: Doc[Any], local_peer: str, clock: HybridClock, signer: Signer | None = None) -> None:
        if signer is not None and signer.peer_id != local_peer:
            raise ValueError(f"signer {signer.peer_id} is not the local peer {local_peer}")
        self._doc = doc
        self._signer = signer
        self._local_peer = check_id(local_peer, "peer id")
        self._clock = clock
        self._meta: Map[Any] = doc.get("meta", type=Map)
        self._members: Map[Any] = doc.get("members", type=Map)
        self._streams = Streams(doc)
        self._acks = Acks(doc, self._local_peer)
        self._heads: Map[Any] = doc.get("heads", type=Map)
        self._outbox: list[bytes] = []
        self._state: bytes | None = None  # the state vector, until the next change
        self._records = SignedRecords()  # signed conversations only
        self._verifier = StreamVerifier(self._records, self._streams.lengths)
        self._tip: tuple[int, bytes] | None = None  # our newest entry, until our head names it
        self._sealed_clock = 0  # our client's clock after our last head
        # message id -> seqs of the local peer's post and its edits. Tuples of ints, which the
        # garbage collector stops tracking: a list per message made every full collection
        # walk one more object per message written.
        self._own_places: dict[str, tuple[int, ...]] | None = None
        self._writing = False
        self._unchecked_applies = 0
        self._catch_ups = CatchUps(doc.get_state())  # see ``catch_up``
        self._past_gaps = PastGaps(doc, _apply)  # structs that wait for earlier clocks of their client
        # pycrdt's observe wrappers convert every field of every event into Python objects up
        # front (state vectors, delete sets, paths), which more than doubled the cost of a live
        # message; the raw events compute only the fields read here. Keep the subscriptions:
        # dropping one unsubscribes.
        self._subscriptions = (
            doc._doc.observe(_weakly(self._on_update)),
            self._acks.root.integrated.observe(_weakly(self._on_acks)),
            self._members.integrated.observe(_weakly(self._on_meta)),
            self._meta.integrated.observe(_weakly(self._on_meta)),
            self._streams.root.integrated.observe_deep(_weakly(self._on_streams)),
            self._heads.integrated.observe(_weakly(self._on_heads)),
        )
        self._roster = Roster(self._meta, self._members, self._heads, self._records)

    # -- creation and loading ------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        kind: ConversationKind,
        title: str,
        local_peer: str,
        nickname: str,
        clock: HybridClock,
        others: Mapping[str, str] = {},
        conversation_id: str | None = None,
        retention_days: int | None = None,
        signer: Signer | None = None,
    ) -> tuple[Conversation, Written]:
        """A new conversation with the local peer as admin and ``others`` (peer id -> nickname).

        With a ``signer`` the conversation is signed: its id commits to the signer's key and
        only the signer can change its member list, title or retention (see ``signed``).
        """
        if kind is ConversationKind.DIRECT and len(others) != 1:
            raise SchemaError("a direct conversation has exactly one other member")
        conversation = cls(Doc(), local_peer, clock, signer)
        now = clock.tick()
        if conversation_id is None:
            conversation_id = new_conversation_id() if signer is None else new_signed_conversation_id(signer.public_key)
        meta = Metadata(conversation_id, kind, title, now, retention_days)
        parse_metadata(encode_metadata(meta))
        charter = None
        if is_signed(conversation_id):
            charter = conversation._sign(lambda signer: sign_charter(signer, meta, now))
        with conversation._local_transaction():
            conversation._meta.update(encode_metadata(meta))
            conversation._roster.forget()  # read empty before; observers tell only at the commit
            if charter is not None:
                conversation._meta[CHARTER] = charter
            conversation._members[local_peer] = conversation._record(
                Member(local_peer, check_nickname(nickname), Role.ADMIN, now)
            )
            role = Role.ADMIN if kind is ConversationKind.DIRECT else Role.MEMBER
            for peer_id, nick in others.items():
                member = Member(check_id(peer_id, "peer id"), check_nickname(nick), role, now)
                conversation._members[peer_id] = conversation._record(member)
        return conversation, conversation._written(Changes(metadata_changed=True))

    @classmethod
    def from_updates(
        cls,
        updates: Iterable[bytes],
        local_peer: str,
        clock: HybridClock,
        signer: Signer | None = None,
        held: Iterable[tuple[str, str, object]] = (),
    ) -> Conversation:
        """A conversation rebuilt from updates, each of which may hold structs past a gap
        (see ``from_log``)."""
        return cls.from_log((Logged(update, True) for update in updates), local_peer, clock, signer, held)

    @classmethod
    def from_log(
        cls,
        log: Iterable[Logged],
        local_peer: str,
        clock: HybridClock,
        signer: Signer | None = None,
        held: Iterable[tuple[str, str, object]] = (),
        client_id: int | None = None,
    ) -> Conversation:
        """A conversation rebuilt from its stored log (see ``gaps.load_document``), and from
        the signed records it held before (``take_unstored_records``: the document alone may
        show older ones).

        ``client_id``: write under the Yjs client id of an earlier copy whose every write is
        in ``log`` (it left memory settled: ``Replica.rest_idle``), so that a conversation
        loaded again and again does not grow every state vector by a client each time;
        default a new one, as after a restart (the last writes may not have reached the log).
        """
        doc, past_gaps = load_document(log, _apply, client_id)
        conversation = cls(doc, local_peer, clock, signer)
        conversation._past_gaps = past_gaps
        conversation._hold_stored(held)
        for author in conversation._streams.lengths:
            conversation._observe_last_timestamp(author)
        return conversation

    # -- reading -------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The conversation id (also the room name when syncing through a relay)."""
        return self.metadata().id

    @property
    def client_id(self) -> int:
        """The Yjs client id this replica writes under (a new one each time it is loaded)."""
        return self._doc.client_id

    @property
    def local_peer(self) -> str:
        """The peer id this replica writes as."""
        return self._local_peer

    def metadata(self) -> Metadata:
        """Kind, title, creation time and retention; ``SchemaError`` if the document has none."""
        return self._roster.metadata()

    def members(self) -> dict[str, Member]:
        """Everyone who is or was a member, by peer id; malformed records are skipped."""
        return dict(self._roster.members())

    def member(self, peer_id: str) -> Member | None:
        """``peer_id``'s member record, if it has one (no copy of the member map)."""
        return self._roster.members().get(peer_id)

    def is_member(self, peer_id: str) -> bool:
        """True if ``peer_id`` is a current member."""
        member = self.member(peer_id)
        return member is not None and member.active

    def has_left(self, peer_id: str) -> bool:
        """True if ``peer_id`` was a member and left of its own accord (was not removed)."""
        member = self.member(peer_id)
        return member is not None and member.has_left

    def take_unstored_records(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The signed records that came to hold since the last call, as (root, key, record),
        to store beside the document (see ``from_updates``). The document may show older
        ones, or none: yrs applies an overwrite's delete at once while its insert may wait
        for a dependency, for good if that was lost with a peer that went away, and the
        entries a vanished head verified must stay verified after a restart."""
        self._roster.members()
        return self._records.take_unstored()

    def _hold_stored(self, stored: Iterable[tuple[str, str, object]]) -> None:
        conversation = self._roster.signed_id()
        if conversation is None:
            return
        self._records.hold_stored(conversation, stored)
        self._roster.forget()
        self._roster.members()  # now the document's own records are compared with what was held

    def receipts(self) -> list[Receipt]:
        """Every delivered/read counter in the document."""
        return self._acks.receipts()

    def entries(self) -> Iterator[StreamEntry]:
        """Every valid stream entry, each author's in order (for export and index rebuilds).

        Membership is not checked here: entries reach a document only through updates the
        sync layer accepted, and an author's posts may well arrive before the update that
        made it a member (Yjs applies them independently).
        """
        conversation = self._roster.signed_id()
        self._roster.members()  # hold the heads the document shows
        for author, numbers in self._streams.buckets().items():
            read = (entry for number in numbers for entry in self._streams.read_bucket(author, number, 0))
            if conversation is not None:
                yield from self._verifier.verified(conversation, author, read)
            else:
                yield from read

    def history(self) -> list[Message]:
        """The whole ordered history, computed from the document (linear in its size).

        Messages past the conversation's retention are left out, as every peer does.
        """
        cutoff = self.retention_cutoff()
        messages = fold_history(self.entries())
        return messages if cutoff is None else [m for m in messages if m.timestamp >= cutoff]

    def retention_cutoff(self) -> int | None:
        """Messages with timestamps below this have expired (``None``: kept forever)."""
        try:
            days = self.metadata().retention_days
        except SchemaError:
            return None
        return retention_cutoff(days, self._clock.now())

    def expire(self) -> Written:
        """Drop whole buckets whose every entry is past retention, on any author's stream.

        Each peer does this on its own; deleting a map key twice converges. An author's
        last bucket is kept, so its stream positions stay known.
        """
        cutoff = self.retention_cutoff()
        expired: list[str] = []
        if cutoff is not None:
            expired = self._streams.expired(lambda entries: all(_timestamp(entry.op) < cutoff for entry in entries))
        with self._local_transaction():
            self._streams.drop(expired)
        return self._written(Changes())

    def changes_since(self, indexed: Mapping[str, int]) -> Changes:
        """Entries past ``indexed`` (author -> entries already folded elsewhere), in order.

        Reads only the streams that hold more than ``indexed`` says: cheap when nothing is
        missing, which is the usual case. In a signed conversation, only verified entries
        count, and the index must not count past those still waiting (``complete_upto``).
        """
        changes = Changes()
        conversation = self._roster.signed_id()
        for author, length in self._streams.lengths.items():
            start = indexed.get(author, 0)
            if length > start:
                entries = self._streams.read_range(author, start, length)
                if conversation is not None:
                    entries, lowest = self._verifier.since(conversation, author, start, entries)
                    if lowest is not None:
                        changes.complete_upto[author] = lowest
                changes.entries.extend(entries)
        return changes

    def stream_length(self, author: str) -> int:
        """How many entries of ``author``'s stream this replica holds."""
        return self._streams.length(author)

    def state_vector(self) -> bytes:
        """The Yjs state vector, for sync step 1."""
        # Kept: every write and every apply wants it once or twice more (yrs encodes it anew
        # each time, for every client the document knows).
        if self._state is None:
            self._state = self._doc.get_state()
        return self._state

    def note_waiting(self, update: bytes) -> bool:
        """Keep what ``update`` (applied already) left waiting for a dependency: structs,
        or deletions of items we lack. True if any of it was not waiting already.

        Such structs change nothing yet (structs past a gap are held back: see ``gaps``).
        No state vector counts them, so no diff against one carries them; ``catch_up``
        adds them until they are integrated, and deletions that wait likewise (a diff
        carries only those applied). After a reload they wait again: whoever stored the
        update must note it again (the store marks such updates).
        """
        return self._catch_ups.note_waiting(update, self.state_vector())

    def catch_up(self, state_vector: bytes | None) -> bytes | None:
        """What a peer with ``state_vector`` lacks, or ``None`` for nothing.

        A peer whose state vector covers ours gets only what waits (a diff would carry our
        whole delete set, and cannot hold a deletion it lacks: see ``catchup``); one that
        was here lately gets the recent updates it lacks; any other a diff. What waits is
        added to each.
        """
        return self._catch_ups.answer(state_vector, self.state_vector(), self.diff)

    @property
    def recent_updates(self) -> RecentUpdates:
        """What ``catch_up`` answers peers that were here lately from."""
        return self._catch_ups.recent

    def continue_recent(self, recent: RecentUpdates) -> None:
        """Take over the ``recent_updates`` of an earlier copy of this document that left
        memory at the state this one was loaded at (``Replica.rest_idle``): peers that were
        here lately still get only what they lack, not a diff with the whole delete set."""
        self._catch_ups.recent = recent

    @property
    def waits(self) -> bool:
        """Whether structs or deletions wait for a dependency (no state vector counts them)."""
        return self._catch_ups.waits(self.state_vector())

    def diff(self, state_vector: bytes | None = None) -> bytes:
        """What a peer with ``state_vector`` lacks (the whole document for ``None``)."""
        return self._doc.get_update(state_vector)

    # -- remote changes ------------------------------------------------------------

    def apply_remote(self, update: bytes, summary: UpdateSummary | None = None) -> Changes:
        """Merge an update from a peer and return what it changed (``summary``: what
        ``check_update`` found in it, if at hand)."""
        if self._writing:  # a local write failed after it changed the document
            self._remember_written()
            self._writing = False
        had_waiting = self._catch_ups.waiting is not None  # only then can yrs integrate anything silently
        spans = spans_of(update, summary)  # decoded once, if no check did it
        gappy = has_gaps(spans, clocks_of(self.state_vector()))
        self._past_gaps.integrate(update, gappy=gappy, slices=None if summary is None else summary.slices)
        ends = {client: span.end for client, span in spans.items()}
        self._catch_ups.add(update, ends, self.state_vector())
        merged = bool(self._outbox)  # yrs emits an update only for a transaction that changed something
        self._outbox.clear()  # never echo a remote update back
        changes = self._drain(Changes(merged=merged))
        found = self._streams.take_appended(self._verifier.unverified)
        if self._streams.shrunk:
            changes.vanished = self._streams.take_vanished()
        self._unchecked_applies += 1
        # Entries yrs integrated without an event show up as a gap at the author's next
        # event (handled in ``Streams.take_appended``); an author with no next event is found by
        # this sweep, run on quiet updates (anti-entropy, duplicates) and every so often.
        if not (found or changes) or self._unchecked_applies >= SWEEP_EVERY:
            self._unchecked_applies = 0
            for author, entries in self._streams.take_unannounced(self._roster.members()).items():
                found[author] = found.get(author, []) + entries
            for author, entries in self._streams.take_filled_holes().items():
                found[author] = entries + found.get(author, [])
        if had_waiting:  # members, metadata and heads have no later event to reveal a silent change
            changes.metadata_changed |= self._roster.moved()
            self._records.heads_moved.update(self._heads.keys())
        self._roster.members()  # see ``Roster.hold_signed``: every signed record must be seen as it comes
        if self._roster.signed_id() is not None:
            conversation = self.id  # SchemaError if no valid charter names it
            self._records.hold_heads(conversation, self._heads)
            found = self._verifier.verify(conversation, found, changes.complete_upto)
            self._verifier.add_redactions(found, self._streams.refills)
        self._streams.refills.clear()
        for author, entries in found.items():
            changes.entries.extend(entries)
            self._clock.observe(max(_timestamp(entry.op) for entry in entries))
            lowest = self._streams.lowest_hole(author)
            if lowest is not None:
                changes.complete_upto[author] = min(changes.complete_upto.get(author, lowest), lowest)
        return changes

    def held_heads(self) -> dict[str, Signed[Head]]:
        """The newest valid head seen of each author (none if the conversation is unsigned)."""
        return self._records.held_heads()

    def unshown_heads(self) -> list[Signed[Head]]:
        """The newest valid heads seen that the document does not show, to send beside a
        catch-up (see ``check_clients``): yrs applies an overwrite's delete at once while its
        insert may wait, so a document can hold an author's structs while showing none of
        the heads that cover them. A head it shows is the last struct its client wrote, so
        a diff carries it along with any struct of that client."""
        return [head for author, head in self.held_heads().items() if self._heads.get(author) != head.record]

    def _on_streams(self, events: list[Any]) -> None:
        # Runs inside the transaction (see ``Streams.note``).
        if not self._writing:  # our own entries are in the write's ``changes`` already
            self._streams.note(events)

    def _observe_last_timestamp(self, author: str) -> None:
        """Let the clock follow the newest timestamp an author has written."""
        seq = self._streams.length(author) - 1
        if seq >= 0:
            for entry in self._streams.read_bucket(author, seq // BUCKET_SIZE, seq % BUCKET_SIZE):
                self._clock.observe(_timestamp(entry.op))

    # -- local writes --------------------------------------------------------------

    def post(self, content: Content, nickname: str, read_upto: Mapping[str, int] = {}) -> Written:
        """Append a new message by the local peer.

        ``read_upto`` (author -> seq) moves the local read receipts forward in the same
        transaction: replying implies having read, and one update instead of two halves the
        cost of a conversation's live traffic.
        """
        self._require_member()
        op = Posted(new_id(), self._clock.tick(), check_nickname(nickname), content)
        with self._local_transaction():
            entry = self._append_in_transaction(op)
            self._acks.advance(ReceiptKind.READ, read_upto, self._raw_transaction())
        self._note_own_post(op.id, entry.seq)
        return self._written(Changes(entries=[entry]), op.id)

    def edit(self, message_id: str, content: Content) -> Written:
        """Replace the content of one of the local peer's messages."""
        places = self._own_message(message_id)
        written = self._append(Edited(message_id, self._clock.tick(), content))
        self._places()[message_id] = (*places, written.changes.entries[0].seq)
        return written

    def delete(self, message_id: str) -> Written:
        """Delete one of the local peer's messages, removing its content and its edits'."""
        places = self._own_message(message_id)
        original = self._own_entry(places[0], message_id)[2].op
        if not isinstance(original, Posted):
            raise UnknownMessage(f"message {message_id} is already deleted")
        now = self._clock.tick()
        with self._local_transaction():
            self._replace(places[0], Tombstone(message_id, original.timestamp, original.nickname, now))
            for seq in places[1:]:
                self._replace(seq, Redacted(message_id))
            entry = self._append_in_transaction(Deleted(message_id, now))
        return self._written(Changes(entries=[entry]))

    def react(self, message_id: str, emoji: str, on: bool = True) -> Written:
        """Add (or with ``on=False`` withdraw) the local peer's reaction to any message."""
        self._require_member()
        check_id(message_id, "message id")
        return self._append(Reacted(message_id, self._clock.tick(), emoji, on))

    def mark(self, kind: ReceiptKind, upto: Mapping[str, int]) -> Written:
        """Move the local peer's receipts forward to ``upto`` (author -> seq); never back."""
        with self._local_transaction():
            self._acks.advance(kind, upto, self._raw_transaction())
        return self._written(Changes())

    def undelivered(self) -> dict[str, int]:
        """Author -> its last seq held, for the other authors whose streams this replica
        holds past its own delivered receipt (a replica that closed before writing a
        receipt owes it still: delivered means stored)."""
        own, local = self._acks.own(), self._local_peer
        return {
            author: length - 1
            for author, length in self._streams.lengths.items()
            if author != local and length - 1 > own.get(receipt_key(local, ReceiptKind.DELIVERED, author), -1)
        }

    def set_title(self, title: str) -> Written:
        """Rename the conversation (admins only in groups; its creator only, if signed)."""
        self._require_admin(creator_only=True)
        meta = self.metadata()
        renamed = Metadata(meta.id, meta.kind, title, meta.created_at, meta.retention_days)
        parse_metadata(encode_metadata(renamed))
        charter = None
        if self._roster.signed_id() is not None:
            charter = self._sign(lambda signer: sign_charter(signer, renamed, self._record_time(("meta", CHARTER))))
        with self._local_transaction():
            self._meta["title"] = title
            if charter is not None:
                self._meta[CHARTER] = charter
        return self._written(Changes())

    def add_member(self, peer_id: str, nickname: str, role: Role = Role.MEMBER) -> Written:
        """Add (or re-add) a member to a group; admins only."""
        member = self._new_member(peer_id, nickname, role)
        with self._local_transaction():
            self._members[peer_id] = member
        return self._written(Changes())

    def invite(self, peer_id: str, nickname: str, inviter: str) -> Written:
        """Add a member to a group and post a ``GroupInvite`` (by ``inviter``, our nickname)
        in one transaction, so that the invitee gets the invite with the group; admins only."""
        member = self._new_member(peer_id, nickname, Role.MEMBER)
        content = GroupInvite(self.id, self.metadata().title, check_nickname(inviter))
        op = Posted(new_id(), self._clock.tick(), inviter, content)
        with self._local_transaction():
            self._members[peer_id] = member
            entry = self._append_in_transaction(op)
        self._note_own_post(op.id, entry.seq)
        return self._written(Changes(entries=[entry]), op.id)

    def _new_member(self, peer_id: str, nickname: str, role: Role) -> dict[str, Any]:
        self._require_admin(group_only=False, creator_only=True)
        if self.metadata().kind is ConversationKind.DIRECT:
            raise NotAllowed("a direct conversation cannot gain members")
        since = self._record_time(("members", check_id(peer_id, "peer id")))
        return self._record(Member(peer_id, check_nickname(nickname), role, since))

    def remove_member(self, peer_id: str) -> Written:
        """Mark a member as gone (admins, or the member itself leaving)."""
        if peer_id != self._local_peer:
            self._require_admin(group_only=False, creator_only=True)
        member = self.members().get(peer_id)
        if member is None:
            raise NotAllowed(f"{peer_id} is not a member")
        removed = peer_id != self._local_peer
        left = self._record_time(("members", peer_id))
        gone = Member(member.peer_id, member.nickname, member.role, member.joined_at, left, removed)
        with self._local_transaction():
            self._members[peer_id] = self._record(gone)
        return self._written(Changes())

    @property
    def unsettled(self) -> bool:
        """Whether this document holds something its stored log and signed records would
        not give back on a fresh load, or waits for a dependency (then only it knows what
        waits): it must stay in memory (see ``Replica.rest_idle``)."""
        self._roster.members()  # first: signed records it has not seen yet count as unstored
        return self._writing or self.waits or self._records.has_unstored

    def has_stale_records(self) -> bool:
        """True if ``restore_records`` would write something back."""
        return bool(self._stale_places())

    def restore_records(self) -> Written | None:
        """Write back the signed records the document shows older than the ones we hold
        (``Roster.hold_signed``), or no longer shows at all; None if there are none."""
        stale = self._stale_places()
        if not stale:
            return None
        roots = self._signed_roots()
        with self._local_transaction():
            for root, key in stale:
                roots[root][key] = dict(self._records.held[root, key].record)
        return self._written(Changes())

    def _stale_places(self) -> set[tuple[str, str]]:
        """Checked on every remote update: reads the document only after signed records changed."""
        self._roster.members()
        return self._records.stale(self._catch_ups.waiting is not None, self._local_peer)

    def _signed_roots(self) -> dict[str, Map[Any]]:
        return {"members": self._members, "meta": self._meta, "heads": self._heads}

    def _record(self, member: Member) -> dict[str, Any]:
        """The stored form of ``member``'s record: signed in a signed conversation."""
        conversation = self._roster.signed_id()
        if conversation is None:
            return encode_member(member)
        return self._sign(lambda signer: sign_member(signer, conversation, member))

    def _sign(self, make: Callable[[Signer], T]) -> T:
        if self._signer is None:
            raise NotAllowed("this replica has no identity key to sign records with")
        return make(self._signer)

    def _record_time(self, place: tuple[str, str]) -> int:
        """A timestamp for a new signed record at ``place``: after every record seen there,
        so that the new one holds (see ``signed``)."""
        held = self._records.held.get(place)
        if held is not None:
            self._clock.observe(held.version)
        return self._clock.tick()

    # -- internals -----------------------------------------------------------------

    def _append(self, op: Op) -> Written:
        with self._local_transaction():
            entry = self._append_in_transaction(op)
        return self._written(Changes(entries=[entry]))

    def _append_in_transaction(self, op: Op) -> StreamEntry:
        conversation = self._roster.signed_id()
        seq, prev = self._own_tip(conversation)
        anchor = None
        if conversation is not None and prev is not None and is_anchor_seq(seq):
            anchor = self._sign(lambda signer: sign_anchor(signer, conversation, seq, prev))
        self._streams.append(self._local_peer, seq, encode_op(op, seq, prev, anchor=anchor), self._raw_transaction())
        entry = StreamEntry(self._local_peer, seq, op, prev, anchor=anchor)
        if conversation is not None:
            link = link_of(entry)
            assert link is not None  # we wrote it with its prev
            self._tip = (seq, link)
            self._verifier.trust_own(self._local_peer, seq)
        return entry

    def _own_tip(self, conversation: str | None) -> tuple[int, bytes | None]:
        """The seq of our next entry, and in a signed conversation the link it chains to.

        Both come from our head, not from the document, where anyone may have put entries
        into our stream: written after those, ours would leave a seq out of the chain.
        """
        if conversation is None:
            return self._streams.length(self._local_peer), None
        seq, link = self._newest_own(conversation)
        return seq + 1, link

    def _newest_own(self, conversation: str) -> tuple[int, bytes]:
        """Seq and link of our newest entry: -1 and the genesis before the first."""
        if self._tip is not None:
            return self._tip
        held = self._records.held.get(("heads", self._local_peer))
        if held is not None:
            return held.value.seq, held.value.link
        return self._streams.length(self._local_peer) - 1, genesis(conversation, self._local_peer)

    def _seal(self) -> None:
        """End a transaction of ours with our head (see ``signed``): our newest entry, and
        our Yjs client's clock after it, so that nobody else writes under our client id."""
        conversation = self._roster.signed_id()
        if conversation is None or self._signer is None:
            return
        client = self._doc.client_id
        clock = client_clock(self._doc.get_state(), client)
        if clock == self._sealed_clock:
            return  # nothing written under our client id (an expiry only deletes)
        seq, link = self._newest_own(conversation)
        at = self._record_time(("heads", self._local_peer))
        head = sign_head(self._signer, conversation, Head(seq, link, client, clock + 1, at))
        self._heads[self._local_peer] = dict(head.record)
        self._records.hold_own_head(self._local_peer, head)
        self._sealed_clock, self._tip = clock + 1, None

    def check_clients(
        self, summary: UpdateSummary, heads: Iterable[Mapping[str, object]] = (), conversation: str | None = None
    ) -> None:
        """Raise ``UnsafeUpdate`` if the update ``summary`` describes writes under a Yjs client
        id past the clock its author signed for: under ours past what we wrote, or, in a
        signed conversation, under the one a member's newest head names (see ``signed``),
        unless the update carries a newer head of that member covering it or naming
        another client id (the member moved on: nobody writes under the old one again).
        ``heads`` came beside the update (see ``held_heads``); valid ones count as carried,
        and the update's apply holds the newest of them, as it does those in the update.
        ``conversation`` is the id the update is for, if known: a document that holds
        nothing yet (the update brings it all) does not know it, and would drop the heads
        beside a catch-up that needs them."""
        signed_id = self._roster.signed_id()
        if signed_id is None and conversation is not None and is_signed(conversation):
            signed_id = conversation  # a document that holds nothing yet
        carried: dict[str, list[Head]] = {}
        if signed_id is not None:
            carried = self._records.check_carried(signed_id, itertools.chain(map(decode_any, summary.records), heads))
        bounds = {self.client_id: (self._local_peer, client_clock(self.state_vector(), self.client_id), 0)}
        for author, held in self.held_heads().items():
            if held.value.client != self.client_id:
                bounds[held.value.client] = (author, held.value.clock, held.value.at)
        beyond = [(client, end) for client, end in summary.ends.items() if client in bounds and end > bounds[client][1]]
        if not beyond:
            return
        for client, end in beyond:
            author, clock, at = bounds[client]
            newer = carried.get(author, []) if author != self._local_peer else []
            if not any(h.clock >= end if h.client == client else h.at > at for h in newer):
                raise UnsafeUpdate(f"structs under {author}'s Yjs client id {client} past clock {clock}, unsigned")

    def _replace(self, seq: int, op: Tombstone | Redacted) -> None:
        """Overwrite one of our entries in place; in a signed conversation the new one
        keeps the old one's place in the chain (its ``prev``, and its commitment sealed)."""
        array, index, original = self._own_entry(seq, op.id if isinstance(op, Tombstone) else op.target)
        chained: tuple[bytes | None, bytes | None, bytes | None] = (None, None, None)
        if self._roster.signed_id() is not None:
            chained = (original.prev, commitment(original), original.anchor)
        del array[index]
        array.insert(index, encode_op(op, seq, *chained))

    def _own_entry(self, seq: int, message_id: str) -> tuple[Array[Any], int, StreamEntry]:
        """Our entry at ``seq`` (a post of ``message_id`` or an edit of it): its bucket, its
        position there and itself. The position is the seq's unless someone else put
        entries into our bucket or took some out."""
        try:
            return self._streams.find(self._local_peer, seq, lambda entry: _concerns(entry.op, message_id))
        except KeyError:
            raise UnknownMessage(f"no entry of ours at seq {seq} for message {message_id}") from None

    @contextlib.contextmanager
    def _local_transaction(self) -> Iterator[Transaction]:
        """A transaction of our own: observers skip it (``changes`` says what it did). In
        a signed conversation it ends with our head, if it wrote anything (``_seal``)."""
        self._writing = True  # cleared when ``_written`` collects the update
        with self._doc.transaction() as transaction:
            yield transaction
            self._seal()

    def _raw_transaction(self) -> Any:
        """The running transaction as yrs sees it, for inserts that skip pycrdt's wrappers
        (each opens a nested transaction: together a fifth of a live message's cost)."""
        running = self._doc._txn  # set: we are inside _local_transaction
        assert running is not None
        return running._txn

    def _written(self, changes: Changes, message_id: str | None = None) -> Written:
        update = self._remember_written()
        changes.receipts.extend(self._acks.take_own())
        self._writing = False
        self._roster.members()  # see ``Roster.hold_signed``: every signed record must be seen as it comes
        return Written(update, self._drain(changes), message_id)

    def _remember_written(self) -> bytes:
        """The update of our last write, taken from the outbox and kept for catch-ups."""
        update = merge_updates(*self._outbox) if len(self._outbox) > 1 else b"".join(self._outbox)
        self._outbox.clear()
        if update:
            state = self.state_vector()
            # A write of ours holds structs of our client alone, up to its clock now (none if
            # it only deleted: the update then starts with a count of zero clients). Reading
            # them out of the update cost a seventh of a send.
            client = self._doc.client_id
            ends = {client: client_clock(state, client)} if update[0] else {}
            self._catch_ups.add(update, ends, state)
        return update

    def _drain(self, changes: Changes) -> Changes:
        changes.receipts.extend(self._acks.take_remote())
        changes.metadata_changed = self._roster.take_changed() or changes.metadata_changed
        return changes

    def _on_update(self, event: Any) -> None:
        # yrs tells every transaction that changed the document, at its commit.
        self._outbox.append(event.update)
        self._state = None

    def _on_acks(self, event: Any) -> None:
        if not self._writing:  # our own receipts: ``Acks.advance`` noted them already
            self._acks.note(event)

    def _on_heads(self, event: Any) -> None:
        if self._writing:
            return  # our own head: ``_seal`` holds it already
        self._records.heads_moved.update(event.keys)

    def _on_meta(self, event: Any) -> None:
        self._roster.note_change()

    def _require_member(self) -> None:
        if not self.is_member(self._local_peer):
            raise NotAllowed("the local peer is not a member of this conversation")

    def _require_admin(self, group_only: bool = True, creator_only: bool = False) -> None:
        """Raise ``NotAllowed`` unless the local peer is an admin (in a group only, with
        ``group_only``); with ``creator_only``, in a signed conversation, its creator."""
        self._require_member()
        if creator_only and is_signed(self.id):
            if self._signer is None or not is_creator_key(self.id, self._signer.public_key):
                raise NotAllowed("only the creator of a signed conversation may do this")
            return
        if group_only and self.metadata().kind is ConversationKind.DIRECT:
            return
        if self.members()[self._local_peer].role is not Role.ADMIN:
            raise NotAllowed("only an admin may do this")

    def _own_message(self, message_id: str) -> tuple[int, ...]:
        self._require_member()
        places = self._places().get(message_id)
        if places is None:
            raise UnknownMessage(f"no message {message_id} by the local peer")
        return places

    def _note_own_post(self, message_id: str, seq: int) -> None:
        """Remember where a new post of ours stands, if ``_places`` was built: otherwise its
        first use reads it from the document, this post included (building it just to add
        one post made the first message sent after a load read the whole stream)."""
        if self._own_places is not None:
            self._own_places[message_id] = (seq,)

    def _places(self) -> dict[str, tuple[int, ...]]:
        """Where each of the local peer's posts and their edits stand (built on first use)."""
        if self._own_places is None:
            self._own_places = {}
            for number in range(self._streams.length(self._local_peer) // BUCKET_SIZE + 1):
                for entry in self._streams.read_bucket(self._local_peer, number, 0):
                    if isinstance(entry.op, Posted | Tombstone):
                        self._own_places[entry.op.id] = (entry.seq,)
                    elif isinstance(entry.op, Edited | Redacted) and entry.op.target in self._own_places:
                        self._own_places[entry.op.target] += (entry.seq,)
        return self._own_places


def _weakly(method: Callable[[Any], None]) -> Callable[[Any], None]:
    """A callback for yrs that does not keep its object alive. yrs holds callbacks where
    Python's garbage collector cannot see them, so a bound method there would keep its
    conversation, and the document inside, alive forever."""
    ref = weakref.WeakMethod(method)

    def call(event: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(event)

    return call


def _apply(doc: Doc[Any], update: bytes) -> None:
    try:
        doc.apply_update(update)
    except (ValueError, RuntimeError) as exc:  # RuntimeError: e.g. a parent id naming a non-type item
        raise SchemaError(f"malformed Yjs update: {exc}") from exc
    except BaseException as exc:
        # yrs panics surface as pyo3's PanicException, a BaseException that cannot be
        # imported: match it by name so one crafted update cannot kill the process.
        if type(exc).__name__ == "PanicException":
            raise SchemaError(f"Yjs update rejected by yrs: {exc}") from None
        raise


def _concerns(op: Op, message_id: str) -> bool:
    """True if ``op`` is the post of ``message_id`` or an edit of it."""
    return (isinstance(op, Posted) and op.id == message_id) or (isinstance(op, Edited) and op.target == message_id)


def _timestamp(op: Op) -> int:
    """The op's hybrid timestamp; a redacted edit keeps none, so it counts as zero."""
    return 0 if isinstance(op, Redacted) else op.timestamp
