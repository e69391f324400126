"""The conversation document on its own: no store, no trio."""

from __future__ import annotations

import gc
import itertools
import json
import logging
import re
import time
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_helpers import ALICE, BOB, CAROL, PEERS, fixed_clock, group
from pycrdt import Array, Doc, Map, get_update

from gigi_crdt import FileShare, GroupInvite, NotAllowed, SchemaError, Text, UnknownMessage
from gigi_crdt.model import BUCKET_SIZE, Conversation, ConversationKind, HybridClock, ReceiptKind, Role, new_id
from gigi_crdt.model.ops import Posted, Tombstone, encode_op, parse_entry

ID = re.compile(r"[A-Za-z0-9_-]{16}")


def pair() -> tuple[Conversation, Conversation]:
    alice, written = Conversation.create(
        kind=ConversationKind.DIRECT,
        title="",
        local_peer=ALICE,
        nickname="alice",
        clock=fixed_clock(),
        others={BOB: "bob"},
    )
    bob = Conversation.from_updates([written.update], BOB, fixed_clock())
    return alice, bob


def texts(conversation: Conversation) -> list[str | None]:
    return [m.content.text if isinstance(m.content, Text) else None for m in conversation.history()]


def test_post_reaches_peer_with_author_and_order() -> None:
    alice, bob = pair()
    first = alice.post(Text("hi"), "alice")
    changes = bob.apply_remote(first.update)
    assert [(e.author, e.seq) for e in changes.entries] == [(ALICE, 0)]
    reply = bob.post(Text("hello"), "bob")
    alice.apply_remote(reply.update)
    assert texts(alice) == texts(bob) == ["hi", "hello"]
    assert [m.nickname for m in alice.history()] == ["alice", "bob"]


def test_message_ids_sort_by_the_time_they_were_made(monkeypatch: pytest.MonkeyPatch) -> None:
    # Later ids land at the end of the index's unique (conversation, id) B-tree.
    made = []
    for ms in (1_700_000_000_000, 1_700_000_000_001, 1_700_000_060_000, 2**47 - 1):
        monkeypatch.setattr(time, "time_ns", lambda ms=ms: ms * 1_000_000 + 999_999)
        made += [new_id() for _ in range(50)]
    assert all(ID.fullmatch(i) and i[0].isalpha() for i in made)
    assert len(set(made)) == len(made)  # 48 random bits after the clock
    by_ms = [made[k : k + 50] for k in range(0, len(made), 50)]
    assert all(max(earlier) < min(later) for earlier, later in itertools.pairwise(by_ms))


def test_all_content_kinds_round_trip() -> None:
    alice, bob = pair()
    contents = [Text("t"), FileShare("code-1", "a.txt", 12, "text/plain"), GroupInvite("group-id-1", "g", "alice")]
    for content in contents:
        bob.apply_remote(alice.post(content, "alice").update)
    assert [m.content for m in bob.history()] == contents


def test_buckets_roll_over_and_stay_bounded() -> None:
    alice, bob = pair()
    for i in range(BUCKET_SIZE * 2 + 3):
        bob.apply_remote(alice.post(Text(str(i)), "alice").update)
    assert bob.stream_length(ALICE) == BUCKET_SIZE * 2 + 3
    assert texts(bob) == [str(i) for i in range(BUCKET_SIZE * 2 + 3)]


def test_catch_up_through_state_vector_sends_only_the_missing_part() -> None:
    alice, bob = pair()
    for i in range(300):
        bob.apply_remote(alice.post(Text(f"m{i}"), "alice").update)
    for i in range(5):
        alice.post(Text(f"offline {i}"), "alice")
    delta = alice.diff(bob.state_vector())
    changes = bob.apply_remote(delta)
    assert [e.seq for e in changes.entries] == [300, 301, 302, 303, 304]
    assert len(delta) < 1000
    assert texts(bob) == texts(alice)


