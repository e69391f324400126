"""The SQLite file: opening it, its schema, the directory lock, and error translation.

The update log uses pycrdt-store's own tables (``yupdates``, ``ycheckpoints``, schema
version 2), so ``pycrdt.store.SQLiteYStore`` (and a pycrdt-websocket server built on it)
can read a gigi-crdt database. Everything else (the index) lives in tables of our own.
We do not write through pycrdt-store: it swallows storage errors, loses data when
squashing, and commits once per update; see ``docs`` in the README.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..errors import StorageError, StoreCorrupt, StoreFull, StoreInUse, StoreReadOnly

DATABASE_NAME = "gigi.sqlite3"
LOCK_NAME = "gigi.lock"
SCHEMA_VERSION = 5
YSTORE_VERSION = 2  # pycrdt.store.BaseYStore.version

# Signed records (member records, charters) held as the newest valid ones seen: not derived
# from the document alone (a member can put an older one back there), so not index data.
_SIGNED_RECORDS = """
CREATE TABLE signed_records (
    conv TEXT NOT NULL, root TEXT NOT NULL, key TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (conv, root, key)) WITHOUT ROWID;
"""

# Edits and deletions that reached the index before the post they change (an author's
# entries can come from its head down: see ``index._record_change``), until it comes.
_EARLY_CHANGES = """
CREATE TABLE early_changes (
    conv TEXT NOT NULL, target TEXT NOT NULL, author TEXT NOT NULL, seq INTEGER NOT NULL,
    ts INTEGER NOT NULL, op TEXT NOT NULL, PRIMARY KEY (conv, target, author, seq)) WITHOUT ROWID;
"""

_SCHEMA = (
    """
CREATE TABLE yupdates (path TEXT NOT NULL, yupdate BLOB, metadata BLOB, timestamp REAL NOT NULL);
CREATE INDEX idx_yupdates_path_timestamp ON yupdates (path, timestamp);
CREATE TABLE ycheckpoints (
    path TEXT NOT NULL, checkpoint BLOB NOT NULL, timestamp REAL NOT NULL, PRIMARY KEY(path));
CREATE TABLE gigi_settings (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE conversations (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, title TEXT NOT NULL, created_at INTEGER NOT NULL,
    retention_days INTEGER, log_bytes INTEGER NOT NULL DEFAULT 0,
    snapshot_bytes INTEGER NOT NULL DEFAULT 0, garbage INTEGER NOT NULL DEFAULT 0,
    state_vector BLOB);
CREATE TABLE members (
    conv TEXT NOT NULL, peer TEXT NOT NULL, nickname TEXT NOT NULL, role TEXT NOT NULL,
    joined_at INTEGER NOT NULL, left_at INTEGER, removed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conv, peer)) WITHOUT ROWID;
CREATE TABLE messages (
    conv TEXT NOT NULL, id TEXT NOT NULL, author TEXT NOT NULL, seq INTEGER NOT NULL,
    nickname TEXT NOT NULL, ts INTEGER NOT NULL, kind TEXT, content TEXT, body TEXT,
    edited_at INTEGER, deleted_at INTEGER, edit_seq INTEGER, UNIQUE (conv, id));
CREATE INDEX messages_order ON messages (conv, ts, id);
CREATE INDEX messages_unread ON messages (conv, author, seq) WHERE deleted_at IS NULL;
CREATE TABLE reactions (
    conv TEXT NOT NULL, target TEXT NOT NULL, emoji TEXT NOT NULL, reactor TEXT NOT NULL,
    seq INTEGER NOT NULL, active INTEGER NOT NULL,
    PRIMARY KEY (conv, target, emoji, reactor)) WITHOUT ROWID;
CREATE TABLE receipts (
    conv TEXT NOT NULL, member TEXT NOT NULL, kind TEXT NOT NULL, author TEXT NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (conv, member, kind, author)) WITHOUT ROWID;
-- How far the index has folded each author's stream: a document loaded later indexes the rest.
CREATE TABLE stream_cursors (
    conv TEXT NOT NULL, author TEXT NOT NULL, length INTEGER NOT NULL,
    PRIMARY KEY (conv, author)) WITHOUT ROWID;
CREATE VIRTUAL TABLE message_text USING fts5(body, content='messages', content_rowid='rowid');
-- The full-text index follows messages.body: new rows are added in bulk by the index code (a
-- per-row trigger made a 10^5-message catch-up ten times slower); changes and deletions here.
CREATE TRIGGER message_text_delete AFTER DELETE ON messages WHEN old.body IS NOT NULL BEGIN
    INSERT INTO message_text (message_text, rowid, body) VALUES ('delete', old.rowid, old.body);
END;
CREATE TRIGGER message_text_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO message_text (message_text, rowid, body)
        SELECT 'delete', old.rowid, old.body WHERE old.body IS NOT NULL;
    INSERT INTO message_text (rowid, body) SELECT new.rowid, new.body WHERE new.body IS NOT NULL;
