"""TCP for peer links: serving, dialing, and staying connected with backoff and jitter."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from .engine import LinkOutcome, SyncEngine

log = logging.getLogger(__name__)

MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0


class LinkRunner(Protocol):
    """What ``keep_connected`` links through: a ``SyncEngine``, or a wrapper that secures its streams."""

    async def run_link(self, stream: trio.abc.Stream, *, expected_peer: str | None = None) -> LinkOutcome:
        """Run one link over ``stream`` until it ends; never raises for anything the peer does."""
        ...


async def serve_tcp(
    engine: SyncEngine,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept peer links on ``host:port`` (0: the OS picks); reports the listeners when ready."""

    async def handle(stream: trio.SocketStream) -> None:
        await engine.run_link(stream)

    await trio.serve_tcp(handle, port, host=host, task_status=task_status)


async def connect_tcp(host: str, port: int) -> trio.SocketStream:
    """Open a TCP stream to a peer."""
    return await trio.open_tcp_stream(host, port)


async def keep_connected(
    engine: LinkRunner,
    connect: Callable[[], Awaitable[trio.abc.Stream]],
    *,
    expected_peer: str | None = None,
    rng: random.Random | None = None,
    min_backoff: float = MIN_BACKOFF,
    max_backoff: float = MAX_BACKOFF,
) -> None:
    """Link to one peer for as long as this runs, redialling after every loss.

    Waits between attempts grow from ``min_backoff`` to ``max_backoff`` seconds, doubled
    each failure and scaled by a random factor in [0.5, 1.5) so that peers that lost each
    other at the same moment do not redial in lockstep; a link that got as far as a
    handshake resets the wait.
    """
    rng = rng or random.Random()
    delay = min_backoff
    while True:
        try:
            stream = await connect()
        except OSError as exc:
            log.info("cannot reach peer: %s", exc)
        else:
            outcome = await engine.run_link(stream, expected_peer=expected_peer)
            if outcome.peer_id is not None:
                delay = min_backoff
            log.info("link ended (%s); redialling", outcome.reason)
        await trio.sleep(delay * rng.uniform(0.5, 1.5))
        delay = min(delay * 2, max_backoff)
