"""Time for B to catch up 10^4 messages through a relay (``gigi-crdt relay``, in process).

A writes N messages while B is offline and pushes them to the relay; then B joins the
room and the clock runs until B has stored every message (one step-2 message from the
relay, merged, indexed and committed). Run: ``python benchmarks/bench_relay.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio
from _common import text_for
from pycrdt import Doc, Map

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from relay_helpers import TOKEN, plain_client, wait_until  # noqa: E402

from gigi_crdt import ConversationKind, open_replica  # noqa: E402
from gigi_crdt.relay import serve_relay  # noqa: E402
from gigi_crdt.sync import Activity, OfflineMessagesReceived  # noqa: E402
from gigi_crdt.sync.relay import RelayClient  # noqa: E402
from gigi_crdt.transport.websocket import RelayAddress  # noqa: E402

COUNTS = (1_000, 10_000)


def _entries(doc: Doc) -> int:  # type: ignore[type-arg]
    streams = doc.get("streams", type=Map)
    return sum(len(streams[key]) for key in streams.keys())


async def catch_up(count: int, root: Path) -> float:
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        port = await nursery.start(partial(serve_relay, root / "relay", TOKEN, shutdown=stop))
        relay = RelayAddress.parse(f"ws://127.0.0.1:{port}?token={TOKEN}")
        async with open_replica(root / "a", nickname="alice") as alice, open_replica(root / "b", nickname="bob") as bob:
            chat = await alice.create_conversation(ConversationKind.DIRECT, others={bob.peer_id: "bob"})
            await bob.receive(chat, await alice.diff(chat, None), origin=alice.peer_id)  # they met once
            for i in range(count):
                await alice.send(chat, text_for(i))
            async with trio.open_nursery() as pushing:
                await pushing.start(RelayClient(alice, relay, lambda _: None).run)
                async with plain_client(port, chat) as observer:  # the relay has them all
                    await wait_until(observer, lambda: _entries(observer) >= count, seconds=600)
                pushing.cancel_scope.cancel()
            arrived = trio.Event()
            got = 0

            def publish(activity: Activity) -> None:
                nonlocal got
                if isinstance(activity, OfflineMessagesReceived):
                    got += len(activity.messages)
                    if got >= count:
                        arrived.set()

            start = time.perf_counter()
            async with trio.open_nursery() as joining:
                await joining.start(RelayClient(bob, relay, publish).run)
                await arrived.wait()
                elapsed = time.perf_counter() - start
                joining.cancel_scope.cancel()
        stop.set()
    return elapsed


async def main() -> None:
    print("messages  catch-up through relay (s)  per message (us)")
    for count in COUNTS:
        with tempfile.TemporaryDirectory() as directory:
            seconds = await catch_up(count, Path(directory))
        print(f"{count:>8}  {seconds:>26.3f}  {seconds / count * 1e6:>16.1f}")


if __name__ == "__main__":
    trio.run(main)
