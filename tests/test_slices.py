"""Large updates applied in slices: the same document, the same changes, nothing set aside."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import replace
from typing import Any

import pytest
from model_helpers import ALICE, BOB, CAROL, fixed_clock, group
from pycrdt import Array, Doc, Map, merge_updates, write_var_uint

import gigi_crdt.model.conversation as conversation_module
import gigi_crdt.model.slices as slices_module
import gigi_crdt.model.streams as streams_module
import gigi_crdt.replica._updates as updates_module
import gigi_crdt.store.compaction as compaction_module
import gigi_crdt.store.store as store_module
import gigi_crdt.store.worker as worker_module
from gigi_crdt import ConversationKind, Text
from gigi_crdt.model import Changes, Conversation, ReceiptKind
from gigi_crdt.model.gaps import Logged, PastGaps
from gigi_crdt.model.slices import NOTHING, SLICE_BYTES, Section, SlicePlan, joined, section_of, sliced
from gigi_crdt.model.ydecode import clocks_of, decode_update, decode_with_offsets
from gigi_crdt.model.yupdate import UpdateSummary, check_update
from gigi_crdt.replica import open_replica
from gigi_crdt.store import Record, Store
from gigi_crdt.store.database import DATABASE_NAME
from gigi_crdt.store.plans import PLAN_TAG, decode_plan, encode_plan

ROOTS = ("meta", "members", "streams", "acks", "heads")


NEWEST_CLIENT = 2**53 - 1  # Yjs lists a newer-looking client first: its structs come before those they hang on


def busy_history() -> tuple[bytes, bytes]:
    """A group where three members wrote, read, edited, deleted and renamed, and alice went
    on after a restart under a new client id (her new client's first entries hang on her
    old client's last ones, in the same bucket, and its title on the old title): carol's
    whole document, and every write merged (overwritten values still in it, deleted)."""
    alice, bob, carol = group()
    writes = [alice.diff()]
    for round_ in range(6):
        for writer, reader in ((alice, bob), (bob, carol), (carol, alice)):
            writes.append(writer.post(Text(f"{writer.local_peer} says {round_}"), writer.local_peer).update)
            for other in (alice, bob, carol):
                if other is not writer:
                    other.apply_remote(writer.diff(other.state_vector()))
            writes.append(reader.mark(ReceiptKind.READ, {writer.local_peer: round_ + 1}).update)
            writer.apply_remote(reader.diff(writer.state_vector()))
    writes.append(alice.set_title("renamed by alice").update)
    first = bob.history()[0]
    bob.apply_remote(alice.diff(bob.state_vector()))
    writes.append(bob.edit(bob.history()[1].id, Text("edited")).update)
    alice.apply_remote(bob.diff(alice.state_vector()))
    writes.append(alice.delete(first.id).update)
    logged = [Logged(alice.diff(), False)]
    restarted = Conversation.from_log(logged, ALICE, fixed_clock(1_800_000_000_000), client_id=NEWEST_CLIENT)
    for round_ in range(5):
        writes.append(restarted.post(Text(f"alice again {round_}"), ALICE).update)
    writes.append(restarted.set_title("renamed after the restart").update)
    for source in (restarted, bob):
        carol.apply_remote(source.diff(carol.state_vector()))
    return carol.diff(), merge_updates(*writes)


def contents(doc: Doc[Any]) -> dict[str, Any]:
    return {root: doc.get(root, type=Map).to_py() for root in ROOTS}


@pytest.fixture(scope="module")
def history() -> tuple[bytes, bytes]:
    return busy_history()


@pytest.fixture(params=["document", "merged writes"])
def whole(request: pytest.FixtureRequest, history: tuple[bytes, bytes]) -> bytes:
    return history[request.param == "merged writes"]


@pytest.mark.parametrize("size", [1, 40, 300, 2000])
def test_slices_integrate_in_order_and_make_the_same_document(whole: bytes, size: int) -> None:
    summary = check_update(whole, slice_bytes=size)
    plan = summary.slices
    assert plan is not None
    assert len(plan.slices) > 1
    doc: Doc[Any] = Doc()
    for piece, sections in zip(sliced(whole, plan), plan.slices, strict=True):
        doc.apply_update(piece)
        # Nothing set aside for a later slice (yrs would integrate it there, silently).
        reached = clocks_of(doc.get_state())
        assert all(reached.get(section.client, 0) >= section.reached for section in sections)
    reference: Doc[Any] = Doc()
    reference.apply_update(whole)
    assert clocks_of(doc.get_state()) == clocks_of(reference.get_state())
    assert contents(doc) == contents(reference)


def test_without_the_plan_s_order_a_slice_would_wait(whole: bytes) -> None:
    """Each client's structs whole, one client after another: in one order or the other,
    some wait for a later client's (alice's new client id hangs on her old one), which
    is what the plan's order avoids."""
    summary = check_update(whole, slice_bytes=1)
    assert summary.slices is not None
    clients = list(summary.clients)
    per_client = []
    for client in clients:
        mine = [section for sections in summary.slices.slices for section in sections if section.client == client]
        structs = sum(section.structs for section in mine)
        per_client.append(Section(client, mine[0].clock, structs, mine[0].start, mine[-1].end, mine[-1].reached))
    waited = []
    for order in (per_client, per_client[::-1]):
        doc: Doc[Any] = Doc()
        plan = SlicePlan(tuple((section,) for section in order), summary.slices.delete_set_at)
        waits = False
        for piece, (section,) in zip(sliced(whole, plan), plan.slices, strict=True):
            doc.apply_update(piece)
            waits |= clocks_of(doc.get_state()).get(section.client, 0) < summary.clients[section.client].clocks[1]
        waited.append(waits)
    assert any(waited)


