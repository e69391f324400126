"""The sync engine end to end: real replicas on SQLite, links over memory streams and TCP."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from forgery import forge_member_records
from pycrdt import Doc
from sync_helpers import (
    FAST,
    Node,
    Recorder,
    converged,
    drain,
    joined,
    link,
    nodes,
    read_until,
    until_stored,
    wait_for,
)

from gigi_crdt import ConversationKind, NotAllowed, Text
from gigi_crdt.identity import Identity
from gigi_crdt.model import Member, Role
from gigi_crdt.model.signed import sign_member
from gigi_crdt.protocol import (
    REACH_CAPABILITY,
    Connection,
    Event,
    Hello,
    Limits,
    NeedData,
    SyncStep1,
    SyncStep2,
    Update,
)
from gigi_crdt.replica import EMPTY_UPDATE
from gigi_crdt.store import Record
from gigi_crdt.sync import (
    LinkSettings,
    MessageReceived,
    OfflineMessagesReceived,
    PeerOffline,
    PeerOnline,
    PresenceChanged,
    ReceiptUpdated,
    SyncEngine,
    SyncProgress,
    TransferProgress,
    connect_tcp,
    keep_connected,
    serve_tcp,
)
from gigi_crdt.sync.engine import REACHED_ROOM
from gigi_crdt.sync.link import PeerLink, read_events


async def group_of(nodes_: list[Node]) -> str:
    first = nodes_[0]
    return await first.replica.create_conversation(
        ConversationKind.GROUP, title="g", others={n.peer_id: n.replica.nickname for n in nodes_[1:]}
    )


async def test_live_message_reaches_peer_and_is_not_echoed(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob") as (alice, bob), trio.open_nursery() as nursery:
        conversation = await group_of([alice, bob])
        link(nursery, alice, bob)
        with trio.fail_after(10):
            await wait_for(bob, lambda e: isinstance(e, SyncProgress) and e.done == e.total)
            sent = await alice.replica.send(conversation, Text("hello"))
            event = await wait_for(bob, lambda e: isinstance(e, MessageReceived))
            assert isinstance(event, MessageReceived)
            assert event.message.id == sent
            assert event.message.content == Text("hello")
            # bob's delivered receipt travels back to alice.
            receipt = await wait_for(alice, lambda e: isinstance(e, ReceiptUpdated) and e.receipt.member == bob.peer_id)
            assert isinstance(receipt, ReceiptUpdated)
        # alice heard nothing of her own message back.
        assert not any(isinstance(e, MessageReceived) for e in drain(alice))
        nursery.cancel_scope.cancel()


async def test_offline_peer_catches_up_with_one_offline_batch_in_order(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob") as (alice, bob):
        conversation = await group_of([alice, bob])
        sent = [await alice.replica.send(conversation, Text(f"while you were away {i}")) for i in range(1000)]
        async with trio.open_nursery() as nursery:
            link(nursery, alice, bob)
            with trio.fail_after(20):
                batch = await wait_for(bob, lambda e: isinstance(e, OfflineMessagesReceived))
            assert isinstance(batch, OfflineMessagesReceived)
            assert [m.id for m in batch.messages] == sent
            assert [m.id for m in await bob.replica.history(conversation, limit=2000)] == sent
            nursery.cancel_scope.cancel()


async def test_a_large_catch_up_is_reported_as_it_arrives(tmp_path: Path) -> None:
    settings = dataclasses.replace(FAST, progress_bytes=80_000)
    async with nodes(tmp_path, "alice", "bob", settings=settings) as (alice, bob):
        for _ in range(2):
            conversation = await group_of([alice, bob])
            for i in range(300):  # about 100 KB: several reads of the link
                await alice.replica.send(conversation, Text(f"{i:04} " + "x" * 300))
        told: list[TransferProgress] = []
        async with trio.open_nursery() as nursery:
            link(nursery, alice, bob)
            with trio.fail_after(20):
                async for event in bob.engine.events():
                    if isinstance(event, TransferProgress):
                        told.append(event)
                    if isinstance(event, SyncProgress) and event.done == event.total:
                        break  # the events of what the frame brought come after its progress
            nursery.cancel_scope.cancel()
    assert {e.peer_id for e in told} == {alice.peer_id}
    assert all(e.total > 300 * 300 for e in told)  # the two step 2s only: no smaller frame is told of
    ends = [i for i, e in enumerate(told) if e.received == e.total]
    assert len(ends) == 2
    assert ends[-1] == len(told) - 1
    for frame in (told[: ends[0] + 1], told[ends[0] + 1 :]):
        received = [e.received for e in frame]
        assert len(frame) > 1
        assert received == sorted(set(received))
        assert {e.total for e in frame} == {received[-1]}


async def test_a_large_frame_begun_by_the_read_that_ends_another_is_told_of_before_its_end() -> None:
    # Reads do not follow frames: one may end a large frame and bring much of the next.
    # That part is told of once the first frame is handled, not only the next one's end.
    sender = Connection()
    hello = sender.send(Hello("alice-peer-01", "alice", 1))
    first, second = (sender.send(Update(f"{'c' * 23}{n}", bytes(100_000))) for n in range(2))
    handled: list[type[Event]] = []
    told: list[tuple[type[Event] | None, int, int]] = []

    async def handle(event: Event) -> None:
        handled.append(type(event))

    def arriving(received: int, total: int) -> None:
        told.append((handled[-1] if handled else None, received, total))

    sending, receiving = trio.testing.memory_stream_one_way_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_events, receiving, Connection(), handle, 10.0, arriving)
        # The reader takes at most RECEIVE_CHUNK at a time: the end of ``first`` and 20 KB
        # of ``second`` come in one read.
        for chunk in (hello + first[:60_000], first[60_000:] + second[:20_000], second[20_000:]):
            await sending.send_all(chunk)
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert handled == [Hello, Update, Update]
    ends = [entry for entry in told if entry[1] == entry[2]]
    assert [total for _, _, total in ends] == [len(hello), len(first), len(second)]
    # After the first Update was handled, before the rest of the second came:
    assert (Update, 20_000, len(second)) in told


async def test_reconnect_sends_only_the_delta(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob") as (alice, bob):
        conversation = await group_of([alice, bob])
        for i in range(2000):
            await alice.replica.send(conversation, Text(f"message number {i}"))
        async with trio.open_nursery() as nursery:
            link(nursery, alice, bob)
            await converged([alice, bob], conversation, 2000)
            nursery.cancel_scope.cancel()
        await alice.replica.send(conversation, Text("one more"))
        async with trio.open_nursery() as nursery:
            counted, _ = link(nursery, alice, bob, wrap_a=CountingStream)
            assert isinstance(counted, CountingStream)
            await converged([alice, bob], conversation, 2001)
            nursery.cancel_scope.cancel()
        # Hello, announce, state vectors, one message, receipts: far less than the history.
        assert counted.sent < 2048, counted.sent


async def test_a_peer_that_has_everything_is_sent_an_empty_step_2(tmp_path: Path) -> None:
    # A diff against a state vector carries the whole delete set, and receipts leave one
    # deleted range per overwrite: anti-entropy between converged peers must not resend it.
    async with nodes(tmp_path, "alice", "bob") as (alice, bob):
        conversation = await group_of([alice, bob])
        await bob.replica.receive(conversation, await alice.replica.diff(conversation, None), origin=alice.peer_id)
        for i in range(300):  # each receive writes a delivered receipt between the posts
            for sender, receiver in ((alice, bob), (bob, alice)):
                before = await receiver.replica.state_vector(conversation)
                await sender.replica.send(conversation, Text(f"{i}"))
                update = await sender.replica.diff(conversation, before)
                await receiver.replica.receive(conversation, update, origin=sender.peer_id)
        await bob.replica.receive(conversation, await alice.replica.diff(conversation, None), origin=alice.peer_id)
        await alice.replica.receive(conversation, await bob.replica.diff(conversation, None), origin=bob.peer_id)
        in_sync = await bob.replica.state_vector(conversation)
        whole = Doc()
        whole.apply_update(await alice.replica.diff(conversation, None))
        assert len(whole.get_update(in_sync)) > 1024  # what a plain diff would send: the delete set alone
        assert await alice.replica.diff(conversation, in_sync) == EMPTY_UPDATE
        async with trio.open_nursery() as nursery:
            counted, _ = link(nursery, alice, bob, wrap_a=CountingStream)
            assert isinstance(counted, CountingStream)
            await wait_for(bob, lambda e: isinstance(e, SyncProgress) and e.done == e.total)
            await wait_for(alice, lambda e: isinstance(e, SyncProgress) and e.done == e.total)
            nursery.cancel_scope.cancel()
        assert counted.sent < 512, counted.sent


async def test_peers_meeting_again_load_only_the_conversations_that_changed(tmp_path: Path) -> None:
    # Every shared conversation's state vector crosses the link on connect (and every
    # anti-entropy round): answered from the store, quiet ones stay on disk.
    identities = {name: Identity.generate() for name in ("alice", "bob")}
    async with nodes(tmp_path, "alice", "bob", identities=identities) as (alice, bob):
        conversations = [await group_of([alice, bob]) for _ in range(4)]
        for conversation in conversations:
            await alice.replica.send(conversation, Text("before"))
            await bob.replica.receive(conversation, await alice.replica.diff(conversation, None), origin=alice.peer_id)
            news = await bob.replica.diff(conversation, await alice.replica.state_vector(conversation))
            await alice.replica.receive(conversation, news, origin=bob.peer_id)  # bob's delivered receipt
    async with nodes(tmp_path, "alice", "bob", identities=identities) as (alice, bob):
        changed = conversations[0]
        await alice.replica.send(changed, Text("while apart"))
        async with trio.open_nursery() as nursery:
            link(nursery, alice, bob)
            with trio.fail_after(10):
                for node in (alice, bob):
                    await wait_for(node, lambda e: isinstance(e, SyncProgress) and e.done == e.total == 4)
            await converged([alice, bob], changed, 2)
            nursery.cancel_scope.cancel()
        for node in (alice, bob):
            assert [c for c in conversations if node.replica.is_loaded(c)] == [changed]


async def test_a_message_is_announced_before_its_commit_and_reads_wait_for_that(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob") as (alice, bob), trio.open_nursery() as nursery:
        conversation = await group_of([alice, bob])
        link(nursery, alice, bob)
        with trio.fail_after(10):
            await wait_for(bob, lambda e: isinstance(e, SyncProgress) and e.done == e.total)
        disk = trio.Event()
        commit = bob.replica._worker.commit

        async def slow_disk(record: Record) -> list[str]:
            await disk.wait()
            return await commit(record)

        bob.replica._worker.commit = slow_disk  # type: ignore[method-assign]
        await alice.replica.send(conversation, Text("hi"))
        with trio.fail_after(10):
            await wait_for(bob, lambda e: isinstance(e, MessageReceived))  # while bob's disk is stuck
        read: list[list[str]] = []
        done = trio.Event()

        async def read_history() -> None:
            read.append([m.id for m in await bob.replica.history(conversation)])
            done.set()

        nursery.start_soon(read_history)
        try:
            await trio.testing.wait_all_tasks_blocked()
            # Whatever went to bob's reader thread has come back once this has had its turn.
            await trio.to_thread.run_sync(lambda: None, limiter=bob.replica._worker._read_thread)
            await trio.testing.wait_all_tasks_blocked()
            assert read == []  # the read waits for the commit under way
        finally:
            disk.set()  # a commit cannot be cancelled: never leave it stuck
        with trio.fail_after(10):
            await done.wait()
        assert read == [[m.id for m in await alice.replica.history(conversation)]]
        nursery.cancel_scope.cancel()


class CountingStream(trio.abc.Stream):
    """Counts (and keeps) what one side sends."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent = 0
        self.data = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += len(data)
        self.data += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def link_in_a_line(nursery: trio.Nursery, group: list[Node], transport: str) -> None:
    """Each node links to the one before it, over memory streams or by dialling it over
    loopback TCP: updates must be passed on from peer to peer."""
    for before, after in itertools.pairwise(group):
        if transport == "memory":
            link(nursery, before, after)
            continue
        listeners = await nursery.start(serve_tcp, before.engine)
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(functools.partial(keep_connected, after.engine, lambda p=port: connect_tcp("127.0.0.1", p)))


