"""The ASGI front of the relay: no room is served without the relay's token, and no update
reaches a room's pycrdt document before it passed the conversation schema check.

The token is read from the ``token`` query parameter (what the y-websocket client sends
with ``params: {token}``) or from an ``Authorization: Bearer <token>`` header. A missing
or wrong token, or a path that is not a room name, is answered with a plain HTTP error
before the WebSocket handshake completes (ASGI's ``websocket.http.response`` extension),
so the client learns nothing about any room.
"""

from __future__ import annotations

import hmac
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from ..errors import SchemaError
from ..protocol import RemoteProtocolError
from ..protocol.yproto import MESSAGE_SYNC, SyncKind, decode_sync, read_varuint
from ..replica import check_remote_update
from ..transport.websocket import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

Scope: TypeAlias = dict[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[dict[str, Any]]]
Send: TypeAlias = Callable[[dict[str, Any]], Awaitable[None]]
App: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

# Conversation ids are URL-safe base64; allow the other unreserved URL characters so that
# rooms named by other Yjs applications sharing the relay still work.
_ROOM_PATH = re.compile(r"/[A-Za-z0-9_.~-]{1,128}")
POLICY_VIOLATION = 1008  # WebSocket close code


class TokenGate:
    """Passes WebSocket connections with the right token and a room path on to ``app``."""

    def __init__(self, app: App, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._app(scope, receive, send)
        elif scope["type"] == "http":
            await _http_error(send, 426, "this is a y-websocket relay: connect with a WebSocket")
        elif scope["type"] == "websocket":
            if not self._authorised(scope):
                await _refuse(send, 401, "unknown token")
            elif not _ROOM_PATH.fullmatch(scope["path"]):
                await _refuse(send, 404, "not a room")
            else:
                await self._app(scope, _checked(receive, send, scope["path"]), send)

    def _authorised(self, scope: Scope) -> bool:
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        offered = [value.encode() for value in query.get("token", [])]
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
                offered.append(value[7:].strip())
        # compare_digest: how long the comparison takes says nothing about the token
        return any(hmac.compare_digest(candidate, self._token) for candidate in offered)


def _checked(receive: Receive, send: Send, room: str) -> Receive:
    """``receive``, with every sync update checked first: pycrdt (yrs) can be crashed or hung
    by crafted updates, and the room applies what it gets to its document. A client that
    sends one is disconnected; the room never sees it."""

    async def receive_checked() -> dict[str, Any]:
        message = await receive()
        data = message.get("bytes") if message["type"] == "websocket.receive" else None
        if data:
            try:
                await _check_message(data)
            except (SchemaError, RemoteProtocolError) as exc:
                log.warning("room %s: refused a client's update: %s", room, exc)
                await send({"type": "websocket.close", "code": POLICY_VIOLATION})
                return {"type": "websocket.disconnect", "code": POLICY_VIOLATION}
        return message

    return receive_checked


async def _check_message(data: bytes) -> None:
    """Raise if ``data`` is a sync message whose update fails ``check_update``."""
    message_type, _ = read_varuint(data, 0)
    if message_type != MESSAGE_SYNC:
        return  # awareness and the rest: the room does not apply them to its document
    kind, payload = decode_sync(data, max_payload=MAX_MESSAGE_BYTES)
    if kind is SyncKind.STEP1:
        return
    await check_remote_update(payload)


async def _refuse(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "websocket.http.response.start", "status": status, "headers": _headers(body)})
    await send({"type": "websocket.http.response.body", "body": body})


async def _http_error(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status, "headers": _headers(body)})
    await send({"type": "http.response.body", "body": body})


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
