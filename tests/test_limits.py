"""Resource limits against hostile peers: rate limits per link, connection caps per address.

Pure tests of the token bucket, frame counter and connection caps; the throttle on memory
streams with a mock clock; then nodes with real TLS over loopback, flooded from other
loopback addresses (127.0.0.2, 127.0.0.3: all of 127/8 is loopback on Linux).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from node_helpers import LOCAL, dialing, received, wait_for

from gigi_crdt import NodeConfig, Text, open_node
from gigi_crdt.errors import ConfigError
from gigi_crdt.identity import Identity
from gigi_crdt.node import Node
from gigi_crdt.protocol import (
    Announce,
    Close,
    CloseCode,
    Connection,
    ConnectionClosed,
    Event,
    Hello,
    NeedData,
    Ping,
    RemoteProtocolError,
)
from gigi_crdt.protocol.codec import HEADER
from gigi_crdt.sync import LinkSettings, PeerOffline, PeerOnline
from gigi_crdt.sync.limits import ConnectionLimiter, FrameCounter, RateLimitedStream, TokenBucket
from gigi_crdt.transport import AuthenticatedStream, HandshakeRefused, open_tls_stream

FAST = LOCAL.links
FLOOD_ADDRESS = "127.0.0.2"
GARBAGE_ADDRESS = "127.0.0.3"


# --------------------------------------------------------------------------- pure parts


def test_token_bucket_spends_refills_and_waits_out_debt() -> None:
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    assert bucket.take(20, now=0.0)
    assert not bucket.take(1, now=0.0)  # empty, and a refusal spends nothing
    assert bucket.take(5, now=0.5)
    assert bucket.take(20, now=100.0)  # refills up to the burst, no further
    assert not bucket.take(1, now=100.0)
    bucket.charge(30, now=100.0)  # bytes already read: into debt
    assert bucket.delay(now=100.0) == pytest.approx(3.0)
    assert bucket.delay(now=103.0) == 0.0


def test_token_bucket_with_an_infinite_rate_never_limits() -> None:
    bucket = TokenBucket(rate=float("inf"), burst=float("inf"), now=0.0)
    bucket.charge(10**12, now=0.0)
    assert bucket.take(10**12, now=0.0)
    assert bucket.delay(now=0.0) == 0.0


def session() -> bytes:
    sender = Connection()
    events: list[Event] = [Hello("alice-peer-7Q2x", "alice", 1), Announce(("c0nv3rsat10n-AbCd",))]
    events += [Ping(n) for n in range(1, 50)]
    events.append(Close(CloseCode.NORMAL, "bye"))
    return b"".join(sender.send(event) for event in events)


SESSION_FRAMES = 52


@given(st.lists(st.integers(min_value=0, max_value=len(session())), max_size=30))
def test_frame_counter_counts_frames_however_the_bytes_are_split(cuts: list[int]) -> None:
    data = session()
    bounds = [0, *sorted(cuts), len(data)]
    counter = FrameCounter()
    assert sum(counter.feed(data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)) == SESSION_FRAMES


def test_frame_counter_byte_by_byte() -> None:
    counter = FrameCounter()
    assert sum(counter.feed(bytes([byte])) for byte in session()) == SESSION_FRAMES


def test_connection_limiter_caps_per_address_and_in_total(caplog: pytest.LogCaptureFixture) -> None:
    limiter = ConnectionLimiter(per_address=2, total=3)
    with caplog.at_level(logging.DEBUG, logger="gigi_crdt.sync.limits"):
        assert limiter.acquire("10.0.0.1")
        assert limiter.acquire("10.0.0.1")
        assert not limiter.acquire("10.0.0.1")
        assert not limiter.acquire("10.0.0.1")
        assert limiter.acquire(None)  # a stream without an address counts only in the total
        assert not limiter.acquire("10.0.0.2")  # the total is reached
        limiter.release("10.0.0.1")
        assert limiter.acquire("10.0.0.2")
    assert (limiter.open_from("10.0.0.1"), limiter.open_from("10.0.0.2"), limiter.open_total) == (1, 1, 3)
    levels = [record.levelno for record in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG, logging.WARNING]  # a flood logs one warning
    assert "2 connections from that address" in caplog.records[0].getMessage()


def test_limits_are_checked_when_configured() -> None:
    with pytest.raises(ConfigError, match="max_frames_per_second"):
        LinkSettings(max_frames_per_second=0)
    with pytest.raises(ConfigError, match="max_connections"):
        NodeConfig(max_connections_per_address=0)
    with pytest.raises(ConfigError, match="rest_after"):
        NodeConfig(rest_after=0)
    assert NodeConfig().max_connections_per_address == 8
    assert NodeConfig().max_connections == 256


# --------------------------------------------------------------------------- the throttle, on a mock clock


async def test_bytes_over_the_rate_are_read_later_not_refused(autojump_clock: trio.testing.MockClock) -> None:
    near, far = trio.testing.memory_stream_pair()
    settings = LinkSettings(max_bytes_per_second=1000, byte_burst=1000)
    limited = RateLimitedStream(near, settings)
    frame = HEADER.pack(4996) + bytes(4996)  # one frame of 5000 bytes in all
    await far.send_all(frame)
    start = trio.current_time()
    received = b""
    while len(received) < len(frame):
        received += await limited.receive_some(1000)
    assert received == frame
    # The first 1000 bytes came out of the burst, the other 4000 at 1000 bytes/s.
    assert trio.current_time() - start == pytest.approx(3.0)
    await far.send_all(b"\x00")
    await limited.receive_some(1000)
    assert trio.current_time() - start == pytest.approx(4.0)


async def test_frames_over_the_rate_end_the_link(autojump_clock: trio.testing.MockClock) -> None:
    near, far = trio.testing.memory_stream_pair()
    limited = RateLimitedStream(near, LinkSettings(max_frames_per_second=10, frame_burst=20))
    sender = Connection()
    sender.send(Hello("alice-peer-7Q2x", "alice", 1))
    ping = sender.send(Ping(1))
    await far.send_all(ping * 20)
    assert len(await limited.receive_some()) == 20 * len(ping)  # the burst
    await trio.sleep(0.1)
    await far.send_all(ping)
    await limited.receive_some()  # one more frame has been earned since
    await far.send_all(ping * 2)
    with pytest.raises(RemoteProtocolError) as info:
        await limited.receive_some()
    assert info.value.code is CloseCode.RATE_LIMITED
    assert "10 frames/s" in info.value.reason


# --------------------------------------------------------------------------- nodes over real TLS


async def connect_from(address: str, node: Node) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", node.address[1], local_address=address)


async def authenticated_from(address: str, node: Node, identity: Identity | None = None) -> AuthenticatedStream:
    """A TLS link to ``node`` with a key of its own, as any stranger on the LAN can make."""
    tcp = await connect_from(address, node)
    return await open_tls_stream(tcp, identity or Identity.generate(), server=False, expected_peer=node.peer_id)


async def closed_by_peer(stream: trio.abc.Stream) -> bytes:
    """Everything the peer sent until it closed the stream."""
    data = b""
    try:
        while chunk := await stream.receive_some():
            data += chunk
    except trio.BrokenResourceError:
        pass  # a reset is a close too
    return data


def frames(data: bytes) -> list[Event]:
    connection = Connection()
    connection.receive_data(data)
    connection.receive_data(b"")
    events = []
    while not isinstance(event := connection.next_event(), ConnectionClosed | NeedData):
        events.append(event)
    return events


async def test_a_silent_client_holds_its_slot_only_until_the_handshake_timeout(tmp_path: Path) -> None:
    config = dataclasses.replace(
        LOCAL, links=dataclasses.replace(FAST, handshake_timeout=0.5), max_connections_per_address=1
    )
    async with open_node(tmp_path / "alice", nickname="alice", config=config) as alice:
        silent = await connect_from(FLOOD_ADDRESS, alice)
        await trio.testing.wait_all_tasks_blocked()  # alice has accepted it and waits for its TLS hello
        with trio.fail_after(5), pytest.raises(HandshakeRefused, match="connection lost"):
            await authenticated_from(FLOOD_ADDRESS, alice)  # over the cap: closed before TLS
        with trio.fail_after(5):
            assert await closed_by_peer(silent) == b""  # the handshake timeout, not a cap
        await silent.aclose()
        with trio.fail_after(5):
            link = await authenticated_from(FLOOD_ADDRESS, alice)  # its slot is free again
        await link.aclose()


async def test_a_flood_from_one_address_leaves_other_peers_syncing(tmp_path: Path) -> None:
    config = dataclasses.replace(LOCAL, links=dataclasses.replace(FAST, handshake_timeout=4.0))
    async with (
        open_node(tmp_path / "alice", nickname="alice", config=config) as alice,
        open_node(tmp_path / "bob", nickname="bob", config=dialing(alice)) as bob,
        trio.open_nursery() as nursery,
    ):
        await wait_for(alice, lambda e: isinstance(e, PeerOnline))
        chat = await alice.create_direct(bob.peer_id, "bob")
        closed = trio.Semaphore(0)

        async def flood_connection() -> None:  # connects, never says a word
            async with await connect_from(FLOOD_ADDRESS, alice) as stream:
                await closed_by_peer(stream)
                closed.release()

        for _ in range(50):
            nursery.start_soon(flood_connection)
        with trio.fail_after(3):  # within the handshake timeout: these were refused at once
            for _ in range(50 - config.max_connections_per_address):
                await closed.acquire()

        # While the cap holds: strangers that complete TLS and send garbage are closed with a reason.
        for garbage, code in ((HEADER.pack(2**31), CloseCode.FRAME_TOO_LARGE), (b"\x00\x00\x00\x02\xc1\xc1", None)):
            async with await authenticated_from(GARBAGE_ADDRESS, alice) as stranger:
                await stranger.send_all(garbage)
                with trio.fail_after(5):
                    events = frames(await closed_by_peer(stranger))
            assert isinstance(events[-1], Close)
            assert events[-1].code is (code or CloseCode.PROTOCOL_ERROR)

        # bob keeps syncing, and carol links and syncs from scratch, in ordinary time.
        await alice.send(chat, Text("still there?"))
        await received(bob, "still there?", seconds=3)
        await bob.send(chat, Text("yes"))
        await received(alice, "yes", seconds=3)
        async with open_node(tmp_path / "carol", nickname="carol", config=dialing(alice)) as carol:
            group = await alice.create_group("flood", {carol.peer_id: "carol"})
            await wait_for(carol, lambda e: isinstance(e, PeerOnline), seconds=3)
            await alice.send(group, Text("hi carol"))
            await received(carol, "hi carol", seconds=3)
            assert set(alice.online_peers()) == {bob.peer_id, carol.peer_id}

        with trio.fail_after(10):  # the rest of the flood: closed by the handshake timeout
            for _ in range(config.max_connections_per_address):
                await closed.acquire()


async def test_a_peer_over_the_frame_rate_is_disconnected_and_others_are_not(tmp_path: Path) -> None:
    strict = dataclasses.replace(LOCAL, links=dataclasses.replace(FAST, max_frames_per_second=20, frame_burst=100))
    async with (
        open_node(tmp_path / "alice", nickname="alice", config=strict) as alice,
        open_node(tmp_path / "bob", nickname="bob", config=dialing(alice)) as bob,
    ):
        await wait_for(alice, lambda e: isinstance(e, PeerOnline))
        chat = await alice.create_direct(bob.peer_id, "bob")
        key = Identity.generate()
        async with await authenticated_from("127.0.0.1", alice, key) as mallory:
            connection = Connection()
            await mallory.send_all(connection.send(Hello(key.peer_id, "mallory", 1)))
            online = await wait_for(alice, lambda e: isinstance(e, PeerOnline))
            assert online == PeerOnline(key.peer_id, "mallory")
            await mallory.send_all(b"".join(connection.send(Ping(n)) for n in range(1, 201)))
            with trio.fail_after(5):
                events = frames(await closed_by_peer(mallory))
        assert isinstance(events[-1], Close)
        assert events[-1].code is CloseCode.RATE_LIMITED
        offline = await wait_for(alice, lambda e: isinstance(e, PeerOffline))
        assert offline == PeerOffline(key.peer_id, "more than 20 frames/s (bursts of 100)")

        assert alice.online_peers() == {bob.peer_id: "bob"}
        await alice.send(chat, Text("are you still there?"))
        await received(bob, "are you still there?", seconds=3)
