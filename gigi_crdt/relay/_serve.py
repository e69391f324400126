"""``serve_relay``: pycrdt-websocket rooms with SQLite persistence behind a token, on hypercorn (trio)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import Framework
from pycrdt.websocket import ASGIServer

from ..errors import ConfigError
from ..transport.websocket import MAX_MESSAGE_BYTES
from ._gate import TokenGate
from ._rooms import PersistentRooms

log = logging.getLogger(__name__)

DATABASE_NAME = "relay.sqlite3"
GRACEFUL_TIMEOUT = 5.0


async def serve_relay(
    data_dir: Path,
    token: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve y-websocket rooms on ``host:port`` until ``shutdown`` is set (or this is cancelled).

    Every room's document is kept in ``data_dir/relay.sqlite3`` (pycrdt-store's tables), so
    rooms survive restarts. After ``shutdown`` the relay stops accepting clients, closes
    the open ones and returns once every update it took is on disk; cancelling instead
    may lose the last moment's updates. Reports the bound port when ready.

    Raises:
        ConfigError: empty token, or the data directory or address cannot be used.
    """
    if not token:
        raise ConfigError("the relay needs a non-empty token")
    try:
        await trio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use data directory {data_dir}: {exc.strerror or exc}") from exc
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.websocket_max_message_size = MAX_MESSAGE_BYTES
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.accesslog = None
    config.loglevel = "WARNING"  # we say where we listen ourselves
    stop = shutdown if shutdown is not None else trio.Event()
    async with trio.open_nursery() as stores:
        rooms = PersistentRooms(data_dir / DATABASE_NAME, stores)
        stores.start_soon(rooms.compact_stored_rooms)
        async with rooms:
            # hypercorn's Framework type is a union of TypedDict-based protocols; ours is plain dicts.
            app = cast(Framework, TokenGate(cast(Any, ASGIServer(rooms)), token))
            async with trio.open_nursery() as server:
                try:
                    binds = await server.start(partial(serve, app, config, shutdown_trigger=stop.wait))
                except OSError as exc:
                    raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
                task_status.started(int(binds[0].rsplit(":", 1)[1]))
        rooms.close()
