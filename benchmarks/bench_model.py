"""Live-chat throughput of ``gigi_crdt.model.Conversation`` against the naive pycrdt shape.

What it measures, in one process and one run:

1. Two alternating writers with read receipts, append + sync. Two ``Conversation`` replicas,
   A ("alice-peer-01", who creates a DIRECT conversation) and B ("bob-peer-0002", built from
   A's creation update). Each step the writer (A, B, A, ...) posts ``Text(f"message {i}")``;
   the other side ``apply_remote()``s the post's update, marks it read with
   ``mark(ReceiptKind.READ, {author: seq})``, and the writer ``apply_remote()``s that receipt:
   two updates per message. The rate (msg/s) is timed over a window of ``--window`` messages
   once the history holds N messages, for each N in ``--sizes``; the history grows by the
   same loop, untimed, between windows.
   The "receipt-in-reply" variant sends the read receipt inside the reader's next post
   (``post(..., read_upto={author: seq})``): one update per message.
2. The naive shape (the original design sketch) as a baseline: one pycrdt ``Doc`` with a root
   ``Array`` "messages" of per-message ``Map``s and a root ``Map`` "acks" where the reader sets
   ``f"{reader}:read" = index``; each doc forwards every transaction's update
   (``doc.observe``) to the other, in the same alternating pattern. The naive reader does not
   read the new message back (``messages[index]`` walks the array: ~0.3 ms more per message
   at N=1e4), so the baseline is flattered and the ratio is conservative. It slows down as the
   history grows, so it stops early (see ``NAIVE_WINDOW_LIMIT_S`` and ``NAIVE_BUDGET_S``).
3. Full ordered history export (``Conversation.history()``) at each N, against the naive
   ``Array.to_py()``.
4. The raw floor at the largest N: encode A's whole document (``diff()``) and apply it to an
   empty pycrdt ``Doc``.

Run from the repository root (takes a few minutes with the defaults)::

    python benchmarks/bench_model.py
    python benchmarks/bench_model.py --sizes 1000,10000 --window 2000
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any, TypeVar

from pycrdt import Array, Doc, Map

from gigi_crdt.model import Conversation, ConversationKind, HybridClock, ReceiptKind, Text, new_id

ALICE = "alice-peer-01"
BOB = "bob-peer-0002"
NICKNAMES = {ALICE: "alice", BOB: "bob"}
NAIVE_WINDOW_LIMIT_S = 20.0  # stop growing the naive doc once one window takes longer than this
NAIVE_BUDGET_S = 60.0  # total time the naive run may take (growth, windows and exports)
DEADLINE_CHECK_EVERY = 50  # steps between deadline checks in the naive loop
MISSING = "—"

Step = Callable[[int], None]
T = TypeVar("T")


def wall_clock() -> HybridClock:
    """A hybrid clock on the real wall time, as an application would use."""
    return HybridClock(lambda: int(time.time() * 1000))


# -- gigi_crdt replicas --------------------------------------------------------------


class GigiPair:
    """Replicas A and B of one direct conversation, alternating as writers."""

    def __init__(self, receipt_in_reply: bool) -> None:
        self.a, created = Conversation.create(
            kind=ConversationKind.DIRECT,
            title="bench",
            local_peer=ALICE,
            nickname=NICKNAMES[ALICE],
            clock=wall_clock(),
            others={BOB: NICKNAMES[BOB]},
        )
        self.b = Conversation.from_updates([created.update], BOB, wall_clock())
        self.receipt_in_reply = receipt_in_reply
        # What each replica has received but not yet acknowledged (receipt-in-reply only).
        self._unread: dict[str, dict[str, int]] = {ALICE: {}, BOB: {}}

    def step(self, i: int) -> None:
        """Message ``i``: post, deliver, and acknowledge it as read."""
        writer, reader = (self.a, self.b) if i % 2 == 0 else (self.b, self.a)
        if self.receipt_in_reply:
            self._step_receipt_in_reply(i, writer, reader)
            return
        posted = writer.post(Text(f"message {i}"), NICKNAMES[writer.local_peer])
        entry = reader.apply_remote(posted.update).entries[0]
        receipt = reader.mark(ReceiptKind.READ, {entry.author: entry.seq})
        writer.apply_remote(receipt.update)

    def _step_receipt_in_reply(self, i: int, writer: Conversation, reader: Conversation) -> None:
        unread = self._unread[writer.local_peer]
        posted = writer.post(Text(f"message {i}"), NICKNAMES[writer.local_peer], read_upto=unread)
        unread.clear()
        entry = reader.apply_remote(posted.update).entries[0]
        self._unread[reader.local_peer][entry.author] = entry.seq

    def check(self, total: int) -> None:
        """Both replicas hold every message."""
        for replica in (self.a, self.b):
            held = replica.stream_length(ALICE) + replica.stream_length(BOB)
            if held != total:
                raise AssertionError(f"{replica.local_peer} holds {held} messages, expected {total}")


# -- the naive shape ---------------------------------------------------------------


class NaivePeer:
    """One doc of the original sketch: an Array of message Maps plus an acks Map."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.clock = wall_clock()
        self.doc: Doc[Any] = Doc()
        self.messages: Array[Map[object]] = self.doc.get("messages", type=Array)
        self.acks: Map[int] = self.doc.get("acks", type=Map)
        self._outbox: list[bytes] = []
        self._subscription = self.doc.observe(lambda event: self._outbox.append(event.update))

    def take(self) -> list[bytes]:
        """The updates of the local transactions since the last call."""
        updates = list(self._outbox)
        self._outbox.clear()
        return updates

    def receive(self, updates: Sequence[bytes]) -> None:
        """Apply a peer's updates, without echoing them back."""
        for update in updates:
            self.doc.apply_update(update)
        self._outbox.clear()


