"""The replica: documents and the SQLite store together, under trio."""

from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from forgery import forge_entries, forge_member_records, forge_records
from hostile import hostile_updates
from pycrdt import Doc, Map, get_update, merge_updates
from sync_helpers import Recorder

import gigi_crdt.replica._updates as updates_module
from gigi_crdt import (
    ConversationKind,
    GigiError,
    NotAllowed,
    ReceiptKind,
    Replica,
    SchemaError,
    StoreInUse,
    Text,
    UnknownConversation,
    open_replica,
)
from gigi_crdt.identity import Identity
from gigi_crdt.model import Changes, Conversation, HybridClock, UnsafeUpdate
from gigi_crdt.model.catchup import RECENT_UPDATE_BYTES
from gigi_crdt.model.gaps import Logged
from gigi_crdt.model.ops import Posted, encode_op
from gigi_crdt.model.yupdate import check_update
from gigi_crdt.protocol.yproto import decode_state_vector
from gigi_crdt.replica import (
    ACKNOWLEDGE_DELAY,
    ACKNOWLEDGE_RETRY,
    EMPTY_UPDATE,
    REST_AFTER,
    RESTORE_INTERVAL,
    RETENTION_EVERY,
    RETENTION_FIRST,
    StoredUpdate,
)
from gigi_crdt.store import Record, Store, compaction, index, worker
from gigi_crdt.store.compaction import build_snapshot, still_waiting
from gigi_crdt.store.database import DATABASE_NAME


async def sync(a: Replica, b: Replica, conversation: str) -> None:
    """Both ways, by state vector: what the sync engine does on connect."""
    for source, target in ((a, b), (b, a)):
        try:
            state: bytes | None = await target.state_vector(conversation)
        except UnknownConversation:
            state = None
        await target.receive(conversation, await source.diff(conversation, state))


async def direct(alice: Replica, bob: Replica) -> str:
    conversation = await alice.create_conversation(ConversationKind.DIRECT, others={bob.peer_id: "bob"})
    await sync(alice, bob, conversation)
    return conversation


@contextlib.asynccontextmanager
async def direct_pair(tmp_path: Path) -> AsyncIterator[tuple[Replica, Replica, str]]:
    """alice's and bob's replicas and their synced direct conversation; documents rest
    only when the test calls ``rest_idle``."""
    async with (
        open_replica(tmp_path / "a", nickname="alice", rest_after=None) as alice,
        open_replica(tmp_path / "b", nickname="bob", rest_after=None) as bob,
    ):
        yield alice, bob, await direct(alice, bob)


