"""Benchmarks of gigi_crdt's sync engine over loopback TCP, with pycrdt-websocket as the baseline.

What it measures, in one run (each part in its own temporary directory, 127.0.0.1 only):

1. Initial sync of a large conversation (10^5 messages by default): node A holds the
   history on disk (built beforehand with the model + ``Store.commit`` in batches +
   compaction, as ``bench_store.py`` does), node B is empty. Timed from B dialling A
   (``connect_tcp`` + ``SyncEngine.run_link`` on both sides, A via ``serve_tcp``) to B's
   ``SyncProgress`` done == total event (B's index then holds every message, durably;
   verified with a count afterwards). Side by side:
   (a) the raw floor: ``Doc.get_update()`` + ``apply_update`` into an empty ``Doc``, in
       one process, no I/O;
   (b) pycrdt-websocket: its ``WebsocketServer`` on 127.0.0.1 plus two ``pycrdt.Provider``
       clients over WebSocket channels (trio-websocket, i.e. wsproto, on both ends); client 1
       holds the document, client 2 starts empty; timed until client 2's state vector
       equals client 1's. Everything stays in memory there (no store, no index).
   Where gigi's time goes is read off the same run: instance-level timing wrappers around
   A's document load (if it loads it: an empty state vector is answered from the store)
   and diff and B's ``receive`` (apply vs persist + index), and the
   receive times of the bytes on B's stream (transfer).
2. Reconnect after missing one message: disconnect, A sends 1 message, B redials. Bytes
   on the wire in both directions (a counting ``trio.abc.Stream`` around B's socket;
   application bytes, not TCP/IP headers) and time from dialling to B holding the message.
3. Live latency A -> B at a fixed rate (100 msg/s, paced with ``trio.sleep_until``): from
   the ``Replica.send`` call on A to the ``MessageReceived`` event on B (both durable);
   (a) with B in this process, (b) with B reopened in a child process of its own.
4. Many peers: a hub with N peers (default 10) linked over TCP, each sharing C
   conversations with it (default 2), R msg/s in total (default 200) for S seconds
   (default 20), half sent by the hub, half by the peers; the hub's RSS (it runs alone in
   a fresh process, the peers in a child process) before and after, delivery latency.
   ``--full`` runs 50 x 10 x 1000 msg/s x 60 s.

All nodes of parts 1-3 run in this one process and one trio loop (but for 3b), so A's and
B's work (and the pycrdt-websocket server's and clients') share the same cores. SQLite runs with
synchronous=FULL: every durable commit is an fsync, whose cost depends on the disk.

Needs:  pycrdt-websocket (the baseline); trio-websocket is already a gigi-crdt dependency.
Run:    python benchmarks/bench_sync.py [--messages N] [--full]   (see --help)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import math
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import trio
import trio_websocket
from _common import ALICE, ALICE_KEY, BOB, BOB_KEY, TwoPeers, compact, ms, percentile, print_table, text_for, verdict
from pycrdt import Channel, Doc, Provider
from pycrdt.websocket import WebsocketServer

import gigi_crdt.replica._receiving as receiving_module
from gigi_crdt.identity import Identity
from gigi_crdt.model import Conversation, ConversationKind, Text
from gigi_crdt.model.catchup import RECENT_BYTES
from gigi_crdt.replica import Replica, open_replica
from gigi_crdt.store import Store
from gigi_crdt.store.database import DATABASE_NAME
from gigi_crdt.sync import (
    Activity,
    LinkSettings,
    MessageReceived,
    OfflineMessagesReceived,
    PeerOffline,
    SyncEngine,
    SyncProgress,
    connect_tcp,
    serve_tcp,
)

HOST = "127.0.0.1"
WS_CHUNK = 64 * 1024  # the same read size as gigi's links (link.RECEIVE_CHUNK)
WS_MAX_MESSAGE = 512 * 1024 * 1024
# Long timers so that no ping or anti-entropy round lands inside a measurement.
SETTINGS = LinkSettings(handshake_timeout=30.0, ping_interval=60.0, idle_timeout=600.0, anti_entropy_interval=600.0)


# -- small helpers (shared ones in _common.py) ----------------


def secs(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds:.3f}"


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def print_header(args: argparse.Namespace) -> None:
    print(f"date      {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    print(f"python    {platform.python_version()} ({platform.python_implementation()})")
    print(
        f"pycrdt    {version('pycrdt')}  pycrdt-websocket {version('pycrdt-websocket')}  "
        f"trio {version('trio')}  trio-websocket {version('trio-websocket')}  anyio {version('anyio')}"
    )
    print(f"sqlite    {sqlite3.sqlite_version}")
    print(f"cpus      {os.cpu_count()}  ({platform.platform()})")
    kind = "unsigned (no identities)" if args.unsigned else "signed, as nodes create them (signed streams, heads)"
    print(f"parts 1-3 {kind}")
    print(f"load avg  {loadavg()}  (1/5/15 min at start: other processes add noise)")
    print(f"data dir  {args.dir or tempfile.gettempdir()}")


def proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    """Current resident set size of this process (VmRSS)."""
    return proc_status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """Peak RSS of this process image (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    return proc_status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


@dataclass
class Built:
    directory: Path
    conversation: str
    messages: int
    snapshot_bytes: int
    seconds: float
    signed: bool


def build_history(base: Path, messages: int, batch: int, signed: bool) -> Built:
    """Alice's store holding a ``messages``-long DIRECT conversation with bob, compacted."""
    start = time.perf_counter()
    directory = Path(tempfile.mkdtemp(prefix=f"history-{messages}-", dir=base))
    peers = TwoPeers(signed)
    conv = peers.alice.id
    store = Store.open(directory)
    try:
        store.set_setting("peer_id", peers.alice_id)
        store.commit([peers.creation_record()])
        for first in range(0, messages, batch):
            store.commit([peers.message_record(i) for i in range(first, min(first + batch, messages))])
            if store.needs_compaction(conv):
                compact(store, conv)
        store.commit([peers.closing_record()])
        snapshot_bytes = compact(store, conv)
    finally:
        store.close()
    return Built(directory, conv, messages, snapshot_bytes, time.perf_counter() - start, signed)


def stored_updates(built: Built) -> list[bytes]:
    store = Store.open(built.directory)
    try:
        return [row.update for row in store.load_log(built.conversation)]
    finally:
        store.close()


def indexed_messages(directory: Path, conv: str) -> int:
    """Messages in a replica's index, read through a separate read-only connection."""
    db = sqlite3.connect(f"file:{directory / DATABASE_NAME}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM messages WHERE conv = ?", (conv,)).fetchone()[0])
    finally:
        db.close()


