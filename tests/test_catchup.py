"""What catch-ups add to a state-vector diff (``gigi_crdt.model.catchup``), at the Yjs level."""

from __future__ import annotations

from typing import Any

from pycrdt import Array, Doc, Map

from gigi_crdt.model.catchup import unintegrated
from gigi_crdt.model.yupdate import check_update
from gigi_crdt.replica import left_waiting

BUCKET, RECEIPT = "alice-peer-01/0", "bob-peer-0002/read/alice-peer-01"


def bucket(doc: Doc[Any]) -> list[Any]:
    return list(doc.get("streams", type=Map)[BUCKET].to_py())


def test_a_deletion_that_waits_for_its_item_is_passed_on() -> None:
    author: Doc[Any] = Doc()
    with author.transaction():
        author.get("streams", type=Map)[BUCKET] = Array(["one"])
    first = author.get_update()
    author.get("streams", type=Map)[BUCKET].append("two")
    everything = author.get_update()
    # Another client (say the author's next session) writes a receipt and deletes "two"
    # in one transaction: the receipt hangs on nothing "two" is part of.
    writer: Doc[Any] = Doc()
    writer.apply_update(everything)
    before = writer.get_state()
    with writer.transaction():
        writer.get("acks", type=Map)[RECEIPT] = 1
        del writer.get("streams", type=Map)[BUCKET][1]
    update = writer.get_update(before)
    relay: Doc[Any] = Doc()  # holds "one" only: the receipt integrates, the deletion waits
    relay.apply_update(first)
    relay.apply_update(update)
    assert relay.get("acks", type=Map).to_py() == {RECEIPT: 1}
    assert left_waiting(check_update(update), relay.get_state())
    waiting = unintegrated(update, relay.get_state())
    assert waiting is not None
    # A peer holding "two" and taking the relay's diff holds the receipt's structs, and a
    # state vector saying so, but not the deletion: yrs puts only applied ones in a diff.
    peer: Doc[Any] = Doc()
    peer.apply_update(everything)
    peer.apply_update(relay.get_update(peer.get_state()))
    assert peer.get_state() == writer.get_state()
    assert bucket(peer) == ["one", "two"]
    peer.apply_update(waiting.update)  # what the relay adds to its catch-ups
    assert bucket(peer) == bucket(writer) == ["one"]
    relay.apply_update(everything)  # "two" comes: yrs applies the deletion, nothing waits
    assert bucket(relay) == ["one"]
    assert unintegrated(update, relay.get_state()) is None