def test_edit_delete_react() -> None:
    alice, bob = pair()
    message_id = alice.post(Text("draft"), "alice").message_id
    assert message_id is not None
    bob.apply_remote(alice.diff(bob.state_vector()))
    bob.apply_remote(alice.edit(message_id, Text("final")).update)
    assert texts(bob) == ["final"]
    assert bob.history()[0].edited_at is not None
    alice.apply_remote(bob.react(message_id, "👍").update)
    assert alice.history()[0].reactions == {"👍": frozenset({BOB})}
    alice.apply_remote(bob.react(message_id, "👍", on=False).update)
    assert alice.history()[0].reactions == {}
    bob.apply_remote(alice.delete(message_id).update)
    tombstone = bob.history()[0]
    assert tombstone.deleted
    assert tombstone.deleted_at is not None
    assert tombstone.nickname == "alice"
    # The deleted text has left the document, not just the view.
    assert b"draft" not in alice.diff()
    assert b"final" not in alice.diff()
    fresh = Conversation.from_updates([alice.diff()], CAROL, fixed_clock())
    assert fresh.history() == bob.history()


def test_posts_written_after_a_load_are_found_for_edits_and_deletions() -> None:
    # Where our posts stand is read from the document on first need, not on every load:
    # the posts written before that must be found then, and those written after too.
    alice, _ = pair()
    first = alice.post(Text("one"), "alice")
    reloaded = Conversation.from_updates([alice.diff()], ALICE, fixed_clock())
    second = reloaded.post(Text("two"), "alice")  # before anything read our posts' places
    reloaded.edit(second.message_id or "", Text("two, edited"))
    third = reloaded.post(Text("three"), "alice")  # after
    reloaded.delete(third.message_id or "")
    reloaded.delete(first.message_id or "")
    assert texts(reloaded) == [None, "two, edited", None]


def test_only_the_author_edits_or_deletes() -> None:
    alice, bob = pair()
    message_id = alice.post(Text("mine"), "alice").message_id
    assert message_id is not None
    bob.apply_remote(alice.diff(bob.state_vector()))
    with pytest.raises(UnknownMessage):
        bob.edit(message_id, Text("yours now"))
    with pytest.raises(UnknownMessage):
        bob.delete(message_id)


def test_receipts_only_move_forward() -> None:
    alice, bob = pair()
    for _ in range(3):
        bob.apply_remote(alice.post(Text("x"), "alice").update)
    alice.apply_remote(bob.mark(ReceiptKind.READ, {ALICE: 2}).update)
    assert bob.mark(ReceiptKind.READ, {ALICE: 1}).update == b""  # never backwards
    receipts = {(r.member, r.kind, r.author): r.seq for r in alice.receipts()}
    assert receipts == {(BOB, ReceiptKind.READ, ALICE): 2}


def admin_and_member() -> tuple[Conversation, Conversation]:
    """A group created by alice (admin) with bob as a plain member."""
    admin, written = Conversation.create(
        kind=ConversationKind.GROUP,
        title="g",
        local_peer=ALICE,
        nickname="alice",
        clock=fixed_clock(),
        others={BOB: "bob"},
    )
    return admin, Conversation.from_updates([written.update], BOB, fixed_clock())


def test_group_membership_needs_an_admin() -> None:
    admin, member = admin_and_member()
    with pytest.raises(NotAllowed):
        member.add_member(CAROL, "carol")
    member.apply_remote(admin.add_member(CAROL, "carol").update)
    assert member.members()[CAROL].role is Role.MEMBER
    member.apply_remote(admin.remove_member(CAROL).update)
    assert not member.members()[CAROL].active


def test_an_invite_and_the_membership_it_announces_are_one_update() -> None:
    admin, bob = admin_and_member()
    written = admin.invite(CAROL, "carol", "alice")
    bob.apply_remote(written.update)  # that update alone
    assert bob.is_member(CAROL)
    invite = bob.history()[-1]
    assert invite.id == written.message_id
    assert invite.content == GroupInvite(admin.id, "g", "alice")
    with pytest.raises(NotAllowed):
        bob.invite(CAROL, "carol", "bob")  # not an admin


def test_removed_member_cannot_post() -> None:
    admin, bob = admin_and_member()
    bob.apply_remote(admin.remove_member(BOB).update)
    with pytest.raises(NotAllowed):
        bob.post(Text("still here?"), "bob")