class NaivePair:
    """Two naive docs in the same alternating append + read-receipt pattern."""

    def __init__(self) -> None:
        self.a = NaivePeer(ALICE)
        self.b = NaivePeer(BOB)

    def step(self, i: int) -> None:
        """Message ``i``: append a Map, deliver it, acknowledge it as read (by index)."""
        writer, reader = (self.a, self.b) if i % 2 == 0 else (self.b, self.a)
        message = {
            "id": new_id(),
            "author": writer.name,
            "nickname": NICKNAMES[writer.name],
            "timestamp": writer.clock.tick(),
            "content": {"type": "text", "text": f"message {i}"},
        }
        with writer.doc.transaction():
            writer.messages.append(Map(message))
        reader.receive(writer.take())
        index = len(reader.messages) - 1
        reader.acks[f"{reader.name}:read"] = index
        writer.receive(reader.take())


# -- timing --------------------------------------------------------------------------


def run_steps(step: Step, start: int, stop: int, deadline: float | None = None) -> bool:
    """Run steps ``start`` to ``stop - 1``; ``False`` if ``deadline`` passed first."""
    for i in range(start, stop):
        step(i)
        if deadline is not None and i % DEADLINE_CHECK_EVERY == 0 and time.perf_counter() > deadline:
            return False
    return True


def timed_window(step: Step, start: int, count: int, deadline: float | None = None) -> float | None:
    """Seconds taken by ``count`` steps from ``start``; ``None`` if ``deadline`` passed."""
    gc.collect()
    began = time.perf_counter()
    finished = run_steps(step, start, start + count, deadline)
    elapsed = time.perf_counter() - began
    return elapsed if finished else None


def timed(action: Callable[[], T]) -> tuple[float, T]:
    """Seconds taken by ``action`` and its result."""
    gc.collect()
    began = time.perf_counter()
    result = action()
    return time.perf_counter() - began, result


@dataclass(slots=True)
class RawFloor:
    """Whole-document encode and apply at one size."""

    messages: int
    encode_s: float
    apply_s: float
    size_bytes: int


