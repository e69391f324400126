"""WebSocket connections to y-websocket rooms (trio-websocket), one room per connection.

A relay is named by a URL such as ``ws://relay.example:8765?token=secret``. The room of a
conversation is the path segment after the relay's own path, as the y-websocket client
does (``new WebsocketProvider(serverUrl, roomname, doc, {params})``); the query string,
which carries the relay's token, is kept unchanged. The token never appears in logs:
``RelayAddress`` prints without its query.
"""

from __future__ import annotations

import contextlib
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio
from trio_websocket import ConnectionRejected, HandshakeError, WebSocketConnection, wrap_client_stream

from ..errors import ConfigError, RelayRefused

__all__ = ["MAX_MESSAGE_BYTES", "RelayAddress", "open_room"]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest WebSocket message taken from a relay: a catch-up is one step-2 message, so this
bounds the size of a conversation that can be caught up through a relay (trio-websocket's
default of 1 MiB would hold only a few thousand messages)."""
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class RelayAddress:
    """Where a relay is: ``ws://`` or ``wss://`` URL, with the token in its query string."""

    url: str

    @classmethod
    def parse(cls, text: str) -> RelayAddress:
        """Check a relay URL; raises ``ConfigError`` naming what is wrong with it."""
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("ws", "wss"):
            raise ConfigError(f"relay URL must start with ws:// or wss://, not {parts.scheme or 'nothing'}")
        try:
            parts.port  # noqa: B018 -- raises ValueError for a port out of range
        except ValueError as exc:
            raise ConfigError(f"relay URL has a bad port: {exc}") from None
        if not parts.hostname:
            raise ConfigError("relay URL has no host")
        if parts.fragment:
            raise ConfigError("relay URL must not have a #fragment")
        return cls(text)

    def room_url(self, room: str) -> str:
        """The URL of ``room`` on this relay (the token stays in the query)."""
        parts = urllib.parse.urlsplit(self.url)
        path = parts.path.rstrip("/") + "/" + urllib.parse.quote(room, safe="")
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    def __str__(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@contextlib.asynccontextmanager
async def open_room(relay: RelayAddress, room: str) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to ``room`` on ``relay`` for the duration of the block.

    Raises:
        RelayRefused: the relay answered the handshake with an HTTP error (401/403: a wrong token).
        OSError: the relay cannot be reached, or the handshake failed or timed out.
    """
    parts = urllib.parse.urlsplit(relay.room_url(room))
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    # Our own TCP stream rather than trio-websocket's connect_websocket_url, which leaves
    # the socket open when it is cancelled during the handshake.
    with trio.move_on_after(CONNECT_TIMEOUT) as connecting:
        tcp = await trio.open_tcp_stream(host, port)
    if connecting.cancelled_caught:
        raise OSError(f"relay {relay} did not answer within {CONNECT_TIMEOUT:g} s")
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
    if parts.scheme == "wss":
        stream = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname=host)
    refusal: str | None = None
    try:
        # trio-websocket reports a refused handshake from its reader task, that is, from
        # this nursery, not from the call that waits for the handshake.
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    websocket = await wrap_client_stream(
                        nursery, stream, host, resource, max_message_size=MAX_MESSAGE_BYTES, message_queue_size=1
                    )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            try:
                yield websocket
            finally:
                await websocket.aclose()
                # When the relay closed first, trio-websocket leaves the socket open.
                await trio.aclose_forcefully(stream)
    except* ConnectionRejected as group:
        statuses = [exc.status_code for exc in group.exceptions if isinstance(exc, ConnectionRejected)]
        refusal = f"relay {relay} refused room {room}: HTTP {statuses[0] if statuses else '?'}"
    except* (HandshakeError, trio.TooSlowError, trio.BrokenResourceError) as group:
        raise OSError(f"WebSocket handshake with {relay} failed: {group.exceptions[0]!r}") from None
    if refusal is not None:
        raise RelayRefused(refusal)
