"""The node facade: real SQLite stores, real TLS over 127.0.0.1, static peers, mDNS off."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from forgery import forge_entries, forge_member_records
from node_helpers import LOCAL, dialing, received, texts, wait_for

from gigi_crdt import ConfigError, GroupInvite, NodeConfig, Text, open_node
from gigi_crdt.discovery import InvalidPeerAddress
from gigi_crdt.identity import Identity
from gigi_crdt.model import Member, Role
from gigi_crdt.model.metadata import encode_member
from gigi_crdt.model.ops import Posted, encode_op
from gigi_crdt.model.signed import sign_member
from gigi_crdt.node import ContactKeyChanged, Node, default_data_dir
from gigi_crdt.protocol import Close, CloseCode, Connection, ConnectionClosed, Hello, NeedData
from gigi_crdt.sync import (
    LinkOutcome,
    MessageReceived,
    OfflineMessagesReceived,
    PeerOnline,
    ReceiptUpdated,
    SyncEngine,
    SyncProgress,
)
from gigi_crdt.transport import open_tls_stream


def open_files_under(directory: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(directory)):
                found.append(target)
    return found


def our_threads() -> set[threading.Thread]:
    # trio keeps idle worker threads cached after to_thread.run_sync: they are trio's, not ours.
    return {t for t in threading.enumerate() if t.is_alive() and not t.name.startswith("Trio thread")}


@contextlib.asynccontextmanager
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    """alice listening, bob dialling her, both linked."""
    async with open_node(tmp_path / "alice", nickname="alice", config=LOCAL) as alice:
        async with open_node(tmp_path / "bob", nickname="bob", config=dialing(alice)) as bob:
            await wait_for(alice, lambda e: isinstance(e, PeerOnline))
            await wait_for(bob, lambda e: isinstance(e, PeerOnline))
            yield alice, bob


async def test_two_nodes_talk_over_authenticated_links(tmp_path: Path) -> None:
    async with pair(tmp_path) as (alice, bob):
        assert alice.online_peers() == {bob.peer_id: "bob"}
        assert bob.online_peers() == {alice.peer_id: "alice"}
        assert alice.peer_id == Identity.load_or_create(tmp_path / "alice").peer_id
        chat = await alice.create_direct(bob.peer_id, "bob")
        await alice.send(chat, Text("hi bob"))
        await received(bob, "hi bob")
        await bob.send(chat, Text("hi alice"))
        await received(alice, "hi alice")
        await bob.mark_read(chat)
        read = await wait_for(alice, lambda e: isinstance(e, ReceiptUpdated) and e.receipt.member == bob.peer_id)
        assert isinstance(read, ReceiptUpdated)
        assert texts(await alice.history(chat)) == texts(await bob.history(chat)) == ["hi bob", "hi alice"]
        assert await alice.direct_with(bob.peer_id) == chat
        [summary] = await bob.conversations()
        assert summary.metadata.id == chat
        assert summary.unread == 0
        assert [m.id for _, m in await bob.search("alice")] == [(await alice.history(chat))[-1].id]
        assert [c.nickname for c in alice.contacts()] == ["bob"]


async def test_both_ends_show_the_same_safety_number(tmp_path: Path) -> None:
    async with pair(tmp_path) as (alice, bob):
        number = alice.safety_number(bob.peer_id)
        assert number is not None
        assert re.fullmatch(r"\d{5}( \d{5}){11}", number)
        assert bob.safety_number(alice.peer_id) == number
        assert alice.fingerprint in number
        assert bob.fingerprint in number
        assert alice.safety_number("not-a-contact-0000") is None


async def test_three_nodes_converge_on_a_group(tmp_path: Path) -> None:
    async with (
        open_node(tmp_path / "alice", nickname="alice", config=LOCAL) as alice,
        open_node(tmp_path / "bob", nickname="bob", config=dialing(alice)) as bob,
        open_node(tmp_path / "carol", nickname="carol", config=dialing(alice, bob)) as carol,
    ):
        for node, peers in ((alice, 2), (bob, 2), (carol, 2)):
            with trio.fail_after(10):
                while len(node.online_peers()) < peers:
                    await wait_for(node, lambda e: isinstance(e, PeerOnline))
        group = await alice.create_group("hiking", {bob.peer_id: "bob", carol.peer_id: "carol"}, retention_days=30)
        await alice.send(group, Text("saturday?"))
        await received(bob, "saturday?")
        await received(carol, "saturday?")
        for node in (alice, bob, carol):  # the creator's signed charter says so, on every peer
            assert [s.metadata.retention_days for s in await node.conversations()] == [30]
        await bob.send(group, Text("yes"))
        await carol.send(group, Text("me too"))
        for node, others in ((alice, ("yes", "me too")), (bob, ("me too",)), (carol, ("yes",))):
            await received(node, *others)
        views = [[m.id for m in await node.history(group)] for node in (alice, bob, carol)]
        assert len(views[0]) == 3
        assert views[0] == views[1] == views[2]


async def test_invite_and_leave(tmp_path: Path) -> None:
    async with (
        open_node(tmp_path / "alice", nickname="alice", config=LOCAL) as alice,
        open_node(tmp_path / "bob", nickname="bob", config=dialing(alice)) as bob,
        open_node(tmp_path / "carol", nickname="carol", config=dialing(alice)) as carol,
    ):
        with trio.fail_after(10):
            while len(alice.online_peers()) < 2:
                await wait_for(alice, lambda e: isinstance(e, PeerOnline))
        group = await alice.create_group("hiking", {bob.peer_id: "bob"})
        await alice.send(group, Text("just us"))
        await received(bob, "just us")
        invite = await alice.invite(group, carol.peer_id, "carol")
        arrived = await wait_for(carol, lambda e: isinstance(e, OfflineMessagesReceived | MessageReceived))
        assert isinstance(arrived, OfflineMessagesReceived)  # carol fetches the whole group at once
        assert [m.content for m in arrived.messages] == [Text("just us"), GroupInvite(group, "hiking", "alice")]
        assert arrived.messages[-1].id == invite
        await bob.leave(group)
        with trio.fail_after(10):
            while (await alice.members(group))[bob.peer_id].active:
                await wait_for(alice, lambda e: True)


async def hiking_group(alice: Node, bob: Node, carol: Node, *others: Node) -> str:
    """Once all are linked to each other: alice's group with bob and carol (not ``others``),
    and her first message, which both have."""
    linked = (alice, bob, carol, *others)
    for node in linked:
        with trio.fail_after(10):
            while len(node.online_peers()) < len(linked) - 1:
                await wait_for(node, lambda e: isinstance(e, PeerOnline))
    group = await alice.create_group("hiking", {bob.peer_id: "bob", carol.peer_id: "carol"})
    await alice.send(group, Text("saturday?"))
    await received(bob, "saturday?")
    await received(carol, "saturday?")
    return group


async def test_a_member_cannot_add_anyone_to_a_group(tmp_path: Path) -> None:
    async with (
        open_node(tmp_path / "alice", nickname="alice", config=LOCAL) as alice,
        open_node(tmp_path / "bob", nickname="bob", config=dialing(alice)) as bob,
        open_node(tmp_path / "carol", nickname="carol", config=dialing(alice, bob)) as carol,
        open_node(tmp_path / "mallory", nickname="mallory", config=dialing(alice, bob, carol)) as mallory,
    ):
        group = await hiking_group(alice, bob, carol, mallory)
        before = await alice.members(group)
        # bob runs modified code: it writes mallory into the member list itself, once with
        # a record it signed and once unsigned, and its engine passes that on as usual.
        replica = bob._replica
        document = await replica.diff(group, None)
        added = Member(mallory.peer_id, "mallory", Role.MEMBER, 1_800_000_000_000_000)
        signed_by_bob = Identity.load_or_create(bob.data_dir)
        await replica.receive(
            group, forge_member_records(document, {mallory.peer_id: sign_member(signed_by_bob, group, added)})
        )
        document = await replica.diff(group, None)
        await replica.receive(group, forge_member_records(document, {"mallory-twin": encode_member(added)}))
        await bob.send(group, Text("after the forgery"))  # links are ordered: it follows the forged updates
        await received(alice, "after the forgery")
        await received(carol, "after the forgery")
        for node in (alice, carol):
            assert await node.members(group) == before
        for sender in (alice, carol):
            canary = await sender.create_direct(mallory.peer_id, "mallory")
            await sender.send(canary, Text(f"hello from {sender.nickname}"))
            await received(mallory, f"hello from {sender.nickname}")
        assert group not in [s.metadata.id for s in await mallory.conversations()]


async def test_a_message_forged_in_a_members_name_never_shows(tmp_path: Path) -> None:
    async with (
        open_node(tmp_path / "alice", nickname="alice", config=LOCAL) as alice,
        open_node(tmp_path / "bob", nickname="bob", config=dialing(alice)) as bob,
        open_node(tmp_path / "carol", nickname="carol", config=dialing(alice, bob)) as carol,
    ):
        group = await hiking_group(alice, bob, carol)
        # bob runs modified code: it writes a post into alice's stream, and its engine passes
        # that on as usual.
        forged = encode_op(Posted("forgedforged01", 1_800_000_000_000_000, "alice", Text("cancelled!")), 1)
        replica = bob._replica
        await replica.receive(group, forge_entries(await replica.diff(group, None), alice.peer_id, [forged]))
        await bob.send(group, Text("after the forgery"))  # links are ordered: it follows the forged update
        await received(carol, "after the forgery")
        await alice.send(group, Text("see you"))
        await received(carol, "see you")
        for node in (alice, carol):
            assert texts(await node.history(group)) == ["saturday?", "after the forgery", "see you"]


class _Recording(trio.abc.Stream):
    """What a link's peer sent, after TLS: the frames themselves."""

    def __init__(self, inner: trio.abc.Stream, heard: bytearray) -> None:
        self.inner, self.heard = inner, heard

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.heard += data
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_peer_outside_a_conversation_never_learns_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heard = bytearray()  # everything carol's engine receives
    run_link = SyncEngine.run_link

    async def recording(engine: SyncEngine, stream: trio.abc.Stream, **kwargs: Any) -> LinkOutcome:
        if engine.replica.nickname == "carol":
            stream = _Recording(stream, heard)
        return await run_link(engine, stream, **kwargs)

    monkeypatch.setattr(SyncEngine, "run_link", recording)
    async with (
        open_node(tmp_path / "alice", nickname="alice", config=LOCAL) as alice,
        open_node(tmp_path / "bob", nickname="bob", config=dialing(alice)) as bob,
        open_node(tmp_path / "carol", nickname="carol", config=dialing(alice, bob)) as carol,
    ):
        with trio.fail_after(10):
            while len(carol.online_peers()) < 2:
                await wait_for(carol, lambda e: isinstance(e, PeerOnline))
        secret = await alice.create_direct(bob.peer_id, "bob")
        alice.set_typing(secret, True)
        await alice.send(secret, Text("SECRET-PLANS"))
        await received(bob, "SECRET-PLANS")
        await bob.send(secret, Text("SECRET-REPLY"))
        await received(alice, "SECRET-REPLY")
        # Links are ordered: once these reach carol, nothing sent to her before is on its way.
        for sender in (alice, bob):
            canary = await sender.create_direct(carol.peer_id, "carol")
            await sender.send(canary, Text(f"hello from {sender.nickname}"))
            await received(carol, f"hello from {sender.nickname}")
        assert secret not in [s.metadata.id for s in await carol.conversations()]
        assert carol.presence(secret) == []
        stored = b"".join(path.read_bytes() for path in (tmp_path / "carol").iterdir() if path.is_file())
        for leak in (secret.encode(), b"SECRET-PLANS", b"SECRET-REPLY"):
            assert leak not in stored
            assert leak not in heard
        assert b"hello from bob" in heard  # the recording works