END;
"""
    + _SIGNED_RECORDS
    + _EARLY_CHANGES
)

# From each older version straight to SCHEMA_VERSION, in one transaction.
_ADD_REMOVED = "ALTER TABLE members ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;"
_ADD_STATE_VECTOR = "ALTER TABLE conversations ADD COLUMN state_vector BLOB;"  # NULL: load to learn it
# Version 5: the seq of a message's shown edit (NULL: any edit may replace it), early changes.
_ADD_EDIT_ORDER = "ALTER TABLE messages ADD COLUMN edit_seq INTEGER;" + _EARLY_CHANGES
_TO_CURRENT = f"UPDATE gigi_settings SET value = {SCHEMA_VERSION} WHERE key = 'schema_version';"
_MIGRATIONS = {
    1: _ADD_REMOVED + _SIGNED_RECORDS + _ADD_STATE_VECTOR + _ADD_EDIT_ORDER + _TO_CURRENT,
    2: _SIGNED_RECORDS + _ADD_STATE_VECTOR + _ADD_EDIT_ORDER + _TO_CURRENT,
    3: _ADD_STATE_VECTOR + _ADD_EDIT_ORDER + _TO_CURRENT,
    4: _ADD_EDIT_ORDER + _TO_CURRENT,
}


def translate(exc: sqlite3.Error, path: Path) -> StorageError:
    """Our exact error for an sqlite3 failure on ``path``."""
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text:
        return StoreReadOnly(f"{path}: cannot write: {exc}")
    if "full" in text:
        return StoreFull(f"{path}: disk full: {exc}")
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StoreCorrupt(f"{path}: database is damaged: {exc}")
    if "locked" in text or "busy" in text:
        return StoreInUse(f"{path}: database is locked by another connection: {exc}")
    return StorageError(f"{path}: {exc}")


@contextlib.contextmanager
def translated(path: Path) -> Iterator[None]:
    """Run a block, raising ``StorageError`` subclasses instead of sqlite3 errors."""
    try:
        yield
    except sqlite3.Error as exc:
        raise translate(exc, path) from exc


def lock_directory(directory: Path) -> IO[bytes]:
    """Take the data directory for this process; ``StoreInUse`` if another one has it."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = open(os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600), "rb+")
    except OSError as exc:
        raise _os_error(exc, directory) from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreInUse(f"{directory} is already in use by another gigi-crdt process") from None
    return handle


def _os_error(exc: OSError, path: Path) -> StorageError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreReadOnly(f"{path}: cannot write: {exc.strerror}")
    if exc.errno == errno.ENOSPC:
        return StoreFull(f"{path}: disk full")
    return StorageError(f"{path}: {exc.strerror}")


def connect(path: Path) -> sqlite3.Connection:
    """Open and check the database, creating it first if there is none.

    Creation happens under a temporary name that is renamed into place once the schema
    is committed, so a database file that exists but is empty or schema-less was damaged
    after the fact (``StoreCorrupt``), never half-created.
    """
    if not path.exists():
        _create(path)
    with translated(path):
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            _configure(connection, path)
            _check_schema(connection, path)
        except BaseException:
            connection.close()
            raise
    return connection


def _configure(connection: sqlite3.Connection, path: Path) -> None:
    connection.execute("PRAGMA busy_timeout = 0")
    if connection.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
        raise StorageError(f"{path}: cannot switch to write-ahead logging")
    # FULL: a commit that returned is on disk even if the machine loses power.
    connection.execute("PRAGMA synchronous = FULL")


def _create(path: Path) -> None:
    draft = path.with_name(path.name + ".new")
    for leftover in (draft, draft.with_name(draft.name + "-wal"), draft.with_name(draft.name + "-shm")):
        leftover.unlink(missing_ok=True)
    try:
        os.close(os.open(draft, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise _os_error(exc, path) from exc
    with translated(draft):
        connection = sqlite3.connect(draft, isolation_level=None)
        try:
            connection.executescript(
                f"PRAGMA user_version = {YSTORE_VERSION}; BEGIN; {_SCHEMA} "
                f"INSERT INTO gigi_settings VALUES ('schema_version', {SCHEMA_VERSION}); COMMIT;"
            )
        finally:
            connection.close()
    os.replace(draft, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _check_schema(connection: sqlite3.Connection, path: Path) -> None:
    try:
        row = connection.execute("SELECT value FROM gigi_settings WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:
        row = None
    if row is None:
        raise StoreCorrupt(f"{path}: not a gigi-crdt database (no schema version)")
    if row[0] in _MIGRATIONS:
        connection.executescript(f"BEGIN; {_MIGRATIONS[row[0]]} COMMIT;")
        row = (SCHEMA_VERSION,)
    if row[0] != SCHEMA_VERSION:
        raise StorageError(f"{path}: schema version {row[0]} is not supported (this is {SCHEMA_VERSION})")
