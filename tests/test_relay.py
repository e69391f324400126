"""Relays: store-and-forward through a relay process, the token gate, and interop with pycrdt and Node.js Yjs."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import secrets
import shutil
import sqlite3
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hostile import hostile_updates
from node_helpers import LOCAL
from pycrdt import Array, Doc
from relay_helpers import TOKEN, plain_client, post_as, posts, relay_process, wait_until
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

from gigi_crdt import ConversationKind, NodeConfig, RelayRefused, Text, open_node, open_replica
from gigi_crdt.errors import StorageError
from gigi_crdt.identity import Identity
from gigi_crdt.model.view import Message
from gigi_crdt.node import Node
from gigi_crdt.protocol.yproto import SyncKind, encode_sync
from gigi_crdt.relay import serve_relay
from gigi_crdt.relay._rooms import GARBAGE_DELAY, WRITE_QUEUE_SIZE, PersistentRooms, _RoomStore, _Writer
from gigi_crdt.sync import Activity, MessageDeleted, MessageReceived, OfflineMessagesReceived, PeerOnline
from gigi_crdt.sync.room import RoomLink
from gigi_crdt.transport.websocket import RelayAddress, open_room


def via(port: int, **changes: object) -> NodeConfig:
    return dataclasses.replace(LOCAL, relays=(f"ws://127.0.0.1:{port}?token={TOKEN}",), **changes)  # type: ignore[arg-type]


@pytest.fixture
async def relay_port(tmp_path: Path) -> AsyncIterator[int]:
    """An in-process relay on 127.0.0.1."""
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        yield await nursery.start(partial(serve_relay, tmp_path / "relay", TOKEN, shutdown=stop))
        stop.set()


async def texts_in(node: Node, conversation: str) -> list[str]:
    return [message.content.text for message in await node.history(conversation, limit=500)]  # type: ignore[union-attr]


async def wait_for_texts(node: Node, conversation: str, count: int) -> None:
    with trio.fail_after(30):
        async for event in node.events():
            if isinstance(event, MessageReceived | OfflineMessagesReceived):
                if len(await texts_in(node, conversation)) >= count:
                    return


async def test_store_and_forward_across_a_relay_restart(tmp_path: Path) -> None:
    """B is offline while A sends 100; A leaves, the relay restarts, B comes back and gets all 100 in order."""
    relay_dir = tmp_path / "relay"
    sent = [f"message {i}" for i in range(100)]
    async with relay_process(relay_dir) as port:
        async with open_node(tmp_path / "alice", nickname="alice", config=via(port)) as alice:
            near_alice = via(port, peers=(f"127.0.0.1:{alice.address[1]}",))
            async with open_node(tmp_path / "bob", nickname="bob", config=near_alice) as bob:
                with trio.fail_after(10):
                    async for event in alice.events():
                        if isinstance(event, PeerOnline):
                            break
                chat = await alice.create_direct(bob.peer_id, "bob")
                await alice.send(chat, Text("hello"))
                await wait_for_texts(bob, chat, 1)
            for text in sent:  # bob is gone: only the relay hears these
                await alice.send(chat, Text(text))
            async with plain_client(port, chat) as observer:  # the relay holds them all before A leaves
                await wait_until(observer, lambda: len(posts(observer)) == 101)
    async with relay_process(relay_dir) as port:  # a new process on the same data directory
        async with open_node(tmp_path / "bob", nickname="bob", config=via(port)) as bob:
            await wait_for_texts(bob, chat, 101)
            assert await texts_in(bob, chat) == ["hello", *sent]


async def test_a_relay_that_is_down_holds_up_no_lan_sync(tmp_path: Path) -> None:
    with trio.socket.socket() as placeholder:  # a port with nothing listening on it
        await placeholder.bind(("127.0.0.1", 0))
        dead = placeholder.getsockname()[1]
    with trio.fail_after(20):  # were the dead relay waited for, this would not end
        async with (
            open_node(tmp_path / "alice", nickname="alice", config=via(dead)) as alice,
            open_node(
                tmp_path / "bob", nickname="bob", config=via(dead, peers=(f"127.0.0.1:{alice.address[1]}",))
            ) as bob,
        ):
            with trio.fail_after(10):
                async for event in alice.events():
                    if isinstance(event, PeerOnline):
                        break
            chat = await alice.create_direct(bob.peer_id, "bob")
            for i in range(3):
                await alice.send(chat, Text(f"over the LAN {i}"))
            await wait_for_texts(bob, chat, 3)


async def handshake(port: int, target: str, *headers: str) -> bytes:
    """Send a WebSocket upgrade request by hand; return the relay's answer (its head only, if it accepts)."""
    request = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade"]
    request += ["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13", *headers, "", ""]
    answer = b""
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all("\r\n".join(request).encode())
            # A refusal is read to the end (the relay closes); an accepted socket stays open.
            while not (answer.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in answer):
                chunk = await stream.receive_some()
                if not chunk:
                    break
                answer += chunk
    return answer


