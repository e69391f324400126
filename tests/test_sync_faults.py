"""The sync engine under faults: lost frames, slow peers, redialling, duplicate links, outsiders.

Real replicas on SQLite in ``tmp_path`` and links over memory streams, except the backoff
test, which runs under trio's ``MockClock`` (see there why it uses no replica). Negative
outcomes are decided by events (a later frame on the same ordered link, a Pong), never by
sleeping.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing
from hostile import hostile_updates
from sync_helpers import Node, converged, drain, ids, joined, link, nodes, read_until, until_stored, wait_for

from gigi_crdt import ConversationKind, Text, UnknownConversation
from gigi_crdt.errors import StorageError
from gigi_crdt.protocol import (
    Announce,
    Close,
    CloseCode,
    Connection,
    ConnectionClosed,
    Event,
    Hello,
    Limits,
    NeedData,
    Ping,
    Pong,
    SyncPart,
    SyncStep1,
    SyncStep2,
    Update,
)
from gigi_crdt.replica import open_replica
from gigi_crdt.sync import (
    LinkOutcome,
    LinkSettings,
    MessageDeleted,
    PeerOffline,
    PeerOnline,
    SyncEngine,
    keep_connected,
)

# No anti-entropy unless a test asks for it: repairs must come from the path under test.
FAST = LinkSettings(handshake_timeout=2.0, ping_interval=0.5, idle_timeout=2.0, anti_entropy_interval=3600.0)


async def conversation_of(owner: Node, *others: Node) -> str:
    return await owner.replica.create_conversation(
        ConversationKind.GROUP, title="g", others={n.peer_id: n.replica.nickname for n in others}
    )


def split_frames(data: bytes) -> list[bytes]:
    """Whole frames (header included) in ``data``."""
    result = []
    while data:
        length = int.from_bytes(data[:4], "big")
        result.append(data[: 4 + length])
        data = data[4 + length :]
    return result


def decode(frame: bytes) -> list[object]:
    fields = msgpack.unpackb(frame[4:], raw=False)
    assert isinstance(fields, list)
    return fields


def is_live_update(frame: bytes) -> bool:
    """A SYNC frame whose y-protocols payload is a sync message of kind update (0x00 0x02)."""
    fields = decode(frame)
    return fields[0] == 3 and isinstance(fields[2], bytes) and fields[2][:2] == b"\x00\x02"


class WrappedStream(trio.abc.Stream):
    """Passes everything through to ``inner``; subclasses change one direction."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class RecordingStream(WrappedStream):
    """Keeps a copy of everything sent and received through it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.sent = bytearray()
        self.received = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data
        await self.inner.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.received += data
        return data


class CuttingStream(WrappedStream):
    """Once armed, drops the first live Update frame it is asked to send, lets the second
    through, then drops everything: the peer gets the second without the first, for good."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.armed = False
        self.updates_seen = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        kept = b""
        for frame in split_frames(bytes(data)):
            if self.armed and self.updates_seen < 2 and is_live_update(frame):
                self.updates_seen += 1
                if self.updates_seen == 1:
                    continue  # the first: lost
            elif self.armed and self.updates_seen == 2:
                continue  # past the second: the link is cut
            kept += frame
        if kept:
            await self.inner.send_all(kept)


# -- 1. anti-entropy repairs a lost frame -----------------------------------------------