def test_leaving_and_being_removed_are_told_apart() -> None:
    admin, bob = admin_and_member()
    carol_added = admin.add_member(CAROL, "carol")
    bob.apply_remote(carol_added.update)
    bob.apply_remote(admin.remove_member(CAROL).update)
    admin.apply_remote(bob.remove_member(BOB).update)
    for view in (admin, bob):
        assert view.has_left(BOB)
        assert not view.is_member(BOB)
        assert not view.has_left(CAROL)
        assert view.members()[CAROL].removed
        assert not view.has_left(ALICE)


def test_a_member_record_whose_overwrite_is_half_applied_stays_known() -> None:
    # An overwrite is an insert plus a delete of the old value. yrs applies a delete at
    # once, even when it comes in another peer's update (its transaction picked up the
    # delete while the insert waited for a dependency): the key vanishes for a while.
    admin, bob = admin_and_member()
    carol = Conversation.from_updates([admin.diff()], CAROL, fixed_clock())
    leave = bob.remove_member(BOB).update
    everything = Doc()
    for update in (admin.diff(), leave):
        everything.apply_update(update)
    deletes_only = get_update(leave, everything.get_state())  # every struct of it dropped
    carol.apply_remote(deletes_only)
    document = Doc()
    document.apply_update(carol.diff())
    assert BOB not in document.get("members", type=Map).to_py()  # the key is gone from the document...
    assert carol.is_member(BOB)  # ...but not the last record seen of it
    changes = carol.apply_remote(leave)
    assert changes.metadata_changed
    assert carol.has_left(BOB)


def test_structs_waiting_for_a_dependency_are_part_of_every_catch_up() -> None:
    # Two replicas with equal state vectors can differ by structs that wait: no state
    # vector counts them, so no diff against one carries them. Whoever holds them must
    # pass them on.
    admin, bob = admin_and_member()
    carol = Conversation.from_updates([admin.diff()], CAROL, fixed_clock())
    first = bob.post(Text("one"), "bob").update
    second = bob.post(Text("two"), "bob").update
    admin.apply_remote(second)  # the first was lost on the way
    admin.note_waiting(second)
    assert admin.state_vector() == carol.state_vector()
    waiting = admin.catch_up(carol.state_vector())
    assert waiting is not None
    carol.apply_remote(waiting)
    carol.apply_remote(first)
    assert texts(carol) == ["one", "two"]
    admin.apply_remote(first)
    assert admin.catch_up(carol.state_vector()) is None  # integrated now: nothing waits


def test_invalid_content_is_refused_locally() -> None:
    alice, _ = pair()
    with pytest.raises(SchemaError):
        alice.post(FileShare("c", "f", -1, "x"), "alice")
    with pytest.raises(SchemaError):
        alice.post(Text("x" * 70_000), "alice")


def test_schema_violating_remote_entries_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    alice, bob = pair()
    bob.apply_remote(alice.post(Text("good"), "alice").update)
    # A hostile or buggy peer writes straight into alice's stream with raw pycrdt.
    rogue = Doc()
    rogue.apply_update(alice.diff())
    streams = rogue.get("streams", type=Map)
    streams[f"{ALICE}/0"].append({"o": "post", "i": "short", "t": "yesterday"})
    streams[f"{ALICE}/0"].append({"o": "post", "i": "valid-id-123", "t": 5, "n": "x", "k": "text", "c": {"text": 7}})
    streams[f"{ALICE}/0"].append('{"s":1,"o":"post","i":"valid-id-123","t":5,"n":"x","k":"text","c":')
    streams["not a key"] = Array([1, 2, 3])
    with caplog.at_level(logging.WARNING):
        changes = bob.apply_remote(rogue.get_update(bob.state_vector()))
    assert changes.entries == []
    assert texts(bob) == ["good"]
    assert "skipped" in caplog.text
    bob.apply_remote(alice.post(Text("still fine"), "alice").update)
    assert texts(bob) == ["good", "still fine"]


