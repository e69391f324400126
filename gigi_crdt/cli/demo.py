"""The self-contained demo: three peers on their own SQLite stores, one of them offline.

Until the network sync engine lands, peers meet in-process: each meeting is the same
state-vector exchange the engine performs (step 1: my state vector, step 2: only what
you lack), and the demo prints how many bytes each step carried.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

from .. import ConversationKind, ReceiptKind, Replica, Text, UnknownConversation, open_replica


async def meet(a: Replica, b: Replica, conversation: str) -> int:
    """Bring two replicas up to date with each other; returns the bytes exchanged."""
    carried = 0
    for source, target in ((a, b), (b, a)):
        try:
            state = await target.state_vector(conversation)
        except UnknownConversation:  # the target has never seen it
            state = None
        update = await source.diff(conversation, state)
        carried += len(update) + len(state or b"")
        changes = await target.receive(conversation, update)
        if changes.entries:
            print(f"  {target.nickname} received {len(changes.entries)} new entries from {source.nickname}")
    return carried


async def show(replica: Replica, conversation: str) -> None:
    """Print a replica's view of the conversation, with who has read our own messages."""
    unread = await replica.unread_count(conversation)
    members = await replica.members(conversation)
    print(f"  -- {replica.nickname}'s history ({unread} unread)")
    for message in await replica.history(conversation):
        text = message.content.text if isinstance(message.content, Text) else "(deleted)"
        mark = ""
        if message.author == replica.peer_id:
            readers = (await replica.receipts(conversation, message))[ReceiptKind.READ]
            mark = f"   [read by {', '.join(members[p].nickname for p in readers)}]" if readers else ""
        print(f"     {message.nickname:>6}: {text}{mark}")


async def run_demo(directory: Path) -> None:
    """Run the demo scenario with stores under ``directory``."""
    async with (
        open_replica(directory / "alice", nickname="alice") as alice,
        open_replica(directory / "bob", nickname="bob") as bob,
        open_replica(directory / "carol", nickname="carol") as carol,
    ):
        group = await alice.create_conversation(
            ConversationKind.GROUP, title="hiking", others={bob.peer_id: "bob", carol.peer_id: "carol"}
        )
        print(f"alice created group 'hiking' ({group}) on {directory / 'alice'}")
        await alice.send(group, Text("Saturday at 9?"))
        for peer in (bob, carol):
            await meet(alice, peer, group)
        await bob.send(group, Text("Works for me"))
        await meet(bob, alice, group)
        await meet(bob, carol, group)

        print("\ncarol goes offline; alice and bob keep talking")
        for text in ("Bring water", "And a map", "Meeting at the north gate"):
            await alice.send(group, Text(text))
        await meet(alice, bob, group)
        await bob.send(group, Text("See you there"))
        await meet(bob, alice, group)

        print("\ncarol comes back and meets bob: only what she lacks crosses the wire")
        carried = await meet(bob, carol, group)
        print(f"  {carried} bytes exchanged")
        await carol.mark_read(group)
        await meet(carol, alice, group)
        await show(carol, group)
        await show(alice, group)


def main() -> None:
    """Entry point of ``gigi-crdt demo``."""
    with tempfile.TemporaryDirectory(prefix="gigi-demo-") as directory:
        trio.run(run_demo, Path(directory))