class LossyStream(WrappedStream):
    """Once armed, silently drops the first frame carrying a live Update that it is asked to send."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.armed = False
        self.dropped: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.armed:
            kept = b""
            for frame in split_frames(bytes(data)):
                if self.armed and is_live_update(frame):
                    self.armed = False
                    self.dropped.append(frame)
                else:
                    kept += frame
            if not kept:
                return
            data = kept
        await self.inner.send_all(data)


@pytest.mark.parametrize("anti_entropy_interval", [0.3, 3600.0], ids=["anti-entropy", "asking-for-what-waits"])
async def test_a_lost_frame_is_repaired(tmp_path: Path, anti_entropy_interval: float) -> None:
    """Either by the periodic anti-entropy round, or (with that off) because alice's next
    update hangs on the lost one (each head of an author hangs on the one before), which
    leaves it waiting at bob, who asks alice at once for what it lacks."""
    settings = LinkSettings(
        handshake_timeout=2.0, ping_interval=0.5, idle_timeout=5.0, anti_entropy_interval=anti_entropy_interval
    )
    lossy: list[LossyStream] = []

    def make_lossy(stream: trio.abc.Stream) -> trio.abc.Stream:
        lossy.append(LossyStream(stream))
        return lossy[-1]

    async with nodes(tmp_path, "alice", "bob", "carol", settings=settings) as group, trio.open_nursery() as nursery:
        alice, bob, carol = group
        conversation = await conversation_of(alice, bob, carol)
        link(nursery, alice, bob, wrap_a=make_lossy)  # what alice sends bob may be lost
        link(nursery, alice, carol)
        await joined(group, conversation)

        lossy[0].armed = True
        lost = await alice.replica.send(conversation, Text("LOST-MESSAGE from alice"))
        # carol answers; alice passes it on to bob over the same ordered link, *after* the
        # frame that was lost, and writes her delivered receipt for it.
        await until_stored([carol], lambda: _holds(carol, conversation, [lost]))
        later = await carol.replica.send(conversation, Text("later, from carol"))

        views = await converged([alice, bob, carol], conversation, 2)
        assert len(lossy[0].dropped) == 1
        assert b"LOST-MESSAGE" in lossy[0].dropped[0]  # the frame lost was alice's message
        assert views[0] == views[1] == views[2]
        assert set(views[1]) == {lost, later}
        nursery.cancel_scope.cancel()


async def _holds(node: Node, conversation: str, expected: list[str]) -> bool:
    return await ids(node, conversation, 10) == expected


# -- 2. a slow peer costs bounded memory and is resynced -----------------------------------


class GatedStream(WrappedStream):
    """Sending blocks while the gate is shut: from the sender's view, the peer stopped reading."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.gate: trio.Event | None = None
        self.blocked_sends = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        while self.gate is not None and not self.gate.is_set():
            self.blocked_sends += 1
            await self.gate.wait()
        await self.inner.send_all(data)


async def test_slow_peer_costs_bounded_memory_and_is_resynced(tmp_path: Path) -> None:
    queue_size = 8
    settings = LinkSettings(
        handshake_timeout=5.0,
        ping_interval=1.0,
        idle_timeout=120.0,
        anti_entropy_interval=3600.0,
        queue_size=queue_size,
    )
    gated: list[GatedStream] = []

    def make_gated(stream: trio.abc.Stream) -> trio.abc.Stream:
        gated.append(GatedStream(stream))
        return gated[-1]

    async with nodes(tmp_path, "alice", "bob", settings=settings) as (alice, bob), trio.open_nursery() as nursery:
        conversation = await conversation_of(alice, bob)
        link(nursery, alice, bob, wrap_a=make_gated)
        await joined([alice, bob], conversation)
        with trio.fail_after(10):
            while bob.peer_id not in alice.engine._links:  # registered at bob's Hello, before joined
                await wait_for(alice, lambda e: isinstance(e, PeerOnline))
        peer_link = alice.engine._links[bob.peer_id]

        gated[0].gate = trio.Event()  # bob stops reading
        sent = []
        most_queued = 0
        with trio.fail_after(40):
            for i in range(2000):
                sent.append(await alice.replica.send(conversation, Text(f"message {i}")))
                queued = peer_link._send.statistics().current_buffer_used
                most_queued = max(most_queued, queued)
                assert queued <= queue_size, f"queue holds {queued} events after message {i}"
        assert most_queued == queue_size  # the queue did fill: the bound was exercised
        assert gated[0].blocked_sends >= 1  # alice's writer was stuck on bob
        assert conversation in peer_link._resync  # the overflow was turned into a resync
        assert await ids(bob, conversation, 10) == []  # nothing got through meanwhile

        # Asking again and again costs alice no diff while bob does not read: the resync
        # makes one, from the state vector bob told last, once he reads again.
        diffs: list[str] = []
        make_diff = alice.replica.diff

        async def counted_diff(conversation: str, state_vector: bytes | None) -> bytes:
            diffs.append(conversation)
            return await make_diff(conversation, state_vector)

        alice.replica.diff = counted_diff  # type: ignore[method-assign]
        with trio.fail_after(10):
            for _ in range(50):
                while not bob.engine._links[alice.peer_id].offer(SyncStep1(conversation, b"\x00")):
                    await trio.testing.wait_all_tasks_blocked()  # bob's queue is small too
            while peer_link.peer_state.get(conversation) != b"\x00":  # the last one was read
                await trio.testing.wait_all_tasks_blocked()
        assert diffs == []

        gated[0].gate.set()  # bob reads again
        views = await converged([alice, bob], conversation, 2000)
        assert views[1] == sent
        assert views[0] == sent
        nursery.cancel_scope.cancel()


