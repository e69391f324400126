"""Structs past a gap in their client's clocks wait outside the document (``model.gaps``).

yrs itself integrates such a struct whenever its origins are at hand, so what a document
showed depended on how the structs were split into updates, with equal state vectors.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_helpers import ALICE, fixed_clock, group
from pycrdt import Array, Doc, Map, merge_updates

from gigi_crdt import Text
from gigi_crdt.model import Conversation, ReceiptKind
from gigi_crdt.model.gaps import Logged, PastGaps, cut_at_gaps, has_gaps, load_document, spans_of
from gigi_crdt.model.view import Message
from gigi_crdt.model.ydecode import clocks_of, decode_update
from gigi_crdt.model.yupdate import check_update
from gigi_crdt.store.compaction import build_snapshot, still_waiting


def writes(count: int) -> tuple[list[bytes], Doc[Any]]:
    """``count`` updates of one client: map entries set, overwritten, and arrays in them."""
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    root = doc.get("m", type=Map)
    for i in range(count):
        if i % 3 == 2:
            root[f"k{i % 4}"] = Array([i, i + 1])  # a new item with no origin: yrs took these past gaps
        else:
            root[f"k{i % 4}"] = i  # an overwrite: its origin is the value it replaces
    return updates, doc


def _doc_of(updates: list[bytes]) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def guarded() -> tuple[Doc[Any], PastGaps]:
    doc: Doc[Any] = Doc()
    return doc, PastGaps(doc)


def shown(doc: Doc[Any]) -> dict[str, Any]:
    return {key: str(value) for key, value in doc.get("m", type=Map).items()}


def test_yrs_alone_shows_an_item_past_a_gap() -> None:
    # The behaviour this module exists for: if pycrdt ever stops doing this, say so.
    updates, _ = writes(3)
    doc: Doc[Any] = Doc()
    doc.apply_update(updates[0])
    doc.apply_update(updates[2])
    assert "k2" in shown(doc)
    assert clocks_of(doc.get_state()) == clocks_of(_state_after(updates[:1]))  # its state vector stops at the gap


def _state_after(updates: list[bytes]) -> bytes:
    return _doc_of(updates).get_state()


def test_an_item_past_a_gap_waits_for_the_clocks_before_it() -> None:
    updates, source = writes(3)
    doc, gaps = guarded()
    gaps.integrate(updates[0])
    gaps.integrate(updates[2])
    assert shown(doc) == shown(_doc_of(updates[:1]))
    assert gaps.held is not None
    gaps.integrate(updates[1])
    assert shown(doc) == shown(source)
    assert gaps.held is None
    assert gaps.needs == {}


def test_cut_keeps_the_delete_set_with_what_is_ready() -> None:
    updates, _ = writes(6)
    late = merge_updates(updates[4], updates[5])  # overwrites: deletes what updates 0 and 1 wrote
    cut = cut_at_gaps(late, clocks_of(_state_after(updates[:2])))
    assert cut.ready is not None
    assert cut.held is not None
    ready = decode_update(cut.ready)
    assert ready.clients == {}
    assert ready.delete_set == decode_update(late).delete_set
    assert decode_update(cut.held).delete_set == {}
    (client,) = cut.needs
    assert cut.needs[client] == min(s.clock for s in decode_update(late).clients[client])


def test_an_update_without_gaps_is_left_whole() -> None:
    updates, _ = writes(4)
    state = clocks_of(_state_after(updates[:2]))
    assert cut_at_gaps(updates[2], state).ready == updates[2]
    assert cut_at_gaps(updates[2], state).held is None


@pytest.mark.parametrize("order", [[0, 2], [2, 0], [0, 2, 1], [2, 1, 0]])
def test_a_loaded_log_holds_back_what_lies_past_a_gap(order: list[int]) -> None:
    updates, _ = writes(3)
    doc, gaps = load_document([Logged(updates[n], True) for n in order])
    assert shown(doc) == shown(_doc_of(updates[: 3 if 1 in order else 1]))
    assert (gaps.held is None) == (1 in order)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_what_shows_depends_on_what_came_not_on_how_it_was_split(data: st.DataObject) -> None:
    """Deliver a random subset of one writer's updates twice, each time reordered,
    duplicated and merged at random: both documents show the same and count the clocks of
    the writer's first updates up to the first missing; once all came, they are the writer's."""
    updates, source = writes(9)
    count = len(updates)
    subset = data.draw(st.lists(st.integers(0, count - 1), max_size=12), label="delivered")
    views = []
    for _ in range(2):
        order = data.draw(st.permutations(subset), label="order")
        doc, gaps = guarded()
        while order:
            size = data.draw(st.integers(1, 3), label="merged")
            batch, order = [updates[n] for n in order[:size]], order[size:]
            gaps.integrate(batch[0] if len(batch) == 1 else merge_updates(*batch))
        views.append((doc, gaps))
    (first, _), (second, _) = views
    prefix = next((n for n in range(count) if n not in subset), count)
    assert shown(first) == shown(second)
    assert clocks_of(first.get_state()) == clocks_of(second.get_state()) == clocks_of(_state_after(updates[:prefix]))
    for doc, gaps in views:
        for update in updates:
            gaps.integrate(update)
        assert shown(doc) == shown(source)
        assert gaps.held is None


# -- the case the harness found ------------------------------------------------------------


def ids(history: list[Message]) -> list[str]:
    return [m.id for m in history]


def test_peers_that_got_an_authors_writes_split_differently_show_the_same() -> None:
    # Found by the harness: bob's delivered receipt was lost, then bob lost his store. Alice
    # got his read receipt and his post one by one, carol in one update. yrs showed the post
    # to alice only (the receipt's overwrite of a lost value waits, so all after it did for
    # carol), with equal state vectors: no sync could ever make them agree.
    alice, bob, carol = group()
    first = alice.post(Text("hi"), "alice").update
    bob.apply_remote(first)
    lost = bob.mark(ReceiptKind.DELIVERED, {ALICE: 0}).update
    read = bob.mark(ReceiptKind.READ, {ALICE: 0}).update
    post = bob.post(Text("bob's"), "bob").update
    carol.apply_remote(first)
    for update in (read, post):
        alice.apply_remote(update)
    together = merge_updates(read, post)
    assert has_gaps(
        spans_of(together, check_update(together)), clocks_of(carol.state_vector())
    )  # it starts past a clock carol lacks
    assert check_update(merge_updates(lost, post)).clients[bob.client_id].skips  # a clock missing inside
    carol.apply_remote(together)
    assert ids(alice.history()) == ids(carol.history())
    assert texts_of(alice) == ["hi"]
    assert clocks_of(alice.state_vector()) == clocks_of(carol.state_vector())
    for peer in (alice, carol):
        peer.apply_remote(lost)
    assert ids(alice.history()) == ids(carol.history()) == ids(bob.history())


def test_a_reload_holds_back_the_same_structs() -> None:
    alice, bob, _ = group()
    bob.apply_remote(alice.post(Text("hi"), "alice").update)
    bob.mark(ReceiptKind.DELIVERED, {ALICE: 0})  # never sent
    post = bob.post(Text("bob's"), "bob").update
    alice.apply_remote(post)
    for log in ([alice.diff()], [alice.diff(), post]):  # an encoding carries what waits, past a hole
        reloaded = Conversation.from_updates(log, ALICE, fixed_clock())
        assert texts_of(reloaded) == texts_of(alice) == ["hi"]
        assert clocks_of(reloaded.state_vector()) == clocks_of(alice.state_vector())


def test_a_compacted_log_holds_back_the_same_structs() -> None:
    alice, bob, _ = group()
    first = alice.post(Text("hi"), "alice").update
    bob.apply_remote(first)
    lost = bob.mark(ReceiptKind.DELIVERED, {ALICE: 0}).update
    post = bob.post(Text("bob's"), "bob").update
    alice.apply_remote(post)
    log = [Logged(alice.diff(), False), Logged(post, True)]  # as the store keeps them
    for collect in (False, True):
        snapshot = build_snapshot(log, collect)
        rest = still_waiting(snapshot, [post])
        assert cut_at_gaps(snapshot, {}).held is None  # it loads whole
        reloaded = Conversation.from_log([Logged(snapshot, False), Logged(rest, True)], ALICE, fixed_clock())
        assert ids(reloaded.history()) == ids(alice.history())
        assert texts_of(reloaded) == ["hi"]
        reloaded.apply_remote(lost)
        assert texts_of(reloaded) == ["hi", "bob's"]


def texts_of(conversation: Conversation) -> list[str]:
    return [m.content.text for m in conversation.history() if isinstance(m.content, Text)]


def test_a_deletion_whose_redaction_waits_leaves_no_message_until_it_comes() -> None:
    # A deletion replaces the post with a tombstone: a delete, applied at once, and an
    # insert, held while an earlier write of its author is missing.
    alice, bob, _ = group()
    posted = alice.post(Text("oops"), "alice")
    bob.apply_remote(posted.update)
    lost = alice.mark(ReceiptKind.READ, {ALICE: 0}).update
    deleted = alice.delete(posted.message_id or "").update
    changes = bob.apply_remote(deleted)
    assert changes.vanished == [(ALICE, 0)]
    assert bob.history() == []
    changes = bob.apply_remote(lost)
    assert [entry.seq for entry in changes.entries if entry.author == ALICE] == [0, 1]  # tombstone, deletion
    assert [(m.id, m.deleted_at is not None) for m in bob.history()] == [(posted.message_id, True)]
    assert bob.history() == alice.history()
