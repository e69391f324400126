"""``gigi-crdt``: argument parsing and the one place that turns errors into messages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import GigiError
from .chat import add_chat_command, run_chat
from .harness import add_harness_command, run_harness
from .relay import add_relay_command, run_relay


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gigi-crdt", description="Local-first peer-to-peer chat.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("demo", help="three in-process peers on SQLite stores, one offline for a while")
    add_chat_command(commands)
    add_harness_command(commands)
    add_relay_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    arguments = _parser().parse_args(argv)
    try:
        if arguments.command == "demo":
            from .demo import main as demo

            demo()
        elif arguments.command == "chat":
            return run_chat(arguments)
        elif arguments.command == "harness":
            return run_harness(arguments)
        elif arguments.command == "relay":
            return run_relay(arguments)
    except KeyboardInterrupt:
        return 130
    except (Exception, BaseExceptionGroup) as exc:
        return _report(exc)
    return 0


def _report(exc: BaseException) -> int:
    """One line per error for the user: ours as they are, anything else as an internal error."""
    leaves = _leaves(exc)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return 130
    for leaf in leaves:
        if isinstance(leaf, GigiError):
            print(f"gigi-crdt: {leaf}", file=sys.stderr)
        else:  # a bug of ours: say so in one line, details in the debug log
            logging.getLogger("gigi_crdt").debug("unexpected error", exc_info=leaf)
            print(f"gigi-crdt: internal error: {type(leaf).__name__}: {leaf}", file=sys.stderr)
    return 1 if all(isinstance(leaf, GigiError) for leaf in leaves) else 70


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


if __name__ == "__main__":
    sys.exit(main())