@pytest.mark.parametrize("transport", ["memory", "tcp"])
@pytest.mark.parametrize("size", [2, 3, 10])
async def test_a_line_of_peers_converges(tmp_path: Path, size: int, transport: str) -> None:
    names = [f"peer{i}" for i in range(size)]
    async with nodes(tmp_path, *names) as group, trio.open_nursery() as nursery:
        conversation = await group_of(group)
        await link_in_a_line(nursery, group, transport)
        await joined(group, conversation)
        for round_ in range(3):
            for node in group:
                await node.replica.send(conversation, Text(f"{node.replica.nickname} says {round_}"))
        views = await converged(group, conversation, 3 * size)
        assert all(view == views[0] for view in views)
        nursery.cancel_scope.cancel()


class SentLog(CountingStream):
    """Passes a stream through, keeping the events of one kind (live updates unless told)
    in the frames sent over it."""

    def __init__(self, inner: trio.abc.Stream, kind: type[Event] = Update, into: list[Any] | None = None) -> None:
        super().__init__(inner)
        self.kind = kind
        self.events: list[Any] = [] if into is None else into
        self.seen = trio.Event()  # set once one has been sent
        self.connection = Connection()  # reads frames as the peer will

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.connection.receive_data(bytes(data))
        while not isinstance(event := self.connection.next_event(), NeedData):
            if isinstance(event, self.kind):
                self.events.append(event)
                self.seen.set()
        await super().send_all(data)


