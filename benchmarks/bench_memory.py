"""A node's resident memory through compactions: malloc's arenas trimmed after each one,
against the same replicas without the trim (as before it), each in a fresh process.

Compaction rebuilds a conversation's whole document in a worker thread to collect its
garbage, then drops it. glibc keeps what a thread freed in that thread's arena, which the
event loop's thread does not reuse; ``_memory.release_free_memory`` hands it back.

Set-up: alice and bob, two replicas in one process, write one signed DIRECT conversation:
alice sends, bob receives each update and his delivered receipts go back (what a link
would carry, without the network). Their logs compact as they grow, as a node's do. RSS
is sampled (after a garbage collection) every ``--every`` messages; "documents" is what
bob's document takes when loaded anew into a plain pycrdt Doc, for both replicas.

Run:    python benchmarks/bench_memory.py [--messages N] [--every K]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import trio
from _common import ALICE_KEY, BOB_KEY, print_table
from pycrdt import Doc

import gigi_crdt.store.worker as worker_module
from gigi_crdt import ConversationKind, Replica, Text, open_replica
from gigi_crdt.replica import StoredUpdate

MIB = 2**20


def rss() -> int:
    """This process's resident memory, after a garbage collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class Outbox:
    """Updates a replica committed itself (``UpdateListener``), to hand to the other."""

    def __init__(self) -> None:
        self.updates: list[bytes] = []

    def offer(self, stored: StoredUpdate) -> None:
        if stored.origin is None:
            self.updates.append(stored.update)


async def exchange(a: Replica, b: Replica, outboxes: tuple[Outbox, Outbox], conversation: str) -> None:
    for source, target, sender in ((outboxes[0], b, a), (outboxes[1], a, b)):
        updates, source.updates = source.updates, []
        for update in updates:
            await target.receive(conversation, update, sender.peer_id)


async def measure(messages: int, every: int) -> dict[str, object]:
    compactions = 0
    compact = worker_module.StoreWorker.compact

    async def counted(self: worker_module.StoreWorker, conversation: str, **kwargs: bool | None) -> object:
        nonlocal compactions
        compactions += 1
        return await compact(self, conversation, **kwargs)

    worker_module.StoreWorker.compact = counted  # type: ignore[assignment,method-assign]
    samples: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as directory:
        async with (
            open_replica(Path(directory, "alice"), nickname="alice", signer=ALICE_KEY) as alice,
            open_replica(Path(directory, "bob"), nickname="bob", signer=BOB_KEY) as bob,
        ):
            outboxes = (Outbox(), Outbox())
            alice.add_listener(outboxes[0])
            bob.add_listener(outboxes[1])
            conversation = await alice.create_conversation(
                ConversationKind.DIRECT, title="", others={BOB_KEY.peer_id: "bob"}
            )
            await bob.receive(conversation, await alice.diff(conversation, None), alice.peer_id)
            start = rss()
            for i in range(1, messages + 1):
                await alice.send(conversation, Text(f"message {i} of the memory benchmark"))
                await exchange(alice, bob, outboxes, conversation)
                if i % 50 == 0:  # let the queued delivered receipts go out
                    await trio.sleep(0.06)
                    await exchange(alice, bob, outboxes, conversation)
                if i % every == 0:
                    samples.append((i, (rss() - start) / MIB))
            whole = await bob.diff(conversation, None)
    before = rss()
    fresh: Doc[object] = Doc()
    fresh.apply_update(whole)
    documents = 2 * (rss() - before) / MIB
    return {"samples": samples, "documents": documents, "compactions": compactions}


def child(mode: str, messages: int, every: int) -> None:
    if mode == "untrimmed":
        worker_module.release_free_memory = lambda: None  # as before the trim
    print(json.dumps(trio.run(measure, messages, every)))


def run_child(mode: str, messages: int, every: int) -> dict[str, object]:
    command = [sys.executable, __file__, "--child", mode, "--messages", str(messages), "--every", str(every)]
    result: dict[str, object] = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=8000, help="messages alice sends (default 8,000)")
    parser.add_argument("--every", type=int, default=1000, help="messages between two RSS samples")
    parser.add_argument("--child", choices=["trimmed", "untrimmed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.messages, args.every)
        return
    print(f"date      {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    print(f"python    {platform.python_version()} ({platform.python_implementation()})")
    print(f"machine   {platform.platform()}")
    trimmed = run_child("trimmed", args.messages, args.every)
    untrimmed = run_child("untrimmed", args.messages, args.every)
    rows = [
        [f"{n:,}", f"{with_trim:.1f}", f"{without:.1f}", f"{without / with_trim:.2f}x" if with_trim > 0 else "-"]
        for (n, with_trim), (_, without) in zip(trimmed["samples"], untrimmed["samples"], strict=True)  # type: ignore[call-overload]
    ]
    print_table(
        "RSS growth of alice and bob (one process, signed DIRECT conversation, MiB since the first message)",
        ["messages", "trimmed", "untrimmed", "untrimmed/trimmed"],
        rows,
    )
    print(
        f"   both documents loaded anew into plain pycrdt Docs: {trimmed['documents']:.1f} MiB;"
        f" compactions: {trimmed['compactions']} (trimmed run), {untrimmed['compactions']} (untrimmed run)"
    )


if __name__ == "__main__":
    main()