class LocalWrites(Recorder):
    """A ``Recorder`` that also tells when the replica stored a write of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.written = trio.Event()

    def offer(self, stored: StoredUpdate) -> None:
        super().offer(stored)
        if stored.origin is None:
            self.written.set()


def texts(messages: list) -> list[str | None]:  # type: ignore[type-arg]
    return [m.content.text if isinstance(m.content, Text) else None for m in messages]


async def test_messages_survive_reopening(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "a", nickname="alice") as alice:
        conversation = await alice.create_conversation(ConversationKind.DIRECT, others={"bob-peer-0002": "bob"})
        for i in range(5):
            await alice.send(conversation, Text(f"m{i}"))
        peer_id = alice.peer_id
    async with open_replica(tmp_path / "a", nickname="alice") as again:
        assert again.peer_id == peer_id
        # Served from the index: no document is loaded for this.
        assert texts(await again.history(conversation)) == [f"m{i}" for i in range(5)]
        assert not again.is_loaded(conversation)
        assert texts(await again.export(conversation)) == [f"m{i}" for i in range(5)]
        await again.send(conversation, Text("after reopening"))
        assert texts(await again.history(conversation, limit=2)) == ["m4", "after reopening"]


async def test_offline_peer_catches_up_in_order_and_receipts_flow_back(tmp_path: Path) -> None:
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        sent = [await alice.send(conversation, Text(f"offline {i}")) for i in range(1000)]
        assert await bob.unread_count(conversation) == 0
        await sync(alice, bob, conversation)
        history = await bob.history(conversation, limit=2000)
        assert [m.id for m in history] == sent
        assert await bob.unread_count(conversation) == 1000
        last = history[-1]
        assert (await alice.receipts(conversation, last))[ReceiptKind.DELIVERED] == [bob.peer_id]
        assert (await alice.receipts(conversation, last))[ReceiptKind.READ] == []
        await bob.mark_read(conversation, history[499].id)
        assert await bob.unread_count(conversation) == 500
        await sync(alice, bob, conversation)
        assert (await alice.receipts(conversation, history[499]))[ReceiptKind.READ] == [bob.peer_id]
        assert (await alice.receipts(conversation, history[500]))[ReceiptKind.READ] == []


async def receive_unacknowledged(alice: Replica, bob: Replica, conversation: str, text: str) -> Changes:
    """Alice sends ``text``; bob stores it without acknowledging it."""
    await alice.send(conversation, Text(text))
    update = await alice.diff(conversation, await bob.state_vector(conversation))
    return await bob.receive(conversation, update, origin=alice.peer_id, acknowledge=False)


async def delivered_to(alice: Replica, conversation: str) -> list[str]:
    """Who alice has a delivered receipt from for her latest message."""
    last = (await alice.history(conversation))[-1]
    return (await alice.receipts(conversation, last))[ReceiptKind.DELIVERED]


async def test_queued_delivered_receipts_are_written_together_in_the_background(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "a", nickname="alice") as alice:
        async with open_replica(tmp_path / "b", nickname="bob") as bob:
            conversation = await direct(alice, bob)
            heard = LocalWrites()
            bob.add_listener(heard)
            received = [await receive_unacknowledged(alice, bob, conversation, f"m{i}") for i in range(3)]
            for changes in received:
                bob.acknowledge_nowait(conversation, changes)
            assert heard.local == []  # queued, not written in the caller's task
            with trio.fail_after(10):
                await heard.written.wait()
            await sync(alice, bob, conversation)
            assert await delivered_to(alice, conversation) == [bob.peer_id]
        assert len(heard.local) == 1  # one receipt write for the three updates


async def test_delivered_receipts_queued_shortly_after_another_share_its_write(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with open_replica(tmp_path / "a", nickname="alice") as alice:
        async with open_replica(tmp_path / "b", nickname="bob") as bob:
            conversation = await direct(alice, bob)
            heard = LocalWrites()
            bob.add_listener(heard)
            bob.acknowledge_nowait(conversation, await receive_unacknowledged(alice, bob, conversation, "one"))
            await trio.testing.wait_all_tasks_blocked()  # the writer woke, and waits for more
            bob.acknowledge_nowait(conversation, await receive_unacknowledged(alice, bob, conversation, "two"))
            assert bob.acknowledging
            mock_clock.jump(ACKNOWLEDGE_DELAY)  # the clock stood still meanwhile
            await heard.written.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert not bob.acknowledging
            await sync(alice, bob, conversation)
            assert await delivered_to(alice, conversation) == [bob.peer_id]  # up to "two"
        assert len(heard.local) == 1


class Failures(logging.Handler):
    """Sets ``seen`` when a record whose message contains ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_delivered_receipts_whose_write_failed_are_tried_again(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    failures = Failures("not written yet")
    logging.getLogger("gigi_crdt.replica").addHandler(failures)
    try:
        async with open_replica(tmp_path / "a", nickname="alice") as alice:
            async with open_replica(tmp_path / "b", nickname="bob") as bob:
                conversation = await direct(alice, bob)
                changes = await receive_unacknowledged(alice, bob, conversation, "hello")
                heard = LocalWrites()
                bob.add_listener(heard)
                other = sqlite3.connect(tmp_path / "b" / DATABASE_NAME, isolation_level=None)
                other.execute("BEGIN IMMEDIATE")  # another writer holds the lock: bob's write fails
                try:
                    bob.acknowledge_nowait(conversation, changes)
                    await trio.testing.wait_all_tasks_blocked()
                    mock_clock.jump(ACKNOWLEDGE_DELAY)
                    await failures.seen.wait()
                finally:
                    other.execute("ROLLBACK")
                    other.close()
                assert bob.acknowledging  # queued again: no other receipt will come to take it along
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(ACKNOWLEDGE_RETRY)
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(ACKNOWLEDGE_DELAY)
                await heard.written.wait()
                await sync(alice, bob, conversation)
                assert await delivered_to(alice, conversation) == [bob.peer_id]
    finally:
        logging.getLogger("gigi_crdt.replica").removeHandler(failures)


async def test_queued_delivered_receipts_are_written_on_closing(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "a", nickname="alice") as alice:
        async with open_replica(tmp_path / "b", nickname="bob") as bob:
            conversation = await direct(alice, bob)
            changes = await receive_unacknowledged(alice, bob, conversation, "hello")
            bob.acknowledge_nowait(conversation, changes)  # and close at once
        async with open_replica(tmp_path / "b", nickname="bob") as bob:
            await sync(alice, bob, conversation)
        assert await delivered_to(alice, conversation) == [bob.peer_id]


async def test_delivered_receipts_never_written_are_written_when_the_conversation_loads(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "a", nickname="alice") as alice:
        async with open_replica(tmp_path / "b", nickname="bob") as bob:
            conversation = await direct(alice, bob)
            await receive_unacknowledged(alice, bob, conversation, "hello")  # and never acknowledge it
        async with open_replica(tmp_path / "b", nickname="bob") as bob:
            heard = LocalWrites()
            bob.add_listener(heard)
            await bob.state_vector(conversation)  # loads the document
            with trio.fail_after(10):
                await heard.written.wait()
            await sync(alice, bob, conversation)
        assert await delivered_to(alice, conversation) == [bob.peer_id]


async def test_paging_search_edit_delete_react_through_the_index(tmp_path: Path) -> None:
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        ids = [
            await alice.send(conversation, Text(f"note {i} about kayaks" if i % 10 == 0 else f"n{i}"))
            for i in range(60)
        ]
        await alice.edit(conversation, ids[10], Text("now about canoes"))
        await alice.delete(conversation, ids[20])
        await sync(alice, bob, conversation)
        await bob.react(conversation, ids[0], "🛶")
        await sync(alice, bob, conversation)
        for replica in (alice, bob):
            newest = await replica.history(conversation, limit=25)
            older = await replica.history(conversation, before=newest[0], limit=50)
            assert [m.id for m in older + newest] == ids
            found = await replica.search("kayaks", conversation)
            assert sorted(m.id for _, m in found) == sorted(ids[i] for i in (0, 30, 40, 50))
            assert [m.id for _, m in await replica.search("canoes")] == [ids[10]]
            assert (await replica.history(conversation, limit=60))[20].deleted
            assert (await replica.history(conversation, limit=60))[0].reactions == {"🛶": frozenset({bob.peer_id})}
            # The index and the document agree exactly.
            assert await replica.history(conversation, limit=100) == await replica.export(conversation)


async def test_compaction_keeps_history_and_drops_deleted_text(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "a", nickname="alice") as alice:
        conversation = await alice.create_conversation(ConversationKind.DIRECT, others={"bob-peer-0002": "bob"})
        secret = await alice.send(conversation, Text("the-secret-word"))
        for i in range(300):
            await alice.send(conversation, Text(f"m{i}"))
        await alice.delete(conversation, secret)
        await alice.compact(conversation)
        before = await alice.history(conversation, limit=400)
    database = tmp_path / "a" / "gigi.sqlite3"
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM yupdates WHERE path = ?", (conversation,)).fetchone()[0] == 1
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
    assert b"the-secret-word" not in database.read_bytes()
    async with open_replica(tmp_path / "a", nickname="alice") as again:
        assert await again.export(conversation) == before
        assert await again.history(conversation, limit=400) == before


async def test_rebuilt_index_matches_the_original(tmp_path: Path) -> None:
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        for i in range(20):
            await (alice if i % 3 else bob).send(conversation, Text(f"m{i}"))
            await sync(alice, bob, conversation)
        await bob.mark_read(conversation)
        await sync(alice, bob, conversation)
        before = (
            await alice.history(conversation),
            await alice.unread_count(conversation),
            await bob.unread_count(conversation),
        )
        await alice.rebuild_index(conversation)
        after = (
            await alice.history(conversation),
            await alice.unread_count(conversation),
            await bob.unread_count(conversation),
        )
        assert before == after


async def test_retention_expires_old_messages_on_every_peer(tmp_path: Path) -> None:
    day = 24 * 60 * 60 * 1000
    now = [1_700_000_000_000]
    async with (
        open_replica(tmp_path / "a", nickname="alice", now_ms=lambda: now[0]) as alice,
        open_replica(tmp_path / "b", nickname="bob", now_ms=lambda: now[0]) as bob,
    ):
        conversation = await alice.create_conversation(
            ConversationKind.GROUP, others={bob.peer_id: "bob", "carol-peer-03": "carol"}, retention_days=7
        )
        for i in range(300):  # more than one bucket
            await alice.send(conversation, Text(f"old-message-{i}"))
        await sync(alice, bob, conversation)
        now[0] += 10 * day
        await alice.send(conversation, Text("recent"))
        await alice.compact(conversation)
        # Gone from alice's index and document; the full old bucket left the CRDT itself.
        assert texts(await alice.history(conversation, limit=500)) == ["recent"]
        assert texts(await alice.export(conversation)) == ["recent"]
        assert b"old-message-7" not in await alice.diff(conversation, None)
        # bob expires them too, whether he compacts or just syncs.
        await sync(alice, bob, conversation)
        assert texts(await bob.export(conversation)) == ["recent"]
        await bob.compact(conversation)
        assert texts(await bob.history(conversation, limit=500)) == ["recent"]
        # A new device of carol's never indexes what has expired.
        async with open_replica(
            tmp_path / "c", nickname="carol", peer_id="carol-peer-03", now_ms=lambda: now[0]
        ) as carol:
            await carol.receive(conversation, await alice.diff(conversation, None))
            assert texts(await carol.history(conversation, limit=500)) == ["recent"]


async def test_a_peers_expiry_received_live_is_stored(tmp_path: Path) -> None:
    # An expiry deletes buckets and writes nothing: the update that carries it moves no
    # state vector and shows no message, yet the receiver must store it like any other,
    # or a restart brings the expired messages back into its document (and to whoever
    # catches up from it).
    now = [1_700_000_000_000]
    keys = Identity.generate(), Identity.generate()
    async with open_replica(tmp_path / "a", nickname="alice", now_ms=lambda: now[0], signer=keys[0]) as alice:
        async with open_replica(tmp_path / "b", nickname="bob", now_ms=lambda: now[0], signer=keys[1]) as bob:
            conversation = await alice.create_conversation(
                ConversationKind.GROUP, others={bob.peer_id: "bob"}, retention_days=7
            )
            for i in range(300):  # more than one bucket
                await alice.send(conversation, Text(f"old-message-{i}"))
            await sync(alice, bob, conversation)
            now[0] += 10 * 24 * 60 * 60 * 1000
            heard = Recorder()
            alice.add_listener(heard)
            await alice.compact(conversation)
            (expiry,) = heard.local
            await bob.receive(conversation, expiry, origin=alice.peer_id)
            assert b"old-message-7" not in await bob.diff(conversation, None)
        async with open_replica(tmp_path / "b", nickname="bob", now_ms=lambda: now[0], signer=keys[1]) as bob:
            assert b"old-message-7" not in await bob.diff(conversation, None)


async def test_retention_is_applied_where_the_index_holds_expired_messages(tmp_path: Path) -> None:
    now = [1_700_000_000_000]
    async with open_replica(
        tmp_path / "a", nickname="alice", now_ms=lambda: now[0], rest_after=None, retention_every=None
    ) as alice:
        conversation = await alice.create_conversation(
            ConversationKind.GROUP, others={"bob-peer-0002": "bob"}, retention_days=7
        )
        forever = await alice.create_conversation(ConversationKind.GROUP, others={"bob-peer-0002": "bob"})
        for i in range(300):  # more than one bucket
            await alice.send(conversation, Text(f"old-message-{i}"))
        await alice.send(forever, Text("old and kept"))
        assert await alice.apply_retention() == []  # nothing has expired yet
        now[0] += 10 * 24 * 60 * 60 * 1000
        await alice.send(conversation, Text("recent"))
        assert await alice.apply_retention() == [conversation]
        assert texts(await alice.history(conversation, limit=500)) == ["recent"]
        assert texts(await alice.export(conversation)) == ["recent"]
        assert texts(await alice.history(forever)) == ["old and kept"]
        assert await alice.apply_retention() == []  # what was due is done
    store = Store.open(tmp_path / "a")
    try:  # the log was compacted, collecting the expired buckets as garbage
        assert not any(b"old-message-7" in logged.update for logged in store.load_log(conversation))
    finally:
        store.close()


async def test_reads_leave_out_what_is_past_retention_before_the_index_drops_it(tmp_path: Path) -> None:
    now = [1_700_000_000_000]
    async with (
        open_replica(tmp_path / "a", nickname="alice", now_ms=lambda: now[0], retention_every=None) as alice,
        open_replica(tmp_path / "b", nickname="bob", now_ms=lambda: now[0], retention_every=None) as bob,
    ):
        conversation = await alice.create_conversation(
            ConversationKind.GROUP, others={bob.peer_id: "bob"}, retention_days=7
        )
        for i in range(3):
            await alice.send(conversation, Text(f"old words {i}"))
        now[0] += 5 * 24 * 60 * 60 * 1000
        await alice.send(conversation, Text("new words"))
        await sync(alice, bob, conversation)
        assert await bob.unread_count(conversation) == 4
        now[0] += 3 * 24 * 60 * 60 * 1000  # the first three are 8 days old now
        assert texts(await bob.history(conversation)) == ["new words"]
        assert [texts([m]) for _, m in await bob.search("words")] == [["new words"]]
        assert await bob.unread_count(conversation) == 1
        [summary] = await bob.conversations()
        assert texts([summary.last_message]) == ["new words"]
        assert summary.unread == 1


async def test_retention_is_checked_a_minute_after_opening(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    now = [1_700_000_000_000]
    async with open_replica(tmp_path / "a", nickname="alice", now_ms=lambda: now[0], rest_after=None) as alice:
        conversation = await alice.create_conversation(
            ConversationKind.GROUP, others={"bob-peer-0002": "bob"}, retention_days=7
        )
        for i in range(300):
            await alice.send(conversation, Text(f"old-message-{i}"))
        now[0] += 10 * 24 * 60 * 60 * 1000
        writes = LocalWrites()
        alice.add_listener(writes)
        mock_clock.jump(RETENTION_FIRST - 1)
        await trio.testing.wait_all_tasks_blocked()
        assert not writes.written.is_set()
        mock_clock.jump(1)
        mock_clock.rate = 1.0  # from here on, so that the deadline below can pass
        with trio.fail_after(30):
            await writes.written.wait()  # the expiry, stored
        assert b"old-message-7" not in await alice.diff(conversation, None)


async def test_a_second_process_gets_store_in_use(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "a", nickname="alice"):
        with pytest.raises(StoreInUse, match="already in use"):
            async with open_replica(tmp_path / "a", nickname="alice"):
                pass


async def test_update_for_another_conversation_is_refused(tmp_path: Path) -> None:
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        with pytest.raises(SchemaError):
            await bob.receive("someOtherConversation", await alice.diff(conversation, None))
        assert [s.metadata.id for s in await bob.conversations()] == [conversation]


@pytest.mark.parametrize("fixture", ["panic-clock-overflow.hex", "hang-string-in-array-root.hex"])
async def test_hostile_fixture_updates_do_not_crash_or_hang(tmp_path: Path, fixture: str) -> None:
    updates = hostile_updates(fixture)
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        await alice.send(conversation, Text("before"))
        await sync(alice, bob, conversation)
        with trio.fail_after(10):
            refused = 0
            for update in updates:
                try:
                    await bob.receive(conversation, update)
                except UnsafeUpdate:  # the schema check, before pycrdt sees it
                    refused += 1
            assert refused
            await alice.send(conversation, Text("after"))
            await sync(alice, bob, conversation)
            assert texts(await bob.history(conversation)) == ["before", "after"]
            assert texts(await bob.export(conversation)) == ["before", "after"]


async def test_concurrent_senders_all_land_in_order_everywhere(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "a", nickname="alice") as alice:
        conversation = await alice.create_conversation(ConversationKind.DIRECT, others={"bob-peer-0002": "bob"})
        counter = itertools.count()

        async def sender() -> None:
            for _ in range(20):
                await alice.send(conversation, Text(f"m{next(counter)}"))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(sender)
        history = await alice.history(conversation, limit=500)
        assert sorted(texts(history)) == sorted(f"m{i}" for i in range(200))  # type: ignore[type-var]
        assert history == await alice.export(conversation)


async def test_listeners_hear_of_concurrent_writes_in_the_order_they_were_made(tmp_path: Path) -> None:
    # Peers must get an author's updates in order: in a signed conversation each one's head
    # hangs on the one before, and one overtaken leaves the next waiting.
    async with open_replica(tmp_path / "a", nickname="alice", signer=Identity.generate()) as alice:
        conversation = await alice.create_conversation(ConversationKind.DIRECT, others={"bob-peer-0002": "bob"})
        heard = Recorder()
        alice.add_listener(heard)
        async with trio.open_nursery() as nursery:
            for number in range(40):
                nursery.start_soon(alice.send, conversation, Text(f"m{number}"))
        starts = [min(writes.clocks[0] for writes in check_update(update).clients.values()) for update in heard.updates]
        assert len(starts) == 40
        assert starts == sorted(starts)


async def test_errors_inside_the_block_are_not_wrapped_in_a_group(tmp_path: Path) -> None:
    with pytest.raises(UnknownConversation):
        async with open_replica(tmp_path / "a", nickname="alice") as alice:
            await alice.history("noSuchConversation")


async def two_posts(alice: Replica, conversation: str) -> tuple[bytes, bytes]:
    """alice posts "first" and "second": the update of each alone (the second waits without the first)."""
    updates = []
    for text in ("first", "second"):
        before = await alice.state_vector(conversation)
        await alice.send(conversation, Text(text))
        updates.append(await alice.diff(conversation, before))
    return updates[0], updates[1]


async def test_compaction_keeps_updates_still_waiting_for_a_dependency(tmp_path: Path) -> None:
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        first, second_only = await two_posts(alice, conversation)
        await bob.receive(conversation, second_only)  # cannot integrate yet: "first" is missing
        await bob.compact(conversation)
    async with open_replica(tmp_path / "b", nickname="bob") as bob:
        await bob.receive(conversation, first)
        assert texts(await bob.export(conversation)) == ["first", "second"]
        assert texts(await bob.history(conversation)) == ["first", "second"]


@contextlib.asynccontextmanager
async def synced_group(tmp_path: Path) -> AsyncIterator[tuple[Replica, Replica, Replica, str]]:
    """alice's group with bob and carol (replicas under ``tmp_path`` / a, b, c), both synced."""
    async with (
        open_replica(tmp_path / "a", nickname="alice") as alice,
        open_replica(tmp_path / "b", nickname="bob") as bob,
        open_replica(tmp_path / "c", nickname="carol") as carol,
    ):
        conversation = await alice.create_conversation(
            ConversationKind.GROUP, others={bob.peer_id: "bob", carol.peer_id: "carol"}
        )
        for other in (bob, carol):
            await sync(alice, other, conversation)
        yield alice, bob, carol, conversation


@pytest.mark.parametrize("compacted", [False, True])
async def test_structs_left_waiting_are_passed_on_after_a_restart(tmp_path: Path, compacted: bool) -> None:
    # No state vector counts structs that wait for a dependency, so no diff against one
    # carries them: the store marks the updates that left some, for the reloaded document.
    async with synced_group(tmp_path) as (alice, bob, carol, conversation):
        first, second_only = await two_posts(alice, conversation)
        await bob.receive(conversation, second_only)  # "first" was lost
        if compacted:
            await bob.compact(conversation)
    async with (
        open_replica(tmp_path / "b", nickname="bob") as bob,
        open_replica(tmp_path / "c", nickname="carol") as carol,
    ):
        carol_state = await carol.state_vector(conversation)
        assert carol_state == await bob.state_vector(conversation)
        await carol.receive(conversation, await bob.diff(conversation, carol_state))
        await carol.receive(conversation, first)  # alice's, long after
        assert texts(await carol.history(conversation)) == ["first", "second"]


@pytest.mark.parametrize("compacted", [False, True])
async def test_deletions_left_waiting_are_passed_on_after_a_restart(tmp_path: Path, compacted: bool) -> None:
    # A deletion of an item the receiver lacks waits inside yrs while the rest of its write
    # integrates, and a diff carries only applied deletions: the store marks such updates
    # too, so the reloaded document still passes the deletion on.
    async with synced_group(tmp_path) as (alice, bob, carol, conversation):
        # Two Yjs clients of alice's: one writes a receipt, the next deletes it and writes another.
        first: Doc[object] = Doc()
        first.apply_update(await alice.diff(conversation, None))
        before = first.get_state()
        old_key, new_key = (f"{alice.peer_id}/read/{author}" for author in (carol.peer_id, bob.peer_id))
        first.get("acks", type=Map)[old_key] = 1
        receipt = first.get_update(before)
        second: Doc[object] = Doc()
        second.apply_update(first.get_update())
        before = second.get_state()
        with second.transaction():
            second.get("acks", type=Map)[new_key] = 1
            del second.get("acks", type=Map)[old_key]
        replacement = second.get_update(before)
        await carol.receive(conversation, receipt, origin=alice.peer_id)
        await bob.receive(conversation, replacement, origin=alice.peer_id)  # the old receipt never came
        if compacted:
            await bob.compact(conversation)
    async with (
        open_replica(tmp_path / "b", nickname="bob") as bob,
        open_replica(tmp_path / "c", nickname="carol") as carol,
    ):
        await carol.receive(conversation, await bob.diff(conversation, await carol.state_vector(conversation)))
        copy: Doc[object] = Doc()
        copy.apply_update(await carol.diff(conversation, None))
        assert dict(copy.get("acks", type=Map).to_py()) == {new_key: 1}


async def test_writes_racing_the_replicas_shutdown_fail_instead_of_hanging(tmp_path: Path) -> None:
    outcomes: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as outside:
            async with open_replica(tmp_path / "a", nickname="alice") as alice:
                conversation = await alice.create_conversation(ConversationKind.DIRECT, others={"bob-peer-0002": "bob"})

                async def keep_sending() -> None:  # runs outside the replica's own nursery
                    try:
                        while True:
                            await alice.send(conversation, Text("still going"))
                    except GigiError as exc:
                        outcomes.append(type(exc).__name__)

                outside.start_soon(keep_sending)
                await trio.testing.wait_all_tasks_blocked()
    assert outcomes == ["StoreClosed"]


async def test_entries_the_index_missed_are_indexed_when_the_document_loads(tmp_path: Path) -> None:
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        await alice.send(conversation, Text("seen"))
        await sync(alice, bob, conversation)
        state = await bob.state_vector(conversation)
        for i in range(300):
            await alice.send(conversation, Text(f"unseen {i}"))
        missing = await alice.diff(conversation, state)
    # The log gets an update whose index rows never made it (as if its entries had not been
    # readable when it was stored).
    store = Store.open(tmp_path / "b")
    try:
        store.commit([Record(conversation, missing, Changes())])
    finally:
        store.close()
    async with open_replica(tmp_path / "b", nickname="bob") as bob:
        assert texts(await bob.history(conversation, limit=500)) == ["seen"]  # index only, not loaded yet
        await bob.state_vector(conversation)  # loads the document
        assert texts(await bob.history(conversation, limit=500)) == ["seen"] + [f"unseen {i}" for i in range(300)]


async def test_a_new_conversation_is_only_taken_from_a_member_and_if_it_lists_us(tmp_path: Path) -> None:
    async with (
        open_replica(tmp_path / "a", nickname="alice", peer_id="alice-peer-01") as alice,
        open_replica(tmp_path / "c", nickname="carol", peer_id="carol-peer-03") as carol,
    ):
        ours = await alice.create_conversation(ConversationKind.GROUP, others={carol.peer_id: "carol"})
        theirs = await alice.create_conversation(ConversationKind.GROUP, others={"bob-peer-0002": "bob"})
        with pytest.raises(NotAllowed):  # relayed by someone who is not in it
            await carol.receive(ours, await alice.diff(ours, None), origin="mallory-peer-9")
        with pytest.raises(NotAllowed):  # not ours to hold
            await carol.receive(theirs, await alice.diff(theirs, None), origin=alice.peer_id)
        assert await carol.conversation_ids() == []
        await carol.receive(ours, await alice.diff(ours, None), origin=alice.peer_id)
        assert await carol.conversation_ids() == [ours]


def member_records(document: bytes) -> dict[str, dict[str, object]]:
    doc: Doc[object] = Doc()
    doc.apply_update(document)
    return doc.get("members", type=Map).to_py()  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def signed_pair(
    tmp_path: Path, alice_key: Identity, bob_key: Identity, timers: bool = True
) -> AsyncIterator[tuple[Replica, Replica]]:
    """alice's and bob's replicas, with identities (their conversations are signed);
    without ``timers``, documents do not rest and retention is not checked."""
    rest_after, retention_every = (REST_AFTER, RETENTION_EVERY) if timers else (None, None)
    async with (
        open_replica(
            tmp_path / "a", nickname="alice", signer=alice_key, rest_after=rest_after, retention_every=retention_every
        ) as alice,
        open_replica(
            tmp_path / "b", nickname="bob", signer=bob_key, rest_after=rest_after, retention_every=retention_every
        ) as bob,
    ):
        yield alice, bob


@contextlib.asynccontextmanager
async def signed_group_of_three(
    tmp_path: Path, carol_key: Identity
) -> AsyncIterator[tuple[Replica, Replica, Replica, str]]:
    """alice's signed group with bob and carol, and their replicas (carol's under
    ``tmp_path / "c"`` with ``carol_key``, so that a test can reopen it)."""
    async with signed_pair(tmp_path, Identity.generate(), Identity.generate()) as (alice, bob):
        async with open_replica(tmp_path / "c", nickname="carol", signer=carol_key) as carol:
            others = {bob.peer_id: "bob", carol.peer_id: "carol"}
            yield alice, bob, carol, await alice.create_conversation(ConversationKind.GROUP, others=others)


async def carol_added_and_removed(alice: Replica, bob: Replica, carol: str) -> tuple[str, dict[str, object]]:
    """A group of alice's with bob, to which she added carol and from which she removed
    her; both know it all. Returns the group and the signed record that added carol."""
    group = await alice.create_conversation(ConversationKind.GROUP, others={bob.peer_id: "bob"})
    await alice.add_member(group, carol, "carol")
    carol_added = member_records(await alice.diff(group, None))[carol]
    await alice.remove_member(group, carol)
    await sync(alice, bob, group)
    return group, carol_added


async def test_a_replayed_member_record_is_written_back_for_good(tmp_path: Path) -> None:
    alice_key, bob_key, carol = Identity.generate(), Identity.generate(), Identity.generate()
    async with signed_pair(tmp_path, alice_key, bob_key) as (alice, bob):
        group, carol_added = await carol_added_and_removed(alice, bob, carol.peer_id)
        # bob, a member running modified code, puts the old "carol joins" record back.
        replay = forge_member_records(await bob.diff(group, None), {carol.peer_id: carol_added})
        await alice.receive(group, replay, origin=bob.peer_id)
        assert not await alice.is_member(group, carol.peer_id)
        assert member_records(await alice.diff(group, None))[carol.peer_id]["removed"] is True  # written back
    async with open_replica(tmp_path / "a", nickname="alice", signer=alice_key) as alice:
        assert not await alice.is_member(group, carol.peer_id)
        assert member_records(await alice.diff(group, None))[carol.peer_id]["removed"] is True


@pytest.mark.parametrize("forged_id", ["x" * 32, "y" * 24])
async def test_an_update_that_rewrites_a_signed_conversations_id_is_refused(tmp_path: Path, forged_id: str) -> None:
    alice_key, bob_key = Identity.generate(), Identity.generate()
    async with signed_pair(tmp_path, alice_key, bob_key) as (alice, bob):
        group = await alice.create_conversation(ConversationKind.GROUP, others={bob.peer_id: "bob"})
        await sync(alice, bob, group)
        before = await alice.state_vector(group)
        forged = forge_records(await bob.diff(group, None), {("meta", "id"): forged_id})
        with pytest.raises(SchemaError):
            await alice.receive(group, forged, origin=bob.peer_id)
        assert await alice.state_vector(group) == before
        assert (await alice.metadata(group)).id == group
        assert await alice.is_member(group, bob.peer_id)


async def test_signed_records_are_written_back_at_most_once_per_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Every member writes back what a replay hid: a member replaying over and over must
    # not make each of them write (and everyone pass on) an update per replay.
    alice_key, bob_key, carol = Identity.generate(), Identity.generate(), Identity.generate()
    # No timers (resting documents, retention checks): they would let the autojump clock
    # leap while a commit runs.
    async with signed_pair(tmp_path, alice_key, bob_key, timers=False) as (alice, bob):
        group, carol_added = await carol_added_and_removed(alice, bob, carol.peer_id)
        writes = Recorder()
        alice.add_listener(writes)

        async def replay() -> None:  # by bob, who knows what alice holds
            forged = forge_member_records(await alice.diff(group, None), {carol.peer_id: carol_added})
            await alice.receive(group, forged, origin=bob.peer_id)

        async def document_shows_removal() -> bool:
            return member_records(await alice.diff(group, None))[carol.peer_id].get("removed") is True

        await replay()
        assert await document_shows_removal()
        assert len(writes.local) == 1
        await replay()
        assert not await document_shows_removal()  # not written back yet...
        assert len(writes.local) == 1
        assert not await alice.is_member(group, carol.peer_id)  # ...and it changes nothing meanwhile
    async with (  # not even across a restart, with only the replay in the document
        open_replica(tmp_path / "a", nickname="alice", signer=alice_key, rest_after=None) as alice,
        open_replica(tmp_path / "b", nickname="bob", signer=bob_key, rest_after=None) as bob,
    ):
        alice.add_listener(writes)
        assert not await document_shows_removal()
        assert not await alice.is_member(group, carol.peer_id)
        await trio.sleep(RESTORE_INTERVAL)
        await bob.send(group, Text("later"))
        news = await bob.diff(group, await alice.state_vector(group))
        await alice.receive(group, news, origin=bob.peer_id, acknowledge=False)  # the next update alice takes
        assert await document_shows_removal()
        assert len(writes.local) == 2


async def test_a_members_forged_retention_expires_nothing(tmp_path: Path) -> None:
    alice_key, bob_key = Identity.generate(), Identity.generate()
    async with signed_pair(tmp_path, alice_key, bob_key) as (alice, bob):
        group = await alice.create_conversation(ConversationKind.GROUP, others={bob.peer_id: "bob"})
        await alice.send(group, Text("keep me"))
        await sync(alice, bob, group)
        forged = forge_records(await bob.diff(group, None), {("meta", "retention_days"): 0})
        await alice.receive(group, forged, origin=bob.peer_id)
        await alice.compact(group)  # applies the retention, if there is one
        assert (await alice.metadata(group)).retention_days is None
        assert texts(await alice.history(group)) == ["keep me"]
    async with open_replica(tmp_path / "a", nickname="alice", signer=alice_key) as alice:
        await alice.compact(group)
        assert texts(await alice.history(group)) == ["keep me"]
        assert texts(await alice.export(group)) == ["keep me"]


async def test_fields_added_to_a_signed_record_are_dropped(tmp_path: Path) -> None:
    # The signature covers a record's own fields only: a writer may add others (here
    # bytes, which JSON cannot hold), and a peer that first sees the record that way
    # keeps and stores the record without them.
    alice_key, bob_key = Identity.generate(), Identity.generate()
    async with signed_pair(tmp_path, alice_key, bob_key) as (alice, bob):
        group = await alice.create_conversation(ConversationKind.GROUP, others={bob.peer_id: "bob"})
        document = await alice.diff(group, None)
        padded = member_records(document)[bob.peer_id] | {"junk": b"\x00\x01", "note": "x" * 1000}
        everything = Doc()
        for update in (document, forge_member_records(document, {bob.peer_id: padded})):
            everything.apply_update(update)
        await bob.receive(group, everything.get_update(), origin=alice.peer_id)
        assert await bob.is_member(group, bob.peer_id)
        assert "junk" not in member_records(await bob.diff(group, None))[bob.peer_id]  # written back without
    async with open_replica(tmp_path / "b", nickname="bob", signer=bob_key) as bob:
        assert await bob.is_member(group, bob.peer_id)


def forged_post(seq: int) -> str:
    """A post in someone's stream, by someone else: no chain link, no head."""
    return encode_op(Posted("forgedforged01", 1_800_000_000_000_000, "alice", Text("pay bob")), seq)


async def test_an_entry_forged_into_a_members_stream_is_never_indexed_nor_shown(tmp_path: Path) -> None:
    carol_key = Identity.generate()
    async with signed_group_of_three(tmp_path, carol_key) as (alice, bob, carol, group):
        await alice.send(group, Text("hi"))
        await sync(alice, bob, group)
        await sync(alice, carol, group)
        # bob, a member running modified code, writes a post into alice's stream.
        forged = forge_entries(await bob.diff(group, None), alice.peer_id, [forged_post(1)])
        changes = await carol.receive(group, forged, origin=bob.peer_id)
        assert not changes.entries
        assert texts(await carol.history(group)) == texts(await carol.export(group)) == ["hi"]
        await alice.send(group, Text("after"))
        await sync(alice, carol, group)
        assert texts(await carol.history(group)) == ["hi", "after"]
    async with open_replica(tmp_path / "c", nickname="carol", signer=carol_key) as carol:
        assert texts(await carol.history(group)) == texts(await carol.export(group)) == ["hi", "after"]
        await carol.rebuild_index(group)
        assert texts(await carol.history(group)) == ["hi", "after"]
        assert await carol.search("pay") == []


async def test_an_update_writing_under_a_members_client_id_ahead_of_it_is_refused(tmp_path: Path) -> None:
    async with signed_group_of_three(tmp_path, Identity.generate()) as (alice, bob, carol, group):
        await sync(alice, bob, group)
        before = await bob.state_vector(group)
        await alice.send(group, Text("hi"))
        (client,) = check_update(await alice.diff(group, before)).authors  # alice's Yjs client id
        await sync(alice, bob, group)
        await sync(alice, carol, group)
        # bob takes alice's client id to put a struct where her next entry would go, which
        # would hide that entry on every peer that took the forgery first.
        forged = forge_entries(await bob.diff(group, None), alice.peer_id, [forged_post(1)], client)
        for victim in (alice, carol):
            state = decode_state_vector(await victim.state_vector(group))  # encoded in any order
            with pytest.raises(UnsafeUpdate, match=f"{alice.peer_id}'s Yjs client id {client} past clock"):
                await victim.receive(group, forged, origin=bob.peer_id)
            assert decode_state_vector(await victim.state_vector(group)) == state
        await alice.send(group, Text("after"))
        await sync(alice, carol, group)
        assert texts(await carol.history(group)) == ["hi", "after"]


@pytest.mark.parametrize("signer", [None, Identity.generate()], ids=["unsigned", "signed"])
def test_compaction_collects_garbage_after_every_write_of_a_signed_conversation(
    tmp_path: Path, signer: Identity | None
) -> None:
    # Each write of a signed conversation overwrites its author's head: a snapshot that does
    # not collect garbage keeps every old one (four times the size of the messages).
    peer = "alice-peer-0001" if signer is None else signer.peer_id
    clock = HybridClock(lambda: 1_700_000_000_000)
    doc, created = Conversation.create(
        kind=ConversationKind.GROUP, title="g", local_peer=peer, nickname="a", clock=clock, signer=signer
    )
    store = Store.open(tmp_path)
    try:
        store.commit([Record(doc.id, created.update, created.changes, doc.metadata(), list(doc.members().values()))])
        posted = doc.post(Text("hi"), "a")
        store.commit([Record(doc.id, posted.update, posted.changes)])
        assert store.committed_log(doc.id)[2] is (signer is not None)
    finally:
        store.close()


async def test_entries_stay_verified_after_a_restart_when_their_head_was_deleted_early(tmp_path: Path) -> None:
    alice_key, bob_key = Identity.generate(), Identity.generate()
    async with signed_pair(tmp_path, alice_key, bob_key) as (alice, bob):
        group = await alice.create_conversation(ConversationKind.GROUP, others={bob.peer_id: "bob"})
        await sync(alice, bob, group)
        await alice.send(group, Text("one"))
        await sync(alice, bob, group)
        recorder = Recorder()
        alice.add_listener(recorder)
        await alice.send(group, Text("two"))
        with_two = await alice.state_vector(group)
        await alice.send(group, Text("three"))
        # "three" without "two" (lost with a peer that went away), but with the deletions of
        # both: the one of the head bob shows applies at once, the new head waits for "two".
        await bob.receive(group, get_update(merge_updates(*recorder.local), with_two))
        assert texts(await bob.export(group)) == texts(await bob.history(group)) == ["one"]
    async with open_replica(tmp_path / "b", nickname="bob", signer=bob_key) as bob:
        # The head the document no longer shows was kept beside it.
        assert texts(await bob.export(group)) == texts(await bob.history(group)) == ["one"]


async def test_heads_sent_beside_a_catch_up_cover_structs_whose_head_the_document_lost(tmp_path: Path) -> None:
    carol_key = Identity.generate()
    async with signed_group_of_three(tmp_path, carol_key) as (alice, bob, carol, group):
        await sync(alice, bob, group)
        await sync(alice, carol, group)
        recorder = Recorder()
        alice.add_listener(recorder)
        # Too large an update to be kept among bob's recent ones (which would carry the
        # head that came with it): bob answers carol with a diff of his document.
        one = "one " + "x" * RECENT_UPDATE_BYTES
        await alice.send(group, Text(one))
        await bob.receive(group, recorder.local[0])
        await alice.send(group, Text("two"))
        # bob gets the deletions of "two" without its structs: the head covering "one"
        # is gone from his document, so his catch-up for carol carries "one" uncovered.
        everything: Doc[object] = Doc()
        everything.apply_update(await alice.diff(group, None))
        await bob.receive(group, everything.get_update(everything.get_state()))
        state = await carol.state_vector(group)
        catch_up = await bob.diff(group, state)
        with pytest.raises(UnsafeUpdate, match=f"{alice.peer_id}'s Yjs client id"):
            await carol.receive(group, catch_up, origin=bob.peer_id)
        heads = await bob.heads_for(group, state)
        assert [head["by"] for head in heads] == [alice.peer_id]  # the one bob's document lost
        await carol.receive(group, catch_up, origin=bob.peer_id, heads=heads)
        assert texts(await carol.history(group)) == texts(await carol.export(group)) == [one]
    # Carol's document still shows none of alice's heads that cover "one": the one that
    # came beside it is kept beside the document.
    async with open_replica(tmp_path / "c", nickname="carol", signer=carol_key) as carol:
        # A new device of carol's, holding nothing, is answered from the store without
        # loading the document, and gets that head beside it too.
        whole, heads = await carol.diff(group, None), await carol.heads_for(group, b"\x00")
        assert not carol.is_loaded(group)
        async with open_replica(tmp_path / "c2", nickname="carol", signer=carol_key) as device:
            await device.receive(group, whole, origin=carol.peer_id, heads=heads)
            assert texts(await device.history(group)) == texts(await device.export(group)) == [one]
        assert texts(await carol.history(group)) == texts(await carol.export(group)) == [one]


def test_updates_committed_while_a_log_is_compacted_stay_after_its_snapshot(tmp_path: Path) -> None:
    # A log is applied in order, and only updates that left structs waiting are cut at gaps
    # (``model.gaps.load_document``): one that came after the compacted ones must not be
    # applied before their snapshot, or yrs could take its structs past a gap.
    clock = HybridClock(lambda: 1_700_000_000_000)
    doc, created = Conversation.create(
        kind=ConversationKind.GROUP, title="g", local_peer="alice-peer-0001", nickname="a", clock=clock
    )
    store = Store.open(tmp_path)
    try:
        store.commit([Record(doc.id, created.update, created.changes, doc.metadata(), list(doc.members().values()))])
        first = doc.post(Text("one"), "a")
        store.commit([Record(doc.id, first.update, first.changes)])
        upto, log, garbage = store.committed_log(doc.id)
        second = doc.post(Text("two"), "a")  # committed while the snapshot is being built
        store.commit([Record(doc.id, second.update, second.changes)])
        snapshot = build_snapshot(log, garbage)
        waiting = [row.update for row in log if row.waiting]
        store.replace_log(doc.id, upto, snapshot, garbage, still_waiting(snapshot, waiting))
        stored = store.load_log(doc.id)
        assert stored[-1].update == second.update
        assert texts(Conversation.from_log(stored, "bob-peer-0002", clock).history()) == ["one", "two"]
    finally:
        store.close()


def test_an_edit_indexed_after_a_later_one_of_the_same_message_does_not_replace_it(tmp_path: Path) -> None:
    # A signed stream releases an author's entries from its head down, so an edit that was
    # missing can reach the index after a later one (seen in the harness, seed 4): the
    # index must show the latest edit, as the document does, whatever the arrival order.
    clock = HybridClock(itertools.count(1_700_000_000_000).__next__)
    doc, created = Conversation.create(
        kind=ConversationKind.GROUP, title="g", local_peer="alice-peer-0001", nickname="a", clock=clock
    )
    posted = doc.post(Text("original"), "a")
    assert posted.message_id is not None
    first, second = (doc.edit(posted.message_id, Text(text)) for text in ("first edit", "second edit"))
    store = Store.open(tmp_path)
    try:
        store.commit([Record(doc.id, created.update, created.changes, doc.metadata(), list(doc.members().values()))])
        store.commit([Record(doc.id, posted.update, posted.changes)])
        store.commit([Record(doc.id, second.update, second.changes)])
        store.commit([Record(doc.id, first.update, first.changes)])  # found late
        (shown,) = store.query(lambda db: index.all_messages(db, doc.id))
    finally:
        store.close()
    assert [m.content for m in doc.history()] == [shown.content] == [Text("second edit")]


@pytest.mark.parametrize("last", ["edit", "deletion"])
def test_a_change_indexed_before_its_post_applies_when_the_post_comes(tmp_path: Path, last: str) -> None:
    # The same release order with the post missing: its edits (or its deletion) come first.
    clock = HybridClock(itertools.count(1_700_000_000_000).__next__)
    doc, created = Conversation.create(
        kind=ConversationKind.GROUP, title="g", local_peer="alice-peer-0001", nickname="a", clock=clock
    )
    posted = doc.post(Text("original"), "a")
    assert posted.message_id is not None
    changes = [doc.edit(posted.message_id, Text("edited"))]
    changes.append(
        doc.edit(posted.message_id, Text("edited again")) if last == "edit" else doc.delete(posted.message_id)
    )
    store = Store.open(tmp_path)
    try:
        store.commit([Record(doc.id, created.update, created.changes, doc.metadata(), list(doc.members().values()))])
        for written in reversed(changes):
            store.commit([Record(doc.id, written.update, written.changes)])
        assert store.query(lambda db: index.all_messages(db, doc.id)) == []
        store.commit([Record(doc.id, posted.update, posted.changes)])
        shown = store.query(lambda db: index.all_messages(db, doc.id))
        held = store.query(lambda db: db.execute("SELECT count(*) FROM early_changes").fetchone()[0])
    finally:
        store.close()
    assert [(m.content, m.deleted_at is None) for m in shown] == [
        (m.content, m.deleted_at is None) for m in doc.history()
    ]
    assert shown[0].content == (Text("edited again") if last == "edit" else None)
    assert held == 0


@pytest.mark.parametrize("signed", [False, True])
async def test_a_message_whose_redaction_waits_leaves_the_index_until_it_comes(tmp_path: Path, signed: bool) -> None:
    alice_key, bob_key = (Identity.generate(), Identity.generate()) if signed else (None, None)
    async with open_replica(tmp_path / "a", nickname="alice", signer=alice_key) as alice:
        async with open_replica(tmp_path / "b", nickname="bob", signer=bob_key) as bob:
            conversation = await direct(alice, bob)
            before = await alice.state_vector(conversation)
            message = await alice.send(conversation, Text("oops, wrong chat"))
            await alice.send(conversation, Text("hello"))
            await bob.receive(conversation, await alice.diff(conversation, before))
            before = await alice.state_vector(conversation)
            await alice.mark_read(conversation)
            lost = await alice.diff(conversation, before)
            before = await alice.state_vector(conversation)
            await alice.delete(conversation, message)
            deletion = await alice.diff(conversation, before)  # its redaction waits for ``lost``
            changes = await bob.receive(conversation, deletion)
            assert changes.vanished_messages == [message]  # what tells the application
            assert texts(await bob.history(conversation)) == texts(await bob.export(conversation)) == ["hello"]
            assert await bob.search("oops") == []
        async with open_replica(tmp_path / "b", nickname="bob", signer=bob_key) as bob:  # the hole is found again
            await bob.receive(conversation, lost)
            shown = await bob.history(conversation)
            assert [(m.id, m.deleted_at is not None) for m in shown][0] == (message, True)
            assert texts(shown) == [None, "hello"]
            assert shown == await bob.export(conversation)


async def test_structs_that_wait_already_are_not_stored_again(tmp_path: Path) -> None:
    # Catch-ups carry what waits, round after round, until the gap fills: storing (and
    # passing on) each copy would grow every member's log every anti-entropy round.
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        first, second = await two_posts(alice, conversation)
        heard = Recorder()
        bob.add_listener(heard)
        assert (await bob.receive(conversation, second)).waiting
        assert not (await bob.receive(conversation, second)).waiting  # a duplicate, or a catch-up's copy
        assert len(heard.updates) == 1
        rows = await bob._worker.read(bob._store.load_log, conversation)
        assert sum(row.waiting for row in rows) == 1
        await bob.receive(conversation, first)
        assert texts(await bob.history(conversation)) == ["first", "second"]


async def test_a_resting_document_answers_peers_that_lack_nothing_from_the_store(tmp_path: Path) -> None:
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        await alice.send(conversation, Text("one"))
        await sync(alice, bob, conversation)
        current = await alice.state_vector(conversation)
        assert await alice.rest_idle(0) == [conversation]
        assert not alice.is_loaded(conversation)
        # Kept in memory: the engine asks for a member with every frame.
        assert alice.loaded_members(conversation) == await alice.members(conversation)
        assert await alice.state_vector(conversation) == current
        assert await alice.diff(conversation, await bob.state_vector(conversation)) == EMPTY_UPDATE
        assert not alice.is_loaded(conversation)
        await alice.send(conversation, Text("two"))  # loads it again
        clients = decode_state_vector(await alice.state_vector(conversation)).keys()
        assert clients == decode_state_vector(current).keys()  # written under the same Yjs client
        assert await alice.rest_idle(0) == [conversation]
        await sync(alice, bob, conversation)  # bob lacks "two": answering him loads it
        assert alice.is_loaded(conversation)
        assert texts(await bob.history(conversation)) == ["one", "two"]
        assert texts(await alice.export(conversation)) == ["one", "two"]


async def rest_with_garbage(alice: Replica, bob: Replica, conversation: str) -> int:
    """Write a message and delete it, sync, and let alice's document rest; returns how
    many rows alice's log has (more than one, and garbage in them)."""
    deleted = await alice.send(conversation, Text("a secret"))
    await alice.send(conversation, Text("two"))
    await alice.delete(conversation, deleted)
    await sync(alice, bob, conversation)
    assert await alice.rest_idle(0) == [conversation]
    rows = len(await alice._worker.read(alice._store.load_log, conversation))
    assert rows > 1
    return rows


async def test_a_document_not_in_memory_answers_a_peer_holding_nothing_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        await rest_with_garbage(alice, bob, conversation)
        builds: list[bool] = []
        build = compaction.snapshot_and_rest

        def counted(updates: list[Logged], collect: bool) -> tuple[bytes, bytes]:
            builds.append(collect)
            return build(updates, collect)

        for module in (compaction, worker):  # compaction's and the answer's, if made apart
            monkeypatch.setattr(module, "snapshot_and_rest", counted)
        whole, also = await alice.diff(conversation, b"\x00"), await alice.diff(conversation, None)
        assert not alice.is_loaded(conversation)
        assert builds == [True]  # compacted, with the deletion's garbage, once: the next peer gets it as it is
        assert len(await alice._worker.read(alice._store.load_log, conversation)) == 1
        assert b"a secret" not in whole  # nor on the disk any more: a new member never gets it
        await alice.export(conversation)  # loads it
        documents = [Doc(), Doc(), Doc()]
        for doc, update in zip(documents, [whole, also, await alice.diff(conversation, None)], strict=True):
            doc.apply_update(update)
        from_document = documents[-1]
        for doc in documents[:2]:
            assert doc.get_state() == from_document.get_state()
            for root in ("meta", "members", "streams", "acks"):
                assert doc.get(root, type=Map).to_py() == from_document.get(root, type=Map).to_py()


async def test_a_peer_holding_nothing_is_answered_when_compacting_for_it_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        rows = await rest_with_garbage(alice, bob, conversation)
        other = sqlite3.connect(tmp_path / "a" / DATABASE_NAME, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer: alice's store cannot write now
        try:
            whole = await alice.diff(conversation, None)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert "compacting" in caplog.text
        assert len(await alice._worker.read(alice._store.load_log, conversation)) == rows  # as it was
        assert b"a secret" not in whole
        await alice.export(conversation)  # loads the document
        answered, from_document = Doc(), Doc()
        answered.apply_update(whole)
        from_document.apply_update(await alice.diff(conversation, None))
        assert answered.get_state() == from_document.get_state()


@contextlib.asynccontextmanager
async def signed_direct_with_posts(tmp_path: Path, posts: int) -> AsyncIterator[tuple[Replica, Replica, str]]:
    """alice's and bob's replicas (documents rest only when the test calls ``rest_idle``)
    and their signed direct conversation, with ``posts`` messages of alice's, synced."""
    async with signed_pair(tmp_path, Identity.generate(), Identity.generate(), timers=False) as (alice, bob):
        conversation = await direct(alice, bob)
        for i in range(posts):
            await alice.send(conversation, Text(f"post {i}"))
        await sync(alice, bob, conversation)
        yield alice, bob, conversation


async def test_a_resting_document_stays_at_rest_for_an_update_that_brings_nothing_new(tmp_path: Path) -> None:
    async with signed_direct_with_posts(tmp_path, 3) as (alice, bob, conversation):
        whole = await bob.diff(conversation, None)  # what a relay room's join sends, say
        assert check_update(whole).deletes  # every head overwritten
        assert await alice.rest_idle(0) == [conversation]
        assert not await alice.receive(conversation, whole, origin=bob.peer_id)
        assert not alice.is_loaded(conversation)
        # Heads sent beside it might verify entries that wait for them: then it loads.
        heads = await alice.heads_for(conversation, b"\x00")  # from the store: all of them
        assert heads
        await alice.receive(conversation, whole, origin=bob.peer_id, heads=heads)
        assert alice.is_loaded(conversation)
        assert await alice.rest_idle(0) == [conversation]
        await bob.send(conversation, Text("new"))
        lacked = await bob.diff(conversation, await alice.state_vector(conversation))
        await alice.receive(conversation, lacked, origin=bob.peer_id)
        assert alice.is_loaded(conversation)
        assert texts(await alice.history(conversation, limit=1)) == ["new"]


async def test_a_document_with_work_under_way_or_structs_waiting_does_not_rest(tmp_path: Path) -> None:
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        heard = LocalWrites()
        bob.add_listener(heard)
        bob.acknowledge_nowait(conversation, await receive_unacknowledged(alice, bob, conversation, "one"))
        assert await bob.rest_idle(0) == []  # its delivered receipt is queued
        await heard.written.wait()
        assert await bob.rest_idle(0) == [conversation]
        first, second_only = await two_posts(alice, conversation)
        await bob.receive(conversation, second_only)
        assert await bob.rest_idle(0) == []  # only the document knows what waits
        await bob.receive(conversation, first)
        assert await bob.rest_idle(0) == [conversation]
        assert texts(await bob.history(conversation)) == ["one", "first", "second"]


async def test_documents_rest_once_unused_for_rest_after(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    async with open_replica(tmp_path / "a", nickname="alice", rest_after=60) as alice:
        conversation = await alice.create_conversation(ConversationKind.DIRECT, others={"bob-peer-0002": "bob"})
        mock_clock.jump(45)
        await trio.testing.wait_all_tasks_blocked()
        await alice.send(conversation, Text("still in use"))
        mock_clock.jump(45)
        await trio.testing.wait_all_tasks_blocked()
        assert alice.is_loaded(conversation)  # used 45 s ago
        mock_clock.jump(30)
        await trio.testing.wait_all_tasks_blocked()
        assert not alice.is_loaded(conversation)
        assert texts(await alice.history(conversation)) == ["still in use"]


async def test_a_peer_here_lately_still_gets_only_what_it_lacks_after_the_document_rested(tmp_path: Path) -> None:
    # A diff against a state vector carries the whole delete set (every head a signed
    # conversation overwrote): the recent updates must outlive the document's rest.
    async with signed_direct_with_posts(tmp_path, 200) as (alice, bob, conversation):
        behind = await bob.state_vector(conversation)
        await alice.send(conversation, Text("missed"))
        lacked = await alice.diff(conversation, behind)
        whole = Doc()
        whole.apply_update(await alice.diff(conversation, None))
        assert len(whole.get_update(behind)) > 2 * len(lacked)  # what a diff would send
        assert await alice.rest_idle(0) == [conversation]
        again = await alice.diff(conversation, behind)
        assert alice.is_loaded(conversation)
        assert len(again) == len(lacked)  # the same updates (yrs may order the clients otherwise)
        await bob.receive(conversation, again, origin=alice.peer_id)
        assert texts(await bob.history(conversation, limit=1)) == ["missed"]


async def test_a_document_whose_state_vector_was_not_stored_stores_it_when_it_rests(tmp_path: Path) -> None:
    # As a store of version 3 left it: without a state vector every anti-entropy round
    # would load the document again, however long it rests.
    async with open_replica(tmp_path / "a", nickname="alice") as alice:
        conversation = await alice.create_conversation(ConversationKind.DIRECT, others={"bob-peer-0002": "bob"})
        await alice.send(conversation, Text("hello"))
        state = await alice.state_vector(conversation)
    raw = sqlite3.connect(tmp_path / "a" / DATABASE_NAME)
    raw.execute("UPDATE conversations SET state_vector = NULL")
    raw.commit()
    raw.close()
    async with open_replica(tmp_path / "a", nickname="alice") as alice:
        assert await alice.state_vector(conversation) == state
        assert alice.is_loaded(conversation)  # to learn it
        assert await alice.rest_idle(0) == [conversation]
        assert await alice.state_vector(conversation) == state
        assert not alice.is_loaded(conversation)
    async with open_replica(tmp_path / "a", nickname="alice") as alice:
        assert await alice.state_vector(conversation) == state
        assert not alice.is_loaded(conversation)


async def test_a_large_update_merges_in_a_thread_while_other_conversations_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with direct_pair(tmp_path) as (alice, bob, first):
        second = await direct(alice, bob)
        for number in range(5):
            await alice.send(first, Text(f"caught up {number}"))
        catch_up = await alice.diff(first, await bob.state_vector(first))
        await alice.send(second, Text("meanwhile"))
        live = await alice.diff(second, await bob.state_vector(second))
        assert len(catch_up) > len(live)
        monkeypatch.setattr(updates_module, "IN_THREAD_BYTES", len(live))  # only the catch-up is large
        # Holds the catch-up's worker thread before it merges, as a large update would.
        released = threading.Event()
        touched_while_held: list[bool] = []
        check_and_apply = updates_module._check_and_apply

        def held(doc: Conversation, conversation: str, update: bytes, *rest: Any) -> Changes:
            if update == catch_up:
                assert threading.current_thread() is not threading.main_thread()
                state = doc.state_vector()
                released.wait()
                touched_while_held.append(doc.state_vector() != state)
            return check_and_apply(doc, conversation, update, *rest)

        monkeypatch.setattr(updates_module, "_check_and_apply", held)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bob.receive, first, catch_up)
                await trio.testing.wait_all_tasks_blocked()
                changes = await bob.receive(second, live)  # not behind the catch-up
                assert [entry.op.content for entry in changes.entries] == [Text("meanwhile")]
                nursery.start_soon(bob.send, first, Text("bob's reply"))  # waits for the merge
                await trio.testing.wait_all_tasks_blocked()
                released.set()
        finally:
            released.set()
        assert touched_while_held == [False]  # the document was the thread's until it had merged
        assert texts(await bob.history(first)) == [*(f"caught up {n}" for n in range(5)), "bob's reply"]
        assert texts(await bob.history(second)) == ["meanwhile"]


async def test_a_receive_cancelled_while_its_thread_merges_still_stores_what_was_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with direct_pair(tmp_path) as (alice, bob, conversation):
        await alice.send(conversation, Text("merged, then cancelled"))
        update = await alice.diff(conversation, await bob.state_vector(conversation))
        monkeypatch.setattr(updates_module, "IN_THREAD_BYTES", 0)
        entered, released = threading.Event(), threading.Event()
        check_and_apply = updates_module._check_and_apply

        def held(*args: Any) -> Changes:
            entered.set()
            released.wait()
            return check_and_apply(*args)

        monkeypatch.setattr(updates_module, "_check_and_apply", held)
        try:
            with trio.CancelScope() as receiving:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(bob.receive, conversation, update)
                    await trio.to_thread.run_sync(entered.wait)
                    receiving.cancel()  # the thread goes on: the document will hold the update
                    released.set()
        finally:
            released.set()
        assert texts(await bob.history(conversation)) == ["merged, then cancelled"]
    async with open_replica(tmp_path / "b", nickname="bob") as bob:  # and so does the disk
        assert texts(await bob.history(conversation)) == ["merged, then cancelled"]
