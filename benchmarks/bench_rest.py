"""Peers meeting again over many quiet conversations: what loads, how long, how much memory.

On connect (and every anti-entropy round) two peers exchange the state vector of every
conversation they share, and answer each other's. A node answers from state vectors
stored with its commits, so a conversation nobody wrote to while they were apart stays on
disk (``Replica.state_vector``, ``Replica.diff``); and a document unused for a while
leaves memory (``Replica.rest_idle``). A store written before state vectors were kept
(schema version 3) is the baseline, measured in the same run: its nodes load every
shared document to answer.

Set-up: alice's store holds N signed DIRECT conversations with bob, M messages each,
built with the model and ``Store.commit`` (as ``bench_sync.py`` does); bob fetches them
all in a first meeting over loopback TCP, and a second one passes the delivered receipts
back. Each round starts from a copy of the two stores as they are then (nothing in
memory): alice writes one new message in one conversation, and bob dials alice, timed
from the dial until both have seen ``SyncProgress`` done == total and bob holds the new
message. Rounds alternate between the copies as they are and the copies with their
state vectors wiped (as version 3 left them). Both nodes run in this process; RSS is
this process's.

Run:    python benchmarks/bench_rest.py [--conversations N] [--messages M] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trio
from _common import ALICE_KEY, BOB_KEY, TwoPeers, compact, print_table, text_for

from gigi_crdt import Replica, open_replica
from gigi_crdt.store import Store
from gigi_crdt.store.database import DATABASE_NAME
from gigi_crdt.sync import (
    LinkSettings,
    MessageReceived,
    OfflineMessagesReceived,
    SyncEngine,
    SyncProgress,
    connect_tcp,
    serve_tcp,
)

HOST = "127.0.0.1"
SETTINGS = LinkSettings(handshake_timeout=30.0, ping_interval=60.0, idle_timeout=600.0, anti_entropy_interval=600.0)
BATCH = 50  # messages per commit while building


def build(directory: Path, conversations: int, messages: int) -> list[str]:
    """Alice's store with ``conversations`` signed DIRECT conversations with bob."""
    store = Store.open(directory)
    ids = []
    try:
        for n in range(conversations):
            peers = TwoPeers(signed=True)
            conv = peers.alice.id
            if n == 0:
                store.set_setting("peer_id", peers.alice_id)
            store.commit([peers.creation_record()])
            for first in range(0, messages, BATCH):
                store.commit([peers.message_record(i) for i in range(first, min(first + BATCH, messages))])
            compact(store, conv)
            ids.append(conv)
    finally:
        store.close()
    return ids


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wipe_state_vectors(directory: Path) -> None:
    """Make a store look as version 3 wrote it: no state vectors beside the log."""
    db = sqlite3.connect(directory / DATABASE_NAME)
    try:
        db.execute("UPDATE conversations SET state_vector = NULL")
        db.commit()
    finally:
        db.close()


@contextlib.asynccontextmanager
async def open_pair(root: Path) -> AsyncIterator[tuple[Replica, SyncEngine, Replica, SyncEngine]]:
    nodes = []
    async with contextlib.AsyncExitStack() as stack:
        for name, key in (("alice", ALICE_KEY), ("bob", BOB_KEY)):
            replica = await stack.enter_async_context(open_replica(root / name, nickname=name, signer=key))
            engine = SyncEngine(replica, settings=SETTINGS, event_buffer=65536)
            replica.add_listener(engine)
            nodes.append((replica, engine))
        (alice, alice_engine), (bob, bob_engine) = nodes
        yield alice, alice_engine, bob, bob_engine


async def synced(engine: SyncEngine, message_id: str | None = None) -> None:
    """Until ``SyncProgress`` done == total (and, if given, ``message_id`` arrived)."""
    progress_done, arrived = False, message_id is None
    async for event in engine.events():
        if isinstance(event, SyncProgress) and event.done == event.total:
            progress_done = True
        if isinstance(event, MessageReceived) and event.message.id == message_id:
            arrived = True
        if isinstance(event, OfflineMessagesReceived) and any(m.id == message_id for m in event.messages):
            arrived = True
        if progress_done and arrived:
            return