async def test_wrong_token_gets_401_and_nothing(relay_port: int) -> None:
    room = secrets.token_urlsafe(16)
    for query in ("?token=wrong", "", "?token=", f"?token={TOKEN}x"):
        answer = await handshake(relay_port, f"/{room}{query}")
        assert answer.startswith(b"HTTP/1.1 401 "), answer
        assert answer.endswith(b"\r\n\r\nunknown token"), answer  # no room data, no sync message
    answer = await handshake(relay_port, f"/{room}", "Authorization: Bearer wrong")
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    wrong = RelayAddress.parse(f"ws://127.0.0.1:{relay_port}?token=wrong")
    with pytest.raises(RelayRefused, match="HTTP 401"):
        async with open_room(wrong, room):
            pytest.fail("the relay accepted a wrong token")
    right = RelayAddress.parse(f"ws://127.0.0.1:{relay_port}?token={TOKEN}")
    async with open_room(right, room) as websocket:
        assert (await websocket.get_message())[0] == 0  # the room's sync step 1


async def test_bearer_header_and_query_token_are_accepted(relay_port: int) -> None:
    by_header = await handshake(relay_port, "/room-name", f"Authorization: Bearer {TOKEN}")
    by_query = await handshake(relay_port, f"/room-name?token={TOKEN}")
    assert by_header.startswith(b"HTTP/1.1 101 ")
    assert by_query.startswith(b"HTTP/1.1 101 ")


async def test_only_room_paths_are_served(relay_port: int) -> None:
    answer = await handshake(relay_port, f"/a/b?token={TOKEN}")
    assert answer.startswith(b"HTTP/1.1 404 "), answer


async def test_a_plain_pycrdt_client_and_a_node_share_a_room(tmp_path: Path, relay_port: int) -> None:
    """pycrdt's Provider reads our messages from its Doc, and a message it writes in our format reaches us."""
    carol = Identity.generate()
    async with open_node(tmp_path / "alice", nickname="alice", config=via(relay_port)) as alice:
        group = await alice.create_group("relayed", {carol.peer_id: "carol"})
        await alice.send(group, Text("from gigi-crdt"))
        async with plain_client(relay_port, group) as doc:
            await wait_until(doc, lambda: [op["c"]["text"] for op in posts(doc)] == ["from gigi-crdt"])
            post_as(doc, group, carol, "carol", "from plain pycrdt")
            await wait_for_texts(alice, group, 2)
        assert await texts_in(alice, group) == ["from gigi-crdt", "from plain pycrdt"]


async def test_a_conversation_that_cannot_load_leaves_the_other_rooms_going(tmp_path: Path, relay_port: int) -> None:
    # Its room's first step 1 needs its state vector: a storage error there escaped the
    # node's relay link, and so the node.
    carol = Identity.generate()
    async with open_node(tmp_path / "alice", nickname="alice", config=via(relay_port)) as alice:
        replica = alice._replica
        state_vector = replica.state_vector
        broken: set[str] = set()
        asked = trio.Event()

        async def failing(conversation: str) -> bytes:
            if conversation in broken:
                asked.set()
                raise StorageError("disk gone")
            return await state_vector(conversation)

        replica.state_vector = failing  # type: ignore[method-assign]
        broken.add(await alice.create_group("broken", {carol.peer_id: "carol"}))  # no checkpoint before its room opens
        with trio.fail_after(10):
            await asked.wait()
        fine = await alice.create_group("fine", {carol.peer_id: "carol"})
        await alice.send(fine, Text("through the relay"))
        async with plain_client(relay_port, fine) as doc:
            await wait_until(doc, lambda: [op["c"]["text"] for op in posts(doc)] == ["through the relay"])


