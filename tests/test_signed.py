"""Signed conversations: only what the creator signed (or a member's own leave) counts, on every peer.

The forgeries are written the way a malicious member would: straight into the Yjs
document with pycrdt, under its own client id, bypassing the model's checks.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from forgery import forge_member_records, forge_records, signed_copies
from forgery import ticking_clock as clock
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from gigi_crdt import NotAllowed, SchemaError, Text
from gigi_crdt.identity import Identity
from gigi_crdt.model import Conversation, ConversationKind, Role
from gigi_crdt.model.metadata import Member, Metadata, encode_member
from gigi_crdt.model.signed import (
    CHARTER,
    check_charter,
    check_member,
    is_creator_key,
    is_signed,
    sign_charter,
    sign_member,
    signed_conversation_id,
)
from gigi_crdt.signatures import verify

ALICE, BOB, CAROL, MALLORY = (Identity.generate() for _ in range(4))


def signed_group() -> tuple[Conversation, Conversation]:
    """A signed group created by alice, with bob as a member."""
    alice, bob = signed_copies({"alice": ALICE, "bob": BOB})
    return alice, bob


def forge(holder: Conversation, records: dict[str, Any]) -> bytes:
    """An update writing ``records`` (peer id -> raw member record) over ``holder``'s document."""
    return forge_member_records(holder.diff(), records)


def fresh_peer(source: Conversation) -> Conversation:
    """Someone who learns the whole document from ``source`` now, having seen nothing before."""
    return Conversation.from_updates([source.diff()], CAROL.peer_id, clock(), CAROL)


def signed_records(conversation: Conversation) -> dict[tuple[str, str], Any]:
    """Every signed record ``conversation``'s document shows, by place."""
    doc: Doc[Any] = Doc()
    doc.apply_update(conversation.diff())
    records = {("members", peer_id): raw for peer_id, raw in doc.get("members", type=Map).to_py().items()}
    return records | {("meta", CHARTER): doc.get("meta", type=Map)[CHARTER]}


def test_a_signed_conversation_id_commits_to_its_creator() -> None:
    alice, _ = signed_group()
    assert is_signed(alice.id)
    assert is_creator_key(alice.id, ALICE.public_key)
    assert not is_creator_key(alice.id, BOB.public_key)
    unsigned, _ = Conversation.create(
        kind=ConversationKind.GROUP, title="g", local_peer=ALICE.peer_id, nickname="alice", clock=clock()
    )
    assert not is_signed(unsigned.id)


def test_the_creators_changes_hold_on_every_peer() -> None:
    alice, bob = signed_group()
    bob.apply_remote(alice.add_member(CAROL.peer_id, "carol").update)
    assert bob.is_member(CAROL.peer_id)
    bob.apply_remote(alice.remove_member(CAROL.peer_id).update)
    assert bob.members()[CAROL.peer_id].removed
    assert fresh_peer(bob).members() == alice.members() == bob.members()


def _unsigned_outsider() -> dict[str, Any]:
    return encode_member(Member(MALLORY.peer_id, "mallory", Role.MEMBER, 1_800_000_000_000))


def _outsider_signed_by_bob(conversation: str) -> dict[str, Any]:
    return sign_member(BOB, conversation, Member(MALLORY.peer_id, "mallory", Role.MEMBER, 1_800_000_000_000))


def _bob_made_admin_by_bob(conversation: str) -> dict[str, Any]:
    return sign_member(BOB, conversation, Member(BOB.peer_id, "bob", Role.ADMIN, 1_800_000_000_000))


def _alices_record_edited(conversation: str) -> dict[str, Any]:
    record = sign_member(ALICE, conversation, Member(MALLORY.peer_id, "mallory", Role.MEMBER, 1_800_000_000_000))
    record["role"] = Role.ADMIN.value  # the signature covers the role
    return record


def _claims_alice_signed_it(conversation: str) -> dict[str, Any]:
    record = _outsider_signed_by_bob(conversation)
    record["by"] = ALICE.peer_id  # but the key and signature are bob's
    return record


