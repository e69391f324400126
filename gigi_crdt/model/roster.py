"""What a conversation document says of itself: its metadata and its members.

Read once per change, and kept. In a signed conversation (see ``signed``) they are the
signed records a replica holds (``records``), not what the document shows: the charter,
and each member's newest valid record.
"""

from __future__ import annotations

import logging
from typing import Any

from pycrdt import Map

from ..errors import SchemaError
from .metadata import Member, Metadata, parse_member, parse_metadata
from .records import Place, SignedRecords
from .signed import CHARTER, is_signed

log = logging.getLogger(__name__)


class Roster:
    """The metadata and members of one conversation document (its ``meta`` and
    ``members`` roots; ``heads`` too, whose records a signed conversation holds)."""

    def __init__(self, meta: Map[Any], members: Map[Any], heads: Map[Any], records: SignedRecords) -> None:
        self._meta = meta
        self._members = members
        self._heads = heads
        self._records = records
        self._member_cache: dict[str, Member] | None = None
        self._member_seen: dict[str, Member] = {}
        self._metadata_cache: Metadata | None = None
        self._signed_cache: tuple[str | None] | None = None  # (id,) once read
        self._changed = False  # a remote transaction changed metadata or members
        self.members()  # remembered from the start: see ``members``

    def metadata(self) -> Metadata:
        """Kind, title, creation time and retention; ``SchemaError`` if the document has none."""
        if self._metadata_cache is None:
            conversation = self.signed_id()
            if conversation is None:
                self._metadata_cache = parse_metadata(self._meta.to_py() or {})
            else:
                self.hold_signed(conversation)
                charter = self._records.held.get(("meta", CHARTER))
                if charter is None:
                    raise SchemaError(f"signed conversation {conversation} has no valid charter")
                if charter.value.id != conversation:  # someone rewrote the id: no charter names it
                    raise SchemaError(f"the document's id changed from {charter.value.id} to {conversation}")
                self._metadata_cache = charter.value
        return self._metadata_cache

    def members(self) -> dict[str, Member]:
        """Everyone who is or was a member, by peer id (kept until membership changes: do
        not mutate); malformed records are skipped."""
        if self._member_cache is None:
            previous = self._member_seen
            conversation = self.signed_id()
            if conversation is not None:
                self.hold_signed(conversation)
                self._member_cache = self._records.members()
            else:
                self._member_cache = {}
                for peer_id, raw in self._members.items():
                    try:
                        self._member_cache[peer_id] = parse_member(peer_id, raw)
                    except SchemaError as exc:
                        log.warning("conversation member %r skipped: %s", peer_id, exc)
            # Member records are only ever overwritten, never deleted, yet a key can vanish
            # for a while: an overwrite is an insert plus a delete of the old value, and yrs
            # applies the delete at once when it comes in another peer's update (whose
            # transaction picked it up) while the insert still waits for a dependency. Until
            # the new record shows, the last one seen is the truth: forgetting the member
            # would refuse the very peer whose updates hold the missing insert.
            for peer_id, member in previous.items():
                self._member_cache.setdefault(peer_id, member)
            self._member_seen = self._member_cache
        return self._member_cache

    def signed_id(self) -> str | None:
        """The conversation's id if it is signed (see ``signed``), else None."""
        # Read on every write, twice: through pycrdt a map read costs three transactions.
        if self._signed_cache is None:
            conversation = self._meta.get("id")
            self._signed_cache = (conversation if isinstance(conversation, str) and is_signed(conversation) else None,)
        return self._signed_cache[0]

    def forget(self) -> None:
        """Drop what was read: the document may show other metadata and members now."""
        self._member_cache = self._metadata_cache = self._signed_cache = None

    def note_change(self) -> None:
        """A remote transaction changed metadata or members (yrs's event on either root)."""
        self._changed = True
        self.forget()

    def take_changed(self) -> bool:
        """Whether ``note_change`` was called since the last call."""
        changed, self._changed = self._changed, False
        return changed

    def moved(self) -> bool:
        """Re-read members and metadata, which yrs may also have changed without an event;
        True if they differ from what was last reported."""
        members, metadata = self._member_cache, self._metadata_cache
        self.forget()
        try:
            moved = members is not None and self.members() != members
            return moved or (metadata is not None and self.metadata() != metadata)
        except SchemaError:
            return False

    def hold_signed(self, conversation: str) -> None:
        """Hold, per member and for the charter, the newest valid signed record seen.

        A record the document shows but which is not valid, or older than one seen before
        (a replay), is ignored, and its place is noted as stale:
        ``Conversation.restore_records`` writes the newer record back, so that peers that
        never saw it learn it. Only records seen are held: this runs after every change
        (local writes, remote updates), since the next change may overwrite a record in
        the document.
        """
        shown: dict[Place, object] = {("members", peer_id): raw for peer_id, raw in self._members.items()}
        shown.update((("heads", author), raw) for author, raw in self._heads.items())
        charter = self._meta.get(CHARTER)
        if charter is not None:
            shown["meta", CHARTER] = charter
        self._records.hold_shown(conversation, shown)
