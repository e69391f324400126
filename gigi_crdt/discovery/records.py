"""DNS-SD records for gigi-crdt, and what we believe about the peers they announce (sans-IO).

Rules, because every record comes from anyone on the link:

- We advertise only what is needed to connect: the peer id and the protocol version in the
  TXT record (``id=...``, ``v=1``), the port in SRV, the addresses in A/AAAA. No nickname
  (the handshake carries it, to peers we actually link with), no conversation ids or names.
- The instance name is bound to the peer id (``instance_label``), so a name cannot announce
  a different peer later; the TXT ``id`` must match it.
- A record is dropped (``InvalidRecord``) unless the TXT has ``v`` equal to our protocol
  version and a well-formed ``id``, the port is 1..65535 and one address is a unicast address
  we may dial (never multicast, unspecified or global; loopback only when we browse on it).
- ``PeerTable`` keeps the first address of a peer id when another shows up within
  ``conflict_window`` seconds of it, and tracks at most ``max_peers`` peers.

Nothing here does I/O or reads the clock: callers pass ``now``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import GigiError
from ..protocol.events import PROTOCOL_VERSION
from .events import PeerFound, PeerLost

log = logging.getLogger(__name__)

SERVICE_TYPE = "_gigi-crdt._tcp.local."
PEER_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_PEERS = 256
CONFLICT_WINDOW = 10.0
_MAX_LABEL = 63  # DNS label limit


class InvalidRecord(GigiError, ValueError):
    """A DNS-SD record from the network that we will not act on."""


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """A validated advertisement: who, and where to dial."""

    name: str
    peer_id: str
    host: str
    port: int


def instance_label(peer_id: str) -> str:
    """The DNS-SD instance label for a peer id: the id itself if it fits in a DNS label."""
    if len(peer_id) <= _MAX_LABEL:
        return peer_id
    return hashlib.sha256(peer_id.encode()).hexdigest()[:32]


def instance_name(peer_id: str) -> str:
    """The full service instance name a peer registers."""
    return f"{instance_label(peer_id)}.{SERVICE_TYPE}"


def encode_txt(peer_id: str) -> dict[str, str]:
    """The TXT properties we advertise."""
    return {"id": peer_id, "v": str(PROTOCOL_VERSION)}


def parse_record(
    name: str,
    properties: Mapping[bytes, bytes | None],
    addresses: Sequence[str],
    port: int | None,
    *,
    allow_loopback: bool = False,
) -> ServiceRecord:
    """Validate a resolved service; raises ``InvalidRecord`` saying why it is refused."""
    version = properties.get(b"v")
    if version != str(PROTOCOL_VERSION).encode():
        raise InvalidRecord(f"{name!r}: protocol version {version!r}, we speak {PROTOCOL_VERSION}")
    raw_id = properties.get(b"id")
    peer_id = raw_id.decode("ascii", "replace") if raw_id is not None else ""
    if not PEER_ID.fullmatch(peer_id):
        raise InvalidRecord(f"{name!r}: malformed peer id {raw_id!r}")
    if name != instance_name(peer_id):
        raise InvalidRecord(f"{name!r}: instance name does not match peer id {peer_id!r}")
    if port is None or not 1 <= port <= 65535:
        raise InvalidRecord(f"{name!r}: port {port!r} out of range")
    host = pick_address(addresses, allow_loopback=allow_loopback)
    if host is None:
        raise InvalidRecord(f"{name!r}: no usable address in {list(addresses)[:4]!r}")
    return ServiceRecord(name, peer_id, host, port)


def pick_address(addresses: Sequence[str], *, allow_loopback: bool = False) -> str | None:
    """The address to dial: the first usable one, preferring IPv4."""
    usable = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_multicast or address.is_unspecified or address.is_reserved or address.is_global:
            continue  # a LAN advert pointing off the LAN would make us dial the internet
        if address.is_loopback and not allow_loopback:
            continue
        if address.version == 6 and address.is_link_local and address.scope_id is None:
            continue  # not dialable without an interface
        usable.append(address)
    usable.sort(key=lambda address: address.version)
    return str(usable[0]) if usable else None


@dataclass(slots=True)
class _Entry:
    record: ServiceRecord
    seen_at: float


class PeerTable:
    """The peers discovery currently reports, and the rules for changing them."""

    def __init__(self, own_peer_id: str, *, max_peers: int = MAX_PEERS, conflict_window: float = CONFLICT_WINDOW):
        self.own_peer_id = own_peer_id
        self.max_peers = max_peers
        self.conflict_window = conflict_window
        self._peers: dict[str, _Entry] = {}  # by instance name
        self.ignored = 0

    def __contains__(self, name: object) -> bool:
        return name in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def names(self) -> set[str]:
        """The instance names of the peers reported found and not yet lost."""
        return set(self._peers)

    def is_full(self) -> bool:
        """No room for another peer (known ones may still change)."""
        return len(self._peers) >= self.max_peers

    def found(self, record: ServiceRecord, now: float) -> PeerFound | None:
        """Apply a validated advertisement; the event to report, if any."""
        if record.peer_id == self.own_peer_id:
            return None  # our own advert, echoed back
        entry = self._peers.get(record.name)
        if entry is None:
            if self.is_full():
                self._ignore("peer table full (%d peers): ignoring %s", self.max_peers, record.peer_id)
                return None
        elif (entry.record.host, entry.record.port) == (record.host, record.port):
            entry.seen_at = now
            return None
        elif now - entry.seen_at < self.conflict_window:
            self._ignore(
                "conflicting adverts for %s: keeping %s:%d, ignoring %s:%d",
                record.peer_id,
                entry.record.host,
                entry.record.port,
                record.host,
                record.port,
            )
            return None
        self._peers[record.name] = _Entry(record, now)
        return PeerFound(record.peer_id, record.host, record.port)

    def lost(self, name: str) -> PeerLost | None:
        """The advertisement ``name`` is gone; the event to report, if any."""
        entry = self._peers.pop(name, None)
        return PeerLost(entry.record.peer_id) if entry is not None else None

    def _ignore(self, message: str, *args: object) -> None:
        self.ignored += 1
        log.info(message, *args)