async def test_the_data_directory_is_private(tmp_path: Path) -> None:
    async with open_node(tmp_path / "alice", nickname="alice", config=LOCAL) as alice:
        await alice.create_direct("bob-peer-0002", "bob")
        assert stat.S_IMODE((tmp_path / "alice").stat().st_mode) == 0o700
        for path in (tmp_path / "alice").iterdir():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


async def test_shutdown_leaves_no_thread_and_no_open_file(tmp_path: Path) -> None:
    threads, fds = our_threads(), set(os.listdir("/proc/self/fd"))
    async with pair(tmp_path) as (alice, bob):
        chat = await alice.create_direct(bob.peer_id, "bob")
        await alice.send(chat, Text("hello"))
        await received(bob, "hello")
        assert open_files_under(tmp_path)  # the stores are open while the nodes run
    assert open_files_under(tmp_path) == []
    assert our_threads() == threads
    assert set(os.listdir("/proc/self/fd")) <= fds  # sockets too


async def test_events_end_when_the_node_closes(tmp_path: Path) -> None:
    async with open_node(tmp_path / "alice", nickname="alice", config=LOCAL) as alice:
        events = alice.events()
    with trio.fail_after(5):
        assert [event async for event in events] == []


async def test_cancelling_mid_sync_is_clean_and_the_sync_resumes(tmp_path: Path) -> None:
    threads, fds = our_threads(), set(os.listdir("/proc/self/fd"))
    bob_dir = tmp_path / "bob"
    async with open_node(tmp_path / "alice", nickname="alice", config=LOCAL) as alice:
        bob_id = Identity.load_or_create(bob_dir).peer_id
        chats = [await alice.create_direct(bob_id, "bob") for _ in range(5)]
        for chat in chats:
            for i in range(100):
                await alice.send(chat, Text(f"{chat} #{i}"))
        with trio.CancelScope() as scope:
            async with open_node(bob_dir, nickname="bob", config=dialing(alice)) as bob:
                # Cancel as soon as the first conversation is in: the others are on their way.
                progress = await wait_for(bob, lambda e: isinstance(e, SyncProgress))
                assert isinstance(progress, SyncProgress)
                assert progress.done < progress.total
                scope.cancel()
        assert scope.cancelled_caught
        assert open_files_under(bob_dir) == []
        async with open_node(bob_dir, nickname="bob", config=dialing(alice)) as bob:
            await wait_for(bob, lambda e: isinstance(e, SyncProgress) and e.done == e.total)
            for chat in chats:
                assert [m.id for m in await bob.history(chat, limit=200)] == [
                    m.id for m in await alice.history(chat, limit=200)
                ]
    assert our_threads() == threads
    assert set(os.listdir("/proc/self/fd")) <= fds


