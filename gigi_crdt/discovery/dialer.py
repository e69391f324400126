"""The dialer: one ``keep_connected`` task per peer that discovery reports, whatever the source.

Deduplication: a peer is one target, known by its peer id (mDNS) or by its address (static
peers, whose id is unknown until the handshake). An mDNS peer at the address of a static one
joins that target instead of dialling again. A static peer named by host name and found by
mDNS at its IP address cannot be matched here; the engine then refuses the second link
("already linked to this peer") and that task keeps backing off, which is harmless.

``PeerLost`` starts a grace period (the peer may be restarting, or an mDNS packet was lost);
a ``PeerFound`` in that time cancels it, otherwise the target's task is cancelled, link
included. Static peers are never lost.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ..sync.tcp import MAX_BACKOFF, MIN_BACKOFF, LinkRunner, keep_connected
from .events import DiscoveryEvent, PeerFound, PeerLost

log = logging.getLogger(__name__)

LOST_GRACE = 30.0

Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]


@dataclass(slots=True, eq=False)
class _Target:
    peer_id: str | None
    host: str
    port: int
    static: bool
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class Dialer:
    """Keeps the engine linked to every peer discovery reports.

    Usage::

        dialer = Dialer(engine, connect_tcp)
        await nursery.start(dialer.run)
        nursery.start_soon(dialer.follow, discovery.events())
        for event in static_peers(config.peers):
            dialer.feed(event)
    """

    def __init__(
        self,
        engine: LinkRunner,
        connect: Connect,
        *,
        grace: float = LOST_GRACE,
        min_backoff: float = MIN_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self._connect = connect
        self.grace = grace
        self._backoff = (min_backoff, max_backoff)
        self._rng = rng
        self._nursery: trio.Nursery | None = None
        self._by_peer: dict[str, _Target] = {}
        self._by_address: dict[tuple[str, int], _Target] = {}

    @property
    def targets(self) -> list[tuple[str | None, str, int]]:
        """What is being dialled: ``(peer_id, host, port)`` per target."""
        return [(t.peer_id, t.host, t.port) for t in self._by_address.values()]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the dialling tasks until cancelled; ready for ``feed`` once started."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def follow(self, events: AsyncIterable[DiscoveryEvent]) -> None:
        """Feed every event of a discovery source, until it ends."""
        async for event in events:
            self.feed(event)

    def feed(self, event: DiscoveryEvent) -> None:
        """Apply one discovery event: start, redirect, reprieve or doom a target."""
        if self._nursery is None:
            raise RuntimeError("the dialer is not running: start Dialer.run first")
        if isinstance(event, PeerLost):
            self._lost(event)
        else:
            self._found(event, self._nursery)

    def _found(self, event: PeerFound, nursery: trio.Nursery) -> None:
        address = (event.host, event.port)
        target = self._by_peer.get(event.peer_id) if event.peer_id is not None else None
        if target is not None:
            target.scope.deadline = math.inf
            if not target.static and address != (target.host, target.port):
                self._move(target, address)
            return
        target = self._by_address.get(address)
        if target is not None:
            if event.peer_id is not None and target.peer_id is None:
                target.peer_id = event.peer_id  # the static peer at this address, now known by id
                self._by_peer[event.peer_id] = target
            return
        target = _Target(event.peer_id, event.host, event.port, static=event.peer_id is None)
        self._by_address[address] = target
        if target.peer_id is not None:
            self._by_peer[target.peer_id] = target
        nursery.start_soon(self._dial, target)

    def _move(self, target: _Target, address: tuple[str, int]) -> None:
        if address in self._by_address:
            log.info("peer %s moved to %s:%d, already dialled for another peer; ignored", target.peer_id, *address)
            return
        del self._by_address[(target.host, target.port)]
        target.host, target.port = address
        self._by_address[address] = target  # the next dial uses it

    def _lost(self, event: PeerLost) -> None:
        target = self._by_peer.get(event.peer_id)
        if target is None or target.static:
            return
        target.scope.deadline = min(target.scope.deadline, trio.current_time() + self.grace)

    async def _dial(self, target: _Target) -> None:
        async def connect() -> trio.abc.Stream:
            return await self._connect(target.host, target.port)

        try:
            with target.scope:
                await keep_connected(
                    self.engine,
                    connect,
                    expected_peer=None if target.static else target.peer_id,
                    rng=self._rng,
                    min_backoff=self._backoff[0],
                    max_backoff=self._backoff[1],
                )
        finally:
            self._forget(target)
        log.info("stopped dialling %s at %s:%d", target.peer_id, target.host, target.port)

    def _forget(self, target: _Target) -> None:
        if self._by_address.get((target.host, target.port)) is target:
            del self._by_address[(target.host, target.port)]
        if target.peer_id is not None and self._by_peer.get(target.peer_id) is target:
            del self._by_peer[target.peer_id]