# -- 3. keep_connected backs off with jitter, and resets after a handshake -------------------


class StubReplica:
    """Just what ``SyncEngine.run_link`` touches for a peer that shares nothing with us.

    The backoff test runs under ``MockClock(autojump_threshold=0)``: whenever every task
    waits, virtual time jumps to the next deadline. A real replica does its SQLite work
    in worker threads, and a task waiting for a thread counts as idle, so time would jump
    (through handshake, idle and ``fail_after`` deadlines) while SQLite works: the timings
    measured would depend on thread scheduling. With no thread involved, virtual time only
    moves during the sleeps under test, so the measured gaps are exact.
    """

    peer_id = "dialer-peer-1"
    nickname = "dialer"

    async def shared_conversations(self, peer_id: str) -> list[str]:
        return []

    async def diff(self, conversation: str, state_vector: bytes | None) -> bytes:
        raise AssertionError("nothing is shared, so nothing is ever resent")


async def remote_that_hangs_up_after_hello(stream: trio.abc.Stream, closed_at: list[float]) -> None:
    """Say hello back, wait until the engine has accepted us (its Announce), then hang up."""
    connection = Connection()
    await stream.send_all(connection.send(Hello("remote-peer-1", "remote", 7)))
    while True:
        event = connection.next_event()
        if isinstance(event, NeedData):
            connection.receive_data(await stream.receive_some())
            continue
        if isinstance(event, Announce):
            break
    await stream.aclose()
    closed_at.append(trio.current_time())


async def test_keep_connected_backoff_doubles_with_jitter_and_resets_after_handshake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    min_backoff, max_backoff, seed = 1.0, 8.0, 7
    failures_before, success_call, last_call = 6, 7, 9
    engine = SyncEngine(StubReplica(), settings=FAST)  # type: ignore[arg-type]
    calls: list[float] = []
    link_ended: list[float] = []
    peer_closed: list[float] = []
    outcomes: list[LinkOutcome] = []
    finished = trio.Event()

    class TimedEngine:
        async def run_link(self, stream: trio.abc.Stream, *, expected_peer: str | None = None) -> LinkOutcome:
            outcome = await engine.run_link(stream, expected_peer=expected_peer)
            outcomes.append(outcome)
            link_ended.append(trio.current_time())
            return outcome

    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            calls.append(trio.current_time())
            if len(calls) == success_call:
                ours, theirs = trio.testing.memory_stream_pair()
                nursery.start_soon(remote_that_hangs_up_after_hello, theirs, peer_closed)
                return ours
            if len(calls) == last_call:
                finished.set()
                await trio.sleep_forever()
            raise OSError("connection refused")

        nursery.start_soon(
            lambda: keep_connected(
                TimedEngine(),  # type: ignore[arg-type]
                connect,
                rng=random.Random(seed),
                min_backoff=min_backoff,
                max_backoff=max_backoff,
            )
        )
        with trio.fail_after(600):  # virtual seconds
            await finished.wait()
        nursery.cancel_scope.cancel()

    assert len(calls) == last_call
    assert [o.peer_id for o in outcomes] == ["remote-peer-1"]  # the one link got past the handshake
    assert len(peer_closed) == 1

    # Waits after each failure, then after the link ended (measured from its end), then one more failure.
    before = [b - a for a, b in zip(calls[: success_call - 1], calls[1:success_call], strict=True)]
    after = [calls[success_call] - link_ended[0], calls[success_call + 1] - calls[success_call]]
    assert len(before) == failures_before
    nominal_before = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # doubling from min_backoff, capped at max_backoff
    nominal_after = [min_backoff, 2 * min_backoff]  # reset by the handshake, then doubling again
    replay = random.Random(seed)
    for gap, nominal in zip(before + after, nominal_before + nominal_after, strict=True):
        assert 0.5 * nominal <= gap < 1.5 * nominal, (gap, nominal)
        assert gap == pytest.approx(nominal * replay.uniform(0.5, 1.5), abs=1e-6)
    assert after[0] < 1.5 * min_backoff < 0.5 * max_backoff  # without the reset it would be >= 4 s


