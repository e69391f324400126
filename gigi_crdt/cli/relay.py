"""``gigi-crdt relay``: run an always-on y-websocket relay until Ctrl-C or SIGTERM.

Wire it into the main parser with ``add_relay_command(subparsers)`` and dispatch
``run_relay(arguments)``. The token comes from ``--token`` or, so that it stays out of
the process list, from ``$GIGI_CRDT_RELAY_TOKEN``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from functools import partial
from pathlib import Path

import trio

from ..errors import ConfigError

TOKEN_VARIABLE = "GIGI_CRDT_RELAY_TOKEN"
DESCRIPTION = (
    "Serve y-websocket rooms (one per conversation) that keep their documents in DATA_DIR, so "
    "peers that are never online together still get each other's messages. Clients must present "
    "the token as ?token=... in the URL or as 'Authorization: Bearer ...'."
)


def add_relay_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``relay`` command to the main parser."""
    parser = commands.add_parser("relay", help="an always-on relay (y-websocket rooms in SQLite)")
    parser.description = DESCRIPTION
    parser.add_argument("--data-dir", type=Path, required=True, help="where the rooms are stored")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0: the OS picks; default 8765)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--token", help=f"the token clients must present (default: ${TOKEN_VARIABLE})")


def run_relay(arguments: argparse.Namespace) -> int:
    """Run the relay; returns the exit status (errors are raised for ``main`` to report)."""
    token = arguments.token or os.environ.get(TOKEN_VARIABLE)
    if not token:
        raise ConfigError(f"give the relay a token: --token or ${TOKEN_VARIABLE}")
    if not 0 <= arguments.port <= 65535:
        raise ConfigError(f"port {arguments.port} is not in 0..65535")
    try:
        from ..relay import serve_relay
    except ImportError as exc:
        raise ConfigError(f"the relay needs its extra: pip install 'gigi-crdt[relay]' ({exc})") from None
    logging.basicConfig(level=logging.WARNING, format="gigi-crdt relay: %(message)s")

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            address = {"host": arguments.host, "port": arguments.port}
            serve = partial(serve_relay, arguments.data_dir, token, **address, shutdown=stop)
            port = await nursery.start(serve)
            print(f"relay: serving ws://{arguments.host}:{port} from {arguments.data_dir}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    stop.set()  # graceful: every update taken is written before the relay exits
                    break
        print("relay: stopped", flush=True)

    trio.run(main)
    return 0
