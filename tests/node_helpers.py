"""Node settings the node-level tests share: loopback only, no mDNS, short timeouts."""

from __future__ import annotations

from gigi_crdt import NodeConfig
from gigi_crdt.sync import LinkSettings

LOCAL = NodeConfig(
    host="127.0.0.1",
    mdns=False,
    interface=None,
    links=LinkSettings(handshake_timeout=2.0, ping_interval=0.5, idle_timeout=2.0),
    min_backoff=0.05,
    max_backoff=0.2,
)
