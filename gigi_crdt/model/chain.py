"""Signed streams: which entries of an author's stream the author really wrote.

In a signed conversation (see ``signed``) each author chains its entries by hashes and
signs the newest one, so a member writing into another's stream (under any Yjs client id)
cannot make its entries pass for that author's:

- an entry's **commitment** is the first 16 bytes of SHA-256 of its op's canonical form
  (``ops.canonical_op``); an entry that replaced an op in place (a deletion's
  ``Tombstone`` or ``Redacted``) carries the commitment of the op it replaced (``sealed``);
- its **link** is the first 16 bytes of SHA-256(prev || commitment), where ``prev`` (stored
  in the entry) is the link of the author's entry before it, or for seq 0 the
  ``genesis`` of the author's stream in that conversation;
- the author's **head** (``heads[author]``, ``signed.Head``) names its newest entry's seq
  and link, signed; the author rewrites it at the end of each of its transactions;
- every ``ANCHOR_EVERY``-th entry (seq a multiple of it, but not 0) carries an **anchor**:
  the author's signature of its ``prev``, i.e. of the link of the entry before it.

A reader takes an author's entries as the author's only once a chain of links leads to
them from a head the author signed: one signature check per author per batch, one hash
per entry. Entries that no chain reaches (forged ones, or genuine ones whose head has not
come yet) wait in a ``Chain``: they are not shown and not indexed. A forged entry cannot
take a real one's place either: the walk picks, at each seq, the one entry whose link is
the expected one.

Where the real entry is missing (a Yjs struct forged under the author's client id can
take its place for good on a peer that took the forgery first), the walk stops; it goes
on from the next anchor below, whose signature is checked only then. So such a forgery
hides the real entries it replaced and, from peers that had not verified them before,
fewer than ``ANCHOR_EVERY`` below them.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import Final

from .ops import LINK_BYTES, StreamEntry, canonical_op

_GENESIS_DOMAIN: Final = b"gigi-crdt stream v1\x00"
ANCHOR_EVERY: Final = 16

AnchorCheck = Callable[[StreamEntry], bool]
"""Whether an entry's ``anchor`` is its author's signature of its ``prev``."""


def is_anchor_seq(seq: int) -> bool:
    """True if the entry at ``seq`` carries an anchor."""
    return seq > 0 and seq % ANCHOR_EVERY == 0


def genesis(conversation: str, author: str) -> bytes:
    """The ``prev`` of an author's first entry in ``conversation``."""
    material = _GENESIS_DOMAIN + conversation.encode("utf-8") + b"\x00" + author.encode("utf-8")
    return hashlib.sha256(material).digest()[:LINK_BYTES]


def commitment(entry: StreamEntry) -> bytes:
    """What an entry commits to: its op, or the op it replaced (``sealed``)."""
    if entry.sealed is not None:
        return entry.sealed
    return hashlib.sha256(canonical_op(entry.op, entry.seq)).digest()[:LINK_BYTES]


def link_of(entry: StreamEntry) -> bytes | None:
    """The entry's link, or None if it carries no ``prev`` (it cannot be in a chain)."""
    if entry.prev is None:
        return None
    return hashlib.sha256(entry.prev + commitment(entry)).digest()[:LINK_BYTES]


