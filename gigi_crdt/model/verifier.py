"""Which entries of a signed conversation's streams their authors really wrote.

Per author, a ``Chain`` (see ``chain``) walked from the heads the replica holds (see
``records``): entries it reaches are shown and indexed, the others wait.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .chain import AnchorCheck, Chain, verified_entries
from .ops import Redacted, StreamEntry, Tombstone
from .records import SignedRecords
from .signed import Head, Signed, check_anchor, head_key


class StreamVerifier:
    """The chains of one replica of a signed conversation.

    Entries the document held when it was loaded from our store (``loaded``: author ->
    stream length) were verified before they were stored, but for those the index lacks
    (``since``).
    """

    def __init__(self, records: SignedRecords, loaded: Mapping[str, int]) -> None:
        self._records = records
        self._loaded = dict(loaded)
        self._chains: dict[str, Chain] = {}

    def unverified(self, author: str, seq: int) -> bool:
        """True if a chain of ``author``'s has yet to verify its entry at ``seq``."""
        chain = self._chains.get(author)
        return chain is not None and not chain.is_verified(seq)

    def trust_own(self, author: str, seq: int) -> None:
        """Our own entry at ``seq``, just written."""
        self._chain(author).trust(seq, seq + 1)

    def verify(
        self, conversation: str, found: Mapping[str, Iterable[StreamEntry]], complete_upto: dict[str, int]
    ) -> dict[str, list[StreamEntry]]:
        """Of the entries ``found``, and those that waited, the ones a chain from their
        author's heads now reaches; ``complete_upto`` learns where an author's stream has
        entries still waiting, so that the index does not count past them. The records'
        heads must be held first (``SignedRecords.hold_heads``)."""
        verified: dict[str, list[StreamEntry]] = {}
        for author in found.keys() | self._records.heads_moved:
            chain = self._chain(author)
            chain.add(found.get(author, ()))
            entries = self._walk(conversation, author, chain)
            if entries:
                verified[author] = entries
            lowest = chain.lowest_waiting()
            if lowest is not None:
                complete_upto[author] = lowest
        self._records.heads_moved.clear()
        return verified

    def add_redactions(self, found: dict[str, list[StreamEntry]], refills: Iterable[StreamEntry]) -> None:
        """Add to ``found`` the redactions among ``refills`` (entries that filled holes)
        where a verified entry was: a chain verifies a seq once (``Chain.add`` takes no
        second candidate), but the index dropped the message when its entry vanished
        (``Changes.vanished``) and needs the tombstone to show it again."""
        for entry in refills:
            chain = self._chains.get(entry.author)
            if isinstance(entry.op, Tombstone | Redacted) and chain is not None and chain.is_verified(entry.seq):
                entries = found.setdefault(entry.author, [])
                if entry not in entries:
                    entries.append(entry)
                    entries.sort(key=lambda e: e.seq)

    def since(
        self, conversation: str, author: str, start: int, entries: Iterable[StreamEntry]
    ) -> tuple[list[StreamEntry], int | None]:
        """Of ``author``'s ``entries`` from seq ``start`` on (which the index lacks), those
        verified, and the lowest seq still waiting, if any."""
        chain = self._chain(author)
        chain.distrust(start)
        chain.add(entries)
        return self._walk(conversation, author, chain), chain.lowest_waiting()

    def verified(self, conversation: str, author: str, entries: Iterable[StreamEntry]) -> list[StreamEntry]:
        """Of all of ``author``'s ``entries``, those a chain from its heads reaches, with a
        chain of their own (for export and index rebuilds)."""
        heads = self._records.heads_of(author)
        if not heads:
            return []
        starts = [(head.value.seq, head.value.link) for head in heads]
        return verified_entries(entries, starts, _anchor_check(conversation, author, heads[-1]))

    def _walk(self, conversation: str, author: str, chain: Chain) -> list[StreamEntry]:
        heads = self._records.heads_of(author)
        if not heads:
            return chain.verify()
        for head in heads:
            chain.expect(head.value.seq, head.value.link)
        return chain.verify(_anchor_check(conversation, author, heads[-1]))

    def _chain(self, author: str) -> Chain:
        chain = self._chains.get(author)
        if chain is None:
            chain = self._chains[author] = Chain()
            chain.trust(0, self._loaded.get(author, 0))
        return chain


def _anchor_check(conversation: str, author: str, head: Signed[Head]) -> AnchorCheck:
    key = head_key(head)

    def check(entry: StreamEntry) -> bool:
        # ``Chain`` asks only of entries with both
        assert entry.prev is not None
        assert entry.anchor is not None
        return check_anchor(conversation, author, key, entry.seq, entry.prev, entry.anchor)

    return check
