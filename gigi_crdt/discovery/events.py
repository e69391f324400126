"""What discovery reports: a peer can be reached at an address, or is gone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class PeerFound:
    """A peer can be dialled at ``host:port``.

    ``peer_id`` is ``None`` for a static peer: who answers there is only known after the
    handshake.
    """

    peer_id: str | None
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class PeerLost:
    """The peer withdrew its advertisement (or it expired)."""

    peer_id: str


DiscoveryEvent: TypeAlias = PeerFound | PeerLost
