"""Shared helpers for the sync tests: nodes on real SQLite replicas, memory-stream links,
and waiting on stored updates instead of sleeping."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio
import trio.testing

from gigi_crdt import Replica, UnknownConversation, open_replica
from gigi_crdt.identity import Identity
from gigi_crdt.protocol import Connection, Event, NeedData
from gigi_crdt.replica import StoredUpdate
from gigi_crdt.sync import Activity, LinkSettings, SyncEngine
from gigi_crdt.testing import StoreWatch

# Short timeouts so a broken link shows within a test; anti-entropy at its usual pace.
FAST = LinkSettings(handshake_timeout=2.0, ping_interval=0.5, idle_timeout=2.0, anti_entropy_interval=30.0)


@dataclass
class Node:
    replica: Replica
    engine: SyncEngine

    @property
    def peer_id(self) -> str:
        return self.replica.peer_id


@contextlib.asynccontextmanager
async def nodes(
    tmp_path: Path,
    *names: str,
    settings: LinkSettings = FAST,
    signed: bool = False,
    identities: Mapping[str, Identity] | None = None,
) -> AsyncIterator[list[Node]]:
    """Replicas with engines; ``signed``: each has an identity, so its conversations are
    signed; ``identities``: these ones (by name), so that a test can open a node again."""
    async with contextlib.AsyncExitStack() as stack:
        result = []
        for name in names:
            signer = identities[name] if identities is not None else Identity.generate() if signed else None
            replica = await stack.enter_async_context(open_replica(tmp_path / name, nickname=name, signer=signer))
            engine = SyncEngine(replica, settings=settings)
            replica.add_listener(engine)
            result.append(Node(replica, engine))
        yield result


def link(
    nursery: trio.Nursery,
    a: Node,
    b: Node,
    wrap_a: Callable[[trio.abc.Stream], trio.abc.Stream] = lambda s: s,
    wrap_b: Callable[[trio.abc.Stream], trio.abc.Stream] = lambda s: s,
) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    left, right = trio.testing.memory_stream_pair()
    left_, right_ = wrap_a(left), wrap_b(right)
    nursery.start_soon(a.engine.run_link, left_)
    nursery.start_soon(b.engine.run_link, right_)
    return left_, right_


E = TypeVar("E", bound=Event)


async def read_until(stream: trio.abc.Stream, connection: Connection, kind: type[E]) -> E:
    """As a raw peer at the end of ``stream``: read frames until one of ``kind`` (within 10 s)."""
    with trio.fail_after(10):
        while not isinstance(event := connection.next_event(), kind):
            if isinstance(event, NeedData):
                connection.receive_data(await stream.receive_some())
        return event


async def wait_for(node: Node, done: Callable[[Activity], bool]) -> Activity:
    async for event in node.engine.events():
        if done(event):
            return event
    raise AssertionError("event stream ended")


def drain(node: Node) -> list[Activity]:
    events = []
    while True:
        try:
            events.append(node.engine.events().receive_nowait())
        except trio.WouldBlock:
            return events


async def until_stored(group: list[Node], check: Callable[[], Awaitable[bool]]) -> None:
    """Re-check after every stored update until ``check`` holds (20 s at most)."""
    watch = StoreWatch()
    for node in group:
        node.replica.add_listener(watch)
    try:
        with trio.fail_after(20):
            while True:
                stored = watch.arm()  # armed before checking, so no update slips by
                if await check():
                    return
                await stored.wait()
    finally:
        for node in group:
            node.replica.remove_listener(watch)


async def ids(node: Node, conversation: str, limit: int) -> list[str]:
    try:
        return [m.id for m in await node.replica.history(conversation, limit=limit)]
    except UnknownConversation:
        return []


async def converged(group: list[Node], conversation: str, count: int) -> list[list[str]]:
    """Wait until every node's index holds ``count`` messages; return their ordered ids."""
    views: list[list[str]] = []

    async def check() -> bool:
        views[:] = [await ids(n, conversation, count + 10) for n in group]
        return all(len(v) == count for v in views)

    await until_stored(group, check)
    return views


async def has_conversation(node: Node, conversation: str) -> bool:
    return any(s.metadata.id == conversation for s in await node.replica.conversations())


async def joined(group: list[Node], conversation: str) -> None:
    """Wait until every node holds the conversation."""

    async def check() -> bool:
        for node in group:
            if not await has_conversation(node, conversation):
                return False
        return True

    await until_stored(group, check)


class Recorder:
    """Keeps every update a replica stores (an ``UpdateListener``), in order."""

    def __init__(self) -> None:
        self.heard: list[tuple[bytes, str | None]] = []

    def offer(self, stored: StoredUpdate) -> None:
        self.heard.append((stored.update, stored.origin))

    @property
    def updates(self) -> list[bytes]:
        return [update for update, _ in self.heard]

    @property
    def local(self) -> list[bytes]:
        """The updates the replica wrote itself."""
        return [update for update, origin in self.heard if origin is None]