# -- nodes, event taps and counting streams ---------------------------------------------


class Waiter:
    def __init__(self, predicate: Callable[[Activity], bool]) -> None:
        self.predicate = predicate
        self.done = trio.Event()
        self.event: Activity | None = None
        self.at = 0.0

    async def wait(self, seconds: float) -> tuple[Activity, float]:
        with trio.fail_after(seconds):
            await self.done.wait()
        assert self.event is not None
        return self.event, self.at


class Tap:
    """Consumes one engine's events; wakes waiters and calls handlers with the arrival time."""

    def __init__(self, engine: SyncEngine) -> None:
        self.engine = engine
        self.waiters: list[Waiter] = []
        self.handlers: list[Callable[[Activity, float], None]] = []
        self.dropped = 0

    def expect(self, predicate: Callable[[Activity], bool]) -> Waiter:
        """Register before acting, so that the event cannot slip by."""
        waiter = Waiter(predicate)
        self.waiters.append(waiter)
        return waiter

    async def run(self) -> None:
        async for event in self.engine.events():
            now = time.perf_counter()
            if type(event).__name__ == "EventsDropped":
                self.dropped += event.count  # type: ignore[union-attr]
            for handler in self.handlers:
                handler(event, now)
            for waiter in list(self.waiters):
                if waiter.predicate(event):
                    waiter.event, waiter.at = event, now
                    waiter.done.set()
                    self.waiters.remove(waiter)


@dataclass
class Node:
    replica: Replica
    engine: SyncEngine
    tap: Tap
    directory: Path
    compactions: list[tuple[float, float]] = field(default_factory=list)  # (start, end)
    compacting: int = 0


def watch_compactions(node: Node) -> None:
    """Record the store worker's background compactions (an instance-level wrapper, for timing)."""
    worker = node.replica._worker
    compact = worker.compact

    async def timed_compact(conversation: str) -> None:
        node.compacting += 1
        start = time.perf_counter()
        try:
            await compact(conversation)
        finally:
            node.compacting -= 1
            node.compactions.append((start, time.perf_counter()))

    worker.compact = timed_compact  # type: ignore[method-assign]


def compactions_between(nodes: Sequence[Node], start: float, end: float) -> str:
    found = [f"{n.replica.nickname} {e - s:.2f} s" for n in nodes for s, e in n.compactions if s < end and e > start]
    return ", ".join(found) if found else "none"


class LoopLag:
    """How late a 1 ms trio sleep wakes up: stalls of the event loop (GIL held by a thread, long steps)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (time, lateness)

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await trio.sleep(0.001)
            now = time.perf_counter()
            self.samples.append((now, now - before - 0.001))
            if len(self.samples) > 200_000:
                del self.samples[:100_000]

    def worst(self, start: float, end: float) -> float:
        return max((lag for t, lag in self.samples if start <= t <= end), default=0.0)


@contextlib.asynccontextmanager
async def open_node(
    directory: Path,
    nickname: str,
    peer_id: str,
    nursery: trio.Nursery,
    event_buffer: int = 4096,
    signer: Identity | None = None,
) -> AsyncIterator[Node]:
    async with open_replica(directory, nickname=nickname, peer_id=peer_id, signer=signer) as replica:
        engine = SyncEngine(replica, settings=SETTINGS, event_buffer=event_buffer)
        replica.add_listener(engine)
        tap = Tap(engine)
        nursery.start_soon(tap.run)
        node = Node(replica, engine, tap, directory)
        watch_compactions(node)
        yield node


class CountingStream(trio.abc.Stream):
    """A stream that counts the bytes through it and, optionally, when each chunk arrived."""

    def __init__(self, inner: trio.abc.Stream, log_receives: bool = False) -> None:
        self.inner = inner
        self.sent = 0
        self.received = 0
        self.log_receives = log_receives
        self.receive_log: list[tuple[float, int]] = []  # (time, bytes received so far)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        self.sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.received += len(data)
        if self.log_receives and data:
            self.receive_log.append((time.perf_counter(), self.received))
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def serve(nursery: trio.Nursery, node: Node) -> int:
    listeners = await nursery.start(serve_tcp, node.engine)
    return int(listeners[0].socket.getsockname()[1])


class Dialled:
    """One outgoing link of ``node`` to ``port``, run in the background until ``hang_up``."""

    def __init__(self, nursery: trio.Nursery, node: Node, port: int, log_receives: bool = False) -> None:
        self.node = node
        self.port = port
        self.log_receives = log_receives
        self.scope = trio.CancelScope()
        self.stream: CountingStream | None = None
        self.connected = trio.Event()
        nursery.start_soon(self._run)

    async def _run(self) -> None:
        with self.scope:
            self.stream = CountingStream(await connect_tcp(HOST, self.port), self.log_receives)
            self.connected.set()
            await self.node.engine.run_link(self.stream)

    def hang_up(self) -> None:
        self.scope.cancel()


class Lines:
    """Lines from a child's stdout (or our stdin), one at a time."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.pending = b""

    async def next(self) -> str | None:
        while b"\n" not in self.pending:
            chunk = await self.stream.receive_some()
            if not chunk:
                return None
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()


def arrivals_into(received: dict[str, float]) -> Callable[[Activity, float], None]:
    """A ``Tap`` handler keeping each ``MessageReceived``'s arrival time by message id."""

    def on_event(event: Activity, at: float) -> None:
        if isinstance(event, MessageReceived):
            received[event.message.id] = at

    return on_event


def is_synced(event: Activity) -> bool:
    return isinstance(event, SyncProgress) and event.done == event.total