def test_slices_that_wait_for_what_the_document_lacks_give_way_to_the_whole(history: tuple[bytes, bytes]) -> None:
    """Without alice's first client, her second one's structs wait (they hang on the
    first's): applied whole, all of them wait; the slices after the first that waits
    would start past a gap, so the rest is applied whole, and the document is the same."""
    whole = history[0]
    decoded, offsets, delete_set_at = decode_with_offsets(whole)
    (first_alice,) = check_update(whole).clients[NEWEST_CLIENT].foreign_anchors
    kept = [c for c in decoded.clients if c != first_alice]
    missing = joined(
        [
            section_of(
                first_alice,
                0,
                len(decoded.clients[first_alice]),
                whole[offsets[first_alice][0] : offsets[first_alice][-1]],
            )
        ],
        NOTHING,
    )
    lacking = joined(
        [
            section_of(c, decoded.clients[c][0].clock, len(decoded.clients[c]), whole[offsets[c][0] : offsets[c][-1]])
            for c in kept
        ],
        whole[delete_set_at:],
    )
    summary = check_update(lacking, slice_bytes=40)
    assert summary.slices is not None
    reference: Doc[Any] = Doc()
    reference.apply_update(lacking)
    applied: list[bytes] = []
    doc: Doc[Any] = Doc()
    PastGaps(doc, lambda d, update: applied.append(update) or d.apply_update(update)).integrate(
        lacking, gappy=False, slices=summary.slices
    )
    assert applied[-1] == lacking  # gave way
    assert len(applied) < len(summary.slices.slices) + 1
    assert clocks_of(doc.get_state()) == clocks_of(reference.get_state())
    assert contents(doc) == contents(reference)
    for target in (doc, reference):
        target.apply_update(missing)
    assert contents(doc) == contents(reference)
    assert clocks_of(doc.get_state()) == clocks_of(reference.get_state())


def changes_of(update: bytes, summary: UpdateSummary) -> tuple[Changes, Conversation]:
    doc = Conversation.from_updates([], BOB, fixed_clock())
    return doc.apply_remote(update, summary), doc


def by_author(changes: Changes) -> dict[str, list[tuple[int, object]]]:
    """Each author's entries, in order (authors come in the order their first event did)."""
    entries: dict[str, list[tuple[int, object]]] = {}
    for entry in changes.entries:
        entries.setdefault(entry.author, []).append((entry.seq, entry.op))
    return entries