def link_mesh_logging_updates(nursery: trio.Nursery, group: list[Node]) -> dict[str, list[Update]]:
    """Link every node of ``group`` to every other; the live updates each receives, by peer id."""
    heard: dict[str, list[Update]] = {node.peer_id: [] for node in group}
    for a, b in itertools.combinations(group, 2):
        link(
            nursery,
            a,
            b,
            wrap_a=functools.partial(SentLog, into=heard[b.peer_id]),
            wrap_b=functools.partial(SentLog, into=heard[a.peer_id]),
        )
    return heard


async def test_in_a_full_mesh_each_update_crosses_to_each_peer_once(tmp_path: Path) -> None:
    """Every member is linked to every other: each update reaches each peer from its author
    alone, none passes it on (``Update.reached``). Before, a group of n got each update
    n - 1 times: once from its author, once more from every other member."""
    names = ["alice", "bob", "carol", "dave"]
    async with nodes(tmp_path, *names) as group, trio.open_nursery() as nursery:
        conversation = await group_of(group)
        heard = link_mesh_logging_updates(nursery, group)
        await joined(group, conversation)
        for node in group:
            await node.replica.send(conversation, Text(f"{node.replica.nickname} says hi"))
        await converged(group, conversation, len(group))
        # Links are first in, first out: once everyone holds a message each wrote after
        # that, anything passed on of the first ones has arrived too.
        for node in group:
            await node.replica.send(conversation, Text(f"{node.replica.nickname} again"))
        await converged(group, conversation, 2 * len(group))
        for node in group:
            updates = [event.update for event in heard[node.peer_id]]
            assert len(updates) >= 2 * (len(group) - 1)  # every post of the others, at least
            assert len(updates) == len(set(updates)), f"{node.replica.nickname} got an update twice"
        words = {event.reached for log in heard.values() for event in log}
        assert len(max(words, key=len)) == len(group) - 2  # the author's other peers
        nursery.cancel_scope.cancel()


async def test_an_update_from_a_relay_is_passed_on_to_linked_peers(tmp_path: Path) -> None:
    """An update that came from elsewhere than a linked peer (a relay room names its origin
    "relay:<address>", no peer id) reaches alice's peers all the same: only peer ids go in
    ``Update.reached``, or the frame would be one they refuse."""
    async with nodes(tmp_path, "alice", "bob", "carol", "dave") as (alice, bob, carol, dave):
        conversation = await group_of([alice, bob, carol, dave])
        await dave.replica.receive(conversation, await alice.replica.diff(conversation, None), origin=alice.peer_id)
        async with trio.open_nursery() as nursery:
            link(nursery, alice, bob)
            link(nursery, alice, carol)
            await joined([alice, bob, carol], conversation)
            message = await dave.replica.send(conversation, Text("through the relay"))
            lacked = await dave.replica.diff(conversation, await alice.replica.state_vector(conversation))
            await alice.replica.receive(conversation, lacked, origin="relay:wss://relay.example")
            for peer in (bob, carol):
                assert await converged([peer], conversation, 1) == [[message]]
            nursery.cancel_scope.cancel()


