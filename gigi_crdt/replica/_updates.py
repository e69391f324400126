"""Remote updates and stored ones: the checks a remote update passes before pycrdt sees it,
merged in a worker thread when it is large (``Merges``), and what listeners hear of each
update once it is stored (``StoredUpdate``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from .._collector import run_with_collector_paused
from ..errors import SchemaError
from ..model import Changes, Conversation, check_update
from ..model.catchup import deletions_past
from ..model.metadata import Member
from ..model.slices import SLICE_BYTES, sliced
from ..model.ydecode import clocks_of
from ..model.yupdate import UpdateSummary
from ..protocol import HeadRecord
from ..store.compaction import merge_all, slice_plan

log = logging.getLogger(__name__)

IN_THREAD_BYTES = 64 * 1024  # remote updates larger than this are checked and merged in a worker thread
EMPTY_UPDATE = b"\x00\x00"  # a Yjs v1 update with no structs and no deletions


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


def authors_of(changes: Changes) -> set[str]:
    return {entry.author for entry in changes.entries}


def plain_head(record: Mapping[str, Any]) -> HeadRecord:
    """A head as it travels beside a catch-up: Yjs gives its integers back as floats."""
    return {key: int(value) if isinstance(value, float) else value for key, value in record.items()}


def parse_held(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, object]]:
    """Stored signed records, for ``Conversation.from_updates``; a damaged row is skipped
    (the document's own records still count: only what was held beyond them is lost)."""
    held: list[tuple[str, str, object]] = []
    for root, key, record in rows:
        try:
            held.append((root, key, json.loads(record)))
        except ValueError:
            log.warning("stored signed record %s/%s is damaged; skipped", root, key)
    return held


def split_in_parts(update: bytes, part_bytes: int) -> list[bytes]:
    plan = slice_plan(update, part_bytes)
    return [update] if plan is None else list(sliced(update, plan))


def merge_checked_parts(parts: Sequence[bytes]) -> bytes:
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
    """A document a worker thread is merging a remote update into (``Merges.merge``):
    nothing else may touch it until ``done``."""

    done: trio.Event
    members: dict[str, Member]  # as they were before the update (``Replica.loaded_members``)


class Merges:
    """The documents worker threads are merging remote updates into (``merge``)."""

    def __init__(self) -> None:
        self._merging: dict[str, _Merging] = {}  # documents a worker thread is merging an update into

    def __contains__(self, conversation: object) -> bool:
        return conversation in self._merging

    def members_before(self, conversation: str) -> dict[str, Member] | None:
        """The members of a document being merged into, as they were before the update."""
        merging = self._merging.get(conversation)
        return None if merging is None else merging.members

    async def merge(
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
        document is nobody else's: ``Documents.document`` and ``wait`` wait for it. A cancellation
        waits for the thread and comes at the caller's next checkpoint, which must be the
        shielded commit of what was merged (``Documents.persist``), as after an apply on the loop."""
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

    async def wait(self, conversation: str) -> None:
        """Wait until no worker thread is merging into the conversation's document (a task
        that holds a document across a checkpoint must call this before touching it again)."""
        while (merging := self._merging.get(conversation)) is not None:
            await merging.done.wait()
