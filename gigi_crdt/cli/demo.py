"""The self-contained demo (``gigi-crdt demo``): three nodes on loopback, used as an application would.

alice, bob and carol each run ``open_node`` on a data directory of their own (identity key,
contacts, SQLite store). mDNS is off: bob and carol are given alice's address as a static
peer, and every link is TLS 1.3 with both ends authenticated by their keys. carol goes
offline (her node closes) while alice and bob keep talking; when her node opens again on
the same data directory, what she missed arrives as one batch, and her read receipt
reaches alice. Everything printed comes from ``node.events()`` and the nodes' own stores;
the story waits on events, never on the clock.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import trio

from .. import Message, NodeConfig, ReceiptKind, Text, open_node
from ..node import Node
from ..sync import MessageReceived, OfflineMessagesReceived, PeerOffline, PeerOnline, ReceiptUpdated, SyncProgress

LOOPBACK = NodeConfig(host="127.0.0.1", mdns=False)  # no multicast, nothing leaves the machine
TIMEOUT = 30  # seconds; the story takes well under one, so only a bug waits this long

E = TypeVar("E")


def dialling(node: Node) -> NodeConfig:
    """``LOOPBACK``, with ``node``'s address as a static peer."""
    return NodeConfig(host="127.0.0.1", mdns=False, peers=(f"127.0.0.1:{node.address[1]}",))


async def next_event(node: Node, kind: type[E], where: Callable[[E], bool] = lambda _: True) -> E:
    """The next event of ``kind`` that ``where`` accepts; the events before it are skipped."""
    with trio.fail_after(TIMEOUT):
        async for event in node.events():
            if isinstance(event, kind) and where(event):
                return event
    raise RuntimeError(f"{node.nickname}'s node closed")