@pytest.mark.parametrize(
    ("forged_for", "make"),
    [
        (MALLORY.peer_id, lambda conversation: _unsigned_outsider()),
        (MALLORY.peer_id, _outsider_signed_by_bob),
        (BOB.peer_id, _bob_made_admin_by_bob),
        (MALLORY.peer_id, _alices_record_edited),
        (MALLORY.peer_id, _claims_alice_signed_it),
    ],
    ids=["unsigned", "signed-by-a-member", "self-promotion", "edited-after-signing", "wrong-signer-named"],
)
def test_a_member_record_the_creator_did_not_sign_changes_nothing(forged_for: str, make: Any) -> None:
    alice, bob = signed_group()
    before = alice.members()
    changes = alice.apply_remote(forge(bob, {forged_for: make(alice.id)}))
    assert changes.metadata_changed  # it did reach the document...
    assert alice.members() == before  # ...and counts for nothing
    assert not alice.is_member(MALLORY.peer_id)
    assert alice.members()[BOB.peer_id].role is Role.MEMBER
    alice.restore_records()  # what a replica does next: put back a record the forgery hid
    assert fresh_peer(alice).members() == before  # nor for someone who sees only the document


def test_a_replayed_older_record_does_not_undo_a_removal_and_is_overwritten() -> None:
    alice, bob = signed_group()
    bob.apply_remote(alice.add_member(CAROL.peer_id, "carol").update)
    add_record = signed_records(alice)["members", CAROL.peer_id]  # the signed "carol joins" record
    bob.apply_remote(alice.remove_member(CAROL.peer_id).update)
    replay = forge(bob, {CAROL.peer_id: add_record})  # put the signed add back
    alice.apply_remote(replay)
    assert alice.members()[CAROL.peer_id].removed
    assert fresh_peer(alice).is_member(CAROL.peer_id)  # what the document alone now says
    restored = alice.restore_records()
    assert restored is not None
    assert fresh_peer(alice).members()[CAROL.peer_id].removed
    assert alice.restore_records() is None  # done once


def test_the_creators_own_record_overwritten_by_a_forgery_is_restored() -> None:
    alice, bob = signed_group()
    alice.apply_remote(forge(bob, {ALICE.peer_id: encode_member(Member(ALICE.peer_id, "alice", Role.MEMBER, 1))}))
    assert alice.members()[ALICE.peer_id].role is Role.ADMIN
    assert ALICE.peer_id not in fresh_peer(alice).members()  # the document shows only the forgery
    restored = alice.restore_records()
    assert restored is not None
    assert fresh_peer(alice).members()[ALICE.peer_id].role is Role.ADMIN


def test_a_deleted_member_record_is_still_known_and_written_back() -> None:
    alice, bob = signed_group()
    doc: Doc[Any] = Doc()
    doc.apply_update(bob.diff())
    before = doc.get_state()
    del doc.get("members", type=Map)[BOB.peer_id]
    alice.apply_remote(doc.get_update(before))
    assert BOB.peer_id not in fresh_peer(alice).members()  # gone from the document...
    assert alice.is_member(BOB.peer_id)  # ...not from what alice holds
    assert alice.restore_records() is not None
    assert fresh_peer(alice).is_member(BOB.peer_id)


def test_a_member_signs_its_own_leave_but_cannot_come_back_by_itself() -> None:
    alice, bob = signed_group()
    alice.apply_remote(bob.remove_member(BOB.peer_id).update)
    assert alice.has_left(BOB.peer_id)
    back = sign_member(BOB, alice.id, Member(BOB.peer_id, "bob", Role.MEMBER, 1_900_000_000_000))
    alice.apply_remote(forge(bob, {BOB.peer_id: back}))
    assert alice.has_left(BOB.peer_id)
    alice.add_member(BOB.peer_id, "bob")  # the creator can take it back
    assert alice.is_member(BOB.peer_id)


def test_a_members_leave_does_not_count_for_another_member() -> None:
    alice, bob = signed_group()
    alice.add_member(CAROL.peer_id, "carol")
    bob.apply_remote(alice.diff())
    gone = sign_member(BOB, alice.id, Member(CAROL.peer_id, "carol", Role.MEMBER, 1, 1_900_000_000_000))
    alice.apply_remote(forge(bob, {CAROL.peer_id: gone}))
    assert alice.is_member(CAROL.peer_id)


