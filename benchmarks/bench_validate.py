"""What checking incoming Yjs updates costs (``gigi_crdt.model.yupdate``), next to pycrdt.

What it measures, in one run, on conversations of ``--messages`` messages (default 10^5)
built with ``Conversation.post`` by two peers posting alternately (building is not timed):

1. "plain": posts only, the shape of the sync benchmark's history. yrs merges an author's
   consecutive posts into one struct per bucket, so the cost is in the Any values.
2. "receipts": every post also moves the author's read receipt (``read_upto``), as a chat
   client does; receipts interleave with posts, so every message is its own struct and
   every receipt overwrite leaves a deleted struct: the struct-heavy case.

For each, the whole document as a peer sends it on first sync (``Conversation.diff()``):
``decode_update`` alone, ``check_update`` (decode + schema check), and pycrdt's
``Doc().apply_update`` of the same bytes; best of ``--runs``. Then the live updates of the
last 2,000 messages one by one: ``check_update`` on each, and pycrdt applying them in order
to a document that holds everything before them.

Run:  python benchmarks/bench_validate.py [--messages N] [--runs R] [--cache DIR]
      (``--cache`` keeps the built documents between runs: building 10^5 messages takes a while)
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import ALICE, BOB, TwoPeers, print_table, text_for
from pycrdt import Doc

from gigi_crdt.model.ydecode import decode_update
from gigi_crdt.model.yupdate import check_update

LIVE = 2_000


def build(messages: int, receipts: bool) -> tuple[bytes, bytes, list[bytes]]:
    """The document before the last ``LIVE`` messages, the whole document, and those messages' updates."""
    peers = TwoPeers()
    alice, bob = peers.alice, peers.bob
    live: list[bytes] = []
    before = b""
    for i in range(messages):
        if i == messages - LIVE:
            before = alice.diff()
        writer, reader, other, nickname = (alice, bob, BOB, "alice") if i % 2 == 0 else (bob, alice, ALICE, "bob")
        read_upto = {other: i - 1} if receipts and i else {}
        update = writer.post(text_for(i), nickname, read_upto=read_upto).update
        reader.apply_remote(update)
        if i >= messages - LIVE:
            live.append(update)
    return before, alice.diff(), live


def cached(cache: Path | None, messages: int, receipts: bool) -> tuple[bytes, bytes, list[bytes]]:
    name = f"validate-{messages}-{'receipts' if receipts else 'plain'}"
    if cache is not None and (cache / f"{name}.full").exists():
        live = (cache / f"{name}.live").read_bytes().split(b"\n")
        return (
            (cache / f"{name}.before").read_bytes(),
            (cache / f"{name}.full").read_bytes(),
            [bytes.fromhex(line.decode()) for line in live],
        )
    started = time.perf_counter()
    before, full, live = build(messages, receipts)
    print(f"built {name} in {time.perf_counter() - started:.1f} s")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / f"{name}.before").write_bytes(before)
        (cache / f"{name}.full").write_bytes(full)
        (cache / f"{name}.live").write_bytes(b"\n".join(update.hex().encode() for update in live))
    return before, full, live


def best(runs: int, action: Callable[..., Any], *args: Any) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action(*args)
        times.append(time.perf_counter() - started)
    return min(times)


def apply_fresh(update: bytes) -> None:
    Doc().apply_update(update)


def apply_live(before: bytes, live: list[bytes]) -> float:
    doc: Doc[Any] = Doc()
    doc.apply_update(before)
    started = time.perf_counter()
    for update in live:
        doc.apply_update(update)
    return time.perf_counter() - started


def check_all(live: list[bytes]) -> None:
    for update in live:
        check_update(update)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, pycrdt {version('pycrdt')}, {platform.machine()}")
    full_rows = []
    live_rows = []
    for receipts in (False, True):
        shape = "receipts" if receipts else "plain"
        before, full, live = cached(args.cache, args.messages, receipts)
        structs = sum(len(s) for s in decode_update(full).clients.values())
        decode = best(args.runs, decode_update, full)
        check = best(args.runs, check_update, full)
        apply = best(args.runs, apply_fresh, full)
        megabytes = len(full) / 1e6
        full_rows.append(
            [
                shape,
                f"{megabytes:.2f}",
                structs,
                f"{decode * 1000:.0f}",
                f"{check * 1000:.0f}",
                f"{megabytes / check:.1f}",
                f"{apply * 1000:.0f}",
                f"{check / apply:.2f}",
            ]
        )
        live_check = best(args.runs, check_all, live)
        live_apply = min(apply_live(before, live) for _ in range(args.runs))
        live_rows.append(
            [
                shape,
                f"{sum(map(len, live)) / len(live):.0f}",
                f"{live_check / len(live) * 1e6:.1f}",
                f"{live_apply / len(live) * 1e6:.1f}",
                f"{live_check / live_apply:.2f}",
            ]
        )
    print_table(
        f"First sync: the whole document of {args.messages} messages (best of {args.runs})",
        ["document", "MB", "structs", "decode ms", "check ms", "check MB/s", "pycrdt apply ms", "check/apply"],
        full_rows,
    )
    print_table(
        f"Live updates: the last {LIVE} messages one by one (best of {args.runs})",
        ["document", "bytes/update", "check us", "pycrdt apply us", "check/apply"],
        live_rows,
    )


if __name__ == "__main__":
    main()