@pytest.mark.parametrize(
    "stored",
    ['{"s":0,"o":"post"', "[" * 100_000 + "]" * 100_000, '"a string"', "[1]", "1" * 5_000, "", 7],
    ids=["cut-short", "nested-deep", "string", "array", "huge-number", "empty", "number"],
)
def test_a_stored_entry_that_is_not_a_json_object_is_a_schema_error(stored: object) -> None:
    with pytest.raises(SchemaError, match="stream entry is not"):
        parse_entry(ALICE, 0, stored)


_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=12,
)
_ENTRY_FIELDS = st.fixed_dictionaries(
    {
        "s": st.integers(-2, 300) | _ANY_JSON,
        "o": st.sampled_from(["post", "edit", "delete", "react", "tombstone", "redacted"]) | _ANY_JSON,
        "i": st.just("message-00000001") | _ANY_JSON,
    },
    optional={key: st.just("text") | _ANY_JSON for key in ("t", "n", "k", "c", "d", "e", "on", "p", "h", "g")},
)


@settings(max_examples=300, deadline=None)
@given(fields=_ENTRY_FIELDS, cut=st.integers(0, 400), as_text=st.booleans())
def test_any_stored_entry_is_an_entry_or_a_schema_error(fields: dict[str, object], cut: int, as_text: bool) -> None:
    stored = json.dumps(fields)[:cut] if as_text else fields  # text cut anywhere, or a map as before
    try:
        entry = parse_entry(ALICE, 0, stored)
    except SchemaError:
        return
    assert 0 <= entry.seq < BUCKET_SIZE


def test_an_entry_missing_below_the_cursor_is_reported_when_it_shows_up() -> None:
    # A replacement (a deletion's tombstone) is a delete plus an insert; a peer can apply
    # the delete while the insert waits, and see the bucket one entry short. Built here
    # by hand: the bucket holds seq 0 and 2, then seq 1 shows up.
    alice, bob = pair()
    writer = Doc()
    writer.apply_update(alice.diff())
    bucket = Array([encode_op(Posted(f"message-{seq}", 5, "alice", Text(str(seq))), seq) for seq in (0, 2)])
    writer.get("streams", type=Map)[f"{ALICE}/0"] = bucket
    first = bob.apply_remote(writer.get_update(bob.state_vector()))
    assert [entry.seq for entry in first.entries] == [0, 2]
    assert first.complete_upto == {ALICE: 1}  # the index must not count seq 1 as folded
    before = writer.get_state()
    bucket.insert(1, encode_op(Tombstone("message-1", 5, "alice", 9), 1))
    late = bob.apply_remote(writer.get_update(before))
    assert [(entry.seq, entry.op) for entry in late.entries] == [(1, Tombstone("message-1", 5, "alice", 9))]
    assert late.complete_upto == {}
    assert [m.deleted_at for m in bob.history()] == [None, 9, None]


def test_a_conversation_nobody_holds_is_freed() -> None:
    # yrs holds the observers' callbacks where Python's collector cannot see them: had they
    # referred to the conversation, every dropped or reloaded document would stay in memory.
    alice, bob = pair()
    bob.apply_remote(alice.post(Text("hi"), "alice").update)
    gone = [weakref.ref(alice), weakref.ref(bob)]
    del alice, bob
    gc.collect()
    assert [ref() for ref in gone] == [None, None]


def test_garbage_update_is_a_schema_error() -> None:
    alice, _ = pair()
    with pytest.raises(SchemaError):
        alice.apply_remote(b"\xff\xff\xff\x00garbage")


def test_clock_follows_remote_timestamps() -> None:
    alice, bob = pair()
    late = Conversation.from_updates([alice.diff()], CAROL, HybridClock(lambda: 1))
    late.apply_remote(alice.post(Text("from the future"), "alice").update)
    # carol's wall clock says 1 ms, but her reply must still sort after what she saw.
    bob.apply_remote(alice.diff(bob.state_vector()))
    assert late.history()[-1].timestamp > 1


# -- convergence -------------------------------------------------------------------