def test_only_the_creator_changes_the_member_list_and_the_title() -> None:
    alice, bob = signed_group()
    dave = Identity.generate()
    alice.add_member(dave.peer_id, "dave", Role.ADMIN)
    dave_view = Conversation.from_updates([alice.diff()], dave.peer_id, clock(), dave)
    assert dave_view.members()[dave.peer_id].role is Role.ADMIN
    with pytest.raises(NotAllowed, match="creator"):
        dave_view.add_member(MALLORY.peer_id, "mallory")
    with pytest.raises(NotAllowed, match="creator"):
        dave_view.remove_member(BOB.peer_id)
    with pytest.raises(NotAllowed, match="creator"):
        dave_view.set_title("renamed")
    alice.set_title("renamed")
    bob.apply_remote(alice.diff(bob.state_vector()))  # dave's record too: it came first
    assert bob.metadata().title == "renamed"


def test_a_replica_without_a_key_cannot_write_member_records_of_a_signed_conversation() -> None:
    alice, _ = signed_group()
    keyless = Conversation.from_updates([alice.diff()], BOB.peer_id, clock())
    with pytest.raises(NotAllowed, match="identity key"):
        keyless.remove_member(BOB.peer_id)
    assert keyless.is_member(BOB.peer_id)


def test_a_signer_must_be_the_local_peer() -> None:
    with pytest.raises(ValueError, match="not the local peer"):
        Conversation(Doc(), BOB.peer_id, clock(), ALICE)


# -- the charter ------------------------------------------------------------------------------


def test_a_member_cannot_change_the_retention_and_so_expire_the_history() -> None:
    alice, bob = signed_group()
    alice.post(Text("keep me"), "alice")
    bob.apply_remote(alice.diff())
    meta = alice.metadata()
    shortened = Metadata(meta.id, meta.kind, "mine now", meta.created_at, 0)
    for forged in (
        {("meta", "retention_days"): 0, ("meta", "title"): "mine now"},  # the plain fields
        {("meta", CHARTER): sign_charter(BOB, shortened, 1_900_000_000_000_000)},  # a charter bob signed
    ):
        alice.apply_remote(forge_records(bob.diff(), forged))
        assert alice.metadata() == meta
        assert alice.retention_cutoff() is None
        alice.expire()
        assert [m.content for m in alice.history()] == [Text("keep me")]


def test_an_older_charter_put_back_is_overwritten_and_a_deleted_one_written_back() -> None:
    alice, bob = signed_group()
    first = signed_records(alice)["meta", CHARTER]
    bob.apply_remote(alice.set_title("second").update)
    alice.apply_remote(forge_records(bob.diff(), {("meta", CHARTER): first}))
    assert alice.metadata().title == "second"
    assert fresh_peer(alice).metadata().title == "g"  # what the document alone says now
    assert alice.restore_records() is not None
    assert fresh_peer(alice).metadata().title == "second"
    doc: Doc[Any] = Doc()
    doc.apply_update(alice.diff())
    before = doc.get_state()
    del doc.get("meta", type=Map)[CHARTER]
    bob.apply_remote(doc.get_update(before))
    assert bob.metadata().title == "second"
    assert bob.restore_records() is not None
    assert fresh_peer(bob).metadata().title == "second"


# -- convergence under any delivery order ---------------------------------------------------

PEOPLE = {CAROL.peer_id: "carol", MALLORY.peer_id: "mallory"}
actions = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "bob leaves", "rename", "replay"]), st.sampled_from(sorted(PEOPLE)), st.data()
    ),
    min_size=1,
    max_size=8,
)


def deliver(replica: Conversation, update: bytes) -> list[bytes]:
    """What a replica does with a remote update: apply, note what waits, restore records."""
    changes = replica.apply_remote(update)
    replica.note_waiting(update)
    restored = replica.restore_records() if changes.metadata_changed and replica.is_member(replica.local_peer) else None
    return [] if restored is None else [restored.update]


