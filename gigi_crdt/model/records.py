"""The signed records a signed conversation holds: member records, the charter, heads.

A document shows whatever record was written last at a place; a replica must hold the
newest *valid* one it has seen (see ``signed``). ``SignedRecords`` keeps, per place
((root, key)), the record that holds, and notes where the document shows something
else: an older or invalid record (stale: written back by ``Conversation.restore_records``)
or none (vanished: yrs applies an overwrite's delete at once while its insert may wait
for a dependency). It also keeps the heads that came with or beside an update without
the document showing them (carried), and the heads checked lately, so that a signature
is checked once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from pycrdt import Map

from ..errors import SchemaError
from .metadata import Member
from .signed import CHARTER, Head, Signed, check_charter, check_head, check_member

log = logging.getLogger(__name__)

CHECKED_HEADS_KEPT = 64  # valid heads remembered by signature, so that each is checked once

Place = tuple[str, str]  # (root, key) of a signed record
CheckedHeads = dict[tuple[Place, str], Signed[Head]]  # (place, signature) -> head


class SignedRecords:
    """The signed records one replica of a signed conversation holds."""

    def __init__(self) -> None:
        self.held: dict[Place, Signed[Any]] = {}
        """Per place, the newest valid record seen there."""
        self.heads_moved: set[str] = set()
        """Authors whose head the document may show anew (``hold_heads`` reads them)."""
        self._stale: set[Place] = set()
        self._vanished: set[Place] = set()  # held, but the document shows no record there
        self._unstored: set[Place] = set()  # held since ``take_unstored``
        # Per author, a valid head newer than the one held that came with an update (in it,
        # or beside it) but that the document does not show (see ``held_heads``); stored
        # beside the document as ("carried", author), since it may never show there.
        self._carried: dict[str, Signed[Head]] = {}
        self._checked: CheckedHeads = {}  # the heads of the update being applied (``check_carried``)
        self._checked_lately: dict[str, Signed[Head]] = {}  # signature -> head (``check_carried``)

    # -- what the document shows ---------------------------------------------------

    def hold_shown(self, conversation: str, shown: Mapping[Place, object]) -> None:
        """Hold, per place, the newest valid record among those held and those the
        document ``shown`` (all its signed records)."""
        for place, raw in shown.items():
            self.hold_newest(conversation, place, raw)
        self._vanished = self.held.keys() - shown.keys()

    def hold_newest(self, conversation: str, place: Place, raw: object) -> None:
        """Hold ``raw``, shown at ``place``, if it is valid and newer than the record held;
        otherwise note the place as stale."""
        held = self.held.get(place)
        if held is not None and raw == held.record:
            self._stale.discard(place)  # shown again (someone wrote it back)
            return
        try:
            signed: Signed[Any] | None = self._checked.get((place, _signature_of(raw)))
            if signed is None or raw != signed.record:  # not checked with the update (see ``check_carried``)
                signed = _check_signed(conversation, place, raw)
        except SchemaError as exc:
            log.warning("conversation %s: signed record ignored: %s", conversation, exc)
            signed = None
        if signed is not None and signed.supersedes(held):
            self.held[place] = signed
            self._unstored.add(place)
            if raw == signed.record:
                self._stale.discard(place)
            else:  # with fields no signature covers: write it back without them
                self._stale.add(place)
        elif held is not None:
            self._stale.add(place)

    def hold_own_head(self, author: str, head: Signed[Head]) -> None:
        """Hold the head the local peer (``author``) just wrote."""
        self.held["heads", author] = head
        self._unstored.add(("heads", author))

    def members(self) -> dict[str, Member]:
        """The member records held, by peer id."""
        return {key: held.value for (root, key), held in self.held.items() if root == "members"}

    def stale(self, waiting: bool, local_peer: str) -> set[Place]:
        """The places where the document shows an older record than the one held, or none
        (unless something ``waiting`` may still bring it); heads only of ``local_peer``."""
        # A record can vanish for a while when its overwrite waits for a dependency (see
        # ``Roster.members``); with nothing waiting, it was deleted.
        stale = self._stale | self._vanished if not waiting else self._stale
        # Only its author writes a head back. A copy by anyone else races with the author's
        # next head and, where Yjs orders the copy last, deletes that head from every
        # document: the one record covering the author's latest structs under its client id,
        # which peers then refuse (``Conversation.check_clients``) until a newer head comes.
        return {place for place in stale if place[0] != "heads" or place[1] == local_peer}

    # -- what is stored beside the document ----------------------------------------

    @property
    def has_unstored(self) -> bool:
        """Whether records came to hold since ``take_unstored``."""
        return bool(self._unstored)

    def take_unstored(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The records that came to hold since the last call, as (root, key, record)."""
        places, self._unstored = self._unstored, set()
        held = {
            place: self._carried.get(place[1]) if place[0] == "carried" else self.held.get(place) for place in places
        }
        return [(root, key, signed.record) for (root, key), signed in held.items() if signed is not None]

    def hold_stored(self, conversation: str, stored: Iterable[tuple[str, str, object]]) -> None:
        """Hold the records stored beside the document (``take_unstored`` of before)."""
        for root, key, raw in stored:
            if root == "carried":
                self._carry_stored(conversation, key, raw)
                continue
            self.hold_newest(conversation, (root, key), raw)
            held = self.held.get((root, key))
            if held is not None and held.record == raw:
                self._unstored.discard((root, key))  # stored already

    def _carry_stored(self, conversation: str, author: str, raw: object) -> None:
        try:
            head = check_head(conversation, author, raw)
        except SchemaError as exc:
            log.warning("conversation %s: stored head ignored: %s", conversation, exc)
            return
        if head.supersedes(self._carried.get(author)):
            self._carried[author] = head

    # -- heads ---------------------------------------------------------------------

    def held_heads(self) -> dict[str, Signed[Head]]:
        """The newest valid head seen of each author."""
        authors = [author for root, author in self.held if root == "heads"] + list(self._carried)
        return {author: self.heads_of(author)[-1] for author in dict.fromkeys(authors)}

    def heads_of(self, author: str) -> list[Signed[Head]]:
        """The head held of ``author`` and, after it, a newer one that came with an update
        but that the document does not show: a walk starts from each (the newer one's
        entries may not have come yet)."""
        heads = [head for head in (self.held.get(("heads", author)),) if head is not None]
        carried = self._carried.get(author)
        if carried is not None:
            if carried.supersedes(heads[0] if heads else None):
                heads.append(carried)
            else:
                del self._carried[author]  # the document shows it, or a newer one, now
        return heads

    def check_carried(self, conversation: str, records: Iterable[object]) -> dict[str, list[Head]]:
        """Check the heads among ``records`` (an update's, and those beside it) and keep the
        valid ones for ``hold_heads`` (and ``hold_newest``, so that each is checked once);
        the valid heads by author. A head checked lately is not checked again: updates carry
        the same heads over and over (duplicates, catch-ups resent until they land, structs
        that wait), and a signature check costs more than all the rest of a small update."""
        checked: CheckedHeads = {}
        for record in records:
            author = record.get("by") if isinstance(record, Mapping) else None
            if not isinstance(author, str):
                continue
            signature = _signature_of(record)
            head = self._checked_lately.get(signature)
            if head is None or head.record != record:
                try:
                    head = check_head(conversation, author, record)
                except SchemaError:
                    continue
                if len(self._checked_lately) >= CHECKED_HEADS_KEPT:
                    del self._checked_lately[next(iter(self._checked_lately))]  # the oldest
                self._checked_lately[signature] = head
            checked[("heads", author), signature] = head
        self._checked = checked
        carried: dict[str, list[Head]] = {}
        for ((_, author), _), head in checked.items():
            carried.setdefault(author, []).append(head.value)
        return carried

    def hold_heads(self, conversation: str, shown: Map[Any]) -> None:
        """Hold the heads that changed among those the document ``shown`` (``hold_shown``
        does it for every signed record, but only after membership changes: heads change
        with every entry), and the newest heads the update carried, shown or not (its own
        delete set may hide them)."""
        for (place, _), head in self._checked.items():
            author = place[1]
            if head.supersedes(self.held.get(place)) and head.supersedes(self._carried.get(author)):
                self._carried[author] = head
                self._unstored.add(("carried", author))
                self.heads_moved.add(author)
        for author in self.heads_moved:
            place = ("heads", author)
            raw = shown.get(author)
            if raw is not None:
                self._vanished.discard(place)
                self.hold_newest(conversation, place, raw)
            elif place in self.held:
                self._vanished.add(place)
        self._checked = {}


def _check_signed(conversation: str, place: Place, raw: object) -> Signed[Any]:
    """The signed record ``raw`` found at ``place``, checked; ``SchemaError`` if it is not
    valid, or no signed record belongs there."""
    root, key = place
    if root == "members":
        return check_member(conversation, key, raw)
    if place == ("meta", CHARTER):
        return check_charter(conversation, raw)
    if root == "heads":
        return check_head(conversation, key, raw)
    raise SchemaError(f"no signed record belongs at {root}[{key!r}]")


def _signature_of(raw: object) -> str:
    signature = raw.get("sig") if isinstance(raw, dict) else None
    return signature if isinstance(signature, str) else ""