class Timed:
    """Instance-level timing wrapper around an async or sync callable: call times in order."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.calls: list[tuple[float, float]] = []  # (start, end)

    def total(self) -> float:
        return sum(end - start for start, end in self.calls)

    def first(self) -> float:
        return self.calls[0][1] - self.calls[0][0] if self.calls else float("nan")

    def wrap_async(self) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await self.function(*args, **kwargs)
            finally:
                self.calls.append((start, time.perf_counter()))

        return wrapper

    def wrap_sync(self) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return self.function(*args, **kwargs)
            finally:
                self.calls.append((start, time.perf_counter()))

        return wrapper


# -- 1. initial sync -------------------------------------------------------------------


@dataclass
class FloorResult:
    encode: list[float]
    apply: list[float]
    update_bytes: int

    @property
    def total(self) -> float:
        return statistics.median(e + a for e, a in zip(self.encode, self.apply, strict=True))


def bench_floor(updates: list[bytes], runs: int) -> FloorResult:
    source: Doc[Any] = Doc()
    for update in updates:
        source.apply_update(update)
    encode, apply = [], []
    size = 0
    for _ in range(runs):
        start = time.perf_counter()
        update = source.get_update()
        encoded = time.perf_counter()
        target: Doc[Any] = Doc()
        target.apply_update(update)
        applied = time.perf_counter()
        assert target.get_state() == source.get_state()
        encode.append(encoded - start)
        apply.append(applied - encoded)
        size = len(update)
    return FloorResult(encode, apply, size)


@dataclass
class GigiSync:
    total: float
    first_big_byte: float  # since the dial
    last_byte: float  # since the dial
    bytes_to_b: int
    bytes_to_a: int
    a_load: float
    a_diff: float
    b_receive: float
    b_check: float
    b_apply: float
    messages_indexed: int
    frame_bytes: int
    loop_stall: float  # worst lateness of the event loop A and B share, dial -> synced
    shown: float  # dial -> OfflineMessagesReceived at B (merged, before the commit)


@dataclass
class Session:
    """A and B (A serving on ``port``) after the initial sync, kept for parts 2 and 3."""

    a: Node
    b: Node
    port: int
    link: Dialled
    conversation: str
    lag: LoopLag
    close_b: Callable[[], Awaitable[None]]


async def gigi_initial_sync(nursery: trio.Nursery, base: Path, built: Built) -> tuple[GigiSync, Session]:
    keys = (ALICE_KEY, BOB_KEY) if built.signed else (None, None)
    names = (ALICE_KEY.peer_id, BOB_KEY.peer_id) if built.signed else (ALICE, BOB)
    a = await nursery_enter(nursery, open_node(built.directory, "alice", names[0], nursery, signer=keys[0]))
    bob_dir = Path(tempfile.mkdtemp(prefix="bob-", dir=base))
    b_stack = contextlib.AsyncExitStack()  # B alone can be closed (part 3 moves it to a process of its own)
    _exit_stacks[-1].push_async_callback(b_stack.aclose)
    b = await b_stack.enter_async_context(open_node(bob_dir, "bob", names[1], nursery, signer=keys[1]))
    port = await serve(nursery, a)
    conv = built.conversation
    lag = LoopLag()
    nursery.start_soon(lag.run)

    # Timing wrappers on these instances only (the engine looks the methods up on the replica).
    a_document = Timed(a.replica._document)
    a.replica._document = a_document.wrap_async()  # type: ignore[method-assign]
    a_diff = Timed(a.replica.diff)
    a.replica.diff = a_diff.wrap_async()  # type: ignore[method-assign]
    b_receive = Timed(b.replica.receive)
    b.replica.receive = b_receive.wrap_async()  # type: ignore[method-assign]
    apply_remote = Conversation.apply_remote
    b_apply = Timed(apply_remote)
    Conversation.apply_remote = b_apply.wrap_sync()  # type: ignore[method-assign]
    check = receiving_module.check_remote_update  # type: ignore[attr-defined]
    b_check = Timed(check)
    receiving_module.check_remote_update = b_check.wrap_async()  # type: ignore[attr-defined]

    gc.collect()
    synced = b.tap.expect(is_synced)
    batch = b.tap.expect(lambda event: isinstance(event, OfflineMessagesReceived))
    start = time.perf_counter()
    link = Dialled(nursery, b, port, log_receives=True)
    try:
        _, at = await synced.wait(600)
    finally:
        Conversation.apply_remote = apply_remote  # type: ignore[method-assign]
        receiving_module.check_remote_update = check  # type: ignore[attr-defined]
    total = at - start
    # Restore the plain methods for the parts that follow.
    del a.replica._document, a.replica.diff, b.replica.receive

    assert link.stream is not None
    log = [(t, n) for t, n in link.stream.receive_log if t <= at]
    # The handshake (hello, announce, step 1) is well under 4 KiB; the step 2 frame is the rest.
    first_big = next((t for t, n in log if n > 4096), log[-1][0])
    last = log[-1][0]
    count = indexed_messages(b.directory, conv)
    # B's receive calls: the step 2 is the big one.
    receive_time = max((end - s for s, end in b_receive.calls), default=float("nan"))
    apply_time = max((end - s for s, end in b_apply.calls), default=float("nan"))
    check_time = max((end - s for s, end in b_check.calls), default=float("nan"))
    return (
        GigiSync(
            total=total,
            first_big_byte=first_big - start,
            last_byte=last - start,
            bytes_to_b=log[-1][1],
            bytes_to_a=link.stream.sent,
            a_load=next((end - s for s, end in a_document.calls if s < first_big), float("nan")),
            a_diff=max((end - s for s, end in a_diff.calls), default=float("nan")),
            b_receive=receive_time,
            b_check=check_time,
            b_apply=apply_time,
            messages_indexed=count,
            frame_bytes=log[-1][1],
            loop_stall=lag.worst(start, at),
            shown=(await batch.wait(1))[1] - start,
        ),
        Session(a, b, port, link, conv, lag, b_stack.aclose),
    )


async def settle_compactions(s: Session, limit: float) -> tuple[float, float, str]:
    """Wait until the compactions the initial sync triggered are done; (seconds, worst loop stall, which)."""
    start = time.perf_counter()
    nodes = (s.a, s.b)
    quiet_since = None
    with trio.move_on_after(limit):
        while True:
            await trio.sleep(0.05)
            busy = any(n.compacting for n in nodes)
            done = any(n.compactions for n in nodes)
            if not busy and not done and time.perf_counter() - start > 3.0:
                break  # nothing was compacted (a small history)
            if busy or not done:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.perf_counter()
            elif time.perf_counter() - quiet_since >= 1.0:
                break
    end = quiet_since or time.perf_counter()
    return end - start, s.lag.worst(start, end), compactions_between(nodes, start - 60, end)


_exit_stacks: list[contextlib.AsyncExitStack] = []


async def nursery_enter(nursery: trio.Nursery, manager: contextlib.AbstractAsyncContextManager[Any]) -> Any:
    """Enter ``manager`` in the innermost open exit stack (closed by ``open_stack``)."""
    return await _exit_stacks[-1].enter_async_context(manager)


@contextlib.asynccontextmanager
async def open_stack() -> AsyncIterator[trio.Nursery]:
    """A nursery plus an exit stack for nodes; on exit the nodes close, then the nursery is cancelled."""
    async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
        _exit_stacks.append(stack)
        try:
            yield nursery
            nursery.cancel_scope.cancel()
        finally:
            _exit_stacks.pop()


# pycrdt-websocket ------------------------------------------------------------------------


class TrioWebsocketChannel(Channel):
    """A pycrdt ``Channel`` over a trio-websocket connection (server or client side)."""

    def __init__(self, websocket: trio_websocket.WebSocketConnection, path: str) -> None:
        self._websocket = websocket
        self._path = path
        self.sent = 0
        self.received = 0

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> TrioWebsocketChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except trio_websocket.ConnectionClosed:
            raise StopAsyncIteration() from None

    async def send(self, message: bytes) -> None:
        self.sent += len(message)
        await self._websocket.send_message(bytes(message))

    async def recv(self) -> bytes:
        message = await self._websocket.get_message()
        assert isinstance(message, bytes)
        self.received += len(message)
        return message


@dataclass
class WebsocketSync:
    upload: float  # client 1 connected -> the server's room holds everything
    join: float  # client 2 connected -> client 2 holds everything
    total: float
    bytes_to_client2: int


async def wait_until(check: Callable[[], bool], limit: float, poll: float = 0.0005) -> float:
    """Poll ``check`` (state-vector comparisons: no event to wait on) until it holds."""
    with trio.fail_after(limit):
        while not check():  # noqa: ASYNC110 (state vectors: polled)
            await trio.sleep(poll)
    return time.perf_counter()


async def websocket_initial_sync(updates: list[bytes]) -> WebsocketSync:
    doc1: Doc[Any] = Doc()
    for update in updates:
        doc1.apply_update(update)
    target = doc1.get_state()
    doc2: Doc[Any] = Doc()
    room_name = "bench-room"

    async with trio.open_nursery() as nursery:
        server = WebsocketServer(auto_clean_rooms=False)
        await nursery.start(server.start)

        async def handler(request: trio_websocket.WebSocketRequest) -> None:
            websocket = await request.accept()
            await server.serve(TrioWebsocketChannel(websocket, request.path.lstrip("/")))

        ws_server = await nursery.start(
            lambda task_status: trio_websocket.serve_websocket(
                handler,
                HOST,
                0,
                ssl_context=None,
                max_message_size=WS_MAX_MESSAGE,
                receive_buffer_size=WS_CHUNK,
                task_status=task_status,
            )
        )
        port = ws_server.port
        url = f"ws://{HOST}:{port}/{room_name}"

        @contextlib.asynccontextmanager
        async def client(doc: Doc[Any]) -> AsyncIterator[TrioWebsocketChannel]:
            async with trio_websocket.open_websocket_url(
                url, max_message_size=WS_MAX_MESSAGE, receive_buffer_size=WS_CHUNK
            ) as websocket:
                channel = TrioWebsocketChannel(websocket, room_name)
                async with Provider(doc, channel):
                    yield channel

        gc.collect()
        start = time.perf_counter()
        async with client(doc1):
            await wait_until(lambda: room_name in server.rooms, 60)
            room_doc = server.rooms[room_name].ydoc
            uploaded = await wait_until(lambda: room_doc.get_state() == target, 600)
            joined_at = time.perf_counter()
            async with client(doc2) as channel2:
                done = await wait_until(lambda: doc2.get_state() == target, 600)
                received = channel2.received
        await server.stop()
        nursery.cancel_scope.cancel()
    return WebsocketSync(uploaded - start, done - joined_at, done - start, received)


def report_initial(built: Built, floor: FloorResult, gigi: list[GigiSync], ws: list[WebsocketSync]) -> None:
    n = f"{built.messages:,}"
    g = statistics.median(r.total for r in gigi)
    w_total = statistics.median(r.total for r in ws)
    w_join = statistics.median(r.join for r in ws)
    w_upload = statistics.median(r.upload for r in ws)
    runs = len(gigi)

    def spread(values: list[float]) -> str:
        return f"{min(values):.3f}-{max(values):.3f}" if len(values) > 1 else ""

    print_table(
        f"1. Initial sync of a {n}-message conversation (update {built.snapshot_bytes:,} B; median of {runs})",
        ["path", "seconds", "min-max", "msg/s", "vs floor"],
        [
            [
                "raw floor: get_update + apply to empty Doc",
                secs(floor.total),
                spread([e + a for e, a in zip(floor.encode, floor.apply, strict=True)]),
                f"{built.messages / floor.total:,.0f}",
                "1.0x",
            ],
            [
                "gigi: dial -> B synced (TCP, B stores + indexes)",
                secs(g),
                spread([r.total for r in gigi]),
                f"{built.messages / g:,.0f}",
                f"{g / floor.total:.1f}x",
            ],
            [
                "pycrdt-websocket: client1 -> server -> client2",
                secs(w_total),
                spread([r.total for r in ws]),
                f"{built.messages / w_total:,.0f}",
                f"{w_total / floor.total:.1f}x",
            ],
            [
                "  client1 upload into the server's room",
                secs(w_upload),
                spread([r.upload for r in ws]),
                "",
                "",
            ],
            [
                "  client2 join (room warm in memory)",
                secs(w_join),
                spread([r.join for r in ws]),
                f"{built.messages / w_join:,.0f}",
                f"{w_join / floor.total:.1f}x",
            ],
        ],
    )
    print(f"target gigi/floor <= 1.5x -> {g / floor.total:.1f}x: {verdict(g / floor.total <= 1.5)}")
    print(
        f"target gigi faster than pycrdt-websocket -> gigi/ws {g / w_total:.2f}x (both hops), "
        f"{g / w_join:.2f}x (client2 join only): {verdict(g < w_total)} / {verdict(g < w_join)}"
    )
    print(
        f"floor parts: encode {secs(statistics.median(floor.encode))} s, apply {secs(statistics.median(floor.apply))} s"
    )

    r = min(gigi, key=lambda x: abs(x.total - g))  # the median run
    rows = [
        ["A: document load before answering (none: answered from the store)", secs(r.a_load), ""],
        ["A: diff for an empty state vector (from its stored log)", secs(r.a_diff), ""],
        ["dial -> first step-2 byte at B (handshake + diff + encode)", secs(r.first_big_byte), ""],
        ["first -> last byte at B (TCP transfer + frame parsing)", secs(r.last_byte - r.first_big_byte), ""],
        ["B: Replica.receive total", secs(r.b_receive), ""],
        ["  B: schema check of the update (before pycrdt sees it)", secs(r.b_check), ""],
        ["  B: apply_remote (Yjs apply + change extraction; in a worker thread)", secs(r.b_apply), ""],
        ["  B: persist + index + FTS (receive - check - apply)", secs(r.b_receive - r.b_check - r.b_apply), ""],
        ["last byte -> OfflineMessagesReceived at B (merged, not yet committed)", secs(r.shown - r.last_byte), ""],
        ["last byte -> SyncProgress event at B (committed)", secs(r.total - r.last_byte), ""],
        ["total", secs(r.total), ""],
        ["worst event-loop stall meanwhile (A and B share the loop)", secs(r.loop_stall), ""],
    ]
    print_table(
        f"   Where gigi's time goes (median run; bytes A->B {r.bytes_to_b:,}, B->A {r.bytes_to_a:,}; "
        f"B indexed {r.messages_indexed:,} messages)",
        ["step", "seconds", ""],
        rows,
    )
    print(
        "   pycrdt-websocket keeps everything in memory (no store, no index); gigi's B commits the update,"
        f"\n   {built.messages:,} index + FTS rows durably before the event (its delivered receipt follows, queued)."
    )


# -- 2. reconnect after missing one message -------------------------------------------


@dataclass
class Reconnect:
    converge: float
    summaries: float
    worst_lag: float
    sent_at_converge: int
    received_at_converge: int
    sent_settled: int
    received_settled: int


async def bench_reconnects(nursery: trio.Nursery, s: Session, rounds: int, settle: float) -> list[Reconnect]:
    results = []
    timers = []
    for node in (s.a, s.b):
        timer = Timed(node.replica.conversations)
        node.replica.conversations = timer.wrap_async()  # type: ignore[method-assign]
        timers.append(timer)
    for i in range(rounds):
        a_off = s.a.tap.expect(lambda e: isinstance(e, PeerOffline))
        b_off = s.b.tap.expect(lambda e: isinstance(e, PeerOffline))
        s.link.hang_up()
        await a_off.wait(30)
        await b_off.wait(30)
        message_id = await s.a.replica.send(s.conversation, Text(f"while you were away #{i}"))
        got = s.b.tap.expect(
            lambda e, m=message_id: isinstance(e, OfflineMessagesReceived) and any(x.id == m for x in e.messages)
        )
        for timer in timers:
            timer.calls.clear()
        start = time.perf_counter()
        s.link = Dialled(nursery, s.b, s.port)
        _, at = await got.wait(30)
        summaries = sum(e - b for timer in timers for b, e in timer.calls if e <= at)
        assert s.link.stream is not None
        sent, received = s.link.stream.sent, s.link.stream.received
        await trio.sleep(settle)  # let trailing frames (receipts, B's own step 2) pass
        results.append(
            Reconnect(
                at - start,
                summaries,
                s.lag.worst(start, at),
                sent,
                received,
                s.link.stream.sent,
                s.link.stream.received,
            )
        )
    for node in (s.a, s.b):
        del node.replica.conversations
    return results


def report_reconnects(results: list[Reconnect], settle: float) -> None:
    rows = []
    for i, r in enumerate(results, 1):
        rows.append(
            [
                f"round {i}",
                ms(r.converge),
                ms(r.summaries),
                ms(r.worst_lag),
                f"{r.received_at_converge:,}",
                f"{r.sent_at_converge:,}",
                f"{r.received_settled:,}",
                f"{r.sent_settled:,}",
                f"{r.received_settled + r.sent_settled:,}",
            ]
        )
    t = statistics.median(r.converge for r in results)
    total = statistics.median(r.received_settled + r.sent_settled for r in results)
    rows.append(
        ["median", ms(t), ms(statistics.median(r.summaries for r in results)), "", "", "", "", "", f"{total:,.0f}"]
    )
    print_table(
        f"2. Reconnect after missing 1 message (B redials A; bytes at B's socket, app level; "
        f"'settled' = {settle:g} s later)",
        [
            "",
            "converge ms",
            "conversations() ms",
            "loop stall ms",
            "A->B conv.",
            "B->A conv.",
            "A->B settled",
            "B->A settled",
            "total B",
        ],
        rows,
    )
    print(
        f"targets: <= 2 KB on the wire -> {total:,.0f} B: {verdict(total <= 2048)}; "
        f"<= 10 ms to converge -> {ms(t)} ms: {verdict(t <= 0.010)}"
    )
    print("   converge = dial -> OfflineMessagesReceived on B (TCP connect, hello x2, announce, step 1/2,")
    print("   A's diff, B's check and merge of the update; B's commit and its delivered receipt follow);")
    print("   conversations() ms = time in Replica.conversations() on A plus on B (summaries with unread counts,")
    print("   called by SyncEngine._on_announce; the two overlap, so the sum can exceed converge);")
    print("   loop stall = worst lateness of a 1 ms trio sleep")


# -- 3. live latency -------------------------------------------------------------------


@dataclass
class Live:
    latencies: list[float]
    after_durable: list[float]
    send_call: list[float]
    a_commits: list[float]
    behind: int
    missing: int
    worst_lag: float
    compactions: str
    slow: list[tuple[int, float]]


async def bench_live(s: Session, count: int, rate: float, warmup: int) -> Live:
    """B in this process: its work shares A's GIL and event loop."""
    received: dict[str, float] = {}
    on_event = arrivals_into(received)
    s.b.tap.handlers.append(on_event)
    try:
        return await send_live(s, received, (s.a, s.b), count, rate, warmup)
    finally:
        s.b.tap.handlers.remove(on_event)


