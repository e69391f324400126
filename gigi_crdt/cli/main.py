"""``gigi-crdt``: argument parsing and the one place that turns errors into messages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import GigiError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gigi-crdt", description="Local-first peer-to-peer chat.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("demo", help="three in-process peers on SQLite stores, one offline for a while")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    arguments = _parser().parse_args(argv)
    try:
        if arguments.command == "demo":
            from .demo import main as demo

            demo()
    except GigiError as exc:
        print(f"gigi-crdt: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug of ours: say so in one line, details in the log
        logging.getLogger("gigi_crdt").debug("unexpected error", exc_info=True)
        print(f"gigi-crdt: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
