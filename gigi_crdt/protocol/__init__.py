"""The gigi-sync wire protocol, sans I/O: pure, no trio, no pycrdt, no clock.

See ``protocols/gigi-sync-v1.md`` for the language-neutral specification.
"""

from .codec import MAX_REACHED as MAX_REACHED
from .codec import Limits as Limits
from .connection import Connection as Connection
from .connection import State as State
from .errors import CloseCode as CloseCode
from .errors import LocalProtocolError as LocalProtocolError
from .errors import ProtocolError as ProtocolError
from .errors import RemoteProtocolError as RemoteProtocolError
from .events import HEADS_CAPABILITY as HEADS_CAPABILITY
from .events import NEED_DATA as NEED_DATA
from .events import PARTS_CAPABILITY as PARTS_CAPABILITY
from .events import REACH_CAPABILITY as REACH_CAPABILITY
from .events import Announce as Announce
from .events import Awareness as Awareness
from .events import Close as Close
from .events import ConnectionClosed as ConnectionClosed
from .events import Event as Event
from .events import HeadRecord as HeadRecord
from .events import Hello as Hello
from .events import NeedData as NeedData
from .events import Ping as Ping
from .events import Pong as Pong
from .events import SyncPart as SyncPart
from .events import SyncStep1 as SyncStep1
from .events import SyncStep2 as SyncStep2
from .events import Update as Update
from .yproto import AwarenessEntry as AwarenessEntry
