"""Static peers: ``host:port`` strings from the config or command line, for networks without multicast.

Accepted forms: ``192.0.2.7:7000``, ``[2001:db8::1]:7000`` (brackets required for IPv6),
``[fe80::1%eth0]:7000``, ``alice.lan:7000``. They become the same ``PeerFound`` events as
mDNS gives, with ``peer_id=None`` because who answers is only known after the handshake.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from ..errors import GigiError
from .events import PeerFound

_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_LOOKS_NUMERIC = re.compile(r"[0-9.]+")


class InvalidPeerAddress(GigiError, ValueError):
    """A static peer is not ``host:port``; ``text`` is the offending string."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid peer address {text!r}: {reason} (expected host:port or [ipv6]:port)")
        self.text = text
        self.reason = reason


def parse_peer_address(text: str) -> tuple[str, int]:
    """Split ``host:port`` into a host to dial (IPv6 without brackets) and a port."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise InvalidPeerAddress(text, "missing ']:port' after the IPv6 address")
        _check_ipv6(text, host)
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise InvalidPeerAddress(text, "missing ':port'")
        if ":" in host:
            raise InvalidPeerAddress(text, "put an IPv6 address in brackets: [addr]:port")
        _check_host(text, host)
    return host, _check_port(text, port)


def static_peers(texts: Iterable[str]) -> list[PeerFound]:
    """Parse every static peer (all or nothing), without duplicates, in the order given."""
    found: dict[tuple[str, int], PeerFound] = {}
    for text in texts:
        host, port = parse_peer_address(text)
        found.setdefault((host, port), PeerFound(None, host, port))
    return list(found.values())


def _check_port(text: str, port: str) -> int:
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise InvalidPeerAddress(text, f"port {port!r} is not a number in 1..65535")
    return int(port)


def _check_ipv6(text: str, host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise InvalidPeerAddress(text, f"{host!r} is not an IPv6 address") from None


def _check_host(text: str, host: str) -> None:
    if _LOOKS_NUMERIC.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidPeerAddress(text, f"{host!r} is not an IPv4 address") from None
        return
    name = host.removesuffix(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise InvalidPeerAddress(text, f"{host!r} is not a valid host name")