def test_a_sliced_apply_reports_the_same_changes(whole: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    parse_entry = streams_module.parse_entry
    monkeypatch.setattr(streams_module, "parse_entry", lambda *args: parsed.append(args[0]) or parse_entry(*args))
    expected, reference = changes_of(whole, check_update(whole))
    whole_parses, parsed[:] = len(parsed), []
    summary = check_update(whole, slice_bytes=40)
    assert summary.slices is not None
    got, doc = changes_of(whole, summary)
    assert len(parsed) == whole_parses  # each entry read once, not again for each slice it grew in
    assert by_author(got) == by_author(expected)
    assert len(got.receipts) == len(expected.receipts)
    assert set(got.receipts) == set(expected.receipts)
    assert got.metadata_changed
    assert expected.metadata_changed
    assert [m.id for m in got.posted()] == [m.id for m in expected.posted()]
    assert doc.history() == reference.history()
    assert doc.metadata() == reference.metadata()


def test_small_updates_and_updates_with_a_gap_are_not_sliced(whole: bytes) -> None:
    assert check_update(whole, slice_bytes=len(whole)).slices is None
    assert check_update(whole).slices is None
    alice = group()[0]
    first, _, third = (alice.post(Text(text), ALICE).update for text in ("one", "two", "three"))
    assert check_update(merge_updates(first, third), slice_bytes=1).slices is None  # a Skip where "two" was
    assert check_update(merge_updates(first, _), slice_bytes=1).slices is not None


@pytest.fixture
def applies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the updates conversations apply, from now on."""
    applied: list[int] = []
    original = conversation_module._apply

    def counting(doc: Doc[Any], update: bytes) -> None:
        applied.append(len(update))
        original(doc, update)

    monkeypatch.setattr(conversation_module, "_apply", counting)
    return applied


def slice_at(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Updates over ``size`` bytes are merged in threads, in slices, and compaction plans
    snapshots over it in slices."""
    for module in (updates_module, compaction_module, worker_module):
        monkeypatch.setattr(module, "SLICE_BYTES", size)
    monkeypatch.setattr(updates_module, "IN_THREAD_BYTES", size)


async def test_a_replica_merges_a_large_update_in_slices_and_loads_it_so(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, whole: bytes, applies: list[int]
) -> None:
    slice_at(monkeypatch, 300)
    conversation = Conversation.from_updates([whole], CAROL, fixed_clock()).id
    reference = Conversation.from_updates([whole], BOB, fixed_clock())
    async with open_replica(tmp_path / "bob", nickname="bob", peer_id=BOB) as replica:
        changes = await replica.receive(conversation, whole, ALICE)
        assert len(applies) > 5
        assert sum(applies) > len(whole)
        history = await replica.history(conversation, limit=1000)
        rows = await replica._worker.read(replica._store.load_log, conversation)
    assert [m.id for m in history] == [m.id for m in reference.history()]
    assert len(changes.entries) == len(list(reference.entries()))
    # Its plan is stored beside it: loading it again applies it in slices, without decoding it.
    assert rows[0].update == whole
    assert rows[0].slices is not None
    assert rows[0].taken_in_slices  # a peer's: never merged with others as bytes
    assert [row.slices for row in rows[1:]] == [None] * (len(rows) - 1)  # bob's own receipts: small
    applies.clear()
    async with open_replica(tmp_path / "bob", nickname="bob", peer_id=BOB) as replica:
        assert await replica.export(conversation) == reference.history()
    assert len(applies) == len(rows[0].slices.slices) + len(rows) - 1


async def test_compaction_plans_how_loads_slice_its_snapshot(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, history: tuple[bytes, bytes], applies: list[int]
) -> None:
    whole = history[0]
    conversation = Conversation.from_updates([whole], CAROL, fixed_clock()).id
    reference = Conversation.from_updates([whole], BOB, fixed_clock())
    slice_at(monkeypatch, len(whole))
    async with open_replica(tmp_path / "bob", nickname="bob", peer_id=BOB) as replica:
        await replica.receive(conversation, whole, ALICE)  # too small to be sliced: stored without a plan
        assert {row.slices for row in await replica._worker.read(replica._store.load_log, conversation)} == {None}
        slice_at(monkeypatch, 300)
        await replica.compact(conversation)
        (row,) = await replica._worker.read(replica._store.load_log, conversation)
        assert row.slices is not None
        assert len(row.slices.slices) > 5
        assert not row.taken_in_slices  # a snapshot of ours
    applies.clear()
    async with open_replica(tmp_path / "bob", nickname="bob", peer_id=BOB) as replica:
        assert await replica.export(conversation) == reference.history()
    assert len(applies) == len(row.slices.slices)


def test_planning_a_long_chain_across_clients_walks_each_client_about_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """300 clients, each putting one value before the one the client before put: Yjs lists
    the last first, so each waits for the next listed. A planner that walked every client
    again after any progress would take 300 rounds of 300 walks (a crafted update can hold
    millions of clients)."""
    doc: Doc[Any] = Doc(client_id=1)
    doc.get("streams", type=Map)[f"{ALICE}/0"] = Array()
    state = doc.get_update()
    for client in range(2, 302):
        doc = Doc(client_id=client)
        doc.apply_update(state)
        doc.get("streams", type=Map)[f"{ALICE}/0"].insert(0, {"by": client})
        state = doc.get_update()
    walks: list[int] = []
    walk = slices_module._Planner.walk
    monkeypatch.setattr(
        slices_module._Planner, "walk", lambda planner, client: walks.append(client) or walk(planner, client)
    )
    summary = check_update(state, slice_bytes=50)
    assert summary.slices is not None
    assert len(walks) <= 2 * len(summary.clients)
    sliced_doc: Doc[Any] = Doc()
    for piece in sliced(state, summary.slices):
        sliced_doc.apply_update(piece)
    assert contents(sliced_doc) == contents(doc)


def test_a_stored_plan_reads_back_as_written_and_one_that_does_not_fit_is_refused(history: tuple[bytes, bytes]) -> None:
    whole = history[0]
    plan = check_update(whole, slice_bytes=300).slices
    assert plan is not None
    assert decode_plan(encode_plan(plan), whole) == plan
    assert decode_plan(encode_plan(plan), history[1]) is None  # another update's plan
    assert decode_plan(encode_plan(plan), whole[: plan.delete_set_at - 1]) is None
    first, *rest = plan.slices
    damaged_plans = [
        replace(plan, slices=(*plan.slices, (Section(1, 0, 1, 5, plan.delete_set_at + 1, 1),))),
        replace(plan, slices=tuple(rest)),  # structs left out
        replace(plan, slices=((first[0]._replace(start=first[0].start + 1), *first[1:]), *rest)),
        replace(plan, slices=((first[0]._replace(structs=first[0].structs + 1), *first[1:]), *rest)),
        replace(plan, slices=((first[0]._replace(client=first[0].client + 1), *first[1:]), *rest)),
        replace(plan, delete_set_at=plan.delete_set_at + 1),
        replace(plan, slices=()),
    ]
    for damaged in [*map(encode_plan, damaged_plans), PLAN_TAG, PLAN_TAG + b"\xc1", encode_plan(plan)[:-3]]:
        assert decode_plan(damaged, whole) is None


async def test_a_damaged_plan_loads_its_update_whole(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, whole: bytes, applies: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    slice_at(monkeypatch, 300)
    conversation = Conversation.from_updates([whole], CAROL, fixed_clock()).id
    async with open_replica(tmp_path / "bob", nickname="bob", peer_id=BOB) as replica:
        await replica.receive(conversation, whole, ALICE)
        expected = await replica.export(conversation)
    database = sqlite3.connect(tmp_path / "bob" / DATABASE_NAME)
    with database:
        changed = database.execute(
            "UPDATE yupdates SET metadata = substr(metadata, 1, length(metadata) - 3) WHERE yupdate = ?", (whole,)
        ).rowcount
    database.close()
    assert changed == 1
    applies.clear()
    async with open_replica(tmp_path / "bob", nickname="bob", peer_id=BOB) as replica:
        assert await replica.export(conversation) == expected
    assert len(whole) in applies  # applied whole, in one piece
    assert any("slice plan" in record.message and "damaged" in record.message for record in caplog.records)


@pytest.mark.parametrize("bound_blob_bytes", [store_module.BOUND_BLOB_BYTES, 0], ids=["bound", "blob-io"])
def test_a_plan_goes_only_beside_the_update_it_was_made_for(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, history: tuple[bytes, bytes], bound_blob_bytes: int
) -> None:
    monkeypatch.setattr(store_module, "BOUND_BLOB_BYTES", bound_blob_bytes)  # 0: every update written as a blob
    whole, merged = history
    plan = check_update(whole, slice_bytes=300).slices
    assert plan is not None
    doc = Conversation.from_updates([whole], BOB, fixed_clock())
    store = Store.open(tmp_path)
    try:
        store.commit([Record(doc.id, merged, Changes(), doc.metadata(), list(doc.members().values()))])
        store.set_slice_plan(doc.id, whole, plan)  # planned for a snapshot since replaced by ``merged``
        assert [(row.update, row.slices) for row in store.load_log(doc.id)] == [(merged, None)]
        fitting = check_update(merged, slice_bytes=300).slices
        assert fitting is not None
        store.set_slice_plan(doc.id, merged, fitting)
        assert [row.slices for row in store.load_log(doc.id)] == [fitting]
        with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as database, database:
            database.execute("UPDATE yupdates SET metadata = ?", (PLAN_TAG + b"damaged",))
        assert [row.slices for row in store.load_log(doc.id)] == [None]
        store.set_slice_plan(doc.id, merged, fitting)  # a damaged plan is replaced
        assert [row.slices for row in store.load_log(doc.id)] == [fitting]
        # A row that left structs waiting keeps its mark: its update is cut at gaps, not sliced.
        store.commit([Record(doc.id, whole, Changes(), waiting=True)])
        store.set_slice_plan(doc.id, whole, plan)
        assert [(row.waiting, row.slices) for row in store.load_log(doc.id)][1] == (True, None)
        # A compaction's swap writes the snapshot and what came after it again.
        store.replace_log(doc.id, 0, whole, False)
        assert [(row.update, row.waiting) for row in store.load_log(doc.id)] == [
            (whole, False),
            (merged, False),
            (whole, True),
        ]
    finally:
        store.close()


def _overwrite_and_name_as_parent(item: tuple[int, int]) -> bytes:
    """An update in which client 1 overwrites ``item`` (a receipt counter: no type) and
    client 2 names it as its parent, client 1 listed first. yrs refuses the parent whole
    (it takes the higher client id first); in slices, in the listed order, the overwrite
    comes first and the parent is deleted by then, which yrs allows."""
    owner, clock = write_var_uint(item[0]), write_var_uint(item[1])
    overwrite = b"\x88" + owner + clock + b"\x01\x7d\x07"  # origin: the item; content: Any 7
    child = b"\x08\x00" + owner + clock + b"\x01\x7e"  # parent: the item; content: Any null
    return b"\x02" + section_of(1, 0, 1, overwrite) + section_of(2, 0, 1, child) + NOTHING


async def test_an_update_taken_in_slices_that_yrs_refuses_whole_still_loads_after_compaction(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction that merged it with the log's other updates as bytes made a snapshot
    that no load could apply: the conversation could not be opened again."""
    async with (
        open_replica(tmp_path / "alice", nickname="alice", peer_id=ALICE) as alice,
        open_replica(tmp_path / "bob", nickname="bob", peer_id=BOB) as bob,
    ):
        conversation = await alice.create_conversation(ConversationKind.GROUP, others={BOB: "bob"})
        await alice.send(conversation, Text("hello"))
        await bob.receive(conversation, await alice.diff(conversation, None), ALICE)  # bob's receipt follows
        held = await bob.diff(conversation, None)
        receipt = next(
            (s.client, s.clock)
            for structs in decode_update(held).clients.values()
            for s in structs
            if s.parent == "acks"
        )
        crafted = _overwrite_and_name_as_parent(receipt)
        whole: Doc[Any] = Doc()
        whole.apply_update(held)
        with pytest.raises(Exception, match="must be deleted or shared ref type"):
            whole.apply_update(crafted)
        slice_at(monkeypatch, 4)
        await bob.receive(conversation, crafted, ALICE)  # taken in slices
        slice_at(monkeypatch, SLICE_BYTES)  # the snapshot is small: loads apply it whole
        await bob.send(conversation, Text("after it"))
        # As in the background: no message was deleted, so no garbage to collect.
        await bob._worker.compact(conversation)
    async with open_replica(tmp_path / "bob", nickname="bob", peer_id=BOB) as bob:
        await bob.send(conversation, Text("once loaded again"))  # loads the document
        texts = [message.content for message in await bob.export(conversation)]
    assert texts == [Text("hello"), Text("after it"), Text("once loaded again")]