async def _away_while_alice_writes(alice: Node, carol: Node, others: dict[str, str]) -> str:
    """A group of alice, carol and ``others`` that carol synced once, then missed 20 messages of."""
    chat = await alice.replica.create_conversation(ConversationKind.GROUP, others={carol.peer_id: "carol", **others})
    async with trio.open_nursery() as first:
        link(first, alice, carol)
        await joined([alice, carol], chat)
        first.cancel_scope.cancel()
    for i in range(20):
        await alice.replica.send(chat, Text(f"while carol was away {i}"))
    return chat


async def test_a_catch_up_is_not_passed_on_to_a_peer_whose_state_vector_holds_it(tmp_path: Path) -> None:
    """carol, back from offline, gets what she missed from alice; bobby's step 1 told her he
    holds all of it, so she passes none of it on to him (a peer back among many got it from
    each, and passed the first on to all the others)."""
    async with nodes(tmp_path, "alice", "carol") as (alice, carol), trio.open_nursery() as nursery:
        chat = await _away_while_alice_writes(alice, carol, {"bobby-peer-1": "bobby"})
        bobby, carol_side = trio.testing.memory_stream_pair()
        nursery.start_soon(carol.engine.run_link, carol_side)
        connection = Connection()
        # bobby has nothing for carol (so she asks alice at once) and all alice holds.
        hello, holds = Hello("bobby-peer-1", "bobby", 7), SyncStep1(chat, await alice.replica.state_vector(chat))
        for event in (hello, holds, SyncStep2(chat, EMPTY_UPDATE)):
            await bobby.send_all(connection.send(event))
        await trio.testing.wait_all_tasks_blocked()  # carol has taken bobby's step 1
        link(nursery, alice, carol)
        await converged([alice, carol], chat, 20)
        after = await alice.replica.send(chat, Text("after carol came back"))
        passed_on: list[bytes] = []
        while not passed_on or b"after carol came back" not in passed_on[-1]:
            passed_on.append((await read_until(bobby, connection, Update)).update)
        assert after in (m.id for m in await carol.replica.history(chat))
        assert not any(b"while carol was away" in update for update in passed_on)
        nursery.cancel_scope.cancel()


async def test_a_peer_back_among_several_gets_what_it_missed_from_one_of_them(tmp_path: Path) -> None:
    """carol, back from offline, links to bobby, then to alice, who both hold what she
    missed: she asks alice only once bobby's catch-up has merged, so alice sends none of
    it again (each sent all of it, checked and merged again: n copies among n peers)."""
    async with nodes(tmp_path, "alice", "carol") as (alice, carol), trio.open_nursery() as nursery:
        chat = await _away_while_alice_writes(alice, carol, {"bobby-peer-1": "bobby"})
        bobby, carol_side = trio.testing.memory_stream_pair()
        nursery.start_soon(carol.engine.run_link, carol_side)
        connection = Connection()
        await bobby.send_all(connection.send(Hello("bobby-peer-1", "bobby", 7)))
        asked = await read_until(bobby, connection, SyncStep1)
        from_alice, _ = link(nursery, alice, carol, wrap_a=functools.partial(SentLog, kind=SyncStep2))
        assert isinstance(from_alice, SentLog)
        await trio.testing.wait_all_tasks_blocked()
        await bobby.send_all(connection.send(SyncStep2(chat, await alice.replica.diff(chat, asked.state_vector))))
        await converged([alice, carol], chat, 20)
        with trio.fail_after(10):
            await from_alice.seen.wait()  # carol asked alice once bobby's catch-up had merged
        assert [step.conversation for step in from_alice.events] == [chat]
        assert not any(b"while carol was away" in step.update for step in from_alice.events)
        nursery.cancel_scope.cancel()


async def test_a_new_member_fetches_the_conversation_from_one_peer_and_asks_the_others_after(
    tmp_path: Path,
) -> None:
    """carol, added to a group while away, links to alice and bob, who both announce it:
    she fetches it whole from one of them, and asks the other only for what that one lacked."""
    async with nodes(tmp_path, "alice", "bob", "carol") as (alice, bob, carol), trio.open_nursery() as nursery:
        chat = await alice.replica.create_conversation(
            ConversationKind.GROUP, others={bob.peer_id: "bob", carol.peer_id: "carol"}
        )
        async with trio.open_nursery() as first:
            link(first, alice, bob)
            await joined([alice, bob], chat)
            for i in range(20):
                await alice.replica.send(chat, Text(f"before carol came {i}"))
            await converged([alice, bob], chat, 20)
            first.cancel_scope.cancel()
        logs = []
        for peer in (alice, bob):
            sent, _ = link(nursery, peer, carol, wrap_a=functools.partial(SentLog, kind=SyncStep2))
            assert isinstance(sent, SentLog)
            logs.append(sent)
        await converged([alice, bob, carol], chat, 20)
        with trio.fail_after(10):
            for sent in logs:
                await sent.seen.wait()
        whole = [step for sent in logs for step in sent.events if b"before carol came" in step.update]
        assert len(whole) == 1
        nursery.cancel_scope.cancel()


async def _silent_bobby_takes_the_turn(nursery: trio.Nursery, carol: Node) -> trio.abc.Stream:
    """bobby, a raw peer, links to carol and takes her step 1 (the catch-up turn of their
    conversation), then says nothing more; his end of the link."""
    bobby, carol_side = trio.testing.memory_stream_pair()
    nursery.start_soon(carol.engine.run_link, carol_side)
    connection = Connection()
    await bobby.send_all(connection.send(Hello("bobby-peer-1", "bobby", 7)))
    await read_until(bobby, connection, SyncStep1)
    return bobby


