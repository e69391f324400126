"""Conversation documents over pycrdt: pure data, no I/O, no trio."""

from .changes import Changes as Changes
from .changes import Written as Written
from .clock import HybridClock as HybridClock
from .content import Content as Content
from .content import FileShare as FileShare
from .content import GroupInvite as GroupInvite
from .content import Text as Text
from .conversation import Conversation as Conversation
from .ids import new_id as new_id
from .metadata import ConversationKind as ConversationKind
from .metadata import Member as Member
from .metadata import Metadata as Metadata
from .metadata import Receipt as Receipt
from .metadata import ReceiptKind as ReceiptKind
from .metadata import Role as Role
from .ops import BUCKET_SIZE as BUCKET_SIZE
from .ops import StreamEntry as StreamEntry
from .view import HistoryFold as HistoryFold
from .view import Message as Message
from .view import fold_history as fold_history
from .yupdate import UnsafeUpdate as UnsafeUpdate
from .yupdate import UpdateLimits as UpdateLimits
from .yupdate import UpdateSummary as UpdateSummary
from .yupdate import check_update as check_update
