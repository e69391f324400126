"""The self-contained demo: three peers on their own SQLite stores, synced over loopback TCP.

alice listens on 127.0.0.1; bob and carol dial her. carol goes offline for a while, then
comes back and catches up with only what she missed. Everything printed comes from the
engine's events and the replicas' indexes.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from .. import ConversationKind, ReceiptKind, Replica, Text, open_replica
from ..sync import (
    Activity,
    LinkSettings,
    MessageReceived,
    OfflineMessagesReceived,
    PeerOffline,
    PeerOnline,
    ReceiptUpdated,
    SyncEngine,
    SyncProgress,
    connect_tcp,
    keep_connected,
    serve_tcp,
)

DEMO_LINKS = LinkSettings(anti_entropy_interval=5.0)


@dataclass
class Peer:
    replica: Replica
    engine: SyncEngine

    @property
    def name(self) -> str:
        return self.replica.nickname

    async def expect(self, wanted: Callable[[Activity], bool]) -> Activity:
        """Print this peer's events until one is ``wanted``."""
        with trio.fail_after(30):
            async for event in self.engine.events():
                describe(self.name, event)
                if wanted(event):
                    return event
        raise RuntimeError("the engine stopped")


def describe(name: str, event: Activity) -> None:
    """One line per event, as a chat client would show it."""
    if isinstance(event, MessageReceived) and isinstance(event.message.content, Text):
        print(f"  [{name}] {event.message.nickname}: {event.message.content.text}")
    elif isinstance(event, OfflineMessagesReceived):
        print(f"  [{name}] {len(event.messages)} message(s) arrived that were sent while apart:")
        for message in event.messages:
            text = message.content.text if isinstance(message.content, Text) else "(not text)"
            print(f"  [{name}]   {message.nickname}: {text}   (missed)")
    elif isinstance(event, PeerOnline):
        print(f"  [{name}] {event.nickname} is online")
    elif isinstance(event, PeerOffline):
        print(f"  [{name}] a peer went offline ({event.reason})")
    elif isinstance(event, SyncProgress) and event.done == event.total:
        print(f"  [{name}] in sync ({event.total} conversation(s))")


@contextlib.asynccontextmanager
async def open_peer(directory: Path, name: str) -> AsyncIterator[Peer]:
    """A replica on its own SQLite store, with a sync engine listening to it."""
    async with open_replica(directory / name, nickname=name) as replica:
        engine = SyncEngine(replica, settings=DEMO_LINKS)
        replica.add_listener(engine)
        yield Peer(replica, engine)


async def run_demo(directory: Path) -> None:
    """Run the demo scenario with stores under ``directory``."""
    async with (
        open_peer(directory, "alice") as alice,
        open_peer(directory, "bob") as bob,
        open_peer(directory, "carol") as carol,
        trio.open_nursery() as nursery,
    ):
        listeners = await nursery.start(serve_tcp, alice.engine)
        port = listeners[0].socket.getsockname()[1]
        print(f"alice listens on 127.0.0.1:{port}; stores under {directory}")
        group = await alice.replica.create_conversation(
            ConversationKind.GROUP, title="hiking", others={bob.replica.peer_id: "bob", carol.replica.peer_id: "carol"}
        )

        def dial(peer: Peer) -> trio.CancelScope:
            scope = trio.CancelScope()

            async def stay_linked() -> None:
                with scope:
                    await keep_connected(peer.engine, lambda: connect_tcp("127.0.0.1", port))

            nursery.start_soon(stay_linked)
            return scope

        print("\nbob and carol come online")
        dial(bob)
        carol_link = dial(carol)
        for peer in (bob, carol, alice, alice):
            await peer.expect(lambda e: isinstance(e, SyncProgress) and e.done == e.total)

        await alice.replica.send(group, Text("Saturday at 9?"))
        await bob.expect(lambda e: isinstance(e, MessageReceived))
        await carol.expect(lambda e: isinstance(e, MessageReceived))

        print("\ncarol goes offline; alice and bob keep talking")
        carol_link.cancel()
        await alice.expect(lambda e: isinstance(e, PeerOffline))
        for text in ("Bring water", "And a map"):
            await alice.replica.send(group, Text(text))
            await bob.expect(lambda e: isinstance(e, MessageReceived))
        await bob.replica.send(group, Text("See you at the north gate"))
        await alice.expect(lambda e: isinstance(e, MessageReceived))

        print("\ncarol comes back: only what she missed crosses the wire")
        dial(carol)
        await carol.expect(lambda e: isinstance(e, OfflineMessagesReceived))
        await carol.replica.mark_read(group)
        await alice.expect(
            lambda e: (
                isinstance(e, ReceiptUpdated)
                and e.receipt.member == carol.replica.peer_id
                and e.receipt.kind is ReceiptKind.READ
            )
        )
        await show(alice.replica, group)
        nursery.cancel_scope.cancel()


async def show(replica: Replica, conversation: str) -> None:
    """A peer's view, with who has read each of its own messages."""
    members = await replica.members(conversation)
    print(f"\n  -- {replica.nickname}'s history")
    for message in await replica.history(conversation):
        text = message.content.text if isinstance(message.content, Text) else "(deleted)"
        mark = ""
        if message.author == replica.peer_id:
            readers = (await replica.receipts(conversation, message))[ReceiptKind.READ]
            mark = f"   [read by {', '.join(sorted(members[p].nickname for p in readers))}]"
        print(f"     {message.nickname:>6}: {text}{mark}")


def main() -> None:
    """Entry point of ``gigi-crdt demo``."""
    with tempfile.TemporaryDirectory(prefix="gigi-demo-") as directory:
        trio.run(run_demo, Path(directory))
