"""The node's database: an append-only log of Yjs updates per conversation plus the index.

Synchronous and thread-confined: the trio layer (``worker.py``) runs every call in a
worker thread. Each commit is one SQLite transaction holding any number of updates and
their index rows (group commit), so durability costs one fsync per batch, not per message.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from ..errors import StoreClosed, UnknownConversation
from ..model import Changes, Member, Metadata
from ..model.gaps import Logged
from ..model.ops import Deleted
from ..model.signed import is_signed
from ..model.slices import SlicePlan
from . import index
from .database import DATABASE_NAME, connect, lock_directory, translated
from .plans import decode_plan, encode_plan, is_own_plan, is_plan

log = logging.getLogger(__name__)

T = TypeVar("T")

# Compact when the log since the last snapshot outgrows a quarter of the snapshot: cold
# loads then stay within 1.25x of applying one snapshot, and compaction work stays
# proportional to what was written.
MIN_COMPACTION_BYTES = 1024 * 1024
COMPACTION_RATIO = 0.25
# Pages of write-ahead log after which a commit copies the log into the database file
# itself, inside the commit (SQLite's default: 1,000). ``checkpoint``, run beside the
# writer, does that work off the commit path; this is the fallback for when it keeps
# missing the pauses between commits that let the log start over.
WRITER_AUTOCHECKPOINT = 2000
WAITING = b"waiting"  # yupdates.metadata of an update that left structs waiting for a dependency
# Updates above this size are written through incremental blob I/O, not bound to the
# INSERT: SQLite keeps a statement's last bound values until it runs again, and Python
# caches statements, so a 16 MB snapshot bound once stayed resident, a copy per cached
# statement, until the next such write (a 50 MB blob: 50 MB held, measured).
BOUND_BLOB_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Record:
    """One update to persist, with what it changed (for the index)."""

    conversation: str
    update: bytes
    changes: Changes
    metadata: Metadata | None = None
    members: Sequence[Member] = ()
    expire_before: int | None = None  # messages older than this are past retention: not indexed
    generation: int = 0  # the in-memory document it came from; 0: none to track
    waiting: bool = False  # the update left structs waiting for a dependency (see ``load_log``)
    slices: SlicePlan | None = None  # how to apply a large update in slices (``model.slices``)
    signed: Sequence[tuple[str, str, str]] = ()
    """Signed records held now: (root, key, JSON record); see ``signed_records``."""
    state_vector: bytes | None = None
    """The document's state vector with ``update`` applied; ``None`` if it is not to be
    told from the store (see ``stored_state_vector``). Without an update: the state
    vector of everything committed before, to store (``None``: keep the stored one)."""


class Store:
    """One SQLite database per data directory. Open with ``Store.open``."""

    def __init__(
        self,
        directory: Path,
        lock: IO[bytes],
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        checkpointer: sqlite3.Connection,
    ):
        self.directory = directory
        self.path = directory / DATABASE_NAME
        self._lock = lock
        self._writer: sqlite3.Connection | None = writer
        self._reader: sqlite3.Connection | None = reader
        self._checkpointer: sqlite3.Connection | None = checkpointer

    @classmethod
    def open(cls, directory: str | Path) -> Store:
        """Lock ``directory`` for this process and open (or create) its database."""
        directory = Path(directory)
        lock = lock_directory(directory)
        connections: list[sqlite3.Connection] = []
        try:
            for _ in range(3):
                connections.append(connect(directory / DATABASE_NAME))
            writer, reader, checkpointer = connections
            with translated(directory / DATABASE_NAME):
                writer.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT}")
        except BaseException:
            for connection in connections:
                connection.close()
            lock.close()
            raise
        return cls(directory, lock, writer, reader, checkpointer)

    def close(self) -> None:
        """Close the database and release the directory. Idempotent."""
        for connection in (self._writer, self._reader, self._checkpointer):
            if connection is not None:
                connection.close()
        self._writer = self._reader = self._checkpointer = None
        self._lock.close()

    def checkpoint(self) -> None:
        """Copy the pages that commits appended to the write-ahead log into the database
        file, on a connection of its own: a passive checkpoint, which neither waits for
        nor holds up the writer or readers, so it can run in a thread beside them.

        Run often, it spares commits the checkpoints SQLite would run inside them (every
        ``WRITER_AUTOCHECKPOINT`` pages), each of which made its commit several times
        slower: one live message in about sixty. The log starts over at the first commit
        after a checkpoint that copied all of it.
        """
        db = self._connection(self._checkpointer)
        with translated(self.path):
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # fetched: the statement ends

    # -- writing -------------------------------------------------------------------

    def commit(self, records: Sequence[Record]) -> list[list[str]]:
        """Persist ``records`` atomically: all of them, with their index rows, or none.
        For each record, the ids of the messages it took out of the index (see
        ``index.record_changes``)."""
        known: set[str] = set()
        with self._transaction() as db:
            return [self._write(db, record, known) for record in records]

    def _write(self, db: sqlite3.Connection, record: Record, known: set[str]) -> list[str]:
        """Write one record; ``known`` holds conversations already seen in this transaction."""
        if record.metadata is not None:
            index.record_metadata(db, record.metadata, record.members)
        elif record.conversation not in known and index.metadata(db, record.conversation) is None:
            raise UnknownConversation(f"conversation {record.conversation} has no metadata yet")
        known.add(record.conversation)
        if record.update:
            _insert_update(db, record.conversation, record.update, _row_metadata(record.waiting, record.slices))
            # A conversation's first update (often a whole catch-up) counts as its snapshot;
            # later ones as log. Deletions are counted: only they leave garbage to collect.
            db.execute(
                "UPDATE conversations SET "
                "snapshot_bytes = CASE WHEN snapshot_bytes = 0 AND log_bytes = 0 THEN :n ELSE snapshot_bytes END, "
                "log_bytes = CASE WHEN snapshot_bytes = 0 AND log_bytes = 0 THEN 0 ELSE log_bytes + :n END, "
                "garbage = garbage + :deleted, state_vector = :sv WHERE id = :conv",
                {
                    "n": len(record.update),
                    "deleted": _deletions(record),
                    "sv": record.state_vector,
                    "conv": record.conversation,
                },
            )
        elif record.state_vector is not None:
            db.execute(
                "UPDATE conversations SET state_vector = ? WHERE id = ?", (record.state_vector, record.conversation)
            )
        vanished = index.record_changes(db, record.conversation, record.changes, record.expire_before)
        db.executemany(
            "INSERT OR REPLACE INTO signed_records VALUES (?, ?, ?, ?)",
            [(record.conversation, root, key, value) for root, key, value in record.signed],
        )
        return vanished

    def committed_log(self, conversation: str) -> tuple[int, list[Logged], bool]:
        """The last row id, every committed update of a conversation (each marked if it left
        structs waiting), and whether deletions since the last garbage collection left
        garbage (for compaction)."""
        db = self._connection(self._reader)
        with translated(self.path):
            db.execute("BEGIN")  # one consistent snapshot of the log
            try:
                (last,) = db.execute("SELECT coalesce(max(rowid), 0) FROM yupdates").fetchone()
                updates = self._log(db, conversation)
                row = db.execute("SELECT garbage FROM conversations WHERE id = ?", (conversation,)).fetchone()
            finally:
                db.execute("COMMIT")
        return int(last), updates, bool(row and row[0])

    def adopt_snapshot(self, conversation: str, upto_row: int) -> None:
        """Count the log rows up to ``upto_row`` (a single update) as the snapshot."""
        with self._transaction() as db:
            db.execute(
                "UPDATE conversations SET "
                "snapshot_bytes = (SELECT coalesce(sum(length(yupdate)), 0) FROM yupdates "
                "WHERE path = :conv AND rowid <= :upto), "
                "log_bytes = (SELECT coalesce(sum(length(yupdate)), 0) FROM yupdates "
                "WHERE path = :conv AND rowid > :upto) WHERE id = :conv",
                {"conv": conversation, "upto": upto_row},
            )

    def replace_log(
        self, conversation: str, upto_row: int, snapshot: bytes, collected: bool, waiting: bytes = b""
    ) -> None:
        """Swap the log rows up to ``upto_row`` for ``snapshot``; later rows stay as they are.

        ``collected``: the snapshot was garbage-collected, so the deletion count restarts.
        ``waiting``: structs of the snapshot still waiting for a dependency, kept beside it
        as a marked row (see ``load_log``).
        """
        with self._transaction() as db:
            # Rows committed meanwhile must still come after the snapshot: a log is applied
            # in order (``model.gaps.load_document``). They are few: write them again after it.
            later = db.execute(
                "SELECT yupdate, metadata, timestamp FROM yupdates WHERE path = ? AND rowid > ? ORDER BY rowid",
                (conversation, upto_row),
            ).fetchall()
            db.execute("DELETE FROM yupdates WHERE path = ?", (conversation,))
            db.execute("DELETE FROM ycheckpoints WHERE path = ?", (conversation,))
            now = time.time()
            rows = [(snapshot, None, now)] + ([(waiting, WAITING, now)] if waiting else []) + later
            for row in rows:
                _insert_update(db, conversation, *row)
            remaining = sum(len(row[0]) for row in rows[1:])
            db.execute(
                "UPDATE conversations SET log_bytes = ?, snapshot_bytes = ?, "
                "garbage = CASE WHEN ? THEN 0 ELSE garbage END WHERE id = ?",
                (remaining, len(snapshot), collected, conversation),
            )

    def set_slice_plan(self, conversation: str, update: bytes, slices: SlicePlan) -> None:
        """Store ``slices`` beside a row of the conversation's log holding ``update``, if one
        still does (a compaction may have replaced it since it was planned), in place of a
        damaged plan if it had one, never of the mark of a row that left structs waiting.
        The row is found by its bytes, not its row id: SQLite gives a deleted row's id to
        the next. The bytes are compared here, not bound (see ``BOUND_BLOB_BYTES``)."""
        with self._transaction() as db:
            candidates = db.execute(
                "SELECT rowid, yupdate FROM yupdates WHERE path = ? AND length(yupdate) = ? AND metadata IS NOT ?",
                (conversation, len(update), WAITING),
            ).fetchall()
            for rowid, stored in candidates:
                if stored == update:
                    plan = encode_plan(slices, own=True)
                    db.execute("UPDATE yupdates SET metadata = ? WHERE rowid = ?", (plan, rowid))

    def purge_expired(self, conversation: str, before_ts: int) -> int:
        """Apply a retention cut to the index; returns how many messages left it."""
        with self._transaction() as db:
            count = index.purge_expired(db, conversation, before_ts)
        return count

    def rebuild_index(self, conversation: str, records: Sequence[Record]) -> None:
        """Drop and rewrite one conversation's index rows (the log is left alone)."""
        with self._transaction() as db:
            index.clear(db, conversation)
            for record in records:
                self._write(
                    db, Record(record.conversation, b"", record.changes, record.metadata, record.members), set()
                )

    def set_setting(self, key: str, value: str) -> None:
        """Store a node setting (peer id, nickname)."""
        db = self._connection(self._writer)
        with translated(self.path):
            db.execute("INSERT OR REPLACE INTO gigi_settings VALUES (?, ?)", (key, value))

    # -- reading -------------------------------------------------------------------

    def load_log(self, conversation: str) -> list[Logged]:
        """Everything stored for a conversation, in order, to apply to a fresh document."""
        db = self._connection(self._reader)
        with translated(self.path):
            updates = self._log(db, conversation)
        if not updates:
            raise UnknownConversation(f"no conversation {conversation} in {self.path}")
        return updates

    def signed_records(self, conversation: str) -> list[tuple[str, str, str]]:
        """The signed records last held for a conversation: (root, key, JSON record).

        A member can put an older signed record back into the document; what this peer
        saw newer must survive a restart (``Conversation.from_updates(held=...)``).
        """
        db = self._connection(self._reader)
        with translated(self.path):
            rows = db.execute("SELECT root, key, record FROM signed_records WHERE conv = ?", (conversation,))
            return [(str(root), str(key), str(record)) for root, key, record in rows.fetchall()]

    def _log(self, db: sqlite3.Connection, conversation: str) -> list[Logged]:
        # A checkpoint row may exist if pycrdt-store itself wrote to this file: it holds
        # whatever was written, so it is cut at gaps like an update that left structs waiting.
        checkpoint = db.execute("SELECT checkpoint, ? FROM ycheckpoints WHERE path = ?", (WAITING, conversation))
        rows = db.execute("SELECT yupdate, metadata FROM yupdates WHERE path = ? ORDER BY rowid", (conversation,))
        return [_logged(conversation, bytes(u), m) for u, m in checkpoint.fetchall() + rows.fetchall() if u]

    def needs_compaction(self, conversation: str) -> bool:
        """True once the log since the last snapshot is large relative to the snapshot."""
        row = self.query(
            lambda db: db.execute(
                "SELECT log_bytes, snapshot_bytes FROM conversations WHERE id = ?", (conversation,)
            ).fetchone()
        )
        return row is not None and row[0] > max(MIN_COMPACTION_BYTES, COMPACTION_RATIO * row[1])

    def setting(self, key: str) -> str | None:
        """A node setting, or ``None``."""
        row = self.query(lambda db: db.execute("SELECT value FROM gigi_settings WHERE key = ?", (key,)).fetchone())
        return None if row is None else str(row[0])

    def query(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only index query (see ``index``) on the reading connection."""
        db = self._connection(self._reader)
        with translated(self.path):
            return function(db)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block succeeds, rolled back if not."""
        db = self._connection(self._writer)
        with translated(self.path):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _connection(self, connection: sqlite3.Connection | None) -> sqlite3.Connection:
        if connection is None:
            raise StoreClosed(f"{self.path} is closed")
        return connection


def stored_state_vector(db: sqlite3.Connection, conversation: str) -> bytes | None:
    """A conversation's state vector as of its last committed update, to answer peers
    without loading the document; ``None`` if the document must be loaded to tell: it
    had structs waiting for a dependency then (only it knows which), the store was
    written by an older version, or there is no such conversation.

    It is written in the same transaction as the update it follows, so it never claims
    more than the log holds: a peer told it sends us nothing we lack.
    """
    row = db.execute("SELECT state_vector FROM conversations WHERE id = ?", (conversation,)).fetchone()
    return None if row is None or row[0] is None else bytes(row[0])


def _insert_update(
    db: sqlite3.Connection, conversation: str, update: bytes, metadata: bytes | None, timestamp: float | None = None
) -> None:
    """Append ``update`` to a conversation's log, a large one without binding it."""
    when = time.time() if timestamp is None else timestamp
    if len(update) <= BOUND_BLOB_BYTES:
        db.execute("INSERT INTO yupdates VALUES (?, ?, ?, ?)", (conversation, update, metadata, when))
        return
    cursor = db.execute(
        "INSERT INTO yupdates VALUES (?, zeroblob(?), ?, ?)", (conversation, len(update), metadata, when)
    )
    assert cursor.lastrowid is not None  # an INSERT sets it
    with db.blobopen("yupdates", "yupdate", cursor.lastrowid) as blob:
        blob.write(update)


def _row_metadata(waiting: bool, slices: SlicePlan | None) -> bytes | None:
    """``yupdates.metadata`` of an update row: marked if it left structs waiting, else its
    slice plan, if it has one."""
    if waiting:
        return WAITING
    return None if slices is None else encode_plan(slices)


def _logged(conversation: str, update: bytes, metadata: bytes | None) -> Logged:
    if metadata == WAITING:
        return Logged(update, True)
    if metadata is None or not is_plan(metadata):
        return Logged(update, False)
    slices = decode_plan(metadata, update)
    if slices is None:
        log.warning("the slice plan stored beside an update of %s is damaged: it loads whole", conversation)
    return Logged(update, False, slices, taken_in_slices=not is_own_plan(metadata))


def _deletions(record: Record) -> int:
    """How much garbage ``record``'s update leaves: its message deletions, or in a signed
    conversation at least one, for the head of its author that it overwrites (a plain
    merge keeps every old head, 250 bytes each: four times the size of the messages)."""
    deleted = sum(1 for entry in record.changes.entries if isinstance(entry.op, Deleted))
    return max(deleted, 1) if is_signed(record.conversation) else deleted
