"""``gigi-crdt chat``: an interactive terminal chat on one node.

Three tasks share the terminal: one reads what is typed and runs it, one shows the node's
events, one turns Ctrl-C (SIGINT) and SIGTERM into a clean exit. The chat ends on /quit,
Ctrl-D, Ctrl-C or the end of a piped input, always with the terminal restored and exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from ..discovery import InvalidPeerAddress, parse_peer_address
from ..model.clock import TICKS_PER_MS
from ..node import INTERFACE_VARIABLE, Node, NodeConfig, open_node
from .chat_session import ChatSession
from .terminal import Terminal, open_terminal

LOG_BUFFER = 64


def add_chat_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``gigi-crdt chat`` and its options."""
    chat = commands.add_parser("chat", help="interactive chat with peers found on the LAN or given with --peer")
    chat.add_argument("--nick", required=True, type=_nickname, help="the name others see")
    chat.add_argument("--data-dir", type=Path, help="where to keep data (default: one directory per nickname)")
    chat.add_argument("--host", help="address to listen on (default: the interface's, else all IPv4 interfaces)")
    chat.add_argument("--port", type=_port, default=0, help="port to listen on (default: chosen by the OS)")
    chat.add_argument(
        "--peer", action="append", default=[], type=_peer, metavar="HOST:PORT", help="a peer to dial (repeatable)"
    )
    chat.add_argument("--no-mdns", action="store_true", help="do not advertise or look for peers on the LAN")
    chat.add_argument("--interface", help=f"network interface or address for mDNS (default: ${INTERFACE_VARIABLE})")


def _nickname(text: str) -> str:
    if not text.strip() or len(text) > 64:
        raise argparse.ArgumentTypeError("a nickname is 1 to 64 characters, not only spaces")
    return text


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def _peer(text: str) -> str:
    try:
        parse_peer_address(text)
    except InvalidPeerAddress as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def run_chat(arguments: argparse.Namespace) -> int:
    """Run ``gigi-crdt chat``; returns the exit status."""
    config = NodeConfig(
        host=arguments.host, port=arguments.port, mdns=not arguments.no_mdns, peers=tuple(arguments.peer)
    )
    if arguments.interface is not None:  # else the config's default: $GIGI_CRDT_INTERFACE
        config = dataclasses.replace(config, interface=arguments.interface)
    trio.run(_chat, arguments.data_dir, arguments.nick, config)
    return 0


async def _chat(data_dir: Path | None, nickname: str, config: NodeConfig) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_quit_on_signal, signals, nursery.cancel_scope)
            async with (
                open_terminal() as terminal,
                _logs_to(terminal),
                open_node(data_dir, nickname=nickname, config=config) as node,
            ):
                await _talk(node, terminal)
            nursery.cancel_scope.cancel()


async def _quit_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()


async def _talk(node: Node, terminal: Terminal) -> None:
    session = ChatSession(node, terminal, started=time.time_ns() // 1_000_000 * TICKS_PER_MS)
    await session.start()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_show_events, node, session)
        while (lines := await terminal.read()) is not None:
            if not await session.typed(lines):
                break
        nursery.cancel_scope.cancel()


async def _show_events(node: Node, session: ChatSession) -> None:
    async for event in node.events():
        await session.happened(event)


class _TerminalLog(logging.Handler):
    """Log records as lines on the terminal, from any thread, never blocking the logger."""

    def __init__(self, send: trio.MemorySendChannel[str]) -> None:
        super().__init__(logging.WARNING)
        self._send = send
        self._token = trio.lowlevel.current_trio_token()

    def emit(self, record: logging.LogRecord) -> None:
        line = f"! {record.getMessage()}"
        try:
            self._token.run_sync_soon(self._deliver, line)
        except trio.RunFinishedError:
            pass  # the chat is over

    def _deliver(self, line: str) -> None:
        try:
            self._send.send_nowait(line)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # a burst beyond LOG_BUFFER lines, or shutting down: the chat goes on without them


@contextlib.asynccontextmanager
async def _logs_to(terminal: Terminal) -> AsyncIterator[None]:
    """Show the library's warnings (refused links...) on the terminal while the chat runs."""
    send, receive = trio.open_memory_channel[str](LOG_BUFFER)
    handler = _TerminalLog(send)
    logger = logging.getLogger("gigi_crdt")
    logger.addHandler(handler)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_show_logs, receive, terminal)
            yield
            nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(handler)
        send.close()


async def _show_logs(receive: trio.MemoryReceiveChannel[str], terminal: Terminal) -> None:
    async for line in receive:
        await terminal.show(line)
