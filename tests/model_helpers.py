"""Conversations for model tests: peer ids, a clock, a group of three."""

from __future__ import annotations

import itertools

from gigi_crdt.model import Conversation, ConversationKind, HybridClock

ALICE, BOB, CAROL = "alice-peer-01", "bob-peer-0002", "carol-peer-03"
PEERS = (ALICE, BOB, CAROL)


def fixed_clock(start: int = 1_700_000_000_000) -> HybridClock:
    counter = itertools.count(start)
    return HybridClock(lambda: next(counter))


def group() -> list[Conversation]:
    """alice's group with bob and carol, one replica each, as created (nothing written yet)."""
    first, written = Conversation.create(
        kind=ConversationKind.GROUP,
        title="g",
        local_peer=ALICE,
        nickname="alice",
        clock=fixed_clock(),
        others={BOB: "bob", CAROL: "carol"},
    )
    return [first] + [Conversation.from_updates([written.update], peer, fixed_clock()) for peer in PEERS[1:]]
