"""Signed streams: an entry shows as its author's only if the author wrote it (``model.chain``).

The forgeries are written the way a malicious member would: straight into the Yjs
document with pycrdt, under its own client id or under the victim's.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from forgery import forge_entries, forge_records, signed_copies
from forgery import ticking_clock as clock
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Map
from relay_helpers import post_as

from gigi_crdt import SchemaError, Text
from gigi_crdt.identity import Identity
from gigi_crdt.model import Conversation
from gigi_crdt.model.catchup import RECENT_UPDATE_BYTES
from gigi_crdt.model.chain import ANCHOR_EVERY, Chain, commitment, genesis, link_of, verified_entries
from gigi_crdt.model.ops import Posted, StreamEntry, canonical_fields, canonical_op, encode_op, parse_entry
from gigi_crdt.model.signed import HEAD_FIELDS, Head, check_anchor, check_head, sign_anchor, sign_head
from gigi_crdt.model.ydecode import RECORD_ENTRIES, decode_any
from gigi_crdt.model.yupdate import UnsafeUpdate, check_update
from gigi_crdt.signatures import verify

ALICE, BOB, CAROL = (Identity.generate() for _ in range(3))
VECTOR_FILE = Path(__file__).resolve().parent.parent / "protocols" / "vectors" / "signed-records.json"


def signed_group() -> tuple[Conversation, Conversation, Conversation]:
    """A signed group created by alice, with bob and carol as members, each with its copy."""
    alice, bob, carol = signed_copies({"alice": ALICE, "bob": BOB, "carol": CAROL})
    return alice, bob, carol


def shown(conversation: Conversation) -> list[tuple[str, str | None]]:
    """(author, text) of every message in ``conversation``'s history."""
    return [(m.author, None if m.content is None else m.content.text) for m in conversation.history()]  # type: ignore[union-attr]


def stream_values(conversation: Conversation, author: str) -> list[str]:
    """The raw entries of ``author``'s first bucket, as the document holds them (JSON text)."""
    doc: Doc[Any] = Doc()
    doc.apply_update(conversation.diff())
    return list(doc.get("streams", type=Map)[f"{author}/0"].to_py())


def client_id_of(update: bytes) -> int:
    (client,) = check_update(update).authors
    return client


def post(conversation: Conversation, text: str, *to: Conversation) -> bytes:
    written = conversation.post(Text(text), "nick")
    for peer in to:
        assert peer.apply_remote(written.update).entries  # shown at once, live
    return written.update


def test_posts_edits_deletions_and_reactions_verify_on_every_peer() -> None:
    alice, bob, carol = signed_group()
    first = alice.post(Text("one"), "alice")
    assert first.message_id is not None
    updates = [first.update, post(alice, "two"), post(bob, "three")]
    updates.append(alice.edit(first.message_id, Text("one, edited")).update)
    updates.append(bob.react(first.message_id, "+1").update)
    second = alice.post(Text("gone soon"), "alice")
    assert second.message_id is not None
    updates += [second.update, alice.delete(second.message_id).update]
    for update in updates:
        carol.apply_remote(update)
    fresh = Conversation.from_updates([], CAROL.peer_id, clock(), CAROL)
    fresh.apply_remote(alice.diff())
    fresh.apply_remote(bob.diff())  # a catch-up: each author's chain checked from its head
    expected = [(BOB.peer_id, "three"), (ALICE.peer_id, "one, edited"), (ALICE.peer_id, "two"), (ALICE.peer_id, None)]
    assert shown(carol) == shown(fresh) == expected
    assert len(list(fresh.entries())) == len(list(carol.entries())) == 7


def _unchained(alice: Conversation, seq: int) -> str:
    return encode_op(Posted("forgedforged01", 1_800_000_000_000, "alice", Text("pay bob")), seq)


def _chained_to_alices_head(alice: Conversation, seq: int) -> str:
    # The forger knows alice's newest link (her head is public): it chains its entry to it.
    head = check_head(alice.id, ALICE.peer_id, _heads(alice)[ALICE.peer_id]).value
    return encode_op(Posted("forgedforged01", 1_800_000_000_000, "alice", Text("pay bob")), seq, head.link)


