"""Benchmarks of gigi_crdt's durable store, with pycrdt-store's SQLiteYStore as the baseline.

What it measures, in one run (each part in its own temporary directory):

1. Durable sends: ``Replica.send`` on a DIRECT conversation, (a) one sender sending
   sequentially and (b) many concurrent senders in one trio nursery (group commit).
   Latency p50/p99 and throughput, next to ``SQLiteYStore.write`` of equally sized
   updates, sequentially and concurrently. Every write returns only once it is durable.
2. Building a large history: ``Conversation.post`` on two documents (alice and bob,
   alternating, exchanging updates as peers would), persisted through ``Store.commit``
   in batches of records, then one ``Store.compact``. This is a fixture builder; its
   speed is reported but has no target.
3. On that history (10^5 messages; also 10^6 with ``--million``):
   (a) cold open: ``open_replica`` entered until the latest 50 messages are in hand,
       and separately the first send after opening, which loads the document (state
       vectors and peers that lack nothing are answered from the store without it);
   (b) warm latest-50 page and unread count (median and p99 of ``--runs`` calls);
   (c) bytes on disk per message after compaction and a WAL checkpoint, with a
       per-table breakdown, against the raw Yjs update size per message.

"Cold" means a fresh ``open_replica`` in this process; the OS page cache stays warm.

Run:  python benchmarks/bench_store.py [--million]
      (see --help for sizes; defaults take a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import trio
from _common import ALICE, BOB, TwoPeers, compact, ms, percentile, print_table, text_for, verdict, wall_ms
from pycrdt.store import SQLiteYStore

from gigi_crdt.model import Conversation, ConversationKind, HybridClock, Text
from gigi_crdt.replica import open_replica
from gigi_crdt.store import Store
from gigi_crdt.store.database import DATABASE_NAME

RAW_YJS_NOTE = "raw Yjs is ~42-62 B per message"


# -- small helpers ---------------------------------------------------------------------


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def print_header(args: argparse.Namespace) -> None:
    print(f"date      {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    print(f"python    {platform.python_version()} ({platform.python_implementation()})")
    print(f"pycrdt    {version('pycrdt')}  pycrdt-store {version('pycrdt-store')}  trio {version('trio')}")
    print(f"sqlite    {sqlite3.sqlite_version}")
    print(f"cpus      {os.cpu_count()}  ({platform.platform()})")
    print(f"data dir  {args.dir or tempfile.gettempdir()}")


@dataclass(frozen=True, slots=True)
class Run:
    """Latencies of ``count`` operations that took ``elapsed`` seconds in all."""

    count: int
    elapsed: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.count / self.elapsed

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)


async def timed(call: Callable[[], Awaitable[object]], latencies: list[float]) -> None:
    start = time.perf_counter()
    await call()
    latencies.append(time.perf_counter() - start)


async def run_sequential(calls: Iterator[Callable[[], Awaitable[object]]]) -> Run:
    latencies: list[float] = []
    start = time.perf_counter()
    for call in calls:
        await timed(call, latencies)
    return Run(len(latencies), time.perf_counter() - start, latencies)


async def run_concurrent(tasks: Sequence[Sequence[Callable[[], Awaitable[object]]]]) -> Run:
    """Each inner sequence runs in its own task, its calls one after another."""
    latencies: list[float] = []

    async def worker(calls: Sequence[Callable[[], Awaitable[object]]]) -> None:
        for call in calls:
            await timed(call, latencies)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for calls in tasks:
            nursery.start_soon(worker, calls)
    return Run(len(latencies), time.perf_counter() - start, latencies)


# -- 1. durable sends ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendResults:
    gigi_seq: Run
    gigi_conc: Run
    ystore_seq: Run
    ystore_conc: Run


async def gigi_sends(directory: Path, sequential: int, tasks: int, per_task: int) -> tuple[Run, Run]:
    async with open_replica(directory, nickname="alice", peer_id=ALICE) as replica:
        conv = await replica.create_conversation(ConversationKind.DIRECT, others={BOB: "bob"})

        def send(i: int) -> Callable[[], Awaitable[object]]:
            return lambda: replica.send(conv, text_for(i))

        seq = await run_sequential(send(i) for i in range(sequential))
        conc = await run_concurrent(
            [[send(sequential + t * per_task + i) for i in range(per_task)] for t in range(tasks)]
        )
    return seq, conc


def model_updates(count: int) -> list[bytes]:
    """``count`` message updates as ``Replica.send`` produces them (same content and sizes)."""
    conversation, _ = Conversation.create(
        kind=ConversationKind.DIRECT,
        title="",
        local_peer=ALICE,
        nickname="alice",
        clock=HybridClock(wall_ms),
        others={BOB: "bob"},
    )
    return [conversation.post(text_for(i), "alice").update for i in range(count)]


async def ystore_writes(directory: Path, updates: list[bytes], sequential: int, tasks: int) -> tuple[Run, Run]:
    store_class = type("BenchYStore", (SQLiteYStore,), {"db_path": str(directory / "ystore.db")})
    store = store_class(path="bench-room")
    async with store:
        await store.db_initialized.wait()

        def write(update: bytes) -> Callable[[], Awaitable[object]]:
            return lambda: store.write(update)

        seq = await run_sequential(write(u) for u in updates[:sequential])
        rest = updates[sequential:]
        per_task = len(rest) // tasks
        conc = await run_concurrent([[write(u) for u in rest[t * per_task : (t + 1) * per_task]] for t in range(tasks)])
    return seq, conc


async def bench_sends(base: Path, sequential: int, tasks: int, per_task: int) -> SendResults:
    with tempfile.TemporaryDirectory(dir=base) as gigi_dir, tempfile.TemporaryDirectory(dir=base) as ystore_dir:
        gigi_seq, gigi_conc = await gigi_sends(Path(gigi_dir), sequential, tasks, per_task)
        updates = model_updates(sequential + tasks * per_task)
        ystore_seq, ystore_conc = await ystore_writes(Path(ystore_dir), updates, sequential, tasks)
    return SendResults(gigi_seq, gigi_conc, ystore_seq, ystore_conc)


def report_sends(r: SendResults, tasks: int, per_task: int) -> None:
    def row(label: str, gigi: Run, ystore: Run) -> list[object]:
        return [
            label,
            rate(gigi.count, gigi.elapsed),
            ms(gigi.p50),
            ms(gigi.p99),
            rate(ystore.count, ystore.elapsed),
            ms(ystore.p50),
            ms(ystore.p99),
            f"{gigi.throughput / ystore.throughput:.1f}x",
        ]

    print_table(
        "1. Durable sends (each call returns once on disk)",
        ["mode", "gigi msg/s", "p50 ms", "p99 ms", "ystore msg/s", "p50 ms", "p99 ms", "speedup"],
        [
            row(f"sequential x{r.gigi_seq.count}", r.gigi_seq, r.ystore_seq),
            row(f"concurrent {tasks} tasks x{per_task}", r.gigi_conc, r.ystore_conc),
        ],
    )
    best = r.gigi_conc
    print(
        f"target: >= 5k durable msg/s with p99 <= 10 ms -> concurrent {best.throughput:,.0f} msg/s, "
        f"p99 {ms(best.p99)} ms: {verdict(best.throughput >= 5000 and best.p99 <= 0.010)}"
    )
    print("gigi: replica.send (doc + index row + FTS, WAL, synchronous=FULL, group commit);")
    print("ystore: SQLiteYStore.write of updates of the same size (rollback journal, one commit each)")


# -- 2. building large histories -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Built:
    directory: Path
    conversation: str
    messages: int
    raw_yjs_bytes: int
    model_seconds: float
    commit_seconds: float
    compactions: int
    compact_seconds: float
    longest_compact_seconds: float
    final_compact_seconds: float


def build_history(base: Path, messages: int, batch: int, incremental: bool) -> Built:
    """Write the history in batches; with ``incremental``, compact as ``Replica`` does
    (whenever ``Store.needs_compaction`` says so after a batch), then compact once at the end."""
    directory = Path(tempfile.mkdtemp(prefix=f"history-{messages}-", dir=base))
    peers = TwoPeers()
    conv = peers.alice.id
    store = Store.open(directory)
    try:
        store.set_setting("peer_id", ALICE)
        store.commit([peers.creation_record()])
        model_seconds = commit_seconds = compact_seconds = longest = 0.0
        compactions = 0
        for first in range(0, messages, batch):
            start = time.perf_counter()
            records = [peers.message_record(i) for i in range(first, min(first + batch, messages))]
            built = time.perf_counter()
            store.commit(records)
            committed = time.perf_counter()
            model_seconds += built - start
            commit_seconds += committed - built
            if incremental and store.needs_compaction(conv):
                compact(store, conv)
                compactions += 1
                compact_seconds += time.perf_counter() - committed
                longest = max(longest, time.perf_counter() - committed)
        start = time.perf_counter()
        snapshot_bytes = compact(store, conv)
        final_seconds = time.perf_counter() - start
    finally:
        store.close()
    return Built(
        directory,
        conv,
        messages,
        snapshot_bytes,
        model_seconds,
        commit_seconds,
        compactions,
        compact_seconds,
        longest,
        final_seconds,
    )


def report_build(b: Built) -> None:
    total = b.model_seconds + b.commit_seconds + b.compact_seconds + b.final_compact_seconds
    print_table(
        f"2. Building a {b.messages:,}-message history (model + Store.commit in batches, compaction)",
        ["step", "seconds", "msg/s"],
        [
            ["model (post + peer exchange)", f"{b.model_seconds:.2f}", rate(b.messages, b.model_seconds)],
            ["Store.commit batches", f"{b.commit_seconds:.2f}", rate(b.messages, b.commit_seconds)],
            [
                f"Store.compact during build (x{b.compactions}, longest {b.longest_compact_seconds:.2f} s)",
                f"{b.compact_seconds:.2f}",
                "",
            ],
            ["Store.compact at the end", f"{b.final_compact_seconds:.2f}", ""],
            ["total", f"{total:.2f}", rate(b.messages, total)],
        ],
    )


# -- 3. reading large histories --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadResults:
    cold_open: list[float]
    doc_load: list[float]
    page: Run
    unread: Run
    unread_count: int
    unread_after_read: Run


async def cold_open(built: Built) -> tuple[float, float]:
    """(open -> latest 50 in hand, first send: document load + one commit) for one fresh replica."""
    start = time.perf_counter()
    async with open_replica(built.directory, nickname="alice") as replica:
        latest = await replica.history(built.conversation, limit=50)
        opened = time.perf_counter() - start
        assert len(latest) == 50, len(latest)
        start = time.perf_counter()
        await replica.send(built.conversation, Text("the first send after opening"))
        loaded = time.perf_counter() - start
    return opened, loaded


async def repeat(call: Callable[[], Awaitable[object]], runs: int) -> Run:
    await call()  # warm-up
    return await run_sequential(iter([call] * runs))


async def bench_reads(built: Built, runs: int, cold_runs: int) -> ReadResults:
    cold = [await cold_open(built) for _ in range(cold_runs)]
    async with open_replica(built.directory, nickname="alice") as replica:
        conv = built.conversation
        page = await repeat(lambda: replica.history(conv, limit=50), runs)
        unread = await repeat(lambda: replica.unread_count(conv), runs)
        unread_count = await replica.unread_count(conv)
        await replica.mark_read(conv)
        unread_after_read = await repeat(lambda: replica.unread_count(conv), runs)
    return ReadResults([c[0] for c in cold], [c[1] for c in cold], page, unread, unread_count, unread_after_read)


def checkpointed_size(directory: Path) -> int:
    """Database file plus WAL, after truncating the WAL through a separate connection."""
    path = directory / DATABASE_NAME
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def space_breakdown(directory: Path) -> list[tuple[str, int]]:
    """Bytes per table group (with its indexes) and free pages, from ``dbstat``."""
    groups = {"yupdates": "Yjs log (yupdates)", "messages": "index: messages", "message_text": "index: FTS"}
    db = sqlite3.connect(directory / DATABASE_NAME)
    try:
        sizes: dict[str, int] = {}
        for _name, table, size in db.execute(
            "SELECT d.name, coalesce(m.tbl_name, d.name), sum(d.pgsize) FROM dbstat d "
            "LEFT JOIN sqlite_master m ON m.name = d.name GROUP BY d.name"
        ):
            base = table if table in groups else next((g for g in groups if table.startswith(g)), None)
            label = groups[base] if base else "other tables"
            sizes[label] = sizes.get(label, 0) + int(size)
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        sizes["free pages"] = db.execute("PRAGMA freelist_count").fetchone()[0] * page_size
    finally:
        db.close()
    return sorted(sizes.items(), key=lambda item: -item[1])


def report_reads(b: Built, r: ReadResults, runs: int) -> None:
    n = f"{b.messages:,}"
    cold = statistics.median(r.cold_open)
    load = statistics.median(r.doc_load)
    print_table(
        f"3. Reading a {n}-message conversation",
        ["measure", "median ms", "p99/max ms", "target", ""],
        [
            [
                f"cold open -> latest 50 (x{len(r.cold_open)})",
                ms(cold),
                ms(max(r.cold_open)),
                "<= 300",
                verdict(cold <= 0.3),
            ],
            [f"first send: document load (x{len(r.doc_load)})", ms(load), ms(max(r.doc_load)), "", ""],
            [f"latest-50 page, warm (x{runs})", ms(r.page.p50), ms(r.page.p99), "<= 5", verdict(r.page.p50 <= 0.005)],
            [
                f"unread count, {r.unread_count:,} unread (x{runs})",
                ms(r.unread.p50),
                ms(r.unread.p99),
                "<= 5",
                verdict(r.unread.p50 <= 0.005),
            ],
            [
                f"unread count after mark_read (x{runs})",
                ms(r.unread_after_read.p50),
                ms(r.unread_after_read.p99),
                "<= 5",
                verdict(r.unread_after_read.p50 <= 0.005),
            ],
        ],
    )


def report_disk(b: Built, on_disk: int, breakdown: list[tuple[str, int]]) -> None:
    rows: list[list[object]] = [
        ["sqlite file + WAL (after compaction)", f"{on_disk:,}", f"{on_disk / b.messages:.1f}"],
    ]
    rows += [[f"  {label}", f"{size:,}", f"{size / b.messages:.1f}"] for label, size in breakdown]
    rows.append(["raw Yjs update (len(diff()))", f"{b.raw_yjs_bytes:,}", f"{b.raw_yjs_bytes / b.messages:.1f}"])
    print_table(f"   Bytes on disk for {b.messages:,} messages ({RAW_YJS_NOTE})", ["what", "bytes", "B/msg"], rows)


async def bench_history(base: Path, messages: int, args: argparse.Namespace) -> None:
    built = build_history(base, messages, args.batch, not args.single_compaction)
    report_build(built)
    on_disk = checkpointed_size(built.directory)
    breakdown = space_breakdown(built.directory)
    reads = await bench_reads(built, args.runs, args.cold_runs)
    report_reads(built, reads, args.runs)
    report_disk(built, on_disk, breakdown)


# -- main ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--million", action="store_true", help="also measure a 10^6-message conversation")
    parser.add_argument("--messages", type=int, default=100_000, help="size of the large history (default 10^5)")
    parser.add_argument("--sends", type=int, default=2000, help="sequential durable sends")
    parser.add_argument(
        "--tasks",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[16, 64],
        help="concurrent sending tasks, comma-separated runs (default 16,64)",
    )
    parser.add_argument("--per-task", type=int, default=100, help="sends per concurrent task")
    parser.add_argument("--batch", type=int, default=1000, help="records per Store.commit when building")
    parser.add_argument(
        "--single-compaction",
        action="store_true",
        help="compact only once, after the whole history is written (slow: see the note in part 2)",
    )
    parser.add_argument("--runs", type=int, default=50, help="warm repetitions of each read")
    parser.add_argument("--cold-runs", type=int, default=3, help="cold opens per history")
    parser.add_argument("--dir", type=Path, default=None, help="where temporary data goes (default: system tmp)")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    print_header(args)
    with tempfile.TemporaryDirectory(prefix="gigi-bench-", dir=args.dir) as tmp:
        base = Path(tmp)
        for tasks in args.tasks:
            sends = await bench_sends(base, args.sends, tasks, args.per_task)
            report_sends(sends, tasks, args.per_task)
        sizes = [args.messages] + ([1_000_000] if args.million else [])
        for messages in sizes:
            await bench_history(base, messages, args)


if __name__ == "__main__":
    trio.run(main, parse_args())
