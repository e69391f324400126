"""Bytes on the wire per message and time to converge after a heal, 10 nodes.

Run: ``python benchmarks/bench_harness.py [--ops N]``. Each row is one harness scenario
(gigi_crdt.testing) over in-memory links; bytes count every frame the engines sent
(handshakes, receipts, anti-entropy and pings included), divided by acknowledged sends.
"""

from __future__ import annotations

import argparse

import trio

from gigi_crdt.testing import FaultRates, ScenarioConfig, run_scenario

ROWS = [
    ("clean", FaultRates(), 0, 0),
    ("dup 5% reorder 20%", FaultRates(dup=0.05, reorder=0.2), 0, 0),
    ("loss 10% dup 5% reorder 20%", FaultRates(loss=0.1, dup=0.05, reorder=0.2), 0, 0),
    ("+ 5 partitions, 3 crashes", FaultRates(loss=0.1, dup=0.05, reorder=0.2), 5, 3),
]


async def main(ops: int, seed: int) -> None:
    print(f"10 nodes, {ops} ops, seed {seed}, memory links, latency 1 ms, anti-entropy 0.3 s")
    print(f"{'network':<30} {'messages':>8} {'bytes/msg':>10} {'run s':>7} {'converge s':>10}  verdict")
    for name, rates, partitions, crashes in ROWS:
        config = ScenarioConfig(
            nodes=10, ops=ops, seed=seed, rates=rates, partitions=partitions, crashes=crashes, converge_timeout=60
        )
        result = await run_scenario(config)
        converge = "never" if result.converge_seconds is None else f"{result.converge_seconds:.2f}"
        print(
            f"{name:<30} {result.messages:>8} {result.bytes_per_message:>10.0f} {result.run_seconds:>7.2f} "
            f"{converge:>10}  {result.verdict}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    trio.run(main, args.ops, args.seed)
