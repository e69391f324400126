"""What the node-level tests share: loopback-only settings, dialing, waiting for events."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import trio

from gigi_crdt import Message, NodeConfig, Text
from gigi_crdt.node import Node, NodeEvent
from gigi_crdt.sync import LinkSettings, MessageReceived, OfflineMessagesReceived

LOCAL = NodeConfig(
    host="127.0.0.1",
    mdns=False,
    interface=None,
    links=LinkSettings(handshake_timeout=2.0, ping_interval=0.5, idle_timeout=2.0),
    min_backoff=0.05,
    max_backoff=0.2,
)


def dialing(*nodes: Node) -> NodeConfig:
    """``LOCAL``, with static peers pointing at ``nodes``."""
    return dataclasses.replace(LOCAL, peers=tuple(f"127.0.0.1:{node.address[1]}" for node in nodes))


async def wait_for(node: Node, wanted: Callable[[NodeEvent], bool], seconds: float = 10) -> NodeEvent:
    with trio.fail_after(seconds):
        async for event in node.events():
            if wanted(event):
                return event
    raise AssertionError("the node's events ended")


def texts(messages: Sequence[Message]) -> list[str]:
    return [m.content.text for m in messages if isinstance(m.content, Text)]


def texts_arrived(event: NodeEvent) -> list[str]:
    if isinstance(event, MessageReceived):
        return texts([event.message])
    if isinstance(event, OfflineMessagesReceived):
        return texts(event.messages)
    return []


async def received(node: Node, *wanted: str, seconds: float = 10) -> None:
    """Wait until every text in ``wanted`` has arrived, in whatever order (events are used up)."""
    missing = set(wanted)

    def all_arrived(event: NodeEvent) -> bool:
        missing.difference_update(texts_arrived(event))
        return not missing

    await wait_for(node, all_arrived, seconds)