@pytest.mark.parametrize("bobby_goes", [False, True])
async def test_a_peer_that_does_not_bring_the_catch_up_holds_no_one_back(tmp_path: Path, bobby_goes: bool) -> None:
    """bobby takes carol's step 1 and never answers (and his link stays up): carol asks
    alice all the same, once ``catch_up_wait`` has passed, or at once when bobby's link ends."""
    settings = dataclasses.replace(FAST, catch_up_wait=3600 if bobby_goes else 0.5, idle_timeout=3600)
    async with (
        nodes(tmp_path, "alice", "carol", settings=settings) as (alice, carol),
        trio.open_nursery() as nursery,
    ):
        chat = await _away_while_alice_writes(alice, carol, {"bobby-peer-1": "bobby"})
        bobby = await _silent_bobby_takes_the_turn(nursery, carol)
        link(nursery, alice, carol)
        await trio.testing.wait_all_tasks_blocked()
        if bobby_goes:
            await bobby.aclose()
        with trio.fail_after(10):
            await converged([alice, carol], chat, 20)
        nursery.cancel_scope.cancel()


async def test_a_peer_that_let_its_catch_up_turn_run_out_is_not_waited_for_again(tmp_path: Path) -> None:
    """bobby took carol's step 1 and never answered, so carol asked alice only once
    ``catch_up_wait`` had passed. When they all link again, carol asks alice at once,
    though she would now wait an hour for bobby's catch-up (and his link stays up)."""
    settings = dataclasses.replace(FAST, catch_up_wait=0.5, idle_timeout=3600)
    async with nodes(tmp_path, "alice", "carol", settings=settings) as (alice, carol):
        chat = await _away_while_alice_writes(alice, carol, {"bobby-peer-1": "bobby"})
        for held in (20, 40):
            async with trio.open_nursery() as nursery:
                await _silent_bobby_takes_the_turn(nursery, carol)
                link(nursery, alice, carol)
                with trio.fail_after(10):
                    await converged([alice, carol], chat, held)
                nursery.cancel_scope.cancel()
            carol.engine.settings = dataclasses.replace(settings, catch_up_wait=3600)
            for i in range(20):
                await alice.replica.send(chat, Text(f"while carol was away again {i}"))


async def test_a_catch_up_names_the_senders_other_peers_that_share_the_conversation(tmp_path: Path) -> None:
    """carol answers xavier's step 1 naming bob, her other peer in the conversation: bob gets
    all carol holds from carol herself, so xavier need not pass any of it on to him."""
    async with nodes(tmp_path, "bob", "carol") as (bob, carol), trio.open_nursery() as nursery:
        chat = await carol.replica.create_conversation(
            ConversationKind.GROUP, others={bob.peer_id: "bob", "xavier-peer-1": "xavier"}
        )
        link(nursery, carol, bob)
        await joined([carol, bob], chat)
        await trio.testing.wait_all_tasks_blocked()
        xavier, carol_side = trio.testing.memory_stream_pair()
        nursery.start_soon(carol.engine.run_link, carol_side)
        connection = Connection()
        hello = Hello("xavier-peer-1", "xavier", 7, frozenset({REACH_CAPABILITY}))
        for event in (hello, SyncStep1(chat, b"\x00")):
            await xavier.send_all(connection.send(event))
        step = await read_until(xavier, connection, SyncStep2)
        assert step.reached == (bob.peer_id,)
        nursery.cancel_scope.cancel()


async def test_a_catch_up_is_not_passed_on_to_the_peers_it_names(tmp_path: Path) -> None:
    """xavier's step 2 to alice names bob (``SyncStep2.reached``): alice stores what it
    brings and passes none of it on to bob."""
    async with nodes(tmp_path, "alice", "bob", "dave") as (alice, bob, dave), trio.open_nursery() as nursery:
        chat = await alice.replica.create_conversation(
            ConversationKind.GROUP, others={bob.peer_id: "bob", dave.peer_id: "dave", "xavier-peer-1": "xavier"}
        )
        await dave.replica.receive(chat, await alice.replica.diff(chat, None), origin=alice.peer_id)
        to_bob: list[Update] = []
        link(nursery, alice, bob, wrap_a=functools.partial(SentLog, into=to_bob))
        await joined([alice, bob], chat)
        for i in range(5):
            await dave.replica.send(chat, Text(f"dave's, by xavier {i}"))
        lacked = await dave.replica.diff(chat, await alice.replica.state_vector(chat))
        xavier, alice_side = trio.testing.memory_stream_pair()
        nursery.start_soon(alice.engine.run_link, alice_side)
        connection = Connection()
        hello = Hello("xavier-peer-1", "xavier", 7, frozenset({REACH_CAPABILITY}))
        for event in (hello, SyncStep2(chat, lacked, (), (bob.peer_id,))):
            await xavier.send_all(connection.send(event))
        await until_stored([alice], lambda: _holds_count(alice, chat, 5))
        # Links are first in, first out: once bob holds alice's next message, anything
        # she passed on before it has reached him.
        after = await alice.replica.send(chat, Text("after xavier"))
        await until_stored([bob], lambda: _holds_count(bob, chat, 1, after))
        assert to_bob  # alice's message after
        assert not any(b"by xavier" in event.update for event in to_bob)
        nursery.cancel_scope.cancel()


async def _holds_count(node: Node, chat: str, count: int, message: str | None = None) -> bool:
    ids = [m.id for m in await node.replica.history(chat, limit=100)]
    return len(ids) >= count and (message is None or message in ids)


def test_a_link_that_is_closed_or_failed_is_not_counted_as_reaching_its_peer() -> None:
    # The engine names a peer in ``Update.reached`` only if its link still takes events.
    for end in (PeerLink.close, lambda link: setattr(link, "lost", "connection reset")):
        link = PeerLink(Connection(), FAST)
        assert link.accepting
        end(link)
        assert not link.accepting


