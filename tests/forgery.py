"""What a malicious member does: write into a conversation's Yjs document with pycrdt
directly, under its own client id (or another's), bypassing the model's checks."""

from __future__ import annotations

import itertools
import json
from typing import Any

from pycrdt import Array, Doc, Map

from gigi_crdt.identity import Identity
from gigi_crdt.model import Conversation, ConversationKind, HybridClock
from gigi_crdt.model.ops import BUCKET_SIZE


def forge_records(document: bytes, records: dict[tuple[str, str], Any]) -> bytes:
    """An update writing ``records`` ((root, key) -> value, in root maps such as
    ``members`` and ``meta``) over ``document`` (a conversation's whole state, as an update)."""
    doc: Doc[Any] = Doc()
    doc.apply_update(document)
    before = doc.get_state()
    with doc.transaction():
        for (root, key), value in records.items():
            doc.get(root, type=Map)[key] = value
    return doc.get_update(before)


def forge_member_records(document: bytes, records: dict[str, Any]) -> bytes:
    """An update writing ``records`` (peer id -> raw member record) over ``document``."""
    return forge_records(document, {("members", peer_id): record for peer_id, record in records.items()})


def forge_entries(document: bytes, author: str, values: list[str], client_id: int | None = None) -> bytes:
    """An update appending raw stream entry ``values`` (JSON text) to ``author``'s stream
    over ``document``; with ``client_id``, written under that Yjs client id (someone else's)."""
    doc: Doc[Any] = Doc() if client_id is None else Doc(client_id=client_id)
    doc.apply_update(document)
    before = doc.get_state()
    streams = doc.get("streams", type=Map)
    with doc.transaction():
        for value in values:
            key = f"{author}/{int(json.loads(value)['s']) // BUCKET_SIZE}"
            if key in streams:
                streams[key].append(value)
            else:
                streams[key] = Array([value])
    return doc.get_update(before)


def ticking_clock() -> HybridClock:
    """A clock that ticks a millisecond per reading, from a fixed time."""
    counter = itertools.count(1_700_000_000_000)
    return HybridClock(lambda: next(counter))


def signed_copies(people: dict[str, Identity]) -> list[Conversation]:
    """A signed group created by the first of ``people`` (nickname -> identity) with the
    others as members, and each one's copy of it, in the same order."""
    (creator_name, creator), *others = people.items()
    first, written = Conversation.create(
        kind=ConversationKind.GROUP,
        title="g",
        local_peer=creator.peer_id,
        nickname=creator_name,
        clock=ticking_clock(),
        others={key.peer_id: name for name, key in others},
        signer=creator,
    )
    return [first] + [
        Conversation.from_updates([written.update], key.peer_id, ticking_clock(), key) for _, key in others
    ]