async def read_all(stream: trio.abc.Stream) -> bytes:
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some():
            data += chunk
    return data


async def test_a_plaintext_client_gets_no_conversation_bytes(tmp_path: Path) -> None:
    async with pair(tmp_path) as (alice, bob):
        chat = await alice.create_direct(bob.peer_id, "bob")
        await alice.send(chat, Text("secret plans"))
        stream = await trio.open_tcp_stream("127.0.0.1", alice.address[1])
        async with stream:
            # The first frame of the sync protocol in the clear, claiming to be bob.
            await stream.send_all(Connection().send(Hello(bob.peer_id, "bob", 1)))
            answer = await read_all(stream)
        assert chat.encode() not in answer
        assert b"secret plans" not in answer
        assert b"alice" not in answer  # not even the handshake: nothing but a TLS alert, if anything
        assert alice.online_peers() == {bob.peer_id: "bob"}


async def test_the_sync_handshake_must_name_the_tls_peer(tmp_path: Path) -> None:
    """A peer with a valid key of its own cannot speak as another peer (bob) to get bob's data."""
    async with pair(tmp_path) as (alice, bob):
        chat = await alice.create_direct(bob.peer_id, "bob")
        await alice.send(chat, Text("for bob only"))
        tcp = await trio.open_tcp_stream("127.0.0.1", alice.address[1])
        impostor = await open_tls_stream(tcp, Identity.generate(), server=False, expected_peer=alice.peer_id)
        async with impostor:
            connection = Connection()
            await impostor.send_all(connection.send(Hello(bob.peer_id, "bob", 1)))
            connection.receive_data(await read_all(impostor))
        events = []
        while not isinstance(event := connection.next_event(), ConnectionClosed | NeedData):
            events.append(event)
        assert [type(event) for event in events] == [Hello, Close]
        assert isinstance(events[-1], Close)
        assert events[-1].code is CloseCode.FORBIDDEN