@dataclass(slots=True)
class Run:
    """Rates and export times of one shape, by history size N."""

    rates: dict[int, float] = field(default_factory=dict)
    export_s: dict[int, float] = field(default_factory=dict)
    raw_floor: RawFloor | None = None
    note: str = ""


def raw_floor(conversation: Conversation, messages: int) -> RawFloor:
    """Encode the whole document and apply it to an empty pycrdt Doc."""
    encode_s, update = timed(conversation.diff)
    apply_s, _ = timed(lambda: Doc().apply_update(update))
    return RawFloor(messages, encode_s, apply_s, len(update))


def run_gigi(sizes: Sequence[int], window: int, receipt_in_reply: bool) -> Run:
    """Grow a conversation to each N, export its history there, then time a window."""
    pair = GigiPair(receipt_in_reply)
    run = Run()
    done = 0
    for n in sizes:
        run_steps(pair.step, done, n)
        done = n
        run.export_s[n], history = timed(pair.a.history)
        if len(history) != n:
            raise AssertionError(f"history holds {len(history)} messages, expected {n}")
        if n == sizes[-1]:
            run.raw_floor = raw_floor(pair.a, n)
        elapsed = timed_window(pair.step, done, window)
        assert elapsed is not None
        run.rates[n] = window / elapsed
        done += window
    pair.check(done)
    return run


def extrapolate_naive(done: int, target: int, window: int, seconds_per_msg: float, at: int) -> float:
    """Seconds to grow from ``done`` to ``target`` and time a window there, assuming the
    per-message cost grows linearly with N (the naive shape is quadratic overall)."""
    per_n = seconds_per_msg / at
    growth = per_n * (target * target - done * done) / 2
    return growth + window * per_n * (target + window / 2)