class Chain:
    """One author's stream as a reader verifies it: the seqs taken as the author's, the
    entries that wait, and the frontier: seqs whose genuine entry's link is known (from a
    head, or from the ``prev`` of the verified entry above) but which is not verified yet.
    """

    def __init__(self) -> None:
        self._verified = _Ranges()
        self._waiting: dict[int, list[StreamEntry]] = {}
        self._frontier: dict[int, bytes] = {}
        self._anchors: dict[int, list[StreamEntry]] = {}  # waiting entries with an anchor not checked yet

    def trust(self, start: int, end: int) -> None:
        """Take seqs ``start <= seq < end`` as verified (read back from our own store)."""
        if end > start:
            self._verified.add(start, end - 1)

    def distrust(self, start: int) -> None:
        """Forget that seqs from ``start`` on were verified (the index lacks them)."""
        self._verified.cut(start)

    def is_verified(self, seq: int) -> bool:
        """True if the author's entry at ``seq`` was verified (or trusted)."""
        return seq in self._verified

    def add(self, entries: Iterable[StreamEntry]) -> None:
        """Entries read from the document, to verify."""
        for entry in entries:
            if entry.seq not in self._verified:
                self._waiting.setdefault(entry.seq, []).append(entry)
                if entry.anchor is not None and entry.prev is not None and is_anchor_seq(entry.seq):
                    self._anchors.setdefault(entry.seq, []).append(entry)

    def expect(self, seq: int, link: bytes) -> None:
        """The author's head says its entry at ``seq`` has ``link`` (-1: it has none)."""
        if seq >= 0 and seq not in self._verified:
            self._frontier[seq] = link

    def expects(self) -> bool:
        """True if some seq's expected link is known (from a head or a verified entry)."""
        return bool(self._frontier)

    def verify(self, check_anchor: AnchorCheck | None = None) -> list[StreamEntry]:
        """The waiting entries a chain now reaches, in seq order; they stop waiting.

        With ``check_anchor`` (which needs the author's key, known from its head), the
        anchors of entries still waiting after the walk are checked (each once), and the
        walk goes on from the good ones.
        """
        found = self._walk()
        while check_anchor is not None and self._resume(check_anchor):
            found += self._walk()
        found.sort(key=lambda entry: entry.seq)
        return found

    def _resume(self, check_anchor: AnchorCheck) -> bool:
        """Start walks at anchors below where the last ones stopped; True if any."""
        resumed = False
        for seq in sorted(self._anchors, reverse=True):
            below = seq - 1
            if seq in self._verified or below in self._verified:
                del self._anchors[seq]  # the walk reached it, or it has nothing to add
                continue
            if below in self._frontier:
                continue  # already known: keep it for when the walk gets stuck lower
            for entry in self._anchors.pop(seq):
                if check_anchor(entry):
                    assert entry.prev is not None  # ``add`` keeps only entries with one
                    self._frontier[below] = entry.prev
                    resumed = True
                    break
        return resumed

    def _walk(self) -> list[StreamEntry]:
        found: list[StreamEntry] = []
        for start in sorted(self._frontier, reverse=True):
            expected = self._frontier.pop(start, None)
            # Down to the verified run below (or seq 0). Nothing else changes the verified
            # seqs during this walk, so its stop is found once, not per entry (a catch-up
            # walks 10^5 entries).
            floor = self._verified.highest_upto(start)
            seq = start
            while expected is not None and seq > floor:
                match = None
                for entry in self._waiting.get(seq, ()):
                    if link_of(entry) == expected:
                        match = entry
                        break
                if match is None:
                    self._frontier[seq] = expected
                    break
                del self._waiting[seq]  # the others there are forgeries: the seq is taken
                found.append(match)
                expected, seq = match.prev, seq - 1
            if seq < start:
                self._verified.add(seq + 1, start)
        return found

    def lowest_waiting(self) -> int | None:
        """The lowest seq with an entry present but not verified, if any."""
        return min(self._waiting) if self._waiting else None


def verified_entries(
    entries: Iterable[StreamEntry], heads: Iterable[tuple[int, bytes]], check_anchor: AnchorCheck | None = None
) -> list[StreamEntry]:
    """Of one author's ``entries``, those a chain from one of its ``heads`` (seq, link) reaches."""
    chain = Chain()
    for seq, link in heads:
        chain.expect(seq, link)
    if not chain.expects():
        return []
    chain.add(entries)
    return chain.verify(check_anchor)


class _Ranges:
    """A set of non-negative ints kept as sorted, disjoint, inclusive ranges: a stream's
    verified seqs are a few long runs."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __contains__(self, value: int) -> bool:
        index = bisect_right(self._starts, value) - 1
        return index >= 0 and value <= self._ends[index]

    def highest_upto(self, value: int) -> int:
        """The highest member that is at most ``value``; -1 if none."""
        index = bisect_right(self._starts, value) - 1
        return -1 if index < 0 else min(value, self._ends[index])

    def add(self, start: int, end: int) -> None:
        first = bisect_right(self._ends, start - 2)  # ranges ending before start - 1 stay apart
        last = bisect_right(self._starts, end + 1)  # ranges starting after end + 1 stay apart
        if first < last:
            start, end = min(start, self._starts[first]), max(end, self._ends[last - 1])
        self._starts[first:last] = [start]
        self._ends[first:last] = [end]

    def cut(self, start: int) -> None:
        """Drop every value from ``start`` on."""
        index = bisect_right(self._starts, start - 1)
        del self._starts[index:], self._ends[index:]
        if self._ends and self._ends[-1] >= start:
            self._ends[-1] = start - 1