@settings(max_examples=60, deadline=None)
@given(actions, st.randoms(use_true_random=False))
def test_every_replica_ends_with_the_newest_valid_records(steps: list[Any], rng: Any) -> None:
    shared = clock()  # one clock: record versions follow the order of the steps
    alice, created = Conversation.create(
        kind=ConversationKind.GROUP,
        title="g",
        local_peer=ALICE.peer_id,
        nickname="alice",
        clock=shared,
        others={BOB.peer_id: "bob"},
        signer=ALICE,
    )
    bob_author = Conversation.from_updates([created.update], BOB.peer_id, shared, BOB)
    records_seen: list[tuple[tuple[str, str], Any]] = []  # every valid record written, to replay
    updates: list[bytes] = []
    for action, who, data in steps:
        if action == "add" and not alice.is_member(who):
            written = alice.add_member(who, PEOPLE[who])
        elif action == "remove" and alice.is_member(who):
            written = alice.remove_member(who)
        elif action == "bob leaves" and bob_author.is_member(BOB.peer_id):
            written = bob_author.remove_member(BOB.peer_id)
            alice.apply_remote(written.update)
        elif action == "rename":
            written = alice.set_title(f"title {len(updates)}")
        elif action == "replay" and records_seen:
            place, record = data.draw(st.sampled_from(records_seen))
            updates.append(forge_records(alice.diff(), {place: record}))
            continue
        else:
            continue
        bob_author.apply_remote(written.update)
        updates.append(written.update)
        records_seen.extend(item for item in signed_records(alice).items() if item not in records_seen)
    truth, title = alice.members(), alice.metadata().title
    bob = Conversation.from_updates([created.update], BOB.peer_id, clock(), BOB)
    dave_key = Identity.generate()
    observer = Conversation.from_updates([created.update], dave_key.peer_id, clock(), dave_key)
    replicas = [alice, bob, observer]
    outbox: list[tuple[Conversation, bytes]] = []
    for receiver in (bob, observer):
        for update in rng.sample(updates, len(updates)):
            outbox += [(receiver, restore) for restore in deliver(receiver, update)]
    for update in updates:  # alice sees the replays too (her own updates are no news)
        outbox += [(alice, restore) for restore in deliver(alice, update)]
    for _ in range(10):  # restores go to everyone, then everyone catches up with everyone
        for sender, restore in outbox:
            for receiver in replicas:
                if receiver is not sender:
                    deliver(receiver, restore)
        outbox = []
        for sender in replicas:
            for receiver in replicas:
                if receiver is not sender:
                    outbox += [(receiver, restore) for restore in deliver(receiver, sender.diff())]
        if not outbox:
            break
    assert (alice.members(), alice.metadata().title) == (truth, title)  # what the creator signed holds for it...
    for replica in replicas:
        assert (replica.members(), replica.metadata().title) == (truth, title)  # ...and for everyone
        # and the documents show it, for whoever joins later:
        assert fresh_peer(replica).members() == truth
        assert fresh_peer(replica).metadata().title == title


# -- golden vectors ---------------------------------------------------------------------------

VECTOR_FILE = Path(__file__).resolve().parent.parent / "protocols" / "vectors" / "signed-records.json"
SIGNED_VECTORS = json.loads(VECTOR_FILE.read_text())


def vector_identity(who: str) -> Identity:
    seed = bytes.fromhex(SIGNED_VECTORS[who]["private_key_seed"])
    identity = Identity(Ed25519PrivateKey.from_private_bytes(seed))
    assert identity.public_key.hex() == SIGNED_VECTORS[who]["public_key"]
    assert identity.peer_id == SIGNED_VECTORS[who]["peer_id"]
    return identity


def check_vector_record(conversation: str, vector: dict[str, Any], record: dict[str, Any]) -> Any:
    if vector["root"] == "meta":
        return check_charter(conversation, record)
    return check_member(conversation, vector["key"], record)


def test_signed_record_vectors_are_what_we_sign_and_what_we_accept() -> None:
    creator, member = vector_identity("creator"), vector_identity("member")
    conversation = SIGNED_VECTORS["conversation"]["id"]
    nonce = bytes.fromhex(SIGNED_VECTORS["conversation"]["nonce"])
    assert signed_conversation_id(creator.public_key, nonce) == conversation
    signers = {creator.peer_id: creator, member.peer_id: member}
    for vector in SIGNED_VECTORS["records"]:
        record = vector["record"]
        signer = signers[record["by"]]
        checked = check_vector_record(conversation, vector, record)
        if vector["root"] == "meta":
            remade = sign_charter(signer, checked.value, record["at"])
        else:
            remade = sign_member(signer, conversation, checked.value)
        assert remade == record  # Ed25519 is deterministic: same key and bytes, same signature
        fields = vector["signed_fields_json"].encode()
        assert bytes.fromhex(vector["signed_message"]).endswith(fields)
        assert verify(signer.public_key, base64.b64decode(record["sig"]), fields, context=vector["context"])
        tampered = record | {"nick" if vector["root"] == "members" else "title": "someone else"}
        with pytest.raises(SchemaError):
            check_vector_record(conversation, vector, tampered)
