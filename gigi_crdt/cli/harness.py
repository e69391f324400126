"""``gigi-crdt harness``: run a simulated network scenario and print its verdict.

Wire it into the main parser with ``add_harness_command(subparsers)`` and dispatch
``run_harness(arguments)`` for the ``harness`` command; the exit status is 0 when every
invariant held, 1 on any violation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import trio

from ..testing import FaultRates, ScenarioConfig, run_scenario

DESCRIPTION = (
    "Run N real replicas and sync engines over a faulty simulated network: random operations "
    "drawn from SEED, partitions, crashes; then heal the network and check that everyone "
    "converged with nothing lost. Exits 1 on any violation and prints the command that replays it."
)


def _bounded(kind: Callable[[str], Any], low: float, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: ``kind`` within [low, high] (no upper bound if ``high`` is None)."""
    span = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if value != value or value < low or (high is not None and value > high):  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text} is not within {span}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_harness_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``harness`` command and its options to a subparsers object."""
    parser = subparsers.add_parser(
        "harness", help="simulate a faulty network of peers and check convergence", description=DESCRIPTION
    )
    add = parser.add_argument
    add("--nodes", type=_bounded(int, 2, 64), default=10, help="devices in the network (default 10)")
    add("--ops", type=_bounded(int, 0, 10_000_000), default=1000, help="random operations (default 1000)")
    add("--seed", type=_bounded(int, 0), default=0, help="seeds the operations and every fault (default 0)")
    add("--groups", type=_bounded(int, 0, 1000), default=3, help="group conversations (default 3)")
    add("--directs", type=_bounded(int, 0, 1000), default=2, help="direct conversations (default 2)")
    add("--loss", type=_bounded(float, 0, 1), default=0.0, help="chance a frame is lost (default 0)")
    add("--dup", type=_bounded(float, 0, 1), default=0.0, help="chance a frame is duplicated (default 0)")
    add("--reorder", type=_bounded(float, 0, 1), default=0.0, help="chance a frame is overtaken (default 0)")
    add("--latency", type=_bounded(float, 0, 1000), default=1.0, help="one-way link latency in ms (default 1)")
    add("--partitions", type=_bounded(int, 0, 10_000), default=0, help="partitions that form and heal")
    add("--crashes", type=_bounded(int, 0, 10_000), default=0, help="node crashes, each followed by a restart")
    add("--lose-store", type=_bounded(float, 0, 1), default=0.3, help="chance a crash loses the store (0.3)")
    add("--anti-entropy", type=_bounded(float, 0.01, 3600), default=0.3, help="seconds between rounds (0.3)")
    add(
        "--rest-after",
        type=_bounded(float, 0.01, 3600),
        default=3.0,
        help="seconds an unused conversation document stays in memory (3)",
    )
    add("--timeout", type=_bounded(float, 0.1, 3600), default=60.0, help="seconds to wait for convergence (60)")
    add(
        "--no-membership",
        dest="membership",
        action="store_false",
        help="leave out join and leave operations (members stay as created)",
    )
    add("--tcp", action="store_true", help="link over real loopback TCP (127.0.0.1) instead of memory streams")
    return parser


def config_from(arguments: argparse.Namespace) -> ScenarioConfig:
    """The scenario the parsed ``arguments`` describe; ``ValueError`` if they do not fit together."""
    rates = FaultRates(
        loss=arguments.loss, dup=arguments.dup, reorder=arguments.reorder, latency=arguments.latency / 1000
    )
    return ScenarioConfig(
        nodes=arguments.nodes,
        ops=arguments.ops,
        seed=arguments.seed,
        groups=arguments.groups,
        directs=arguments.directs,
        partitions=arguments.partitions,
        crashes=arguments.crashes,
        lose_store=arguments.lose_store,
        rates=rates,
        anti_entropy=arguments.anti_entropy,
        converge_timeout=arguments.timeout,
        membership=arguments.membership,
        tcp=arguments.tcp,
        rest_after=arguments.rest_after,
    )


def run_harness(arguments: argparse.Namespace) -> int:
    """Run the scenario, print its summary; 0 if every invariant held, 1 otherwise, 2 for bad options."""
    try:
        config = config_from(arguments)
    except ValueError as exc:
        print(f"gigi-crdt harness: error: {exc}", file=sys.stderr)
        return 2
    result = trio.run(run_scenario, config)
    print(result.summary())
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Run ``gigi-crdt harness`` on its own (``python -m gigi_crdt.cli.harness``)."""
    parser = argparse.ArgumentParser(prog="gigi-crdt")
    add_harness_command(parser.add_subparsers(dest="command", required=True))
    return run_harness(parser.parse_args(["harness", *(argv or [])]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
