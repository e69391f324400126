"""A relay in its own process, and a y-websocket client that is not ours (pycrdt's ``Provider``)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio
from pycrdt import Array, Doc, Map, Provider, TransactionEvent
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from gigi_crdt import Text
from gigi_crdt.model.chain import genesis, link_of
from gigi_crdt.model.ops import Posted, StreamEntry, encode_op
from gigi_crdt.model.signed import Head, sign_head
from gigi_crdt.model.ydecode import client_clock
from gigi_crdt.signatures import Signer

TOKEN = "relay-test-token"


@contextlib.asynccontextmanager
async def relay_process(data_dir: Path) -> AsyncIterator[int]:
    """``gigi-crdt relay`` on 127.0.0.1 and a port of the OS's choice; stopped with SIGTERM (graceful)."""
    command = [sys.executable, "-m", "gigi_crdt.cli.main", "relay", "--data-dir", str(data_dir), "--port", "0"]
    process = await trio.lowlevel.open_process(command + ["--token", TOKEN], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(20):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the relay exited before it served"
                line += chunk
        assert line.startswith(b"relay: serving ws://127.0.0.1:"), line
        yield int(line.split(b":")[3].split()[0])
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


class WebSocketChannel:
    """pycrdt's ``Channel`` over a trio-websocket connection."""

    def __init__(self, websocket: WebSocketConnection, path: str) -> None:
        self._websocket = websocket
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WebSocketChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            message = await self._websocket.get_message()
        except ConnectionClosed:
            raise StopAsyncIteration from None
        assert isinstance(message, bytes)
        return message

    async def send(self, message: bytes) -> None:
        await self._websocket.send_message(message)

    async def recv(self) -> bytes:
        return await self.__anext__()


@contextlib.asynccontextmanager
async def plain_client(port: int, room: str) -> AsyncIterator[Doc[Any]]:
    """A bare pycrdt ``Doc`` joined to ``room`` with pycrdt's own ``Provider``."""
    doc: Doc[Any] = Doc()
    async with open_websocket_url(f"ws://127.0.0.1:{port}/{room}?token={TOKEN}") as websocket:
        async with Provider(doc, WebSocketChannel(websocket, room)):
            yield doc


def posts(doc: Doc[Any]) -> list[dict[str, Any]]:
    """Every post in a conversation document, read as plain data, in display order."""
    streams = doc.get("streams", type=Map)
    stored = [value for key in streams.keys() for value in streams[key].to_py()]
    found = [op for op in map(json.loads, stored) if op["o"] == "post"]
    return sorted(found, key=lambda op: (op["t"], op["i"]))


def post_as(
    doc: Doc[Any], conversation: str, author: Signer, nickname: str, text: str, *, as_map: bool = False
) -> None:
    """Append a text message to ``author``'s stream in our format (first bucket, first
    entry), chained and with its signed head (the model's functions write the fields);
    ``as_map``: the entry as a map, as written before entries were JSON text."""
    now = time.time_ns() // 1_000_000 * 1000
    post = Posted("plainpycrdt01", now, nickname, Text(text))
    prev = genesis(conversation, author.peer_id)
    link = link_of(StreamEntry(author.peer_id, 0, post, prev))
    assert link is not None
    with doc.transaction():
        value = encode_op(post, 0, prev)
        doc.get("streams", type=Map)[f"{author.peer_id}/0"] = Array([json.loads(value) if as_map else value])
        clock = client_clock(doc.get_state(), doc.client_id)  # where the head goes: it covers itself
        head = sign_head(author, conversation, Head(0, link, doc.client_id, clock + 1, now))
        doc.get("heads", type=Map)[author.peer_id] = head.record


async def wait_until(doc: Doc[Any], condition: Callable[[], bool], seconds: float = 20) -> None:
    """Wait until ``condition`` holds, checked after every change of ``doc``."""
    changed = trio.Event()

    def on_change(_: TransactionEvent) -> None:
        changed.set()

    subscription = doc.observe(on_change)
    try:
        with trio.fail_after(seconds):
            while not condition():
                await changed.wait()
                changed = trio.Event()
    finally:
        doc.unobserve(subscription)