operation = st.one_of(
    st.tuples(st.just("post"), st.integers(0, 2), st.text(max_size=5)),
    st.tuples(st.just("edit"), st.integers(0, 2), st.integers(0, 50)),
    st.tuples(st.just("delete"), st.integers(0, 2), st.integers(0, 50)),
    st.tuples(st.just("react"), st.integers(0, 2), st.integers(0, 50)),
    st.tuples(st.just("read"), st.integers(0, 2), st.integers(0, 50)),
    st.tuples(st.just("deliver"), st.integers(0, 2), st.integers(0, 2)),
)


def run_operation(replicas: list[Conversation], outboxes: list[list[bytes]], op: tuple[str, int, object]) -> None:
    name, who, arg = op
    replica = replicas[who]
    own = [m for m in replica.history() if m.author == PEERS[who] and not m.deleted]
    seen = replica.history()
    written = None
    if name == "post":
        written = replica.post(Text(str(arg)), "n")
    elif name in ("edit", "delete") and own:
        target = own[int(arg) % len(own)].id  # type: ignore[call-overload]
        written = replica.edit(target, Text("edited")) if name == "edit" else replica.delete(target)
    elif name == "react" and seen:
        written = replica.react(seen[int(arg) % len(seen)].id, "+1", on=int(arg) % 2 == 0)  # type: ignore[call-overload]
    elif name == "read" and seen:
        message = seen[int(arg) % len(seen)]  # type: ignore[call-overload]
        written = replica.mark(ReceiptKind.READ, {message.author: message.seq})
    elif name == "deliver":
        target = int(arg)  # type: ignore[call-overload]
        for update in outboxes[who]:
            if target != who:
                replicas[target].apply_remote(update)
        return
    if written is not None and written.update:
        for index in range(len(replicas)):
            outboxes[index].append(written.update)


@settings(max_examples=60, deadline=None)
@given(st.lists(operation, max_size=40), st.randoms(use_true_random=False))
def test_random_concurrent_edits_converge_to_one_ordered_view(ops: list[tuple[str, int, object]], rnd: object) -> None:
    replicas = group()
    outboxes: list[list[bytes]] = [[] for _ in replicas]
    for op in ops:
        run_operation(replicas, outboxes, op)
    # Heal: everyone exchanges state vectors with everyone, in a drawn order.
    order = [(a, b) for a in range(3) for b in range(3) if a != b]
    rnd.shuffle(order)  # type: ignore[attr-defined]
    for _ in range(2):
        for a, b in order:
            replicas[b].apply_remote(replicas[a].diff(replicas[b].state_vector()))
    views = [replica.history() for replica in replicas]
    assert views[0] == views[1] == views[2]
    receipts = [sorted((r.member, r.kind, r.author, r.seq) for r in replica.receipts()) for replica in replicas]
    assert receipts[0] == receipts[1] == receipts[2]


def test_entries_keep_their_sequence_numbers_while_a_tombstone_waits() -> None:
    # Deleting replaces a post in place (delete + insert). A peer can hold the deletion
    # while the tombstone's struct still waits for an earlier write of its author: the
    # bucket is one entry short until it integrates, and entries read by position would
    # take wrong sequence numbers (the harness found an index row one off after a crash).
    alice, bob = pair()
    for i in range(4):
        bob.apply_remote(alice.post(Text(f"m{i}"), "alice").update)
    ids = [m.id for m in alice.history()]
    deletion = alice.delete(ids[1])
    alone = bob.apply_remote(get_update(deletion.update, alice.state_vector()))  # its delete set alone
    assert alone.vanished == [(ALICE, 1)]  # the index drops the message until its tombstone comes
    assert [(e.seq, e.op.id) for e in bob.entries() if isinstance(e.op, Posted)] == [
        (0, ids[0]),
        (2, ids[2]),
        (3, ids[3]),
    ]
    assert [e.seq for e in bob.changes_since({ALICE: 2}).entries] == [2, 3]
    changes = bob.apply_remote(deletion.update)
    assert [(e.seq, type(e.op).__name__) for e in changes.entries] == [(1, "Tombstone"), (4, "Deleted")]
    assert texts(bob) == texts(alice) == ["m0", None, "m2", "m3"]
