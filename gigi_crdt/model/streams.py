"""The authors' streams of a conversation document, and what remote transactions did there.

The ``streams`` root maps ``"<author>/<bucket>"`` to an Array of at most ``BUCKET_SIZE``
ops as JSON text (see ``ops``). Each author appends to its own buckets only, so a seq is
a stable place: ``Streams`` reads entries by seq, appends the local peer's, and keeps
per author how much of its stream the document holds. Remote transactions are noted
from yrs's deep events as they commit (``note``) and read out afterwards
(``take_appended``, ``take_vanished``), so that finding what an update brought costs one
read of what changed, not a scan of history.

Whether entries are verified (signed conversations: see ``chain``) is not known here;
``Conversation`` asks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pycrdt import Array, Doc, Map

from ..errors import SchemaError
from .ops import BUCKET_SIZE, StreamEntry, bucket_key, parse_entry, split_bucket_key

log = logging.getLogger(__name__)

Unverified = Callable[[str, int], bool]  # (author, seq) -> whether a chain has yet to verify it


def place_of(key: str) -> tuple[str, int] | None:
    """(author, bucket) of a bucket key; ``None`` if the key is not one."""
    try:
        return split_bucket_key(key)
    except SchemaError:
        return None


class Streams:
    """The ``streams`` root of one conversation document."""

    def __init__(self, doc: Doc[Any]) -> None:
        self._doc = doc
        self.root: Map[Any] = doc.get("streams", type=Map)
        self.lengths = self._stream_lengths()
        """Author -> how far its stream reaches in the document (its next seq)."""
        # author -> seqs below its length whose entry is missing: a replacement (a
        # deletion's tombstone) is a delete plus an insert, and the insert may wait for a
        # dependency after the delete applied. Reported when they show up.
        self.holes: dict[str, set[int]] = self._find_holes()
        self.refills: list[StreamEntry] = []
        """Entries that filled holes, since the owner last cleared this."""
        self._appended: list[tuple[str, int, list[Any] | None]] = []
        self._shrunk: set[str] = set()  # buckets a remote update deleted entries of
        self._own_bucket: tuple[str, Array[Any]] | None = None
        self._bucket_places: dict[str, tuple[str, int]] = {}  # validated bucket keys
        self._buckets_seen: dict[str, tuple[int, Array[Any]]] = {}  # author -> its current bucket

    # -- reading -------------------------------------------------------------------

    def length(self, author: str) -> int:
        """How many entries of ``author``'s stream the document holds."""
        return self.lengths.get(author, 0)

    def buckets(self) -> dict[str, list[int]]:
        """Author -> the numbers of its buckets, in order."""
        buckets: dict[str, list[int]] = {}
        for key in self.root.keys():
            place = place_of(key)
            if place is None:
                log.warning("stream %r skipped: not a bucket key", key)
                continue
            buckets.setdefault(place[0], []).append(place[1])
        return {author: sorted(numbers) for author, numbers in buckets.items()}

    def read_bucket(self, author: str, bucket: int, start: int, limit: int | None = None) -> Iterator[StreamEntry]:
        """The valid entries of one bucket from position ``start`` (at most ``limit``)."""
        array = self.root.get(bucket_key(author, bucket))
        if not isinstance(array, Array):
            return
        if len(array) > BUCKET_SIZE:
            log.warning("stream bucket %s/%d is over-long; extra entries ignored", author, bucket)
        end = min(len(array), BUCKET_SIZE) if limit is None else min(len(array), BUCKET_SIZE, start + limit)
        if end - start > 8:
            # One JSON round trip through Rust beats converting a long run item by item.
            raw_items = json.loads(str(array))[start:end]
        else:
            raw_items = [array[index] for index in range(start, end)]
        for offset, raw in enumerate(raw_items):
            try:
                yield parse_entry(author, bucket, raw)
            except SchemaError as exc:
                log.warning("stream entry %s/%d skipped: %s", author, bucket * BUCKET_SIZE + start + offset, exc)

    def read_range(self, author: str, start: int, end: int) -> list[StreamEntry]:
        """The valid entries of ``author``'s stream with ``start <= seq < end``."""
        entries: list[StreamEntry] = []
        for bucket in range(start // BUCKET_SIZE, (end - 1) // BUCKET_SIZE + 1):
            first = max(start - bucket * BUCKET_SIZE, 0)
            limit = min(end - bucket * BUCKET_SIZE, BUCKET_SIZE) - first
            found = list(self.read_bucket(author, bucket, first, limit))
            lowest = bucket * BUCKET_SIZE + first
            if [entry.seq for entry in found] != list(range(lowest, lowest + limit)):
                # Positions lie while a replacement waits (see ``encode_op``): filter by seq,
                # and remember the holes.
                found = [e for e in self.read_bucket(author, bucket, 0) if start <= e.seq < end]
                if self._bucket_length(author, bucket) < first + limit:  # short: not just malformed values
                    missing = set(range(lowest, lowest + limit)) - {e.seq for e in found}
                    self.holes.setdefault(author, set()).update(missing)
            entries.extend(found)
        return entries

    def lowest_hole(self, author: str) -> int | None:
        """The lowest seq of ``author``'s stream whose entry is missing, if any."""
        holes = self.holes.get(author)
        return min(holes) if holes else None

    def expired(self, is_expired: Callable[[list[StreamEntry]], bool]) -> list[str]:
        """The keys of the full buckets whose entries ``is_expired``, on any author's
        stream but its last bucket (so that its stream positions stay known)."""
        last = self._last_buckets()
        expired: list[str] = []
        for key in list(self.root.keys()):
            place = place_of(key)
            if place is None or place[1] >= last[place[0]]:
                continue
            entries = list(self.read_bucket(place[0], place[1], 0))
            if len(entries) == BUCKET_SIZE and is_expired(entries):
                expired.append(key)
        return expired

    def find(
        self, author: str, seq: int, matches: Callable[[StreamEntry], bool]
    ) -> tuple[Array[Any], int, StreamEntry]:
        """The entry at ``seq`` that ``matches``: its bucket, its position there and itself
        (``KeyError`` if there is none). The position is the seq's unless someone else put
        entries into the bucket or took some out."""
        bucket, index = divmod(seq, BUCKET_SIZE)
        array = self.root[bucket_key(author, bucket)]
        values = list(enumerate(array))
        values.sort(key=lambda value: value[0] != index)  # the usual place first
        for position, raw in values:
            try:
                entry = parse_entry(author, bucket, raw)
            except SchemaError:
                continue
            if entry.seq == seq and matches(entry):
                return array, position, entry
        raise KeyError(seq)

    # -- writing -------------------------------------------------------------------

    def append(self, author: str, seq: int, value: str, transaction: Any) -> None:
        """Write ``author``'s entry ``value`` (JSON text) at ``seq``, inside ``transaction``
        (the running one, as yrs sees it)."""
        bucket, index = divmod(seq, BUCKET_SIZE)
        key = bucket_key(author, bucket)
        if index == 0:
            self.root[key] = Array([value])
        else:
            if self._own_bucket is None or self._own_bucket[0] != key:
                self._own_bucket = (key, self.root[key])
            # Array.append re-reads the length and goes through slice assignment, and a map
            # lookup per message costs as much again: insert at the known index into the
            # cached bucket (together a third of a live message's cost). The position is
            # not the seq if someone else put entries into our bucket or took some out.
            raw = self._own_bucket[1].integrated
            raw.insert(transaction, min(index, raw.len(transaction)), value)
        self.lengths[author] = max(self.lengths.get(author, 0), seq + 1)

    def drop(self, keys: Iterable[str]) -> None:
        """Delete whole buckets (retention: see ``Conversation.expire``)."""
        for key in keys:
            del self.root[key]

    # -- what remote transactions did ------------------------------------------------

    def note(self, events: list[Any]) -> None:
        """Note where a remote transaction's entries landed (yrs's deep events on the root,
        inside the transaction); new buckets are read after."""
        for event in events:
            if hasattr(event, "keys"):
                for key, change in event.keys.items():
                    if change.get("action") == "add":
                        self._appended.append((key, 0, None))
                    if self._own_bucket is not None and key == self._own_bucket[0]:
                        self._own_bucket = None  # someone replaced it: look it up again
                    self._buckets_seen.clear()
                continue
            position = 0
            for step in event.delta:
                if "retain" in step:
                    position += step["retain"]
                elif "insert" in step:
                    self._appended.append((event.path[0], position, step["insert"]))
                    position += len(step["insert"])
                elif "delete" in step:
                    self._shrunk.add(event.path[0])

    def take_appended(self, unverified: Unverified) -> dict[str, list[StreamEntry]]:
        """New entries since the last call, by author, each author's in order (entries
        that filled a hole first, and entries at a seq a chain has ``unverified``: other
        candidates for it)."""
        found, late = self._parse_appended(unverified)
        for author, entries in found.items():
            if len(entries) > 1:
                entries.sort(key=lambda entry: entry.seq)
            start = self.lengths.get(author, 0)
            if entries[0].seq != start or entries[-1].seq - start + 1 != len(entries):
                # A gap: yrs integrated some entries without an event (structs that waited
                # for a dependency are retried silently). The document itself is the truth.
                end = entries[-1].seq + 1
                found[author] = entries = self.read_range(author, start, end)
            else:
                end = entries[-1].seq + 1
            self.lengths[author] = max(start, end)
        for author, entries in late.items():
            found[author] = sorted(entries, key=lambda entry: entry.seq) + found.get(author, [])
        return {author: entries for author, entries in found.items() if entries}

    def _parse_appended(
        self, unverified: Unverified
    ) -> tuple[dict[str, list[StreamEntry]], dict[str, list[StreamEntry]]]:
        """The entries ``note`` saw appended, by author: past each author's length, and
        below it (filling a hole, or another candidate for a seq a chain has ``unverified``)."""
        found: dict[str, list[StreamEntry]] = {}
        late: dict[str, list[StreamEntry]] = {}
        # A bucket that came new is read whole, once: with what later transactions (the
        # slices of one update, see ``slices``) appended to it.
        whole = {key for key, _, values in self._appended if values is None}
        read: set[str] = set()
        for key, position, values in self._appended:
            if key in whole and (values is not None or key in read):
                continue
            read.add(key)
            place = self._bucket_places.get(key)
            if place is None:
                try:
                    place = self._bucket_places[key] = split_bucket_key(key)
                except SchemaError as exc:
                    log.warning("stream %r skipped: %s", key, exc)
                    continue
            author, bucket = place
            if values is None:
                array = self.root.get(key)
                values = json.loads(str(array)) if isinstance(array, Array) else []
            for offset, raw in enumerate(values):
                if position + offset >= BUCKET_SIZE:
                    continue  # past a bucket's end
                try:
                    entry = parse_entry(author, bucket, raw)
                except SchemaError as exc:
                    log.warning("stream entry %s/%d skipped: %s", author, bucket * BUCKET_SIZE + position + offset, exc)
                    continue
                if entry.seq >= self.lengths.get(author, 0):  # not an in-place redaction of a known entry
                    found.setdefault(author, []).append(entry)
                elif entry.seq in self.holes.get(author, ()):
                    self.holes[author].discard(entry.seq)
                    late.setdefault(author, []).append(entry)
                    self.refills.append(entry)
                elif unverified(author, entry.seq):
                    late.setdefault(author, []).append(entry)  # another candidate for that seq
        self._appended.clear()
        return found, late

    @property
    def shrunk(self) -> bool:
        """Whether a remote transaction deleted entries since ``take_vanished``."""
        return bool(self._shrunk)

    def take_vanished(self) -> list[tuple[str, int]]:
        """Entries of the buckets a remote update deleted from that are gone, with nothing
        in their place (see ``Changes.vanished``); remembered as holes, reported when filled."""
        vanished: list[tuple[str, int]] = []
        for key in self._shrunk:
            place = place_of(key)
            if place is None:
                continue
            author, bucket = place
            end = min((bucket + 1) * BUCKET_SIZE, self.lengths.get(author, 0))
            missing = sorted(self._bucket_lacks(author, bucket, end) - self.holes.get(author, set()))
            if missing:
                self.holes.setdefault(author, set()).update(missing)
                vanished.extend((author, seq) for seq in missing)
        self._shrunk.clear()
        return vanished

    def take_filled_holes(self) -> dict[str, list[StreamEntry]]:
        """Entries that showed up, without an event, where a hole was."""
        filled: dict[str, list[StreamEntry]] = {}
        for author, holes in self.holes.items():
            for bucket in sorted({seq // BUCKET_SIZE for seq in holes}):
                for entry in self.read_bucket(author, bucket, 0):
                    if entry.seq in holes:
                        holes.discard(entry.seq)
                        filled.setdefault(author, []).append(entry)
                        self.refills.append(entry)
        self.holes = {author: holes for author, holes in self.holes.items() if holes}
        return filled

    def take_unannounced(self, members: Iterable[str]) -> dict[str, list[StreamEntry]]:
        """Entries that arrived without any event: yrs integrates structs that waited for a
        dependency when a later update is applied, and emits no event for them. One length
        check per known author and member; reads only what is missing."""
        missing: dict[str, list[StreamEntry]] = {}
        authors = self.lengths.keys() | set(members)
        with self._doc.transaction():  # one transaction for all the length checks
            for author in authors:
                start = end = self.lengths.get(author, 0)
                while True:
                    bucket = end // BUCKET_SIZE
                    length = self._current_length(author, bucket)
                    end = max(end, bucket * BUCKET_SIZE + length)
                    if length < BUCKET_SIZE or end % BUCKET_SIZE:
                        break
                if end > start:
                    entries = self.read_range(author, start, end)
                    self.lengths[author] = end
                    if entries:
                        missing[author] = entries
        return missing

    # -- internals -----------------------------------------------------------------

    def _current_length(self, author: str, bucket: int) -> int:
        """Length of an author's bucket, keeping the array at hand (its last bucket is read
        after every remote update)."""
        cached = self._buckets_seen.get(author)
        if cached is None or cached[0] != bucket:
            array = self.root.get(bucket_key(author, bucket))
            if not isinstance(array, Array):
                return 0
            self._buckets_seen[author] = cached = (bucket, array)
        return min(len(cached[1]), BUCKET_SIZE)

    def _bucket_length(self, author: str, bucket: int) -> int:
        array = self.root.get(bucket_key(author, bucket))
        return min(len(array), BUCKET_SIZE) if isinstance(array, Array) else 0

    def _find_holes(self) -> dict[str, set[int]]:
        """Seqs an author's stream lacks below its last entry: entries deleted while their
        replacement waits (see ``Changes.vanished``), found again after a reload. Only a
        bucket shorter than its entries' seqs say is read whole."""
        holes: dict[str, set[int]] = {}
        for author, last in self._last_buckets().items():
            for bucket in range(last + 1):
                length = self._bucket_length(author, bucket)
                if not length:
                    continue
                if bucket < last:
                    end = (bucket + 1) * BUCKET_SIZE
                else:
                    tail = list(self.read_bucket(author, bucket, length - 1))
                    end = tail[-1].seq + 1 if tail else 0
                missing = self._bucket_lacks(author, bucket, end)
                if missing:
                    holes.setdefault(author, set()).update(missing)
        return holes

    def _bucket_lacks(self, author: str, bucket: int, end: int) -> set[int]:
        """Seqs from the bucket's first up to ``end`` whose entry it lacks; the bucket is
        read only if it is shorter than that."""
        start = bucket * BUCKET_SIZE
        if self._bucket_length(author, bucket) >= end - start:
            return set()
        return set(range(start, end)) - {entry.seq for entry in self.read_bucket(author, bucket, 0)}

    def _last_buckets(self) -> dict[str, int]:
        """Author -> the number of its last bucket."""
        last: dict[str, int] = {}
        for key in self.root.keys():
            place = place_of(key)
            if place is not None:
                last[place[0]] = max(last.get(place[0], -1), place[1])
        return last

    def _stream_lengths(self) -> dict[str, int]:
        lengths: dict[str, int] = {}
        for key in self.root.keys():
            place = place_of(key)
            if place is None:
                continue
            author, number = place
            end = number * BUCKET_SIZE + self._bucket_length(author, number)
            lengths[author] = max(lengths.get(author, 0), end)
        return lengths
