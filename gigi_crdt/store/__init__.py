"""Durable local storage: the SQLite update log, the rebuildable index, the trio worker."""

from .index import ConversationSummary as ConversationSummary
from .store import Record as Record
from .store import Store as Store
from .worker import StoreWorker as StoreWorker
