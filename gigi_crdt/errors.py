"""The errors gigi-crdt raises, each with one exact meaning.

::

    GigiError                      root: catch this to catch everything of ours
    ├── ConfigError                a node setting cannot be used here (unknown interface, port taken)
    ├── SchemaError                a value does not fit the conversation schema
    │   └── UnsafeUpdate           a Yjs update from the network failed the schema check (in model)
    ├── ConversationError          a request about a conversation cannot be honoured
    │   ├── UnknownConversation    no conversation with that id is stored here
    │   └── NotAllowed             the local peer may not do this (not the author, not an admin)
    ├── UnknownMessage             no message with that id in the conversation
    ├── RelayRefused               a relay refused us a room (HTTP 401/403: a wrong token)
    └── StorageError               the local database failed; nothing was written
        ├── StoreInUse             another process holds the data directory
        ├── StoreCorrupt           the database file is damaged or not ours
        ├── StoreReadOnly          the database cannot be written (permissions, read-only disk)
        ├── StoreFull              the disk is full
        └── StoreClosed            the store was used after it was closed

Every storage failure reaches the caller as a ``StorageError`` subclass naming the file;
nothing is logged and then dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "ConfigError",
    "ConversationError",
    "GigiError",
    "NotAllowed",
    "RelayRefused",
    "SchemaError",
    "StorageError",
    "StoreClosed",
    "StoreCorrupt",
    "StoreFull",
    "StoreInUse",
    "StoreReadOnly",
    "UnknownConversation",
    "UnknownMessage",
]


class GigiError(Exception):
    """Root of every error gigi-crdt raises on purpose."""


class ConfigError(GigiError, ValueError):
    """A node setting cannot be used on this machine: an unknown interface, a port already taken."""


class SchemaError(GigiError, ValueError):
    """A value does not fit the conversation schema (bad content, bad id, too large)."""


class ConversationError(GigiError):
    """A request about a conversation cannot be honoured."""


class UnknownConversation(ConversationError, KeyError):
    """No conversation with that id is stored on this node."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown conversation"


class NotAllowed(ConversationError):
    """The local peer may not do this: edit another's message, change members without being admin."""


class UnknownMessage(GigiError, KeyError):
    """No message with that id exists in the conversation."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown message"


class RelayRefused(GigiError):
    """A relay answered the WebSocket handshake with an HTTP error: 401/403 mean a wrong token."""


class StorageError(GigiError):
    """The local database failed; the operation did not take effect."""


class StoreInUse(StorageError):
    """Another process has the data directory open."""


class StoreCorrupt(StorageError):
    """The database file is damaged, truncated or not a gigi-crdt store."""


class StoreReadOnly(StorageError):
    """The database cannot be written (permissions or a read-only file system)."""


class StoreFull(StorageError):
    """The disk holding the database is full."""


class StoreClosed(StorageError):
    """The store was used after it was closed."""


@contextlib.contextmanager
def single_errors_unwrapped() -> Iterator[None]:
    """Let an error raised in a block around a nursery leave as itself, not inside a group.

    Our background tasks (the store worker, a node's services) fail only by raising into
    the block, so a group of one is the caller's own error: ``except StoreCorrupt`` around
    ``open_replica`` or ``open_node`` must catch it.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