@pytest.mark.parametrize("capabilities", [frozenset(), frozenset({REACH_CAPABILITY})])
async def test_who_an_update_reached_goes_only_to_peers_that_take_it(
    tmp_path: Path, capabilities: frozenset[str]
) -> None:
    """alice passes bob's update on to a peer of an older version without the field it
    would refuse, and to one that takes it with the peers alice knows hold it: bob."""
    async with nodes(tmp_path, "alice", "bob") as (alice, bob), trio.open_nursery() as nursery:
        chat = await alice.replica.create_conversation(
            ConversationKind.GROUP, others={bob.peer_id: "bob", "olden-peer-1": "olden"}
        )
        link(nursery, alice, bob)
        await joined([alice, bob], chat)
        olden, alice_side = trio.testing.memory_stream_pair()
        nursery.start_soon(alice.engine.run_link, alice_side)
        connection = Connection()
        await olden.send_all(connection.send(Hello("olden-peer-1", "olden", 7, capabilities)))
        with trio.fail_after(10):
            await wait_for(alice, lambda e: isinstance(e, PeerOnline) and e.peer_id == "olden-peer-1")
            update = await bob.replica.send(chat, Text("from bob"))
            passed_on = await read_until(olden, connection, Update)
        assert update in (m.id for m in await alice.replica.history(chat))
        assert passed_on.reached == (() if not capabilities else (bob.peer_id,))
        nursery.cancel_scope.cancel()