JS_CLIENT = Path(__file__).parent / "js"  # package.json, package-lock.json, yclient.mjs


@pytest.fixture(scope="session")
def yclient(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command running ``yclient.mjs`` beside its pinned Node packages (yjs, y-websocket, ws),
    installed once a session.

    ``npm ci`` runs in a copy of ``tests/js`` so no ``node_modules`` lands in the repository;
    npm's own cache (``~/.npm``) makes later sessions quick.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the Node.js interop test needs node and npm on PATH")
    directory = tmp_path_factory.mktemp("yclient")
    for name in ("package.json", "package-lock.json", "yclient.mjs"):
        shutil.copy(JS_CLIENT / name, directory / name)
    install = [npm, "ci", "--prefer-offline", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    done = subprocess.run(install, cwd=directory, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}{done.stderr}"
    return [node, str(directory / "yclient.mjs")]


async def received(node: Node, conversation: str, message_id: str) -> Message:
    """The message ``message_id`` as the event announcing its arrival (live or in a catch-up) carries it."""
    with trio.fail_after(30):
        async for event in node.events():
            if isinstance(event, MessageReceived) and event.conversation == conversation:
                arrived: tuple[Message, ...] = (event.message,)
            elif isinstance(event, OfflineMessagesReceived) and event.conversation == conversation:
                arrived = event.messages
            else:
                continue
            for message in arrived:
                if message.id == message_id:
                    return message
    raise AssertionError("the node closed before the message arrived")


async def test_a_node_js_yjs_client_and_a_node_share_a_room(
    tmp_path: Path, relay_port: int, yclient: list[str]
) -> None:
    """y-websocket's WebsocketProvider in Node.js (yjs, not yrs) reads our messages from its Y.Doc, and a
    message it writes in our format reaches us."""
    key = Identity.generate()
    dave = key.peer_id
    seed = key.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
    async with open_node(tmp_path / "alice", nickname="alice", config=via(relay_port)) as alice:
        group = await alice.create_group("relayed to Node.js", {dave: "dave"})
        await alice.send(group, Text("from gigi-crdt"))
        options = {"url": f"ws://127.0.0.1:{relay_port}", "room": group, "token": TOKEN, "key": seed}
        options |= {"nickname": "dave", "send": "from y-websocket", "expect": "from gigi-crdt", "timeout": "20"}
        command = [*yclient, *(f"--{name}={value}" for name, value in options.items())]  # ids may start with "-"
        with trio.fail_after(30):
            run = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
        assert run.returncode == 0, run.stderr.decode()
        records = [json.loads(line) for line in run.stdout.decode().splitlines()]
        seen = [(record["author"], record["text"]) for record in records if record["event"] == "post"]
        assert seen == [(alice.peer_id, "from gigi-crdt")]
        (appended,) = [record for record in records if record["event"] == "appended"]
        assert [record["event"] for record in records][-2:] == ["confirmed", "done"]
        message = await received(alice, group, appended["id"])
        assert (message.author, message.nickname, message.seq) == (dave, "dave", 0)
        assert message.content == Text("from y-websocket")
        assert await texts_in(alice, group) == ["from gigi-crdt", "from y-websocket"]


async def test_a_client_sending_a_hostile_update_is_cut_off_and_the_room_never_sees_it(relay_port: int) -> None:
    (poison,) = hostile_updates("hang-string-in-array-root.hex")  # reading it as the room would hangs
    room = secrets.token_urlsafe(18)
    address = RelayAddress.parse(f"ws://127.0.0.1:{relay_port}?token={TOKEN}")
    async with open_room(address, room) as websocket:
        await websocket.get_message()  # the room's sync step 1
        await websocket.send_message(encode_sync(SyncKind.UPDATE, poison))
        with trio.fail_after(10):
            closed = await _until_closed(websocket)
    assert closed is not None
    assert closed.code == 1008
    async with plain_client(relay_port, room) as doc:  # the room still serves, and holds nothing
        assert "a" not in doc.keys()


async def _until_closed(websocket: WebSocketConnection) -> CloseReason | None:
    """Read until the relay closes the connection; how it closed it."""
    while True:
        try:
            await websocket.get_message()
        except ConnectionClosed as closed:
            return closed.reason


class ScriptedRoom:
    """A room that sends ``messages`` in order, then closes; keeps what it is sent."""

    def __init__(self, messages: list[bytes]) -> None:
        self._messages = list(messages)
        self.sent: list[bytes | str] = []

    async def get_message(self) -> bytes | str:
        await trio.lowlevel.checkpoint()
        if not self._messages:
            raise ConnectionClosed(CloseReason(1000, "the script ended"))
        return self._messages.pop(0)

    async def send_message(self, message: bytes | str) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(message)


async def test_a_message_a_deletion_from_the_room_takes_away_is_announced(tmp_path: Path) -> None:
    """As over a peer link (see test_sync_faults): the room brings alice's deletion but not
    her write before it, so the tombstone waits while the post is gone from bob's document."""
    async with (
        open_replica(tmp_path / "a", nickname="alice") as alice,
        open_replica(tmp_path / "b", nickname="bob") as bob,
    ):
        conversation = await alice.create_conversation(ConversationKind.DIRECT, others={bob.peer_id: "bob"})
        message = await alice.send(conversation, Text("oops, wrong chat"))
        await bob.receive(conversation, await alice.diff(conversation, None), origin=alice.peer_id)
        await alice.send(conversation, Text("lost on the way"))
        before = await alice.state_vector(conversation)
        await alice.delete(conversation, message)
        deletion = await alice.diff(conversation, before)
        events: list[Activity] = []
        room = ScriptedRoom([encode_sync(SyncKind.UPDATE, deletion)])
        link = RoomLink(bob, conversation, alice.peer_id, events.append, max_update=1 << 20)
        with trio.fail_after(10):
            assert "the script ended" in await link.run(room)
        assert events == [MessageDeleted(conversation, message)]
        assert await bob.history(conversation) == []


class HoldingRoom(ScriptedRoom):
    """A ``ScriptedRoom`` that stays open after its script; ``answered`` is set once it
    was sent two messages (our step 1, our answer to its)."""

    def __init__(self, messages: list[bytes]) -> None:
        super().__init__(messages)
        self.answered = trio.Event()

    async def get_message(self) -> bytes | str:
        if not self._messages:
            await trio.sleep_forever()
        return await super().get_message()

    async def send_message(self, message: bytes | str) -> None:
        await super().send_message(message)
        if len(self.sent) >= 2:
            self.answered.set()


async def test_a_room_catch_up_our_store_cannot_make_leaves_the_room_with_that_error(tmp_path: Path) -> None:
    # An update that found the queue full is replaced by a diff from the room's state
    # vector; a storage error there escaped the room's nursery inside a group.
    async with open_replica(tmp_path / "a", nickname="alice") as alice:
        conversation = await alice.create_conversation(ConversationKind.GROUP, others={"carol-peer-0003": "carol"})
        diff = alice.diff
        answered_once = False

        async def failing_after_the_first(conversation: str, state_vector: bytes | None) -> bytes:
            nonlocal answered_once
            if answered_once:
                raise StorageError("disk gone")
            answered_once = True
            return await diff(conversation, state_vector)

        alice.diff = failing_after_the_first  # type: ignore[method-assign]
        room = HoldingRoom([encode_sync(SyncKind.STEP1, b"\x00")])
        link = RoomLink(alice, conversation, "relay-origin-1", lambda _: None, max_update=1 << 20, queue_size=1)
        failed: list[StorageError] = []

        async def run() -> None:
            try:
                await link.run(room)
            except StorageError as exc:  # as itself, not in a group
                failed.append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                await room.answered.wait()
                for update in (b"first", b"second", b"third"):  # the waiting forwarder takes the
                    link.offer(update)  # first, the queue holds the second: the room is behind
        assert [str(exc) for exc in failed] == ["disk gone"]


def stored_updates(database: Path, room: str) -> list[bytes]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return [row[0] for row in db.execute("SELECT yupdate FROM yupdates WHERE path = ?", (room,))]


def stored_rows(database: Path, room: str) -> list[tuple[int, float]]:
    """Row ids and times of a room's stored updates (a rewritten row gets new ones)."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute("SELECT rowid, timestamp FROM yupdates WHERE path = ?", (room,)).fetchall()


class WatchedRoomStore(_RoomStore):
    """A relay room's store that tells when its log was compacted."""

    def __init__(self, database: Path, failures: int = 0) -> None:
        super().__init__(database, "room")
        self.compacted = trio.Event()
        self.failures = failures  # compactions to fail first

    async def replace_with(self, snapshot: bytes) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        await super().replace_with(snapshot)
        self.compacted.set()


@contextlib.asynccontextmanager
async def room_log(
    database: Path, garbage_delay: float = GARBAGE_DELAY, failures: int = 0
) -> AsyncIterator[tuple[Doc, WatchedRoomStore]]:
    """A relay room's document as its writer stores it (``_Writer``, without pycrdt-websocket's
    room around it), loaded as the relay loads it; everything is written once the block ends."""
    async with trio.open_nursery() as stores:
        store = WatchedRoomStore(database, failures)
        await stores.start(store.start)
        doc: Doc = Doc()
        writer = _Writer(store, doc, garbage_delay, stored=await store.load(doc))
        stores.start_soon(writer.run)
        try:
            yield doc, store
        finally:
            writer.close()


async def reloaded(database: Path) -> list[object]:
    doc: Doc = Doc()
    async with trio.open_nursery() as stores:
        store = _RoomStore(database, "room")
        await stores.start(store.start)
        await store.load(doc)
        await store.stop()
    return doc.get("texts", type=Array).to_py() or []


@pytest.mark.parametrize("failures", [0, 2])
async def test_what_a_room_deletes_leaves_the_relays_disk(tmp_path: Path, failures: int) -> None:
    # A member's deletion, or a retention's expiry, must not stay on the relay for good
    # (nor reach a new device from it): the room's log is compacted soon after, and again
    # if a compaction fails.
    database = tmp_path / "relay.sqlite3"
    async with room_log(database, garbage_delay=0, failures=failures) as (doc, store):
        texts = doc.get("texts", type=Array)
        texts.extend(["kept", "a secret"])
        del texts[1]
        with trio.fail_after(10):  # compacted while the relay runs, not only as it stops
            await store.compacted.wait()
        (snapshot,) = stored_updates(database, "room")
        assert b"kept" in snapshot
        assert b"a secret" not in snapshot
    assert await reloaded(database) == ["kept"]


async def test_a_rooms_log_is_compacted_as_it_grows(tmp_path: Path) -> None:
    database = tmp_path / "relay.sqlite3"
    sent = [f"{i:04} " + "x" * 8000 for i in range(300)]  # 2.4 MB in 300 updates, none deleting
    async with room_log(database) as (doc, _):
        texts = doc.get("texts", type=Array)
        for text in sent:
            texts.append(text)
            await trio.lowlevel.checkpoint()  # let the writer keep up rather than fall behind
    assert len(stored_updates(database, "room")) < 300 - 100  # each MiB written became one snapshot
    assert await reloaded(database) == sent


async def store_uncompacted(database: Path, room: str = "room") -> None:
    """Store a room's log as a relay killed before compacting it (or one older than
    compaction) left it: a message, then its deletion, in two updates."""
    doc: Doc = Doc()
    async with trio.open_nursery() as stores:
        store = _RoomStore(database, room)
        await stores.start(store.start)
        texts = doc.get("texts", type=Array)
        for change in (lambda: texts.extend(["kept", "a secret"]), lambda: texts.pop()):
            before = doc.get_state()
            change()
            await store.write(doc.get_update(before))
        await store.stop()
    assert any(b"a secret" in update for update in stored_updates(database, room))


async def test_a_room_log_written_before_compaction_is_compacted_once_loaded(tmp_path: Path) -> None:
    # A relay killed before the compaction due, or one older than compaction, left
    # deleted content in the log: whatever opens the room compacts it in time.
    database = tmp_path / "relay.sqlite3"
    await store_uncompacted(database)
    async with room_log(database, garbage_delay=0) as (_, store):
        with trio.fail_after(10):
            await store.compacted.wait()
        (snapshot,) = stored_updates(database, "room")
        assert b"a secret" not in snapshot
    assert await reloaded(database) == ["kept"]
    async with room_log(database, garbage_delay=0) as (_, store):
        pass  # a lone snapshot is not rewritten each time the room is opened
    assert not store.compacted.is_set()


async def test_a_room_whose_writer_fell_behind_is_written_whole(tmp_path: Path) -> None:
    database = tmp_path / "relay.sqlite3"
    sent = [f"change {i}" for i in range(WRITE_QUEUE_SIZE + 100)]
    async with room_log(database) as (doc, _):
        texts = doc.get("texts", type=Array)
        for text in sent:  # no checkpoint: the writer cannot take any before the queue is full
            texts.append(text)
    assert len(stored_updates(database, "room")) == 1  # one snapshot, not the queue on top of it
    assert await reloaded(database) == sent


async def test_a_room_is_not_checkpointed_beside_its_compaction(tmp_path: Path) -> None:
    # pycrdt-store's checkpoint rebuilds the whole document every 100 writes.
    database = tmp_path / "relay.sqlite3"
    async with room_log(database) as (doc, _):
        texts = doc.get("texts", type=Array)
        for i in range(150):
            texts.append(f"change {i}")
            await trio.lowlevel.checkpoint()
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT COUNT(*) FROM ycheckpoints").fetchone() == (0,)
    assert len(stored_updates(database, "room")) == 150


async def test_a_relay_compacts_stored_rooms_nobody_opens(tmp_path: Path) -> None:
    # A room nobody joins again would keep a deletion's text on the relay's disk for good.
    database = tmp_path / "relay.sqlite3"
    await store_uncompacted(database, "quiet")
    await store_uncompacted(database)
    async with room_log(database, garbage_delay=0) as (_, store):
        with trio.fail_after(10):
            await store.compacted.wait()
    snapshot = stored_rows(database, "room")
    async with trio.open_nursery() as stores:
        rooms = PersistentRooms(database, stores)
        await rooms.compact_stored_rooms()
        rooms.close()
    (quiet,) = stored_updates(database, "quiet")
    assert b"kept" in quiet
    assert b"a secret" not in quiet
    assert stored_rows(database, "room") == snapshot  # a lone snapshot is not written again


KILLED_MID_WRITE = """
import os, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size = 1")  # pages go to the file before the commit: the journal is hot
db.execute("BEGIN")
db.executemany("INSERT INTO yupdates VALUES ('other', ?, NULL, 0)", [(os.urandom(5000),) for _ in range(400)])
print("writing", flush=True)
time.sleep(60)
"""


async def test_a_relay_killed_mid_write_compacts_its_rooms_as_it_starts_again(tmp_path: Path) -> None:
    database = tmp_path / "relay.sqlite3"
    await store_uncompacted(database)
    writer = await trio.lowlevel.open_process(
        [sys.executable, "-c", KILLED_MID_WRITE, str(database)], stdout=subprocess.PIPE
    )
    assert writer.stdout is not None
    said = b""
    with trio.fail_after(10):
        while not said.endswith(b"\n"):  # one write, or two when Python runs unbuffered
            said += await writer.stdout.receive_some()
    assert said == b"writing\n"
    writer.kill()
    await writer.wait()
    await writer.stdout.aclose()
    assert (tmp_path / "relay.sqlite3-journal").exists()  # a reader must roll it back first
    async with trio.open_nursery() as stores:
        rooms = PersistentRooms(database, stores)
        await rooms.compact_stored_rooms()
        rooms.close()
    (snapshot,) = stored_updates(database, "room")
    assert b"a secret" not in snapshot
    assert stored_updates(database, "other") == []  # the killed write is rolled back


async def test_a_stored_update_that_cannot_be_read_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A damaged row must not make its room unusable (nor, before, leave the room's store
    # running after the failed join, so that the relay never finished stopping).
    database = tmp_path / "relay.sqlite3"
    await store_uncompacted(database)
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("INSERT INTO yupdates VALUES ('room', X'0102', NULL, 0)")  # not an update
    async with trio.open_nursery() as stores:
        rooms = PersistentRooms(database, stores)
        async with rooms:
            room = await rooms.get_room("room")
            assert room.ydoc.get("texts", type=Array).to_py() == ["kept"]
        rooms.close()
    assert "room room: stored update 1 of 3 is unreadable, skipped" in caplog.text
    assert await reloaded(database) == ["kept"]  # compacted as the relay stopped, without it
    assert len(stored_updates(database, "room")) == 1


async def test_a_room_whose_load_is_cut_short_leaves_nothing_running(tmp_path: Path) -> None:
    database = tmp_path / "relay.sqlite3"
    await store_uncompacted(database)
    with trio.fail_after(10):  # its store's task would keep the relay from ever stopping
        async with trio.open_nursery() as stores:
            rooms = PersistentRooms(database, stores)
            async with rooms:
                with contextlib.closing(sqlite3.connect(database)) as db:
                    db.execute("BEGIN EXCLUSIVE")  # the room's load waits for this
                    with trio.move_on_after(0.2) as join:
                        await rooms.get_room("room")
                    db.rollback()
                assert join.cancelled_caught
                assert "room" not in rooms.rooms
            rooms.close()


async def test_a_join_does_not_wait_for_another_rooms_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = trio.Event()
    load = _RoomStore.load

    async def slow_for_one_room(self: _RoomStore, doc: Doc) -> int:  # type: ignore[type-arg]
        if self.path == "large":  # as a large room's load would
            await loaded.wait()
        return await load(self, doc)

    monkeypatch.setattr(_RoomStore, "load", slow_for_one_room)
    async with trio.open_nursery() as stores:
        rooms = PersistentRooms(tmp_path / "relay.sqlite3", stores)
        async with rooms, trio.open_nursery() as joins:
            joins.start_soon(rooms.get_room, "large")
            joins.start_soon(rooms.get_room, "large")  # a second first client waits for the same load
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(10):
                await rooms.get_room("small")
            assert set(rooms.rooms) == {"small"}
            loaded.set()
        assert set(rooms.rooms) == {"small", "large"}
        assert rooms._opening == {}
        rooms.close()


async def test_a_stopped_relay_leaves_no_room_stream_open(tmp_path: Path) -> None:
    # pycrdt-websocket's rooms keep a stream open after they stop (anyio warns when collected).
    async with trio.open_nursery() as stores:
        rooms = PersistentRooms(tmp_path / "relay.sqlite3", stores)
        async with rooms:
            await rooms.get_room("room")
        rooms.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del rooms
        gc.collect()
    assert [w.message for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_a_relay_leaves_a_room_open_already_to_its_writer(tmp_path: Path) -> None:
    database = tmp_path / "relay.sqlite3"
    await store_uncompacted(database)
    async with trio.open_nursery() as stores:
        rooms = PersistentRooms(database, stores)
        async with rooms:
            room = await rooms.get_room("room")
            await rooms.compact_stored_rooms()
            # Not loaded a second time beside the open room: its writer compacts it.
            assert len(stored_updates(database, "room")) == 2
            assert room.ydoc.get("texts", type=Array).to_py() == ["kept"]
        rooms.close()
    (snapshot,) = stored_updates(database, "room")  # as the relay stopped, with a deletion pending
    assert b"a secret" not in snapshot


async def test_a_relay_compacts_stored_rooms_as_it_starts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path / "relay"
    data_dir.mkdir()
    await store_uncompacted(data_dir / "relay.sqlite3")
    swept = LogWaiter("compacted the stored logs of 1 rooms")
    caplog.set_level(logging.INFO, logger="gigi_crdt.relay")
    logging.getLogger("gigi_crdt.relay").addHandler(swept)
    try:
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            await nursery.start(partial(serve_relay, data_dir, TOKEN, shutdown=stop))
            with trio.fail_after(10):
                await swept.seen.wait()
            (snapshot,) = stored_updates(data_dir / "relay.sqlite3", "room")  # before anyone joined
            assert b"a secret" not in snapshot
            stop.set()
    finally:
        logging.getLogger("gigi_crdt.relay").removeHandler(swept)
    assert await reloaded(data_dir / "relay.sqlite3") == ["kept"]


class LogWaiter(logging.Handler):
    """Tells when a record with ``text`` is logged (by a task of this trio run)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.INFO)
        self.text = text
        self.seen = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()