async def meet(alice_engine: SyncEngine, bob_engine: SyncEngine, message_id: str | None) -> float:
    """Bob dials alice; seconds until both are synced and bob holds ``message_id``."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_tcp, alice_engine)
        port = listeners[0].socket.getsockname()[1]
        start = time.perf_counter()
        nursery.start_soon(bob_engine.run_link, await connect_tcp(HOST, port))
        async with trio.open_nursery() as waiting:
            waiting.start_soon(synced, alice_engine)
            waiting.start_soon(synced, bob_engine, message_id)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return elapsed


@dataclass
class Round:
    stored: bool  # state vectors as stored (else wiped, as version 3 left them)
    seconds: float
    loaded_alice: int
    loaded_bob: int
    rss_growth: int


async def one_round(pristine: Path, root: Path, conversations: list[str], n: int, stored: bool) -> Round:
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(pristine, root)
    if not stored:
        for name in ("alice", "bob"):
            wipe_state_vectors(root / name)
    async with open_pair(root) as (alice, alice_engine, bob, bob_engine):
        message_id = await alice.send(conversations[0], text_for(n))
        before = rss_bytes()
        seconds = await meet(alice_engine, bob_engine, message_id)
        growth = rss_bytes() - before
        loaded = [sum(replica.is_loaded(c) for c in conversations) for replica in (alice, bob)]
    return Round(stored, seconds, loaded[0], loaded[1], growth)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-rest-", dir=args.dir) as tmp:
        pristine, root = Path(tmp) / "pristine", Path(tmp) / "round"
        start = time.perf_counter()
        conversations = build(pristine / "alice", args.conversations, args.messages)
        built = time.perf_counter() - start
        fetched = []
        for _ in range(2):  # bob fetches everything; then his delivered receipts go back
            async with open_pair(pristine) as (_, alice_engine, _, bob_engine):
                fetched.append(await meet(alice_engine, bob_engine, None))
        print(f"built alice's store in {built:.1f} s; bob fetched every conversation in {fetched[0]:.2f} s")
        rounds = []
        for n in range(args.rounds):
            for stored in (True, False):
                rounds.append(await one_round(pristine, root, conversations, n, stored))
    report(args, rounds)


def report(args: argparse.Namespace, rounds: list[Round]) -> None:
    def median(stored: bool, field: str) -> float:
        return statistics.median(getattr(r, field) for r in rounds if r.stored == stored)

    rows = []
    for label, field, unit in (
        ("dial -> both synced, bob holds the new message", "seconds", "s"),
        ("documents loaded on alice", "loaded_alice", ""),
        ("documents loaded on bob", "loaded_bob", ""),
        ("RSS growth of the process while meeting", "rss_growth", "MiB"),
    ):
        old, new = median(False, field), median(True, field)
        scale = 1 / 2**20 if unit == "MiB" else 1
        fmt = "{:.3f}" if unit == "s" else "{:.1f}" if unit == "MiB" else "{:.0f}"
        meaningful = 0.5 * 2**20 if unit == "MiB" else 1e-9  # RSS moves by pages, and by the allocator's whims
        ratio = f"{old / new:.1f}x" if new >= meaningful else "-"
        rows.append([f"{label}{f' ({unit})' if unit else ''}", fmt.format(old * scale), fmt.format(new * scale), ratio])
    total = args.conversations * args.messages
    print_table(
        f"Meeting again: {args.conversations} conversations x {args.messages} messages ({total:,}), "
        f"one new message (median of {args.rounds} rounds each, alternating)",
        ["measure", "state vectors wiped (v3)", "stored", "wiped / stored"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=200, help="conversations shared (default 200)")
    parser.add_argument("--messages", type=int, default=200, help="messages in each (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind (default 3)")
    parser.add_argument("--dir", default=None, help="where the temporary stores go (default: the system's)")
    args = parser.parse_args()
    if min(args.conversations, args.messages, args.rounds) < 1:
        parser.error("--conversations, --messages and --rounds must be at least 1")
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}  {platform.node()}  {platform.processor() or platform.machine()}")
    trio.run(run, args)


if __name__ == "__main__":
    main()
