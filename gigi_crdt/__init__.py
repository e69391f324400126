"""gigi-crdt: local-first, peer-to-peer chat on Yjs documents (pycrdt), SQLite and trio."""

from .errors import ConfigError as ConfigError
from .errors import ConversationError as ConversationError
from .errors import GigiError as GigiError
from .errors import NotAllowed as NotAllowed
from .errors import RelayRefused as RelayRefused
from .errors import SchemaError as SchemaError
from .errors import StorageError as StorageError
from .errors import StoreClosed as StoreClosed
from .errors import StoreCorrupt as StoreCorrupt
from .errors import StoreFull as StoreFull
from .errors import StoreInUse as StoreInUse
from .errors import StoreReadOnly as StoreReadOnly
from .errors import UnknownConversation as UnknownConversation
from .errors import UnknownMessage as UnknownMessage
from .model import Content as Content
from .model import ConversationKind as ConversationKind
from .model import FileShare as FileShare
from .model import GroupInvite as GroupInvite
from .model import Member as Member
from .model import Message as Message
from .model import Metadata as Metadata
from .model import ReceiptKind as ReceiptKind
from .model import Role as Role
from .model import Text as Text
from .node import Node as Node
from .node import NodeConfig as NodeConfig
from .node import open_node as open_node
from .replica import Replica as Replica
from .replica import open_replica as open_replica
from .store import ConversationSummary as ConversationSummary

__all__ = [
    "ConfigError",
    "Content",
    "ConversationError",
    "ConversationKind",
    "ConversationSummary",
    "FileShare",
    "GigiError",
    "GroupInvite",
    "Member",
    "Message",
    "Metadata",
    "Node",
    "NodeConfig",
    "NotAllowed",
    "ReceiptKind",
    "RelayRefused",
    "Replica",
    "Role",
    "SchemaError",
    "StorageError",
    "StoreClosed",
    "StoreCorrupt",
    "StoreFull",
    "StoreInUse",
    "StoreReadOnly",
    "Text",
    "UnknownConversation",
    "UnknownMessage",
    "open_node",
    "open_replica",
]