def _alices_entry_altered(alice: Conversation, seq: int) -> str:
    # alice's genuine newest entry, its text changed: same seq, same prev.
    genuine = json.loads(stream_values(alice, ALICE.peer_id)[-1])
    return json.dumps(genuine | {"c": {"text": "pay bob"}})


def _heads(conversation: Conversation) -> dict[str, Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(conversation.diff())
    return dict(doc.get("heads", type=Map).to_py())


@pytest.mark.parametrize("under_alices_client_id", [False, True], ids=["own-client-id", "alices-client-id"])
@pytest.mark.parametrize(
    ("make", "at_next_seq"),
    [(_unchained, True), (_chained_to_alices_head, True), (_alices_entry_altered, False)],
    ids=["unchained", "chained-to-her-head", "her-entry-altered"],
)
def test_an_entry_written_into_anothers_stream_never_shows(
    make: Any, at_next_seq: bool, under_alices_client_id: bool
) -> None:
    alice, bob, carol = signed_group()
    released: list[str | None] = []  # what carol's index gets, in order
    for number in range(ANCHOR_EVERY + 4):
        update = alice.post(Text(f"m{number}"), "alice").update
        released += texts_of(carol.apply_remote(update).entries)
        bob.apply_remote(update)
    seq = alice.stream_length(ALICE.peer_id) - (0 if at_next_seq else 1)
    client = client_id_of(update) if under_alices_client_id else None
    genuine = released[:]
    forged = forge_entries(bob.diff(), ALICE.peer_id, [make(alice, seq)], client)
    if under_alices_client_id:  # past the clock alice's head signs for: a replica refuses it
        with pytest.raises(UnsafeUpdate, match="client id"):
            carol.check_clients(check_update(forged))
    else:
        carol.check_clients(check_update(forged))
    assert not carol.apply_remote(forged).entries  # as a peer that does not check would
    for text in ("later", "after"):
        released += texts_of(carol.apply_remote(alice.post(Text(text), "alice").update).entries)
    fresh = Conversation.from_updates([], CAROL.peer_id, clock(), CAROL)
    fresh.apply_remote(carol.diff())  # carol's copy, forgery included
    on_fresh = [text for _, text in shown(fresh)]
    assert "pay bob" not in released + on_fresh
    if under_alices_client_id:
        # Had carol taken it, its Yjs struct would take the place of alice's next one ("later") for good.
        # Nothing else is lost on carol; from her copy, a fresh peer verifies what is
        # above the gap and, from the anchor below it, all but fewer than ANCHOR_EVERY.
        assert released == [*genuine, "after"]
        assert on_fresh == genuine[:ANCHOR_EVERY] + ["after"]
    else:
        assert released == on_fresh == [*genuine, "later", "after"]


def texts_of(entries: list[StreamEntry]) -> list[str | None]:
    return [entry.op.content.text if isinstance(entry.op, Posted) else None for entry in entries]  # type: ignore[union-attr]


@pytest.mark.parametrize("as_map", [False, True], ids=["json-text", "map-as-before-2026-11-28"])
def test_an_entry_from_another_writer_reads_the_same_as_text_or_as_a_map(as_map: bool) -> None:
    alice, _, carol = signed_group()
    doc: Doc[Any] = Doc()
    doc.apply_update(alice.diff())
    before = doc.get_state()
    post_as(doc, alice.id, ALICE, "alice", "written by hand", as_map=as_map)
    assert isinstance(doc.get("streams", type=Map)[f"{ALICE.peer_id}/0"][0], dict) == as_map
    assert texts_of(carol.apply_remote(doc.get_update(before)).entries) == ["written by hand"]
    assert shown(carol) == [(ALICE.peer_id, "written by hand")]


def test_a_head_signed_by_someone_else_is_not_the_authors() -> None:
    alice, bob, carol = signed_group()
    post(alice, "hello", bob, carol)
    value = _chained_to_alices_head(alice, 1)
    entry = StreamEntry(ALICE.peer_id, 1, Posted("forgedforged01", 1_800_000_000_000, "alice", Text("pay bob")))
    link = link_of(StreamEntry(ALICE.peer_id, 1, entry.op, base64.urlsafe_b64decode(json.loads(value)["p"] + "==")))
    assert link is not None
    by_bob = sign_head(BOB, alice.id, Head(1, link, 1, 1, 1_800_000_000_000)).record
    with pytest.raises(SchemaError, match="not by its author"):
        check_head(alice.id, ALICE.peer_id, by_bob)
    forged = forge_entries(bob.diff(), ALICE.peer_id, [value])
    forged_head = forge_records(bob.diff(), {("heads", ALICE.peer_id): by_bob})
    assert not carol.apply_remote(forged).entries
    assert not carol.apply_remote(forged_head).entries
    assert shown(carol) == [(ALICE.peer_id, "hello")]
    assert not carol.has_stale_records()  # only alice writes her head back (see the next test)
    alice.apply_remote(forged_head)
    assert alice.has_stale_records()


def test_entries_wait_for_their_head_and_the_index_is_told_where() -> None:
    alice, bob, carol = signed_group()
    post(alice, "one", bob, carol)
    genuine = alice.post(Text("two"), "alice").update
    bob.apply_remote(genuine)
    copy = stream_values(bob, ALICE.peer_id)[-1]  # alice's entry, copied without her new head
    early = forge_entries(carol.diff(), ALICE.peer_id, [copy])
    changes = carol.apply_remote(early)
    assert not changes.entries
    assert changes.complete_upto == {ALICE.peer_id: 1}
    assert [entry.seq for entry in carol.apply_remote(genuine).entries] == [1]
    assert shown(carol) == [(ALICE.peer_id, "one"), (ALICE.peer_id, "two")]


def test_an_older_head_put_back_changes_nothing_and_its_author_writes_it_back() -> None:
    alice, bob, carol = signed_group()
    post(alice, "one", bob, carol)
    old_head = _heads(alice)[ALICE.peer_id]
    post(alice, "two", bob, carol)
    replay = forge_records(bob.diff(), {("heads", ALICE.peer_id): old_head})
    carol.apply_remote(replay)
    assert shown(carol) == [(ALICE.peer_id, "one"), (ALICE.peer_id, "two")]
    # Carol holds alice's newer head but does not copy it: her copy would race with alice's
    # next head and could delete it from every document, with the record that covers
    # alice's next structs under her client id.
    assert not carol.has_stale_records()
    alice.apply_remote(replay)
    bob.apply_remote(replay)
    restored = alice.restore_records()
    assert restored is not None
    for peer in (bob, carol):
        peer.apply_remote(restored.update)
        assert _heads(peer)[ALICE.peer_id] == _heads(alice)[ALICE.peer_id]
    fresh = Conversation.from_updates([carol.diff()], CAROL.peer_id, clock(), CAROL)
    assert shown(fresh) == [(ALICE.peer_id, "one"), (ALICE.peer_id, "two")]


def test_what_the_index_lacks_is_verified_again_on_load() -> None:
    alice, bob, carol = signed_group()
    post(alice, "one", bob, carol)
    forged = forge_entries(bob.diff(), ALICE.peer_id, [_unchained(alice, 1)])
    carol.apply_remote(forged)
    reloaded = Conversation.from_updates([carol.diff()], CAROL.peer_id, clock(), CAROL)
    missed = reloaded.changes_since({ALICE.peer_id: 1})
    assert missed.entries == []
    assert missed.complete_upto == {ALICE.peer_id: 1}
    assert [e.seq for e in reloaded.changes_since({}).entries] == [0]


def test_a_chain_picks_the_genuine_entry_among_forged_ones_at_each_seq() -> None:
    conversation = "c" * 32
    entries, prev = [], genesis(conversation, ALICE.peer_id)
    for seq in range(5):
        entry = StreamEntry(ALICE.peer_id, seq, Posted(f"message{seq:06d}", seq + 1, "alice", Text(str(seq))), prev)
        entries.append(entry)
        link = link_of(entry)
        assert link is not None
        prev = link
    forged = [
        StreamEntry(ALICE.peer_id, seq, Posted("forgedforged", 9, "x", Text("x")), entries[seq].prev)
        for seq in range(5)
    ]
    mixed = [e for pair in zip(forged, entries, strict=True) for e in pair]
    assert verified_entries(mixed, [(4, prev)]) == entries
    assert verified_entries(mixed, [(4, b"\x00" * 16)]) == []
    assert verified_entries(entries[:2] + entries[3:], [(4, prev)]) == entries[3:]  # a gap stops the walk
    chain = Chain()
    chain.add(entries[3:])
    chain.expect(4, prev)
    assert chain.verify() == entries[3:]
    chain.add(entries[:3])
    assert chain.verify() == entries[:3]  # the walk goes on from where it stopped
    assert chain.lowest_waiting() is None


def test_a_replaced_entry_keeps_its_place_in_the_chain() -> None:
    alice, bob, carol = signed_group()
    written = alice.post(Text("secret"), "alice")
    assert written.message_id is not None
    original = json.loads(stream_values(alice, ALICE.peer_id)[0])
    alice.delete(written.message_id)
    tombstone = json.loads(stream_values(alice, ALICE.peer_id)[0])
    assert tombstone["o"] == "tombstone"
    assert "secret" not in str(tombstone)
    assert tombstone["p"] == original["p"]
    entry = StreamEntry(ALICE.peer_id, 0, Posted(original["i"], int(original["t"]), "alice", Text("secret")))
    assert base64.urlsafe_b64decode(tombstone["h"] + "==") == commitment(entry)
    fresh = Conversation.from_updates([alice.diff()], CAROL.peer_id, clock(), CAROL)
    assert [e.seq for e in fresh.entries()] == [0, 1]


def test_signed_stream_vectors_are_what_we_write_and_what_we_accept() -> None:
    vectors = json.loads(VECTOR_FILE.read_text())
    seed = bytes.fromhex(vectors["member"]["private_key_seed"])
    member, conversation = Identity(Ed25519PrivateKey.from_private_bytes(seed)), vectors["conversation"]["id"]
    stream = vectors["stream"]
    assert genesis(conversation, member.peer_id).hex() == stream["genesis"]
    assert stream["author"] == member.peer_id
    entries = []
    for vector in stream["entries"]:
        entry = parse_entry(member.peer_id, 0, vector["value"])
        assert encode_op(entry.op, entry.seq, entry.prev) == vector["value"]
        assert canonical_op(entry.op, entry.seq).decode() == vector["canonical_json"]
        assert commitment(entry).hex() == vector["commitment"]
        assert (link_of(entry) or b"").hex() == vector["link"]
        entries.append(entry)
    head = check_head(conversation, member.peer_id, stream["head"])
    assert sign_head(member, conversation, head.value).record == stream["head"]
    assert verified_entries(entries, [(head.value.seq, head.value.link)]) == entries
    anchor = stream["anchor"]
    prev, signature = bytes.fromhex(anchor["prev"]), base64.b64decode(anchor["g"])
    assert sign_anchor(member, conversation, anchor["seq"], prev) == signature
    assert check_anchor(conversation, member.peer_id, member.public_key, anchor["seq"], prev, signature)
    assert not check_anchor(conversation, member.peer_id, member.public_key, anchor["seq"] + 16, prev, signature)
    fields = anchor["signed_fields_json"].encode()
    assert verify(member.public_key, signature, fields, context="stream anchor")


def test_a_deletion_finds_its_post_when_someone_put_entries_before_it() -> None:
    alice, bob, _ = signed_group()
    written = alice.post(Text("secret"), "alice")
    assert written.message_id is not None
    bob.apply_remote(written.update)
    doc: Doc[Any] = Doc()
    doc.apply_update(bob.diff())
    before = doc.get_state()
    doc.get("streams", type=Map)[f"{ALICE.peer_id}/0"].insert(0, _unchained(alice, 0))  # bob's, before hers
    alice.apply_remote(doc.get_update(before))
    alice.delete(written.message_id)
    assert "secret" not in str(stream_values(alice, ALICE.peer_id))
    fresh = Conversation.from_updates([alice.diff()], CAROL.peer_id, clock(), CAROL)
    assert shown(fresh) == [(ALICE.peer_id, None)]  # her post, deleted; not bob's


def test_the_update_check_keeps_the_heads_of_an_update_and_only_them() -> None:
    alice, _, _ = signed_group()
    update = alice.post(Text("hi"), "alice").update
    assert len(HEAD_FIELDS) == RECORD_ENTRIES  # the decoder picks heads out by their field count
    (record,) = check_update(update).records  # the post has as many fields, but no signature
    assert check_head(alice.id, ALICE.peer_id, decode_any(record)).value.seq == 0


def test_a_catch_up_from_recent_updates_carries_only_their_own_deletions() -> None:
    alice, bob, _ = signed_group()
    for number in range(2000):  # each overwrites alice's head: 2,000 deletions in her document
        bob.apply_remote(alice.post(Text(f"m{number}"), "alice").update)
    alice.post(Text("missed"), "alice")
    state = bob.state_vector()
    full = alice.diff(state)
    recent = alice.catch_up(state)
    assert recent is not None
    assert len(recent) < 1000 < 4000 < len(full)  # the diff carries the whole delete set
    assert texts_of(bob.apply_remote(recent).entries) == ["missed"]
    assert bob.state_vector() == alice.state_vector()
    # bob deleted alice's previous head himself, when the new one came: the same deletions
    assert check_update(bob.diff()).deletes == check_update(alice.diff()).deletes


def test_a_peer_that_was_not_here_lately_gets_a_diff() -> None:
    alice, bob, _ = signed_group()
    bob.apply_remote(alice.post(Text("seen"), "alice").update)
    state = bob.state_vector()
    alice.post(Text("x" * RECENT_UPDATE_BYTES), "alice")  # too large to keep: recent updates start again
    alice.post(Text("missed"), "alice")
    catch_up = alice.catch_up(state)
    assert catch_up == alice.diff(state)  # bob may lack what came before the new start
    bob.apply_remote(catch_up)
    assert bob.state_vector() == alice.state_vector()


def test_structs_that_waited_are_in_catch_ups_from_recent_updates_once_integrated() -> None:
    alice, bob, carol = signed_group()
    first, second = (bob.post(Text(text), "bob").update for text in ("one", "two"))
    alice.apply_remote(second)  # waits for the first
    alice.note_waiting(second)  # as the replica does
    carol.apply_remote(alice.post(Text("x" * RECENT_UPDATE_BYTES), "alice").update)  # recent updates start again
    alice.apply_remote(first)  # the second is integrated now, silently
    recent = alice.catch_up(carol.state_vector())
    assert recent is not None
    assert recent != alice.diff(carol.state_vector())  # from recent updates
    carol.apply_remote(recent)
    assert carol.state_vector() == alice.state_vector()
    assert [text for author, text in shown(carol) if author == BOB.peer_id] == ["one", "two"]


@given(
    text=st.text(),
    nickname=st.text(max_size=64),
    message_id=st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True),
    timestamp=st.integers(0, 2**53 - 1),
    seq=st.integers(0, 2**31),
)
def test_a_posts_canonical_json_written_directly_is_the_sorted_one(
    text: str, nickname: str, message_id: str, timestamp: int, seq: int
) -> None:
    # canonical_op writes a text post's keys in order itself; every other op's are sorted.
    op = Posted(message_id, timestamp, nickname, Text(text))
    assert canonical_op(op, seq) == canonical_fields(op, seq)
