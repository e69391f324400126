"""The trio sync engine: peer links over any trio stream, TCP transport, reconnection."""

from .activity import Activity as Activity
from .activity import EventsDropped as EventsDropped
from .activity import MessageDeleted as MessageDeleted
from .activity import MessageEdited as MessageEdited
from .activity import MessageReceived as MessageReceived
from .activity import OfflineMessagesReceived as OfflineMessagesReceived
from .activity import PeerOffline as PeerOffline
from .activity import PeerOnline as PeerOnline
from .activity import PresenceChanged as PresenceChanged
from .activity import ReactionChanged as ReactionChanged
from .activity import ReceiptUpdated as ReceiptUpdated
from .activity import SyncProgress as SyncProgress
from .activity import TransferProgress as TransferProgress
from .engine import LinkOutcome as LinkOutcome
from .engine import SyncEngine as SyncEngine
from .link import LinkSettings as LinkSettings
from .presence import Presence as Presence
from .tcp import connect_tcp as connect_tcp
from .tcp import keep_connected as keep_connected
from .tcp import serve_tcp as serve_tcp
