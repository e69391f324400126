"""How a node is set up: one frozen config object whose defaults suit a real user on a LAN.

Tests and scripts override what they need (``NodeConfig(host="127.0.0.1", mdns=False)``);
nothing here is read from global state except the interface, which may come from the
``GIGI_CRDT_INTERFACE`` environment variable so that a machine can pin it once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import ifaddr

from ..discovery.dialer import LOST_GRACE
from ..discovery.static import parse_peer_address
from ..errors import ConfigError
from ..replica import REST_AFTER, RETENTION_EVERY
from ..sync import LinkSettings
from ..sync.tcp import MAX_BACKOFF, MIN_BACKOFF
from ..transport.websocket import RelayAddress

INTERFACE_VARIABLE = "GIGI_CRDT_INTERFACE"
EVERY_INTERFACE = "0.0.0.0"
MAX_CONNECTIONS_PER_ADDRESS = 8
MAX_CONNECTIONS = 256
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def _interface_from_environment() -> str | None:
    return os.environ.get(INTERFACE_VARIABLE) or None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything about a running node except who it is (nickname) and where it keeps its data.

    Attributes:
        host: the address to listen on. ``None``: the interface's address if one is chosen,
            else every IPv4 interface, so that peers found over mDNS can reach us.
        port: the TCP port to listen on; 0 lets the OS pick (``Node.address`` tells which).
        mdns: advertise this node and look for others on the LAN.
        interface: a network interface (``eth0``) or one of this machine's addresses, used for
            mDNS and as the default listen address; default: ``$GIGI_CRDT_INTERFACE``, else all.
        peers: static peers, ``host:port``, dialled (and redialled) while the node runs.
        relays: y-websocket relays, ``ws://host:port?token=...``: every conversation is also
            synced through each of them (one room per conversation), so that peers who are
            never online at the same time still get each other's messages.
        links: timeouts and bounds of every peer link, the anti-entropy interval and the rate
            limits on what a peer sends among them.
        max_connections_per_address: incoming connections one remote address may hold open
            at once (several nodes on one host, or behind one NAT, each hold one); more are
            closed before their TLS handshake.
        max_connections: incoming connections open at once, from everywhere.
        min_backoff: the first wait before redialling a peer, in seconds (doubled per failure).
        max_backoff: the longest wait before redialling.
        lost_grace: how long a peer that mDNS reports lost is still dialled.
        rest_after: seconds a conversation's document stays in memory unused before it
            leaves (its messages stay on disk; it loads again when needed); ``None``: never.
        retention_every: seconds between checks for messages past their conversation's
            retention, which then leave the index, the document and the disk
            (``Replica.apply_retention``); ``None``: only when the application asks.
    """

    host: str | None = None
    port: int = 0
    mdns: bool = True
    interface: str | None = field(default_factory=_interface_from_environment)
    peers: tuple[str, ...] = ()
    relays: tuple[str, ...] = ()
    links: LinkSettings = LinkSettings()
    max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS
    max_connections: int = MAX_CONNECTIONS
    min_backoff: float = MIN_BACKOFF
    max_backoff: float = MAX_BACKOFF
    lost_grace: float = LOST_GRACE
    rest_after: float | None = REST_AFTER
    retention_every: float | None = RETENTION_EVERY

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not in 0..65535")
        if self.max_connections_per_address < 1 or self.max_connections < 1:
            raise ConfigError("max_connections_per_address and max_connections must be at least 1")
        for name in ("rest_after", "retention_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive (or None), not {value}")
        for peer in self.peers:
            parse_peer_address(peer)  # fail at configuration time, naming the bad entry
        for relay in self.relays:
            RelayAddress.parse(relay)

    def listen_host(self) -> str:
        """The address the listener binds."""
        if self.host is not None:
            return self.host
        if self.interface is not None:
            return interface_addresses(self.interface)[0]
        return EVERY_INTERFACE

    def mdns_addresses(self) -> list[str] | None:
        """The addresses mDNS runs on and advertises (``None``: every interface).

        An explicit listen address narrows mDNS to it: advertising an address we do not
        listen on would send peers to a closed port.
        """
        if self.interface is not None:
            return interface_addresses(self.interface)
        if self.host is not None and self.host != EVERY_INTERFACE:
            return [self.host]
        return None


def interface_addresses(interface: str) -> list[str]:
    """The IPv4 addresses of ``interface``: a name such as ``eth0``, or an address itself.

    Raises:
        ConfigError: no interface of that name, or it has no IPv4 address.
    """
    try:
        ipaddress.ip_address(interface)
    except ValueError:
        pass
    else:
        return [interface]
    for adapter in ifaddr.get_adapters():
        if interface in (adapter.name, adapter.nice_name):
            addresses = [ip.ip for ip in adapter.ips if isinstance(ip.ip, str)]  # str: IPv4, tuple: IPv6
            if not addresses:
                raise ConfigError(f"interface {interface!r} has no IPv4 address")
            return addresses
    raise ConfigError(f"no network interface called {interface!r}")


def default_data_dir(nickname: str) -> Path:
    """Where a node keeps its data unless told otherwise: one directory per nickname.

    Under ``$XDG_DATA_HOME/gigi-crdt`` (``~/.local/share/gigi-crdt`` if unset), so that two
    nicknames on one machine (``gigi-crdt chat --nick alice`` and ``--nick bob``) never share
    a store. A nickname that is not a plain file name is replaced by its hash.
    """
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "gigi-crdt"
    if _PLAIN_NAME.fullmatch(nickname):
        return base / nickname
    return base / ("nick-" + hashlib.sha256(nickname.encode()).hexdigest()[:16])
