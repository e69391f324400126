"""A simulated network: N real replicas and sync engines, linked through ``FaultyStream``.

Every node is a real ``Replica`` on SQLite in its own directory with a real
``SyncEngine``. Every pair of nodes that may talk (both up, both online, no partition
between them) is linked, over in-memory streams or real loopback TCP; a pair that may no
longer talk has its link cut (both ends see the stream end, as after a reset). A link
that ends by itself (a refused duplicate, a protocol error) is redialled after a short
pause, as ``keep_connected`` would.

Nodes crash (every task of the node is cancelled and its store closed) and restart with
their store, or as a fresh device: a new peer id on an empty store, because a device that
lost its disk must not write to the stream positions its previous life already used.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..identity import Identity
from ..replica import Replica, StoredUpdate, open_replica
from ..sync import LinkSettings, SyncEngine
from ._appview import AppView
from ._faults import FaultRates, FaultSource, FaultyStream, WireStats

REDIAL_SECONDS = 0.02

FaultFactory = Callable[[int, int, int], FaultSource]
"""Makes the fault source of one direction: (from node, to node, session number)."""


class Transport(enum.StrEnum):
    """How linked nodes are connected."""

    MEMORY = "memory"
    TCP = "tcp"


@dataclass(slots=True)
class SimNode:
    """One simulated device; ``replica``/``engine``/``view`` are ``None`` while it is down."""

    index: int
    data_dir: Path
    identity: Identity
    generation: int = 0
    online: bool = True
    replica: Replica | None = None
    engine: SyncEngine | None = None
    view: AppView | None = None  # what its application shows
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def peer_id(self) -> str:
        """Its peer id, from its identity (which signs its member records)."""
        return self.identity.peer_id

    @property
    def name(self) -> str:
        """The nickname: ``n00``, ``n01``, ..."""
        return f"n{self.index:02d}"

    @property
    def up(self) -> bool:
        """True while the replica is open."""
        return self.replica is not None


def identity_for(index: int, generation: int) -> Identity:
    """Deterministic identities, so a replayed seed names the same peers."""
    seed = hashlib.sha256(f"gigi-crdt simulated node {index} generation {generation}".encode()).digest()
    return Identity(Ed25519PrivateKey.from_private_bytes(seed))


@dataclass(slots=True)
class _Link:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class StoreWatch:
    """An ``UpdateListener`` that wakes waiters whenever any replica stores an update."""

    def __init__(self) -> None:
        self._stored = trio.Event()

    def offer(self, stored: StoredUpdate) -> None:
        self._stored.set()

    def arm(self) -> trio.Event:
        """An event set by the next stored update (arm before checking, so none slips by)."""
        self._stored = trio.Event()
        return self._stored


class Network:
    """The nodes and links of one simulation. Get one from ``open_network``."""

    def __init__(
        self,
        nursery: trio.Nursery,
        root: Path,
        size: int,
        *,
        settings: LinkSettings,
        rates: FaultRates,
        faults: FaultFactory,
        transport: Transport,
        rest_after: float | None = None,
    ) -> None:
        self._nursery = nursery
        self.rest_after = rest_after
        self.root = root
        self.settings = settings
        self.rates = rates
        self._faults = faults
        self.transport = transport
        self.nodes = [SimNode(i, root / f"n{i:02d}-g0", identity_for(i, 0)) for i in range(size)]
        self.partitions: dict[int, frozenset[int]] = {}  # id -> one side (node indexes)
        self.stats = WireStats()
        self.watch = StoreWatch()
        self.healed = False
        self._links: dict[tuple[int, int], _Link] = {}
        self._streams: set[FaultyStream] = set()

    # -- nodes -----------------------------------------------------------------------

    async def start(self, index: int) -> None:
        """Open node ``index``'s replica and engine, then link it to whoever it may reach."""
        node = self.nodes[index]
        if node.up:
            return
        node.stopped = trio.Event()
        await self._nursery.start(self._host, node)
        self.reconcile()

    async def _host(self, node: SimNode, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            node.scope = scope
            try:
                async with (
                    open_replica(
                        node.data_dir, nickname=node.name, signer=node.identity, rest_after=self.rest_after
                    ) as replica,
                    trio.open_nursery() as nursery,
                ):
                    engine = SyncEngine(replica, settings=self.settings)
                    replica.add_listener(engine)
                    replica.add_listener(self.watch)
                    view = AppView(replica, engine)
                    await nursery.start(view.follow)
                    node.replica, node.engine, node.view = replica, engine, view
                    task_status.started()
            finally:
                node.replica = node.engine = node.view = node.scope = None
                node.stopped.set()

    async def crash(self, index: int, *, lose_store: bool = False) -> None:
        """Stop node ``index`` abruptly; with ``lose_store`` it comes back as a fresh device."""
        node = self.nodes[index]
        if not node.up:
            return
        assert node.scope is not None
        await self._cut(index)
        node.scope.cancel()
        await node.stopped.wait()
        if lose_store:
            shutil.rmtree(node.data_dir, ignore_errors=True)
            node.generation += 1
            node.data_dir = self.root / f"n{index:02d}-g{node.generation}"
            node.identity = identity_for(index, node.generation)

    def set_online(self, index: int, online: bool) -> None:
        """Take node ``index`` off the network (its replica stays open) or bring it back."""
        self.nodes[index].online = online
        self.reconcile()

    # -- topology --------------------------------------------------------------------

    def partition(self, ident: int, side: frozenset[int]) -> None:
        """Cut every link between ``side`` and the other nodes until ``heal_partition``."""
        self.partitions[ident] = side
        self.reconcile()

    def heal_partition(self, ident: int) -> None:
        """End one partition."""
        self.partitions.pop(ident, None)
        self.reconcile()

    def heal(self) -> None:
        """End every partition, bring every node online and stop all faults (latency stays)."""
        self.healed = True
        self.partitions.clear()
        for node in self.nodes:
            node.online = True
        for stream in self._streams:
            stream.enabled = False
        self.reconcile()

    def may_link(self, a: int, b: int) -> bool:
        """True if nodes ``a`` and ``b`` can reach each other now."""
        first, second = self.nodes[a], self.nodes[b]
        if not (first.up and second.up and first.online and second.online):
            return False
        return not any((a in side) != (b in side) for side in self.partitions.values())

    def reconcile(self) -> None:
        """Link every pair that may talk and cut every link that may no longer."""
        for a in range(len(self.nodes)):
            for b in range(a + 1, len(self.nodes)):
                linked = (a, b) in self._links
                if self.may_link(a, b) and not linked:
                    link = self._links[(a, b)] = _Link()
                    self._nursery.start_soon(self._keep_linked, a, b, link)
                elif linked and not self.may_link(a, b):
                    self._links.pop((a, b)).scope.cancel()

    async def _cut(self, index: int) -> None:
        """Cut every link of node ``index`` and wait until they have ended."""
        links = [self._links.pop(pair) for pair in list(self._links) if index in pair]
        for link in links:
            link.scope.cancel()
        for link in links:
            await link.done.wait()

    async def _keep_linked(self, a: int, b: int, link: _Link) -> None:
        try:
            with link.scope:
                session = 0
                while True:
                    session += 1
                    try:
                        await self._session(a, b, session)
                    except OSError:
                        pass  # could not dial over TCP: try again, as keep_connected would
                    await trio.sleep(REDIAL_SECONDS)  # ended by itself (e.g. refused as a duplicate)
        finally:
            link.done.set()

    async def _session(self, a: int, b: int, session: int) -> None:
        engine_a, engine_b = self.nodes[a].engine, self.nodes[b].engine
        assert engine_a is not None
        assert engine_b is not None
        left, right = await self._connect()
        streams = (
            FaultyStream(left, self.rates, self._faults(a, b, session), self.stats),
            FaultyStream(right, self.rates, self._faults(b, a, session), self.stats),
        )
        for stream in streams:
            stream.enabled = not self.healed
            self._streams.add(stream)
        try:
            async with trio.open_nursery() as pumps:
                for stream in streams:
                    pumps.start_soon(stream.pump)
                async with trio.open_nursery() as engines:
                    engines.start_soon(engine_a.run_link, streams[0])
                    engines.start_soon(engine_b.run_link, streams[1])
                pumps.cancel_scope.cancel()
        finally:
            self._streams.difference_update(streams)
            with trio.CancelScope(shield=True):
                for stream in streams:
                    await stream.aclose()

    async def _connect(self) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        if self.transport is Transport.MEMORY:
            return trio.testing.memory_stream_pair()
        # One ephemeral loopback listener per session: both ends are real kernel sockets
        # (segmentation, coalescing, partial reads), and we know which link each one is.
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        try:
            port = listeners[0].socket.getsockname()[1]
            client = await trio.open_tcp_stream("127.0.0.1", port)
            server = await listeners[0].accept()
        finally:
            for listener in listeners:
                await listener.aclose()
        return client, server

    # -- waiting ---------------------------------------------------------------------

    @property
    def link_count(self) -> int:
        """Links currently wanted (each is up or being redialled)."""
        return len(self._links)


@contextlib.asynccontextmanager
async def open_network(
    root: Path,
    size: int,
    *,
    settings: LinkSettings,
    rates: FaultRates,
    faults: FaultFactory,
    transport: Transport = Transport.MEMORY,
    rest_after: float | None = None,
) -> AsyncIterator[Network]:
    """Start ``size`` nodes under ``root``, fully linked; everything stops when the block ends.
    ``rest_after``: see ``open_replica`` (``None``: documents stay in memory)."""
    if size < 2:
        raise ValueError("a network needs at least two nodes")
    async with trio.open_nursery() as nursery:
        network = Network(
            nursery,
            root,
            size,
            settings=settings,
            rates=rates,
            faults=faults,
            transport=transport,
            rest_after=rest_after,
        )
        for index in range(size):
            await network.start(index)
        yield network
        nursery.cancel_scope.cancel()