async def test_a_known_nickname_with_another_key_is_refused(tmp_path: Path) -> None:
    async with open_node(tmp_path / "alice", nickname="alice", config=LOCAL) as alice:
        async with open_node(tmp_path / "bob", nickname="bob", config=dialing(alice)) as bob:
            await wait_for(alice, lambda e: isinstance(e, PeerOnline))
        async with open_node(tmp_path / "mallory", nickname="bob", config=dialing(alice)) as mallory:
            changed = await wait_for(alice, lambda e: isinstance(e, ContactKeyChanged | PeerOnline))
            assert changed == ContactKeyChanged("bob", bob.peer_id, mallory.peer_id)
        assert [(c.nickname, c.peer_id) for c in alice.contacts()] == [("bob", bob.peer_id)]


async def test_a_taken_port_is_a_config_error(tmp_path: Path) -> None:
    async with open_node(tmp_path / "alice", nickname="alice", config=LOCAL) as alice:
        taken = dataclasses.replace(LOCAL, port=alice.address[1])
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1"):
            async with open_node(tmp_path / "bob", nickname="bob", config=taken):
                pass  # pragma: no cover


def test_config_is_checked_when_made() -> None:
    with pytest.raises(ConfigError, match="port"):
        NodeConfig(port=70000)
    with pytest.raises(InvalidPeerAddress, match="oops"):
        NodeConfig(peers=("oops",))
    for name in ("rest_after", "retention_every"):
        with pytest.raises(ConfigError, match=f"{name} must be positive"):
            NodeConfig(**{name: 0})
    with pytest.raises(ConfigError, match="no network interface called 'no-such-if0'"):
        NodeConfig(interface="no-such-if0").listen_host()


def test_config_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GIGI_CRDT_INTERFACE", "lo")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    config = NodeConfig()
    assert config.interface == "lo"
    assert config.mdns
    assert config.port == 0
    assert config.listen_host() == "127.0.0.1"
    assert config.mdns_addresses() == ["127.0.0.1"]
    assert NodeConfig(interface=None, host="127.0.0.1").mdns_addresses() == ["127.0.0.1"]
    assert NodeConfig(interface=None).listen_host() == "0.0.0.0"
    assert NodeConfig(interface=None).mdns_addresses() is None
    assert default_data_dir("alice") == tmp_path / "gigi-crdt" / "alice"
    assert default_data_dir("../etc").parent == tmp_path / "gigi-crdt"