# -- 4. a duplicate link is refused and the first keeps working -------------------------------


async def test_duplicate_link_is_refused_and_the_first_keeps_syncing(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob", settings=FAST) as (alice, bob), trio.open_nursery() as nursery:
        conversation = await conversation_of(alice, bob)
        link(nursery, alice, bob)
        await joined([alice, bob], conversation)
        first = alice.engine._links[bob.peer_id]
        drain(alice)

        # A second link between the same two engines while the first is up.
        left, right = trio.testing.memory_stream_pair()
        alice_side, bob_side = RecordingStream(left), RecordingStream(right)  # each records what it sends
        outcomes: dict[str, LinkOutcome] = {}

        async def run(name: str, node: Node, stream: trio.abc.Stream) -> None:
            outcomes[name] = await node.engine.run_link(stream)

        with trio.fail_after(10):  # both ends refuse, and both runs end
            async with trio.open_nursery() as second:
                second.start_soon(run, "alice", alice, alice_side)
                second.start_soon(run, "bob", bob, bob_side)
        for name, side in (("alice", alice_side), ("bob", bob_side)):
            close = decode(split_frames(bytes(side.sent))[-1])
            assert close[:2] == [7, int(CloseCode.GOING_AWAY)], (name, close)
            assert "already linked" in str(close[2])
            assert "already linked" in outcomes[name].reason

        # The refused link did not unregister the first one, and sync goes on over it.
        assert alice.engine._links[bob.peer_id] is first
        assert not [e for e in drain(alice) if isinstance(e, PeerOffline)]
        from_alice = await alice.replica.send(conversation, Text("still linked?"))
        from_bob = await bob.replica.send(conversation, Text("yes"))
        views = await converged([alice, bob], conversation, 2)
        assert views[0] == views[1]
        assert set(views[0]) == {from_alice, from_bob}
        nursery.cancel_scope.cancel()


async def test_link_is_released_promptly_when_the_peer_hangs_up(tmp_path: Path) -> None:
    """After a peer hangs up, the link must end (PeerOffline) at once, not after FLUSH_SECONDS.

    While the dead link stays registered, the same peer redialling is refused as a duplicate
    ("already linked", CLOSE 1001), so a quick reconnect cannot work.
    """
    async with nodes(tmp_path, "alice", "bob", settings=FAST) as (alice, bob), trio.open_nursery() as nursery:
        conversation = await conversation_of(alice, bob)
        _, bob_side = link(nursery, alice, bob)
        await joined([alice, bob], conversation)
        drain(alice)
        drain(bob)
        await bob_side.aclose()  # bob's end goes away: alice reads end of stream
        with trio.move_on_after(2) as late:  # a bound, not a wait: FLUSH_SECONDS is 5
            offline = await wait_for(alice, lambda e: isinstance(e, PeerOffline))
        assert not late.cancelled_caught, (
            "no PeerOffline within 2 s of the peer hanging up; the dead link is still registered: "
            f"{bob.peer_id in alice.engine._links=}"
        )
        assert isinstance(offline, PeerOffline)
        assert offline.peer_id == bob.peer_id
        with trio.fail_after(2):
            await wait_for(bob, lambda e: isinstance(e, PeerOffline))
        # bob redials, and the new link is accepted and syncs.
        link(nursery, alice, bob)
        message = await alice.replica.send(conversation, Text("welcome back"))
        views = await converged([alice, bob], conversation, 1)
        assert views == [[message], [message]]
        nursery.cancel_scope.cancel()


async def test_a_replica_closed_under_a_running_link_ends_it_going_away(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", settings=FAST) as (alice,), trio.open_nursery() as nursery:
        async with open_replica(tmp_path / "bob", nickname="bob") as replica:
            engine = SyncEngine(replica, settings=FAST)
            replica.add_listener(engine)
            bob = Node(replica, engine)
            chat = await replica.create_conversation(ConversationKind.DIRECT, others={alice.peer_id: "alice"})
            link(nursery, alice, bob)
            await joined([alice, bob], chat)
        # Bob's store is closed; his engine still reads the link and cannot store this.
        await alice.replica.send(chat, Text("too late"))
        with trio.fail_after(10):
            offline = await wait_for(alice, lambda e: isinstance(e, PeerOffline))
        assert isinstance(offline, PeerOffline)
        assert offline.reason.startswith("peer closed: GOING_AWAY")
        assert "is closed" in offline.reason
        nursery.cancel_scope.cancel()


# -- 5. outsiders never get a conversation ---------------------------------------------------


async def test_non_member_never_receives_a_conversation(tmp_path: Path) -> None:
    async with nodes(tmp_path, "alice", "bob", "carol", settings=FAST) as group, trio.open_nursery() as nursery:
        alice, bob, carol = group
        secret = await conversation_of(alice, bob)  # carol is not a member
        link(nursery, alice, bob)
        to_carol, _ = link(nursery, alice, carol, wrap_a=RecordingStream)
        assert isinstance(to_carol, RecordingStream)
        await joined([alice, bob], secret)
        sent = [await alice.replica.send(secret, Text(f"SECRET-TEXT {i}")) for i in range(5)]
        views = await converged([alice, bob], secret, 5)
        assert views[1] == sent  # bob got everything...

        # ...and anything alice would have sent carol about it went out before this: a
        # conversation that carol is in, announced and synced over the same ordered link.
        canary = await conversation_of(alice, carol)
        hello = await alice.replica.send(canary, Text("for carol"))
        await until_stored([carol], lambda: _holds(carol, canary, [hello]))

        assert [s.metadata.id for s in await carol.replica.conversations()] == [canary]
        with pytest.raises(UnknownConversation):
            await carol.replica.history(secret)
        assert secret.encode() not in to_carol.sent
        assert b"SECRET-TEXT" not in to_carol.sent
        nursery.cancel_scope.cancel()


async def test_non_member_asking_for_a_conversation_gets_nothing(tmp_path: Path) -> None:
    """A hostile peer that names the conversation (announce, sync step 1) is not answered."""
    async with nodes(tmp_path, "alice", "bob", settings=FAST) as (alice, bob), trio.open_nursery() as nursery:
        secret = await conversation_of(alice, bob)
        await alice.replica.send(secret, Text("SECRET-TEXT"))
        mallory, alice_side = trio.testing.memory_stream_pair()
        nursery.start_soon(alice.engine.run_link, alice_side)
        connection = Connection()
        for event in (
            Hello("mallory-peer-1", "mallory", 9),
            Announce((secret,)),
            SyncStep1(secret, b"\x00"),
            Ping(4242),
        ):
            await mallory.send_all(connection.send(event))
        # alice answers in order: whatever she would say about the secret precedes this Pong.
        heard: list[Event] = []
        with trio.fail_after(10):
            while not heard or heard[-1] != Pong(4242):
                event = connection.next_event()
                if isinstance(event, NeedData):
                    connection.receive_data(await mallory.receive_some())
                    continue
                assert not isinstance(event, Close | ConnectionClosed), event
                heard.append(event)
        about_secret = [e for e in heard if isinstance(e, SyncStep1 | SyncStep2 | Update) and e.conversation == secret]
        assert about_secret == []
        assert all(secret not in e.conversations for e in heard if isinstance(e, Announce))
        nursery.cancel_scope.cancel()


# -- 6. hostile updates from a member ---------------------------------------------------------

HANG = "hang-string-in-array-root.hex"  # a string in root "a": reading "a" as an Array never returns


async def test_a_member_sending_a_hostile_update_is_dropped_and_nothing_of_it_spreads(tmp_path: Path) -> None:
    (poison,) = hostile_updates(HANG)
    async with nodes(tmp_path, "alice", "carol", settings=FAST) as (alice, carol), trio.open_nursery() as nursery:
        chat = await alice.replica.create_conversation(
            ConversationKind.GROUP, others={carol.peer_id: "carol", "mallory-peer-1": "mallory"}
        )
        to_carol, _ = link(nursery, alice, carol, wrap_a=RecordingStream)
        assert isinstance(to_carol, RecordingStream)
        await joined([alice, carol], chat)
        before = await alice.replica.state_vector(chat)
        mallory, alice_side = trio.testing.memory_stream_pair()
        nursery.start_soon(alice.engine.run_link, alice_side)
        connection = Connection()
        for event in (Hello("mallory-peer-1", "mallory", 9), Update(chat, poison)):
            await mallory.send_all(connection.send(event))
        with trio.fail_after(10):
            offline = await wait_for(alice, lambda e: isinstance(e, PeerOffline) and e.peer_id == "mallory-peer-1")
            closed = await read_until(mallory, connection, Close)
        assert isinstance(offline, PeerOffline)
        assert "update refused" in offline.reason
        assert closed.code is CloseCode.INTERNAL_ERROR
        assert await alice.replica.state_vector(chat) == before
        # The link to carol carries on, and carries none of it.
        message = await alice.replica.send(chat, Text("still fine"))
        assert await converged([alice, carol], chat, 1) == [[message], [message]]
        assert poison not in to_carol.sent
        nursery.cancel_scope.cancel()


async def mallory_sends(alice: Node, nursery: trio.Nursery, *events: Event) -> tuple[PeerOffline, Close]:
    """Link a peer that says ``events`` to alice; what alice tells of it, and her Close."""
    mallory, alice_side = trio.testing.memory_stream_pair()
    nursery.start_soon(alice.engine.run_link, alice_side)
    connection = Connection()
    for event in (Hello("mallory-peer-1", "mallory", 9), *events):
        await mallory.send_all(connection.send(event))
    with trio.fail_after(10):
        offline = await wait_for(alice, lambda e: isinstance(e, PeerOffline) and e.peer_id == "mallory-peer-1")
        closed = await read_until(mallory, connection, Close)
    assert isinstance(offline, PeerOffline)
    return offline, closed


async def test_a_step_2_part_that_fails_the_check_ends_the_link_and_nothing_of_the_step_2_is_taken(
    tmp_path: Path,
) -> None:
    (poison,) = hostile_updates(HANG)
    async with nodes(tmp_path, "alice", "carol", settings=FAST) as (alice, carol), trio.open_nursery() as nursery:
        chat = await alice.replica.create_conversation(
            ConversationKind.GROUP, others={carol.peer_id: "carol", "mallory-peer-1": "mallory"}
        )
        link(nursery, alice, carol)
        await joined([alice, carol], chat)
        # A valid update of carol's as the step 2 that ends the parts: it is not taken either.
        carols = await carol.replica.send(chat, Text("from carol"))
        assert await converged([alice, carol], chat, 1) == [[carols], [carols]]
        before = await alice.replica.state_vector(chat)
        offline, close = await mallory_sends(
            alice, nursery, SyncPart(chat, poison), SyncStep2(chat, await carol.replica.diff(chat, None))
        )
        assert "update refused" in offline.reason
        assert close.code is CloseCode.INTERNAL_ERROR
        assert await alice.replica.state_vector(chat) == before
        message = await alice.replica.send(chat, Text("still fine"))
        assert await converged([alice, carol], chat, 2) == [[carols, message], [carols, message]]
        nursery.cancel_scope.cancel()


async def test_step_2_parts_over_the_limit_end_the_link_and_others_go_on(tmp_path: Path) -> None:
    limits = Limits(max_parts_bytes=100_000)
    async with nodes(tmp_path, "alice", "carol", settings=FAST) as (alice, carol), trio.open_nursery() as nursery:
        alice.replica.remove_listener(alice.engine)
        alice.engine = SyncEngine(alice.replica, settings=FAST, limits=limits)
        alice.replica.add_listener(alice.engine)
        chat = await conversation_of(alice, carol)
        link(nursery, alice, carol)
        await joined([alice, carol], chat)
        part = b"\x00" * 40_000  # held unread until the step 2 that ends the parts comes
        offline, close = await mallory_sends(alice, nursery, *(SyncPart(f"conv-{i}-abcdefgh", part) for i in range(3)))
        assert "step 2 parts over 100000 bytes" in offline.reason
        assert close.code is CloseCode.LIMIT_EXCEEDED
        message = await alice.replica.send(chat, Text("still fine"))
        assert await converged([alice, carol], chat, 1) == [[message], [message]]
        nursery.cancel_scope.cancel()


async def test_a_store_failing_while_the_writer_makes_a_catch_up_ends_that_link_only(tmp_path: Path) -> None:
    # The writer makes a resync's step 2 itself (a step 1 that found the queue full, a
    # fetch): a storage error there escaped run_link, which must never raise.
    async with nodes(tmp_path, "alice", "bob", settings=FAST) as (alice, bob), trio.open_nursery() as nursery:
        chat = await conversation_of(alice, bob)
        outcomes: list[LinkOutcome] = []

        async def run(engine: SyncEngine, stream: trio.abc.Stream) -> None:
            outcomes.append(await engine.run_link(stream))

        left, right = trio.testing.memory_stream_pair()
        nursery.start_soon(run, alice.engine, left)
        nursery.start_soon(run, bob.engine, right)
        await joined([alice, bob], chat)
        diff = alice.replica.diff

        async def failing(conversation: str, state_vector: bytes | None) -> bytes:
            raise StorageError("disk gone")

        alice.replica.diff = failing  # type: ignore[method-assign]
        alice.engine._links[bob.peer_id].mark_resync(chat)
        with trio.fail_after(10):
            offline = await wait_for(bob, lambda e: isinstance(e, PeerOffline))
        assert isinstance(offline, PeerOffline)
        assert any("cannot make a catch-up: disk gone" in outcome.reason for outcome in outcomes)
        # The store is back: a new link syncs again.
        alice.replica.diff = diff  # type: ignore[method-assign]
        message = await alice.replica.send(chat, Text("back"))
        link(nursery, alice, bob)
        assert await converged([alice, bob], chat, 1) == [[message], [message]]
        nursery.cancel_scope.cancel()


async def test_a_document_that_cannot_load_for_anti_entropy_leaves_the_link_and_the_others_syncing(
    tmp_path: Path,
) -> None:
    settings = dataclasses.replace(FAST, anti_entropy_interval=0.05)
    async with nodes(tmp_path, "alice", "bob", settings=settings) as (alice, bob), trio.open_nursery() as nursery:
        broken, fine = await conversation_of(alice, bob), await conversation_of(alice, bob)
        link(nursery, alice, bob)
        await joined([alice, bob], broken)
        await joined([alice, bob], fine)
        state_vector = alice.replica.state_vector
        asked = trio.Event()

        async def failing(conversation: str) -> bytes:
            if conversation == broken:
                asked.set()
                raise StorageError("disk gone")
            return await state_vector(conversation)

        alice.replica.state_vector = failing  # type: ignore[method-assign]
        with trio.fail_after(10):
            await asked.wait()
        message = await alice.replica.send(fine, Text("still fine"))
        assert await converged([alice, bob], fine, 1) == [[message], [message]]
        nursery.cancel_scope.cancel()


async def test_a_message_a_deletion_takes_away_before_its_redaction_comes_is_announced(tmp_path: Path) -> None:
    """A deletion overwrites the post with a tombstone: a Yjs delete, applied at once, and
    an insert that waits while an earlier write of its author is missing (here for good:
    the link is cut). Bob's document and index stop showing the message at once; the
    application must hear of it too."""
    cutting: list[CuttingStream] = []

    def make_cutting(stream: trio.abc.Stream) -> trio.abc.Stream:
        cutting.append(CuttingStream(stream))
        return cutting[-1]

    async with nodes(tmp_path, "alice", "bob", settings=FAST) as group, trio.open_nursery() as nursery:
        alice, bob = group
        conversation = await conversation_of(alice, bob)
        link(nursery, alice, bob, wrap_a=make_cutting)
        await joined(group, conversation)
        message = await alice.replica.send(conversation, Text("oops, wrong chat"))
        await until_stored([bob], lambda: _holds(bob, conversation, [message]))
        cutting[0].armed = True
        await alice.replica.send(conversation, Text("lost on the way"))
        await alice.replica.delete(conversation, message)
        with trio.fail_after(10):
            deleted = await wait_for(bob, lambda event: isinstance(event, MessageDeleted))
        assert deleted == MessageDeleted(conversation, message)
        assert await ids(bob, conversation, 10) == []
        assert cutting[0].updates_seen == 2
        nursery.cancel_scope.cancel()