async def until(node: Node, done: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``done()`` holds, checking again after each of ``node``'s events."""
    with trio.fail_after(TIMEOUT):
        while not await done():
            await node.events().receive()


def text(message: Message) -> str:
    """A message's text (every message in this story is ``Text``)."""
    return message.content.text if isinstance(message.content, Text) else "(not text)"


def show(node: Node, event: MessageReceived | OfflineMessagesReceived) -> None:
    """A message as a chat window would show it; a batch from a catch-up marked as missed."""
    if isinstance(event, MessageReceived):
        print(f"  [{node.nickname}] {event.message.nickname}: {text(event.message)}")
        return
    print(f"  [{node.nickname}] {len(event.messages)} messages arrived that were sent while she was offline:")
    for message in event.messages:
        print(f"  [{node.nickname}]   {message.nickname}: {text(message)}   (missed)")


async def run_demo(directory: Path) -> None:
    """Run the demo with the nodes' data directories under ``directory``."""
    print(f"three nodes, each with its own key and SQLite store under {directory}")
    async with open_node(directory / "alice", nickname="alice", config=LOOPBACK) as alice:
        print(f"  alice  fingerprint {alice.fingerprint}  listens on {alice.address[0]}:{alice.address[1]}")
        async with open_node(directory / "bob", nickname="bob", config=dialling(alice)) as bob:
            print(f"  bob    fingerprint {bob.fingerprint}  dials alice")
            group, carol_id = await first_meeting(alice, bob, directory / "carol")
            print("\ncarol goes offline (her node closes); alice and bob keep talking")
            await while_carol_is_away(alice, bob, group, carol_id)
            await carol_comes_back(alice, directory / "carol", group)


async def first_meeting(alice: Node, bob: Node, carol_dir: Path) -> tuple[str, str]:
    """carol's first run: the three meet and compare keys, alice starts a group and writes.

    Returns the group's id and carol's peer id.
    """
    async with open_node(carol_dir, nickname="carol", config=dialling(alice)) as carol:
        print(f"  carol  fingerprint {carol.fingerprint}  dials alice")
        print("\nbob and carol come online: TLS 1.3, both ends authenticated by their keys")
        linked: set[str] = set()
        while linked != {bob.peer_id, carol.peer_id}:  # in either order: they dial at once
            linked.add((await next_event(alice, PeerOnline)).peer_id)
        for other in (bob, carol):
            await next_event(other, PeerOnline)
            print(f"  [alice] {other.nickname} is online")
            compare_safety_numbers(alice, other)

        print('\nalice starts a group, "hiking", and writes to it')
        group = await alice.create_group("hiking", {bob.peer_id: "bob", carol.peer_id: "carol"})
        for member in (bob, carol):  # each fetches the new group from alice first
            await next_event(member, SyncProgress, lambda e: e.done == e.total)
        await alice.send(group, Text("Saturday at 9?"))
        for member in (bob, carol):
            show(member, await next_event(member, MessageReceived))
        return group, carol.peer_id


def compare_safety_numbers(alice: Node, other: Node) -> None:
    """What two users read to each other to rule out anyone in between (here: both screens)."""
    ours, theirs = alice.safety_number(other.peer_id), other.safety_number(alice.peer_id)
    verdict = "the same on both screens" if ours == theirs else f"DIFFERENT: {other.nickname} shows {theirs}"
    print(f"  alice and {other.nickname} compare safety numbers: {verdict}\n      {ours}")


async def while_carol_is_away(alice: Node, bob: Node, group: str, carol_id: str) -> None:
    """alice and bob write to the group while carol's node is closed."""
    await next_event(alice, PeerOffline, lambda e: e.peer_id == carol_id)
    print("  [alice] carol went offline")
    for words in ("Bring water", "And a map"):
        await alice.send(group, Text(words))
        show(bob, await next_event(bob, MessageReceived))
    await bob.send(group, Text("See you at the north gate"))
    show(alice, await next_event(alice, MessageReceived))


async def carol_comes_back(alice: Node, carol_dir: Path, group: str) -> None:
    """carol's second run, on the same data directory: what she missed, then her receipts."""
    print("\ncarol comes back (her node opens again on the same data directory)")
    async with open_node(carol_dir, nickname="carol", config=dialling(alice)) as carol:
        await next_event(alice, PeerOnline, lambda e: e.peer_id == carol.peer_id)
        print("  [alice] carol is online")
        show(carol, await next_event(carol, OfflineMessagesReceived))
        print("  carol reads them")
        await carol.mark_read(group)
        read = await next_event(
            alice,
            ReceiptUpdated,
            lambda e: (
                e.receipt.member == carol.peer_id
                and e.receipt.kind is ReceiptKind.READ
                and e.receipt.author == alice.peer_id
            ),
        )
        [last] = [m for m in await alice.history(group) if m.author == alice.peer_id and m.seq == read.receipt.seq]
        print(f"  [alice] carol has read alice's messages up to: {text(last)}")
        await until(alice, lambda: all_receipts_in(alice, group))
        await show_history(alice, group)


async def receipt_names(node: Node, group: str, message: Message) -> dict[ReceiptKind, list[str]]:
    """Who has delivered and who has read ``message``, by nickname."""
    members = await node.members(group)
    receipts = await node.receipts(group, message)
    return {kind: sorted(members[peer].nickname for peer in peers) for kind, peers in receipts.items()}


async def all_receipts_in(alice: Node, group: str) -> bool:
    """Every message of alice's delivered to bob and carol, and read by carol."""
    for message in await alice.history(group):
        if message.author == alice.peer_id:
            names = await receipt_names(alice, group, message)
            if names[ReceiptKind.DELIVERED] != ["bob", "carol"] or names[ReceiptKind.READ] != ["carol"]:
                return False
    return True


async def show_history(alice: Node, group: str) -> None:
    """alice's view of the group, with who has received and read each of her messages."""
    print("\n  -- alice's history, with the receipts of her messages")
    for message in await alice.history(group):
        marks = ""
        if message.author == alice.peer_id:
            names = await receipt_names(alice, group, message)
            delivered, read = (", ".join(names[kind]) for kind in (ReceiptKind.DELIVERED, ReceiptKind.READ))
            marks = f"delivered to {delivered}; read by {read}"
        print(f"     {message.nickname:>6}: {text(message):<26}{marks}".rstrip())


def main() -> None:
    """Entry point of ``gigi-crdt demo``."""
    with tempfile.TemporaryDirectory(prefix="gigi-demo-") as directory:
        trio.run(run_demo, Path(directory))