async def bench_live_apart(s: Session, signed: bool, count: int, rate: float, warmup: int) -> Live:
    """B reopened in a child process of its own (as on another machine), dialling A again;
    it reports each MessageReceived with its ``perf_counter`` time (CLOCK_MONOTONIC: the
    same clock in both processes)."""
    s.link.hang_up()
    await s.close_b()
    command = [sys.executable, __file__, "--live-peer", str(s.b.directory), "--port", str(s.port)]
    command += [] if signed else ["--unsigned"]
    received: dict[str, float] = {}
    ready = trio.Event()
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            functools.partial(trio.run_process, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False)
        )

        async def read_reports() -> None:
            reports = Lines(process.stdout)
            while (line := await reports.next()) is not None:
                if line == "ready":
                    ready.set()
                else:
                    message_id, at = line.split()
                    received[message_id] = float(at)

        nursery.start_soon(read_reports)
        with trio.fail_after(120):
            await ready.wait()
        try:
            return await send_live(s, received, (s.a,), count, rate, warmup)
        finally:
            await process.stdin.aclose()


async def live_peer(directory: Path, port: int, signed: bool) -> None:
    """The child of ``bench_live_apart``: B's store, linked to A, reporting on stdout until stdin closes."""
    async with open_stack() as nursery:
        peer_id, signer = (BOB_KEY.peer_id, BOB_KEY) if signed else (BOB, None)
        b = await nursery_enter(nursery, open_node(directory, "bob", peer_id, nursery, signer=signer))

        def report(event: Activity, at: float) -> None:
            if isinstance(event, MessageReceived):
                print(f"{event.message.id} {at!r}", flush=True)

        b.tap.handlers.append(report)
        synced = b.tap.expect(is_synced)
        Dialled(nursery, b, port)
        await synced.wait(120)
        print("ready", flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        while await stdin.receive_some():
            pass


async def send_live(
    s: Session, received: dict[str, float], nodes: Sequence[Node], count: int, rate: float, warmup: int
) -> Live:
    """Send from A at ``rate``; ``received`` fills with B's arrival times (by message id).

    The ``warmup`` messages go first and must have arrived before the timed ones start:
    B may have to load the conversation's document for the first (it rests when B opens,
    and loading 10^5 messages takes most of a second), which is not live latency."""
    warm = [await s.a.replica.send(s.conversation, text_for(i)) for i in range(warmup)]
    with trio.move_on_after(30):
        while not set(warm) <= received.keys():  # noqa: ASYNC110
            await trio.sleep(0.01)
    # A's commits in its writer thread (SQLite, synchronous=FULL: one fsync each), to tell the disk's share.
    store = s.a.replica._store
    a_commit = Timed(store.commit)
    store.commit = a_commit.wrap_sync()  # type: ignore[method-assign]
    sent: list[tuple[str, float, float]] = []
    behind = 0
    interval = 1.0 / rate
    began = time.perf_counter()
    try:
        start = trio.current_time() + 0.05
        for i in range(count):
            deadline = start + i * interval
            if trio.current_time() > deadline + interval:
                behind += 1
            await trio.sleep_until(deadline)
            t0 = time.perf_counter()
            message_id = await s.a.replica.send(s.conversation, text_for(warmup + i))
            t1 = time.perf_counter()
            sent.append((message_id, t0, t1))
        last = {m for m, _, _ in sent}
        with trio.move_on_after(10):
            while not last <= received.keys():  # noqa: ASYNC110
                await trio.sleep(0.01)
    finally:
        del store.commit
    latencies = [received[m] - t0 for m, t0, _ in sent if m in received]
    after = [received[m] - t1 for m, _, t1 in sent if m in received]
    calls = [t1 - t0 for _, t0, t1 in sent]
    ended = time.perf_counter()
    slow = [(i, x) for i, x in enumerate(latencies) if x > 0.005]
    return Live(
        latencies,
        after,
        calls,
        [end - start for start, end in a_commit.calls],
        behind,
        sum(1 for m, _, _ in sent if m not in received),
        s.lag.worst(began, ended),
        compactions_between(nodes, began, ended),
        slow,
    )


def report_live(r: Live, rate: float, part: str, where: str) -> None:
    def row(label: str, values: list[float]) -> list[object]:
        return [
            label,
            ms(percentile(values, 0.5)),
            ms(percentile(values, 0.9)),
            ms(percentile(values, 0.99)),
            ms(max(values)),
        ]

    print_table(
        f"{part}. Live latency A -> B at {rate:g} msg/s over loopback TCP, {where} ({len(r.latencies)} messages, "
        f"{r.missing} missing, {r.behind} sends started late)",
        ["measure", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [
            row("A send() call -> MessageReceived on B", r.latencies),
            row("  A send() call (durable on A)", r.send_call),
            row("  send() returned -> MessageReceived on B", r.after_durable),
            row(f"A's Store.commit calls ({len(r.a_commits)}: sends and B's receipts)", r.a_commits),
        ],
    )
    p99 = percentile(r.latencies, 0.99)
    print(f"target p99 <= 5 ms -> {ms(p99)} ms: {verdict(p99 <= 0.005)}")
    print("   B's event comes once B merged the update, before B's commit (A's send() waits for A's);")
    print("   a Store.commit call is the writer thread's SQLite transaction with its fsync (synchronous=FULL)")
    print(f"   worst event-loop stall during the run {ms(r.worst_lag)} ms; compactions overlapping it: {r.compactions}")
    if r.slow:
        first, last = r.slow[0][0], r.slow[-1][0]
        slowest = ms(max(x for _, x in r.slow))
        print(f"   {len(r.slow)} messages over 5 ms, message #{first}..#{last} (the slowest {slowest} ms)")


# -- 4. many peers ---------------------------------------------------------------------


@dataclass
class Crowd:
    peers: int
    conversations: int
    rate: float
    seconds: float
    setup: float
    rss_start: int
    rss_end: int
    rss_samples: list[tuple[float, int]]
    peak: int
    documents: int
    recent: int  # bytes of recent updates the hub keeps for catch-ups
    sent: int
    delivered: int
    latencies: list[float]
    behind: tuple[int, int]  # sends started over 50 ms late: the hub's, the peers'
    cpu: tuple[float, float]  # CPU seconds per second of the run: the hub's process, the peers'
    dropped: int


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def crowd_peer_id(p: int) -> str:
    return f"peer-{p:04d}-bench"


async def bench_crowd(base: Path, peers: int, per_peer: int, rate: float, seconds: float) -> Crowd:
    """The hub in this process, its peers in a child process (``crowd_peers``): the RSS
    measured is the hub's alone. Message i goes out at ``go + i / rate``, the even ones from
    the hub, the odd ones from the peers, spread over every conversation."""
    setup_start = time.perf_counter()
    async with open_stack() as nursery:
        hub = await nursery_enter(nursery, open_node(base / "hub", "hub", "hub-peer-0000", nursery, 16384))
        port = await serve(nursery, hub)
        convs = [
            await hub.replica.create_conversation(ConversationKind.DIRECT, others={crowd_peer_id(p): f"p{p}"})
            for p in range(peers)
            for _ in range(per_peer)
        ]
        command = [sys.executable, __file__, "--crowd-peers", str(base / "peers"), "--port", str(port)]
        command += ["--peers", str(peers), "--conversations", str(per_peer), "--crowd-rate", str(rate)]
        command += ["--seconds", str(seconds)]
        process = await nursery.start(
            functools.partial(trio.run_process, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False)
        )
        child = Lines(process.stdout)
        with trio.fail_after(600):
            assert await child.next() == "ready"
        setup = time.perf_counter() - setup_start

        received: dict[str, float] = {}
        on_event = arrivals_into(received)
        hub.tap.handlers.append(on_event)
        gc.collect()
        rss_start = rss_bytes()
        samples = [(0.0, rss_start)]
        sent: dict[str, float] = {}
        total = int(rate * seconds)
        go = time.perf_counter() + 0.5
        await process.stdin.send_all(f"{go!r}\n".encode())
        cpu_start = cpu_seconds()

        async def send_one(i: int) -> None:
            t0 = time.perf_counter()
            sent[await hub.replica.send(convs[(i // 2) % len(convs)], text_for(i))] = t0

        hub_behind = await send_on_schedule(send_one, range(0, total, 2), go, rate, samples)
        hub_cpu = (cpu_seconds() - cpu_start) / (time.perf_counter() - go)
        with trio.move_on_after(30):
            while len(received) < total // 2:  # noqa: ASYNC110 (the peers' messages)
                await trio.sleep(0.05)
        gc.collect()
        rss_end = rss_bytes()
        samples.append((seconds, rss_end))
        recent = sum(doc.recent_updates.size for doc in hub.replica._documents._conversations.values())
        await process.stdin.send_all(b"stop\n")
        peers_sent: dict[str, float] = {}
        peers_received: dict[str, float] = {}
        peers_behind, peers_cpu = 0, math.nan
        dropped = hub.tap.dropped
        while (line := await child.next()) is not None:
            kind, *fields = line.split()
            if kind == "sent":
                peers_sent[fields[0]] = float(fields[1])
            elif kind == "got":
                peers_received[fields[0]] = float(fields[1])
            elif kind == "behind":
                peers_behind = int(fields[0])
            elif kind == "cpu":
                peers_cpu = float(fields[0])
            elif kind == "dropped":
                dropped += int(fields[0])
        peak = peak_rss_bytes()
        documents = await fresh_documents_rss(hub, convs)
    pairs = [(sent, peers_received), (peers_sent, received)]
    latencies = [got[m] - t for out, got in pairs for m, t in out.items() if m in got]
    return Crowd(
        peers,
        per_peer,
        rate,
        seconds,
        setup,
        rss_start,
        rss_end,
        samples,
        peak,
        documents,
        recent,
        len(sent) + len(peers_sent),
        len(latencies),
        latencies,
        (hub_behind, peers_behind),
        (hub_cpu, peers_cpu),
        dropped,
    )


async def fresh_documents_rss(hub: Node, convs: list[str]) -> int:
    """What the hub's conversations take as plain pycrdt documents, loaded anew: the growth
    a node cannot avoid while it keeps them in memory (what it grew beyond is its own)."""
    updates = [await hub.replica.diff(conv, None) for conv in convs]
    gc.collect()
    before = rss_bytes()
    docs: list[Doc[Any]] = []
    for update in updates:
        doc: Doc[Any] = Doc()
        doc.apply_update(update)
        docs.append(doc)
    return rss_bytes() - before


async def send_on_schedule(
    send_one: Callable[[int], Awaitable[None]],
    numbers: range,
    go: float,
    rate: float,
    samples: list[tuple[float, int]] | None = None,
) -> int:
    """Start message i at ``go + i / rate`` (``perf_counter`` time), each in a task of its
    own; sample the RSS every 5 s if asked. Returns how many started over 50 ms late."""
    offset = trio.current_time() - time.perf_counter()
    behind = 0
    next_sample = 5.0
    async with trio.open_nursery() as senders:
        for i in numbers:
            deadline = go + i / rate + offset
            if trio.current_time() > deadline + 0.05:
                behind += 1
            await trio.sleep_until(deadline)
            senders.start_soon(send_one, i)
            if samples is not None and i / rate >= next_sample:
                samples.append((i / rate, rss_bytes()))
                next_sample += 5.0
    return behind


async def crowd_peers(directory: Path, port: int, peers: int, per_peer: int, rate: float, seconds: float) -> None:
    """The child of ``bench_crowd``: every peer linked to the hub at ``port``, sending the odd
    messages once told when to start; reports what it sent and received when told to stop."""
    async with open_stack() as nursery:
        nodes: list[Node] = []
        for p in range(peers):
            peer_id = crowd_peer_id(p)
            nodes.append(await nursery_enter(nursery, open_node(directory / peer_id, f"p{p}", peer_id, nursery, 16384)))
        received: dict[str, float] = {}
        on_event = arrivals_into(received)
        synced = [n.tap.expect(lambda e: is_synced(e) and e.total == per_peer) for n in nodes]  # type: ignore[union-attr]
        async with trio.open_nursery() as links:  # closed before the stores, so no write fails under a link
            for node in nodes:
                node.tap.handlers.append(on_event)
                Dialled(links, node, port)
            for waiter in synced:
                await waiter.wait(300)
            convs = [(c.metadata.id, node) for node in nodes for c in await node.replica.conversations()]
            print("ready", flush=True)
            parent = Lines(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
            go = float(await parent.next() or "nan")
            sent: dict[str, float] = {}

            async def send_one(i: int) -> None:
                conv, node = convs[(i // 2) % len(convs)]
                t0 = time.perf_counter()
                sent[await node.replica.send(conv, text_for(i))] = t0

            cpu_start = cpu_seconds()
            behind = await send_on_schedule(send_one, range(1, int(rate * seconds), 2), go, rate)
            cpu = (cpu_seconds() - cpu_start) / (time.perf_counter() - go)
            await parent.next()  # stop
            links.cancel_scope.cancel()
        lines = [f"sent {m} {t!r}" for m, t in sent.items()] + [f"got {m} {t!r}" for m, t in received.items()]
        lines += [f"behind {behind}", f"cpu {cpu!r}", f"dropped {sum(n.tap.dropped for n in nodes)}"]
        print("\n".join(lines), flush=True)


def report_crowd(c: Crowd) -> None:
    lat = c.latencies or [math.nan]
    rows = [
        ["setup: open nodes, create conversations, link, sync", f"{c.setup:.2f} s"],
        ["hub's RSS after setup (start)", f"{mib(c.rss_start)} MiB"],
        ["hub's RSS at the end (after gc)", f"{mib(c.rss_end)} MiB"],
        ["growth", f"{mib(c.rss_end - c.rss_start)} MiB ({(c.rss_end - c.rss_start) / max(c.sent, 1):,.0f} B/msg)"],
        [
            f"the hub's {c.peers * c.conversations} documents (set-up included) loaded anew into pycrdt Docs",
            f"{mib(c.documents)} MiB ({c.documents / max(c.sent, 1):,.0f} B/msg)",
        ],
        [
            f"recent updates the hub keeps for catch-ups (<= {RECENT_BYTES // 1024} KiB a conversation)",
            f"{mib(c.recent)} MiB",
        ],
        ["hub's peak RSS (VmHWM, whole run)", f"{mib(c.peak)} MiB"],
        ["RSS samples (s: MiB)", "  ".join(f"{t:.0f}:{mib(r)}" for t, r in c.rss_samples)],
        ["messages sent / delivered", f"{c.sent:,} / {c.delivered:,}"],
        ["send -> MessageReceived p50 / p99", f"{ms(percentile(lat, 0.5))} / {ms(percentile(lat, 0.99))} ms"],
        ["sends started > 50 ms late: hub / peers", f"{c.behind[0]:,} / {c.behind[1]:,}"],
        ["CPU busy while sending: hub / peers' process", f"{c.cpu[0]:.0%} / {c.cpu[1]:.0%} of a core"],
        ["events dropped (app fell behind)", f"{c.dropped:,}"],
    ]
    print_table(
        f"4. {c.peers} peers linked to one hub, {c.conversations} conversations each "
        f"({c.peers * c.conversations} total), {c.rate:g} msg/s for {c.seconds:g} s",
        ["measure", "value"],
        rows,
    )
    print("   the hub alone in a fresh process, its peers together in a child process (each node with its own")
    print("   SQLite store); half the messages are sent by the hub, half by the peers; latency both ways")


# -- main ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=100_000, help="size of the synced history (default 10^5)")
    parser.add_argument("--batch", type=int, default=1000, help="records per Store.commit when building")
    parser.add_argument("--sync-runs", type=int, default=2, help="initial-sync repetitions per contender")
    parser.add_argument(
        "--unsigned", action="store_true", help="peers without identities: unsigned conversations (no signed streams)"
    )
    parser.add_argument("--floor-runs", type=int, default=3, help="raw floor repetitions")
    parser.add_argument("--reconnects", type=int, default=5, help="reconnect rounds")
    parser.add_argument("--settle", type=float, default=0.3, help="seconds to wait for trailing frames")
    parser.add_argument("--live", type=int, default=1000, help="live messages A -> B")
    parser.add_argument("--rate", type=float, default=100.0, help="live messages per second")
    parser.add_argument("--peers", type=int, default=10, help="part 4: peers linked to the hub")
    parser.add_argument("--conversations", type=int, default=2, help="part 4: conversations per peer")
    parser.add_argument("--crowd-rate", type=float, default=200.0, help="part 4: messages per second in total")
    parser.add_argument("--seconds", type=float, default=20.0, help="part 4: duration")
    parser.add_argument("--full", action="store_true", help="part 4 at full size: 50 peers x 10, 1000 msg/s, 60 s")
    parser.add_argument("--skip-crowd", action="store_true", help="skip part 4")
    parser.add_argument("--compaction-timeout", type=float, default=30.0, help="max wait for post-sync compactions")
    parser.add_argument("--crowd-only", action="store_true", help="run part 4 only")
    parser.add_argument("--live-peer", type=Path, default=None, help=argparse.SUPPRESS)  # B's directory (part 3b)
    parser.add_argument("--crowd-peers", type=Path, default=None, help=argparse.SUPPRESS)  # part 4's child
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)  # A's or the hub's, for the children
    parser.add_argument("--dir", type=Path, default=None, help="where temporary data goes (default: system tmp)")
    args = parser.parse_args()
    if args.full:
        args.peers, args.conversations, args.crowd_rate, args.seconds = 50, 10, 1000.0, 60.0
    return args


async def crowd_only(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="gigi-bench-crowd-", dir=args.dir) as tmp:
        crowd = await bench_crowd(Path(tmp), args.peers, args.conversations, args.crowd_rate, args.seconds)
    report_crowd(crowd)


async def main(args: argparse.Namespace) -> None:
    if args.crowd_only:
        await crowd_only(args)
        return
    if args.live_peer:
        await live_peer(args.live_peer, args.port, not args.unsigned)
        return
    if args.crowd_peers:
        await crowd_peers(args.crowd_peers, args.port, args.peers, args.conversations, args.crowd_rate, args.seconds)
        return
    print_header(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gigi-bench-sync-", dir=args.dir) as tmp:
        base = Path(tmp)
        built = build_history(base, args.messages, args.batch, not args.unsigned)
        print(
            f"\nbuilt A's history: {built.messages:,} messages, snapshot {built.snapshot_bytes:,} B, "
            f"in {built.seconds:.1f} s (model + Store.commit batches + compaction)"
        )
        updates = stored_updates(built)
        floor = bench_floor(updates, args.floor_runs)

        websocket_runs = [await websocket_initial_sync(updates) for _ in range(args.sync_runs)]
        del updates
        gigi_runs: list[GigiSync] = []
        for run in range(args.sync_runs):
            # Each run: a fresh copy of A's store (cold, as on disk) and an empty B.
            run_dir = Path(tempfile.mkdtemp(prefix=f"run-{run}-", dir=base))
            copy = dataclasses.replace(built, directory=run_dir / "a", seconds=0.0)
            copy_store(built.directory, copy.directory)
            async with open_stack() as nursery:
                result, session = await gigi_initial_sync(nursery, run_dir, copy)
                gigi_runs.append(result)
                if run == args.sync_runs - 1:
                    report_initial(built, floor, gigi_runs, websocket_runs)
                    waited, stall, which = await settle_compactions(session, args.compaction_timeout)
                    print(
                        f"\n   after the initial sync: background compactions {which}; waited {waited:.2f} s for"
                        f" them, worst event-loop stall meanwhile {ms(stall)} ms (parts 2-3 start after this)"
                    )
                    reconnects = await bench_reconnects(nursery, session, args.reconnects, args.settle)
                    report_reconnects(reconnects, args.settle)
                    live = await bench_live(session, args.live, args.rate, warmup=20)
                    report_live(live, args.rate, "3a", "B in this process (one GIL and event loop with A)")
                    apart = await bench_live_apart(session, not args.unsigned, args.live, args.rate, warmup=20)
                    report_live(apart, args.rate, "3b", "B in a process of its own")
    if not args.skip_crowd:
        # A fresh process, so that its RSS is not the 10^5-message documents of parts 1-3.
        command = [sys.executable, __file__, "--crowd-only", "--peers", str(args.peers)]
        command += ["--conversations", str(args.conversations), "--crowd-rate", str(args.crowd_rate)]
        command += ["--seconds", str(args.seconds)] + (["--dir", str(args.dir)] if args.dir else [])
        sys.stdout.flush()
        await trio.run_process(command, check=False)
    print(f"\nload avg  {loadavg()} at the end; total run time {time.perf_counter() - started:.0f} s")


def copy_store(source: Path, target: Path) -> None:
    """Copy a closed replica directory (database after a WAL checkpoint)."""
    import shutil

    with sqlite3.connect(source / DATABASE_NAME) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    shutil.copytree(source, target)


if __name__ == "__main__":
    trio.run(main, parse_args())
