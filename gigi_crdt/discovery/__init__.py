"""Finding peers: mDNS/DNS-SD on the LAN, static ``host:port`` peers, and the dialer both feed."""

from .dialer import Dialer as Dialer
from .events import DiscoveryEvent as DiscoveryEvent
from .events import PeerFound as PeerFound
from .events import PeerLost as PeerLost
from .mdns import DiscoveryError as DiscoveryError
from .mdns import MdnsDiscovery as MdnsDiscovery
from .mdns import open_mdns as open_mdns
from .records import SERVICE_TYPE as SERVICE_TYPE
from .records import InvalidRecord as InvalidRecord
from .static import InvalidPeerAddress as InvalidPeerAddress
from .static import parse_peer_address as parse_peer_address
from .static import static_peers as static_peers

__all__ = [
    "SERVICE_TYPE",
    "Dialer",
    "DiscoveryError",
    "DiscoveryEvent",
    "InvalidPeerAddress",
    "InvalidRecord",
    "MdnsDiscovery",
    "PeerFound",
    "PeerLost",
    "open_mdns",
    "parse_peer_address",
    "static_peers",
]