async def test_concurrent_sends_while_partitioned_converge_to_one_order(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob", "carol") as group:
        conversation = await group_of(group)
        async with trio.open_nursery() as nursery:
            link(nursery, group[0], group[1])
            link(nursery, group[1], group[2])
            await joined(group, conversation)
            await group[0].replica.send(conversation, Text("before"))
            await converged(group, conversation, 1)
            nursery.cancel_scope.cancel()
        rng = random.Random(3)
        for i in range(30):  # everyone writes while apart
            await rng.choice(group).replica.send(conversation, Text(f"apart {i}"))
        async with trio.open_nursery() as nursery:
            link(nursery, group[0], group[2])
            link(nursery, group[1], group[2])
            views = await converged(group, conversation, 31)
            assert views[0] == views[1] == views[2]
            nursery.cancel_scope.cancel()


async def test_a_removed_member_is_sent_nothing_written_after_the_removal(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob", "carol") as group, trio.open_nursery() as nursery:
        alice, bob, carol = group
        conversation = await group_of(group)
        for a, b in itertools.combinations(group, 2):
            link(nursery, a, b)
        await joined(group, conversation)
        await alice.replica.send(conversation, Text("for everyone"))
        await converged(group, conversation, 1)
        await alice.replica.remove_member(conversation, carol.peer_id)
        await alice.replica.send(conversation, Text("after carol left"))
        await bob.replica.send(conversation, Text("bob, after too"))
        await converged([alice, bob], conversation, 3)
        # Links are first in, first out: a direct message from each that reaches carol
        # shows that nothing they sent her earlier is still on its way.
        directs = {}
        for other in (alice, bob):
            directs[other.peer_id] = await other.replica.create_conversation(
                ConversationKind.DIRECT, others={carol.peer_id: "carol"}
            )
            await other.replica.send(directs[other.peer_id], Text("just us"))
            await converged([carol], directs[other.peer_id], 1)
        assert [m.content for m in await carol.replica.history(conversation)] == [Text("for everyone")]
        # Nor does anything she writes in the group now reach the others.
        await carol.replica.send(conversation, Text("am I still here?"))
        for other in (alice, bob):
            await carol.replica.send(directs[other.peer_id], Text("hello?"))
            await converged([other], directs[other.peer_id], 2)
            assert len(await other.replica.history(conversation)) == 3
        nursery.cancel_scope.cancel()


async def test_a_member_whose_leave_arrived_first_still_hands_over_what_it_wrote(tmp_path: Path) -> None:
    # carol gets bob's leave before his last message, which only bob holds. yrs would show
    # the leave at once (it integrates an item whose origins it has while its author's
    # earlier clocks are missing); the leave waits for the message instead (``model.gaps``),
    # and bob, gone in nobody's view yet, still hands the message over.
    async with nodes(tmp_path, "alice", "bob", "carol") as group, trio.open_nursery() as nursery:
        alice, bob, carol = group
        conversation = await group_of(group)
        for other in (bob, carol):
            await other.replica.receive(
                conversation, await alice.replica.diff(conversation, None), origin=alice.peer_id
            )
        recorder = Recorder()
        bob.replica.add_listener(recorder)
        await bob.replica.send(conversation, Text("before I go"))
        await bob.replica.leave(conversation)
        message, leave = recorder.updates
        await carol.replica.receive(conversation, leave, origin=bob.peer_id)
        assert not await carol.replica.has_left(conversation, bob.peer_id)
        assert await carol.replica.history(conversation) == []
        link(nursery, bob, carol)
        views = await converged([carol], conversation, 1)
        assert views == [[m.id for m in await bob.replica.history(conversation)]]
        assert await carol.replica.has_left(conversation, bob.peer_id)
        nursery.cancel_scope.cancel()


async def test_a_member_added_unseen_proves_its_membership(tmp_path: Path) -> None:
    # alice adds carol, tells only carol, and is gone for good (her device lost its store,
    # say). bob, who never saw carol's record, learns it from carol: the creator's signature.
    async with nodes(tmp_path, "alice", "bob", "carol", signed=True) as group, trio.open_nursery() as nursery:
        alice, bob, carol = group
        conversation = await alice.replica.create_conversation(ConversationKind.GROUP, others={bob.peer_id: "bob"})
        await bob.replica.receive(conversation, await alice.replica.diff(conversation, None), origin=alice.peer_id)
        await alice.replica.add_member(conversation, carol.peer_id, "carol")
        await carol.replica.receive(conversation, await alice.replica.diff(conversation, None), origin=alice.peer_id)
        assert await bob.replica.is_stranger(conversation, carol.peer_id)
        await carol.replica.send(conversation, Text("hi, I'm new"))
        bob_said, _ = link(nursery, bob, carol, wrap_a=CountingStream)
        assert await converged([bob], conversation, 1) == [[m.id for m in await carol.replica.history(conversation)]]
        assert await bob.replica.is_member(conversation, carol.peer_id)
        assert isinstance(bob_said, CountingStream)
        first_sync = next(f for f in frames(bytes(bob_said.data)) if f[0] == 3 and f[1] == conversation)
        assert first_sync[2] == b"\x00\x00\x01\x00"  # y-sync step 1 with the empty state vector: nothing of bob's copy
        await bob.replica.send(conversation, Text("welcome"))
        await converged([carol], conversation, 2)
        nursery.cancel_scope.cancel()


async def test_a_stranger_that_cannot_prove_membership_leaves_nothing(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob", signed=True) as group:
        alice, bob = group
        conversation = await alice.replica.create_conversation(ConversationKind.GROUP, others={bob.peer_id: "bob"})
        document = await alice.replica.diff(conversation, None)
        await bob.replica.receive(conversation, document, origin=alice.peer_id)
        mallory = Identity.generate()
        claim = Member(mallory.peer_id, "mallory", Role.MEMBER, 1_800_000_000_000_000)
        forged = forge_member_records(document, {mallory.peer_id: sign_member(mallory, conversation, claim)})
        before = await bob.replica.state_vector(conversation)
        assert await bob.replica.is_stranger(conversation, mallory.peer_id)
        with pytest.raises(NotAllowed):
            await bob.replica.receive(conversation, forged, origin=mallory.peer_id, proving=True)
        assert await bob.replica.state_vector(conversation) == before
        assert not await bob.replica.is_member(conversation, mallory.peer_id)
        assert mallory.peer_id not in await bob.replica.members(conversation)


async def test_over_real_tcp_with_reconnect(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob", "carol") as group, trio.open_nursery() as nursery:
        alice, bob, carol = group
        conversation = await group_of(group)
        listeners = await nursery.start(serve_tcp, alice.engine)
        port = listeners[0].socket.getsockname()[1]
        for node in (bob, carol):
            nursery.start_soon(
                lambda n=node: keep_connected(n.engine, lambda: connect_tcp("127.0.0.1", port), min_backoff=0.05)
            )
        await joined(group, conversation)
        await bob.replica.send(conversation, Text("over tcp"))
        await carol.replica.send(conversation, Text("me too"))
        views = await converged(group, conversation, 2)
        assert views[0] == views[1] == views[2]
        nursery.cancel_scope.cancel()


# -- hostile and broken peers ---------------------------------------------------------


async def speak_raw(stream: trio.abc.Stream, data: bytes) -> bytes:
    """Send raw bytes and collect what the node answers until it hangs up."""
    await stream.send_all(data)
    received = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some():
            received += chunk
    return received


def raw_frame(fields: list[object]) -> bytes:
    """A frame built by hand (our own Connection refuses to send what peers must reject)."""
    body = msgpack.packb(fields, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def frames(data: bytes) -> list[list[object]]:
    result = []
    while data:
        length = int.from_bytes(data[:4], "big")
        result.append(msgpack.unpackb(data[4 : 4 + length], raw=False))
        data = data[4 + length :]
    return result


@pytest.mark.parametrize(
    ("attack", "code"),
    [
        (b"\x00\x00\x00\x05garbage and more", 1002),
        (b"\xff\xff\xff\xff", 1004),
        (raw_frame([1, "gigi-sync", 2, "mallory-peer1", "m", 1, []]), 1003),
        (b"", 1006),  # says nothing at all: slowloris
    ],
    ids=["garbage", "oversized", "wrong-version", "silent"],
)
async def test_bad_peer_is_dropped_while_others_keep_syncing(tmp_path: Path, attack: bytes, code: int) -> None:
    async with nodes(tmp_path, "alice", "bob") as (alice, bob), trio.open_nursery() as nursery:
        conversation = await group_of([alice, bob])
        link(nursery, alice, bob)
        mallory, victim_side = trio.testing.memory_stream_pair()
        nursery.start_soon(alice.engine.run_link, victim_side)
        answer = await speak_raw(mallory, attack)
        close = frames(answer)[-1]
        assert close[:2] == [7, code]
        await alice.replica.send(conversation, Text("still here"))
        await converged([alice, bob], conversation, 1)
        nursery.cancel_scope.cancel()


async def test_peer_online_and_offline_events(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob") as (alice, bob):
        async with trio.open_nursery() as nursery:
            left, _ = link(nursery, alice, bob)
            with trio.fail_after(10):
                online = await wait_for(alice, lambda e: isinstance(e, PeerOnline))
                assert online == PeerOnline(bob.peer_id, "bob")
                await left.aclose()
                offline = await wait_for(alice, lambda e: isinstance(e, PeerOffline))
                assert isinstance(offline, PeerOffline)
                assert offline.peer_id == bob.peer_id
            nursery.cancel_scope.cancel()


async def test_presence_and_typing_reach_members(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob") as (alice, bob), trio.open_nursery() as nursery:
        conversation = await group_of([alice, bob])
        link(nursery, alice, bob)
        with trio.fail_after(10):
            online = await wait_for(bob, lambda e: isinstance(e, PresenceChanged) and e.online)
            assert online == PresenceChanged(conversation, alice.peer_id, "alice", online=True, typing=False)
            assert [p.peer_id for p in bob.engine.presence(conversation)] == [alice.peer_id]
            alice.engine.set_typing(conversation, True)
            typing = await wait_for(bob, lambda e: isinstance(e, PresenceChanged) and e.typing)
            assert isinstance(typing, PresenceChanged)
            assert typing.peer_id == alice.peer_id
            assert bob.engine.presence(conversation)[0].typing
        nursery.cancel_scope.cancel()


async def test_presence_in_a_conversation_made_after_the_link_came_up(tmp_path: Path) -> None:
    quiet = LinkSettings(handshake_timeout=2.0, ping_interval=3600, idle_timeout=7200, anti_entropy_interval=3600)
    async with nodes(tmp_path, "alice", "bob", settings=quiet) as (alice, bob), trio.open_nursery() as nursery:
        link(nursery, alice, bob)
        with trio.fail_after(5):  # presence renews every 15 s: it must not wait for that
            await wait_for(bob, lambda e: isinstance(e, PeerOnline))
            conversation = await group_of([alice, bob])
            online = await wait_for(bob, lambda e: isinstance(e, PresenceChanged) and e.online)
        assert online == PresenceChanged(conversation, alice.peer_id, "alice", online=True, typing=False)
        nursery.cancel_scope.cancel()


async def small_frames(
    tmp_path: Path, limits: Limits, *names: str
) -> contextlib.AbstractAsyncContextManager[list[Node]]:
    """``nodes`` (alice and bob, unless ``names``) whose engines keep ``limits``."""

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[list[Node]]:
        async with nodes(tmp_path, *(names or ("alice", "bob"))) as group:
            for node in group:
                node.replica.remove_listener(node.engine)
                node.engine = SyncEngine(node.replica, settings=FAST, limits=limits)
                node.replica.add_listener(node.engine)
            yield group

    return opened()


async def test_a_catch_up_too_large_for_one_frame_arrives_in_parts(tmp_path: Path) -> None:
    limits = Limits(max_frame_bytes=64 * 1024, max_update_bytes=60 * 1024)
    async with await small_frames(tmp_path, limits) as (alice, bob):
        others = {bob.peer_id: "b"}
        big = await alice.replica.create_conversation(ConversationKind.GROUP, title="big", others=others)
        small = await alice.replica.create_conversation(ConversationKind.GROUP, title="small", others=others)
        # Parts are cut between structs, and yrs squashes a stream bucket's entries into
        # one struct: 256 messages of about 60 bytes, well under half the update limit.
        for i in range(1000):
            await alice.replica.send(big, Text(f"message {i} of a long conversation"))
        assert len(await alice.replica.diff(big, None)) > limits.max_frame_bytes
        await alice.replica.send(small, Text("fits"))
        async with trio.open_nursery() as nursery:
            link(nursery, alice, bob)
            views = await converged([alice, bob], big, 1000)
            assert views[0] == views[1]
            assert await converged([alice, bob], small, 1)
            nursery.cancel_scope.cancel()


async def test_a_message_too_large_for_one_frame_leaves_the_link_and_the_others_syncing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Neither its live update nor a catch-up cut in parts fits a frame (one struct holds
    # it): not sent (logged once), where it used to end the link with an exception out of
    # run_link.
    limits = Limits(max_frame_bytes=32 * 1024, max_update_bytes=30 * 1024)
    async with await small_frames(tmp_path, limits) as (alice, bob):
        others = {bob.peer_id: "b"}
        big = await alice.replica.create_conversation(ConversationKind.GROUP, title="big", others=others)
        small = await alice.replica.create_conversation(ConversationKind.GROUP, title="small", others=others)
        await alice.replica.send(small, Text("fits"))
        async with trio.open_nursery() as nursery:
            link(nursery, alice, bob)
            assert await converged([alice, bob], small, 1)
            await alice.replica.send(big, Text("x" * 40_000))
            await bob.replica.send(small, Text("and back"))
            assert await converged([alice, bob], small, 2)
            await alice.replica.send(small, Text("and on"))
            assert await converged([alice, bob], small, 3)
            assert await bob.replica.history(big) == []  # created before the message, which never came
            nursery.cancel_scope.cancel()
    refusals = [r for r in caplog.records if r.levelname == "ERROR" and big in r.getMessage()]
    assert len(refusals) == 1
    assert "exceeds the limit" in refusals[0].getMessage()


async def test_an_update_too_large_for_the_reached_peers_beside_it_goes_without_them(tmp_path: Path) -> None:
    # Within REACHED_ROOM of the frame limit, the word could make the frame one the peer
    # refuses (and the update would not be sent at all): it goes without it.
    limits = Limits(max_frame_bytes=32 * 1024, max_update_bytes=31 * 1024)
    async with await small_frames(tmp_path, limits, "alice", "bob", "carol") as group:
        alice, bob, carol = group
        chat = await group_of(group)
        async with trio.open_nursery() as nursery:
            heard = link_mesh_logging_updates(nursery, group)
            await joined(group, chat)
            await alice.replica.send(chat, Text("small"))
            await alice.replica.send(chat, Text("x" * 26_000))
            await converged(group, chat, 2)
            nursery.cancel_scope.cancel()
        small = next(event for event in heard[bob.peer_id] if b"small" in event.update)
        large = next(event for event in heard[bob.peer_id] if b"x" * 1000 in event.update)
        assert small.reached == (carol.peer_id,)
        assert 32 * 1024 - REACHED_ROOM < len(large.update) < 31 * 1024
        assert large.reached == ()
