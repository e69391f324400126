"""What the benchmark scripts share: the two test peers, message texts, a few helpers.

Imported as a sibling module (the scripts run as ``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gigi_crdt.identity import Identity
from gigi_crdt.model import Changes, Conversation, ConversationKind, HybridClock, Text
from gigi_crdt.model.slices import SLICE_BYTES
from gigi_crdt.store import Record, Store
from gigi_crdt.store.compaction import build_snapshot, slice_plan

ALICE = "alice-peer-0001"

BOB = "bob-peer-0002"

# Identities with fixed keys, for benchmarks of signed conversations (what nodes create).
ALICE_KEY = Identity(Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32))
BOB_KEY = Identity(Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32))

TEXTS = (
    "hi!",
    "are you around later?",
    "sure, what time works for you",
    "ok",
    "let's say 7 at the usual place, I'll bring the notes from yesterday",
    "sounds good :)",
)


def text_for(i: int) -> Text:
    """A message body of realistic, varying length."""
    return Text(f"{TEXTS[i % len(TEXTS)]} #{i}")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank on sorted values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


class TwoPeers:
    """Alice's and bob's documents of one DIRECT conversation, posting alternately; with
    ``signed``, a signed conversation of ``ALICE_KEY`` and ``BOB_KEY`` (see ``model.signed``)."""

    def __init__(self, signed: bool = False) -> None:
        alice_key, bob_key = (ALICE_KEY, BOB_KEY) if signed else (None, None)
        self.alice_id, self.bob_id = (ALICE_KEY.peer_id, BOB_KEY.peer_id) if signed else (ALICE, BOB)
        self.alice, self.created = Conversation.create(
            kind=ConversationKind.DIRECT,
            title="bench",
            local_peer=self.alice_id,
            nickname="alice",
            clock=HybridClock(wall_ms),
            others={self.bob_id: "bob"},
            signer=alice_key,
        )
        self.bob = Conversation.from_updates([self.alice.diff()], self.bob_id, HybridClock(wall_ms), bob_key)

    def creation_record(self) -> Record:
        return Record(
            self.alice.id,
            self.created.update,
            self.created.changes,
            metadata=self.alice.metadata(),
            members=list(self.alice.members().values()),
        )

    def closing_record(self) -> Record:
        """What alice's replica keeps beside her log as it writes (``Documents.persist``): the
        signed records she holds, and her state vector, which peers are answered from."""
        signed = [(root, key, json.dumps(record)) for root, key, record in self.alice.take_unstored_records()]
        return Record(self.alice.id, b"", Changes(), signed=signed, state_vector=self.alice.state_vector())

    def message_record(self, i: int) -> Record:
        """Message ``i`` as alice's replica persists it (her post, or bob's post received)."""
        if i % 2 == 0:
            written = self.alice.post(text_for(i), "alice")
            self.bob.apply_remote(written.update)
            return Record(self.alice.id, written.update, written.changes)
        written = self.bob.post(text_for(i), "bob")
        return Record(self.alice.id, written.update, self.alice.apply_remote(written.update))


def compact(store: Store, conv: str) -> int:
    """What ``StoreWorker.compact`` (and ``plan_snapshots`` after it) does, synchronously;
    returns the snapshot's size."""
    upto, updates, garbage = store.committed_log(conv)
    snapshot = build_snapshot(updates, collect_garbage=garbage)
    store.replace_log(conv, upto, snapshot, collected=garbage)
    slices = slice_plan(snapshot) if len(snapshot) > SLICE_BYTES else None
    if slices is not None:
        store.set_slice_plan(conv, snapshot, slices)
    return len(snapshot)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """An aligned plain-text table: first column left-aligned, the others right-aligned."""
    cells = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=False)]
        return "  ".join(parts).rstrip()

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