def run_naive(sizes: Sequence[int], window: int) -> Run:
    """Like ``run_gigi`` on the naive shape, within ``NAIVE_BUDGET_S`` and ``NAIVE_WINDOW_LIMIT_S``."""
    pair = NaivePair()
    run = Run()
    began = time.perf_counter()
    deadline = began + NAIVE_BUDGET_S
    done = 0
    last: tuple[int, float] | None = None  # (N at the middle of the last window, s/msg there)
    for n in sizes:
        if last is not None:
            estimate = extrapolate_naive(done, n, window, last[1], last[0])
            if time.perf_counter() + estimate > deadline:
                run.note = (
                    f"stopped before N={n:,}: extrapolated to need {estimate:.0f} s,"
                    f" past the {NAIVE_BUDGET_S:.0f} s budget"
                )
                break
        if not run_steps(pair.step, done, n, deadline):
            run.note = f"stopped growing towards N={n:,}: {NAIVE_BUDGET_S:.0f} s budget spent"
            break
        done = n
        export_s, _ = timed(pair.a.messages.to_py)
        elapsed = timed_window(pair.step, done, window, deadline)
        if elapsed is None:
            run.note = f"window at N={n:,} not finished within the {NAIVE_BUDGET_S:.0f} s budget"
            break
        run.export_s[n] = export_s
        run.rates[n] = window / elapsed
        done += window
        last = (n + window // 2, elapsed / window)
        if elapsed > NAIVE_WINDOW_LIMIT_S:
            run.note = f"stopped after N={n:,}: its window took {elapsed:.1f} s (> {NAIVE_WINDOW_LIMIT_S:.0f} s)"
            break
    return run


# -- output --------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[col]) for row in [headers, *rows]) for col in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def rate_cell(rates: dict[int, float], n: int) -> str:
    return f"{rates[n]:,.0f}" if n in rates else MISSING


def ms_cell(seconds: dict[int, float], n: int) -> str:
    return f"{seconds[n] * 1000:,.1f}" if n in seconds else MISSING


def us_per_msg_cell(seconds: dict[int, float], n: int) -> str:
    return f"{seconds[n] * 1e6 / n:.2f}" if n in seconds else MISSING


def print_environment(sizes: Sequence[int], window: int) -> None:
    print(f"date:     {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
    print(f"python:   {platform.python_version()} ({platform.python_implementation()})")
    print(f"pycrdt:   {version('pycrdt')}")
    processor = platform.processor() or "unknown processor"
    print(f"machine:  {platform.machine()} / {processor} / {os.cpu_count()} CPUs")
    print(f"sizes:    {', '.join(f'{n:,}' for n in sizes)}; window {window:,} messages")
    print()


def print_rates(sizes: Sequence[int], gigi: Run, reply: Run, naive: Run, window: int) -> None:
    print(f"Two alternating writers with read receipts, append + sync (msg/s over {window:,} messages at N)")
    rows = []
    for n in sizes:
        ratio = f"{gigi.rates[n] / naive.rates[n]:.1f}x" if n in naive.rates else MISSING
        rows.append([f"{n:,}", rate_cell(gigi.rates, n), rate_cell(reply.rates, n), rate_cell(naive.rates, n), ratio])
    headers = ["N", "gigi (msg/s)", "gigi receipt-in-reply (msg/s)", "naive (msg/s)", "ratio gigi/naive"]
    print(format_table(headers, rows))
    first, last = sizes[0], sizes[-1]
    print()
    print(
        f"rate at max N / rate at {first:,}: gigi {gigi.rates[last] / gigi.rates[first]:.2f}x, "
        f"receipt-in-reply {reply.rates[last] / reply.rates[first]:.2f}x"
    )
    print("target: >= 20k msg/s at 1e5 and flat (>= 0.7x)")
    print(
        f"— = not reached: the naive run stops once a window takes > {NAIVE_WINDOW_LIMIT_S:.0f} s "
        f"or the next size would not fit its {NAIVE_BUDGET_S:.0f} s budget"
        + (f" ({naive.note})." if naive.note else ".")
    )
    print()


def print_exports(sizes: Sequence[int], gigi: Run, naive: Run) -> None:
    print("Full ordered history export at N (replica A)")
    rows = [
        [
            f"{n:,}",
            ms_cell(gigi.export_s, n),
            us_per_msg_cell(gigi.export_s, n),
            ms_cell(naive.export_s, n),
            us_per_msg_cell(naive.export_s, n),
        ]
        for n in sizes
    ]
    headers = ["N", "history() ms", "µs/msg", "naive Array.to_py() ms", "µs/msg"]
    print(format_table(headers, rows))
    print()


def print_raw_floor(floor: RawFloor) -> None:
    print(f"Raw floor at N={floor.messages:,}: A's whole doc via diff(), applied to an empty pycrdt Doc")
    rows = [
        [
            f"{floor.messages:,}",
            f"{floor.encode_s * 1000:,.1f}",
            f"{floor.apply_s * 1000:,.1f}",
            f"{floor.size_bytes:,}",
            f"{floor.size_bytes / floor.messages:.1f}",
        ]
    ]
    print(format_table(["N", "encode ms", "apply ms", "bytes", "bytes/msg"], rows))


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive integers")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes("1000,10000,100000"),
        help="history sizes N, comma-separated (default: 1000,10000,100000)",
    )
    parser.add_argument("--window", type=int, default=2000, help="messages per timed window (default: 2000)")
    args = parser.parse_args()
    sizes: list[int] = args.sizes
    window: int = args.window

    print_environment(sizes, window)
    gigi = run_gigi(sizes, window, receipt_in_reply=False)
    reply = run_gigi(sizes, window, receipt_in_reply=True)
    naive = run_naive(sizes, window)
    print_rates(sizes, gigi, reply, naive, window)
    print_exports(sizes, gigi, naive)
    assert gigi.raw_floor is not None
    print_raw_floor(gigi.raw_floor)


if __name__ == "__main__":
    main()
