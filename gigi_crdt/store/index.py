"""The local index: messages, receipts and members as SQL rows, for paging, unread counts
and full-text search without loading a conversation document.

The index is derived data: ``Store.rebuild_index`` recreates it from the documents. It is
written in the same SQLite transaction as the update it derives from, so the two never
disagree on disk.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..model import (
    Changes,
    Content,
    ConversationKind,
    Member,
    Message,
    Metadata,
    ReceiptKind,
    Role,
    Text,
)
from ..model.content import content_fields, decode_content, searchable_text
from ..model.metadata import DAY_TICKS, retention_cutoff
from ..model.ops import BUCKET_SIZE, Deleted, Edited, Posted, Reacted, Tombstone, encode_op, parse_entry
from ..model.view import SortKey


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """One line of a conversation list."""

    metadata: Metadata
    last_message: Message | None
    unread: int


def record_metadata(db: sqlite3.Connection, meta: Metadata, members: Iterable[Member]) -> None:
    """Store a conversation's metadata and member list."""
    db.execute(
        "INSERT INTO conversations (id, kind, title, created_at, retention_days) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET title = excluded.title, retention_days = excluded.retention_days",
        (meta.id, meta.kind.value, meta.title, meta.created_at, meta.retention_days),
    )
    db.executemany(
        "INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(meta.id, m.peer_id, m.nickname, m.role.value, m.joined_at, m.left_at, m.removed) for m in members],
    )


def record_changes(db: sqlite3.Connection, conv: str, changes: Changes, expire_before: int | None = None) -> list[str]:
    """Fold a transaction's entries and receipts into the index, leaving out expired posts;
    return the ids of the messages shown until now that it took out (``Changes.vanished``).

    New posts go in with one statement (a catch-up may bring 10^5 of them); edits,
    deletions and reactions, which refer to earlier posts, follow in stream order.
    """
    # Gone from the document until their redaction comes (see ``Changes.vanished``).
    vanished = [
        message_id
        for author, seq in changes.vanished
        for message_id, deleted_at in db.execute(
            "DELETE FROM messages WHERE conv = ? AND author = ? AND seq = ? RETURNING id, deleted_at",
            (conv, author, seq),
        ).fetchall()
        if deleted_at is None  # one shown as deleted was announced as such already
    ]
    posts = []
    for entry in changes.entries:
        op = entry.op
        if isinstance(op, Posted | Tombstone):
            if expire_before is None or op.timestamp >= expire_before:
                posts.append(_post_row(conv, entry.author, entry.seq, op))
        elif isinstance(op, Edited | Deleted | Reacted):
            if posts:
                _insert_posts(db, conv, posts)
                posts = []
            _record_change(db, conv, entry.author, entry.seq, op)
    if posts:
        _insert_posts(db, conv, posts)
    folded: dict[str, int] = {}
    for entry in changes.entries:
        folded[entry.author] = max(folded.get(entry.author, 0), entry.seq + 1)
    for author, complete in changes.complete_upto.items():  # not past an entry still missing
        folded[author] = min(folded.get(author, complete), complete)
    db.executemany(
        "INSERT INTO stream_cursors VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET length = excluded.length "
        "WHERE excluded.length > stream_cursors.length",
        [(conv, author, length) for author, length in folded.items()],
    )
    db.executemany(
        "INSERT INTO receipts VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET seq = excluded.seq "
        "WHERE excluded.seq > receipts.seq",
        [(conv, r.member, r.kind.value, r.author, r.seq) for r in changes.receipts],
    )
    return vanished


def _post_row(conv: str, author: str, seq: int, op: Posted | Tombstone) -> tuple[object, ...]:
    if isinstance(op, Tombstone):
        return (conv, op.id, author, seq, op.nickname, op.timestamp, None, None, None, op.deleted_at)
    return (conv, op.id, author, seq, op.nickname, op.timestamp, *_content_columns(op.content), None)


def _content_columns(content: Content) -> tuple[str, str | None, str]:
    """``kind``, ``content`` and ``body`` of a message row. A text's fields are its body
    alone, so it is stored once, with no JSON (a catch-up of 10^5 posts spent a fifth of
    its index time encoding them); other kinds keep their fields as JSON."""
    kind, fields = content_fields(content)  # validated when the op was written or read
    body = searchable_text(content)
    return kind, None if isinstance(content, Text) else _JSON.encode(fields), body


def _insert_posts(db: sqlite3.Connection, conv: str, rows: list[tuple[object, ...]]) -> None:
    (before,) = db.execute("SELECT coalesce(max(rowid), 0) FROM messages").fetchone()
    db.executemany(
        "INSERT OR IGNORE INTO messages (conv, id, author, seq, nickname, ts, kind, content, body, deleted_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    # New rows get row ids above every existing one; index their text in one statement.
    db.execute(
        "INSERT INTO message_text (rowid, body) SELECT rowid, body FROM messages WHERE rowid > ? AND body IS NOT NULL",
        (before,),
    )
    _apply_early_changes(db, conv, before)


def _apply_early_changes(db: sqlite3.Connection, conv: str, before: int) -> None:
    """Apply the early changes of the posts just inserted (row ids above ``before``)."""
    # Led by early_changes (mostly empty), not by the new rows (10^5 in a large catch-up).
    early = db.execute(
        "SELECT e.target, e.author, e.seq, e.op FROM early_changes AS e JOIN messages AS m "
        "ON m.conv = e.conv AND m.id = e.target WHERE e.conv = ? AND m.rowid > ? ORDER BY e.seq",
        (conv, before),
    ).fetchall()
    for target, author, seq, op in early:
        db.execute(
            "DELETE FROM early_changes WHERE conv = ? AND target = ? AND author = ? AND seq = ?",
            (conv, target, author, seq),
        )
        change = parse_entry(author, seq // BUCKET_SIZE, op).op  # written by ``_record_change``
        assert isinstance(change, Edited | Deleted)
        _record_change(db, conv, author, seq, change)


def _record_change(db: sqlite3.Connection, conv: str, author: str, seq: int, op: Edited | Deleted | Reacted) -> None:
    if isinstance(op, Reacted):
        db.execute(
            "INSERT INTO reactions VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
            "SET seq = excluded.seq, active = excluded.active WHERE excluded.seq > reactions.seq",
            (conv, op.target, op.emoji, author, seq, int(op.on)),
        )
        return
    found = _message_row(db, conv, op.target, author)
    if found is None:  # its post has not come yet (or expired: then it goes with the retention cut)
        db.execute(
            "INSERT OR IGNORE INTO early_changes VALUES (?, ?, ?, ?, ?, ?)",
            (conv, op.target, author, seq, op.timestamp, encode_op(op, seq)),
        )
        return
    row, own_and_live = found
    if not own_and_live:
        return
    if isinstance(op, Edited):
        # The newest edit stays shown, as in the document, whichever came last: a signed
        # stream releases an author's entries from the head down, so an edit can come
        # after a later one of the same message (an entry that was missing, found later).
        db.execute(
            "UPDATE messages SET kind = ?, content = ?, body = ?, edited_at = ?, edit_seq = ? "
            "WHERE rowid = ? AND (edit_seq IS NULL OR edit_seq < ?)",
            (*_content_columns(op.content), op.timestamp, seq, row, seq),
        )
    else:
        db.execute(
            "UPDATE messages SET kind = NULL, content = NULL, body = NULL, edited_at = NULL, deleted_at = ? "
            "WHERE rowid = ?",
            (op.timestamp, row),
        )


def _message_row(db: sqlite3.Connection, conv: str, message_id: str, author: str) -> tuple[int, bool] | None:
    """A message's row id, and whether ``author`` wrote it and it is not deleted (only then
    may ``author`` change it); ``None`` if the index holds no such message."""
    row = db.execute(
        "SELECT rowid, author = ? AND deleted_at IS NULL FROM messages WHERE conv = ? AND id = ?",
        (author, conv, message_id),
    ).fetchone()
    return None if row is None else (int(row[0]), bool(row[1]))


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # json.dumps would build one per call


# -- queries -----------------------------------------------------------------------

_MESSAGE_COLUMNS = "id, author, nickname, ts, seq, kind, content, body, edited_at, deleted_at"


def oldest_kept(db: sqlite3.Connection, conv: str, now: int) -> int | None:
    """The oldest timestamp the conversation's retention keeps at timestamp ``now``
    (``None``: it keeps everything). Reads leave out what is older: the index drops it
    only at the next retention check (``Replica.apply_retention``)."""
    row = db.execute("SELECT retention_days FROM conversations WHERE id = ?", (conv,)).fetchone()
    return retention_cutoff(None if row is None else row[0], now)


def page(db: sqlite3.Connection, conv: str, now: int, before: SortKey | None = None, limit: int = 50) -> list[Message]:
    """Up to ``limit`` messages preceding ``before`` (the newest if ``None``), oldest first,
    none past the retention at timestamp ``now``."""
    return _page(db, conv, oldest_kept(db, conv, now), before, limit)


def _page(db: sqlite3.Connection, conv: str, oldest: int | None, before: SortKey | None, limit: int) -> list[Message]:
    oldest = oldest or 0
    if before is None:
        rows = db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conv = ? AND ts >= ? ORDER BY ts DESC, id DESC LIMIT ?",
            (conv, oldest, limit),
        ).fetchall()
    else:
        rows = db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conv = ? AND ts >= ? AND (ts, id) < (?, ?) "
            "ORDER BY ts DESC, id DESC LIMIT ?",
            (conv, oldest, before[0], before[1], limit),
        ).fetchall()
    rows.reverse()
    return _messages(db, conv, rows)


def all_messages(db: sqlite3.Connection, conv: str) -> list[Message]:
    """The whole history from the index, oldest first."""
    rows = db.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conv = ? ORDER BY ts, id", (conv,)).fetchall()
    return _messages(db, conv, rows)


def find_message(db: sqlite3.Connection, conv: str, message_id: str) -> Message | None:
    """One message by id, or ``None``."""
    rows = db.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conv = ? AND id = ?", (conv, message_id)
    ).fetchall()
    found = _messages(db, conv, rows)
    return found[0] if found else None


def search(
    db: sqlite3.Connection, text: str, now: int, conv: str | None = None, limit: int = 50
) -> list[tuple[str, Message]]:
    """Messages whose words match ``text`` (as a phrase), newest first, as (conversation,
    message), none past its conversation's retention at timestamp ``now``."""
    phrase = '"' + text.replace('"', '""') + '"'
    rows = db.execute(
        f"SELECT m.conv, {', '.join('m.' + c for c in _MESSAGE_COLUMNS.split(', '))} "
        "FROM message_text JOIN messages m ON m.rowid = message_text.rowid JOIN conversations c ON c.id = m.conv "
        "WHERE message_text MATCH ? AND (? IS NULL OR m.conv = ?) "
        "AND (c.retention_days IS NULL OR m.ts >= ? - c.retention_days * ?) ORDER BY m.ts DESC LIMIT ?",
        (phrase, conv, conv, now, DAY_TICKS, limit),
    ).fetchall()
    return [(row[0], _messages(db, row[0], [row[1:]])[0]) for row in rows]


def unread_count(db: sqlite3.Connection, conv: str, reader: str, now: int) -> int:
    """Live messages by others past ``reader``'s read receipts, none past the retention at
    timestamp ``now``: one index range per author."""
    return _unread_count(db, conv, reader, oldest_kept(db, conv, now))


def _unread_count(db: sqlite3.Connection, conv: str, reader: str, oldest: int | None) -> int:
    authors = db.execute("SELECT peer FROM members WHERE conv = ? AND peer != ?", (conv, reader)).fetchall()
    # Only a conversation with a retention pays for reading each row's timestamp.
    kept, oldest_param = ("", ()) if oldest is None else (" AND ts >= ?", (oldest,))
    total = 0
    for (author,) in authors:
        total += db.execute(
            "SELECT count(*) FROM messages WHERE conv = ? AND author = ? AND deleted_at IS NULL AND seq > "
            "coalesce((SELECT seq FROM receipts WHERE conv = ? AND member = ? AND kind = 'read' AND author = ?), -1)"
            + kept,
            (conv, author, conv, reader, author, *oldest_param),
        ).fetchone()[0]
    return int(total)


def receipts_upto(db: sqlite3.Connection, conv: str, key: SortKey) -> dict[str, int]:
    """For each author, the seq of its last message at or before ``key`` in display order."""
    result: dict[str, int] = {}
    for (author,) in db.execute("SELECT peer FROM members WHERE conv = ?", (conv,)).fetchall():
        row = db.execute(
            "SELECT max(seq) FROM messages WHERE conv = ? AND author = ? AND (ts, id) <= (?, ?)",
            (conv, author, key[0], key[1]),
        ).fetchone()
        if row[0] is not None:
            result[author] = int(row[0])
    return result


def receipt_state(db: sqlite3.Connection, conv: str, message: Message) -> dict[ReceiptKind, list[str]]:
    """Which members have delivered and read ``message``."""
    rows = db.execute(
        "SELECT member, kind FROM receipts WHERE conv = ? AND author = ? AND seq >= ?",
        (conv, message.author, message.seq),
    ).fetchall()
    state: dict[ReceiptKind, list[str]] = {ReceiptKind.DELIVERED: [], ReceiptKind.READ: []}
    for member, kind in rows:
        if member != message.author:
            state[ReceiptKind(kind)].append(member)
    # Reading implies delivery.
    state[ReceiptKind.DELIVERED] = sorted(set(state[ReceiptKind.DELIVERED]) | set(state[ReceiptKind.READ]))
    return state


def metadata(db: sqlite3.Connection, conv: str) -> Metadata | None:
    """A conversation's metadata from the index."""
    row = db.execute(
        "SELECT id, kind, title, created_at, retention_days FROM conversations WHERE id = ?", (conv,)
    ).fetchone()
    return None if row is None else Metadata(row[0], ConversationKind(row[1]), row[2], row[3], row[4])


def members(db: sqlite3.Connection, conv: str) -> dict[str, Member]:
    """A conversation's members from the index."""
    rows = db.execute(
        "SELECT peer, nickname, role, joined_at, left_at, removed FROM members WHERE conv = ?", (conv,)
    ).fetchall()
    return {r[0]: Member(r[0], r[1], Role(r[2]), r[3], r[4], bool(r[5])) for r in rows}


def stream_cursors(db: sqlite3.Connection, conv: str) -> dict[str, int]:
    """How many entries of each author's stream the index has folded in."""
    rows = db.execute("SELECT author, length FROM stream_cursors WHERE conv = ?", (conv,))
    return {author: int(length) for author, length in rows}


def conversations_of(db: sqlite3.Connection, peer: str) -> list[str]:
    """Conversations that list ``peer`` as a current member."""
    rows = db.execute("SELECT conv FROM members WHERE peer = ? AND left_at IS NULL ORDER BY conv", (peer,))
    return [row[0] for row in rows]


def conversation_ids(db: sqlite3.Connection) -> list[str]:
    """Every conversation in the index."""
    return [row[0] for row in db.execute("SELECT id FROM conversations ORDER BY created_at")]


def summaries(db: sqlite3.Connection, reader: str, now: int) -> list[ConversationSummary]:
    """Every conversation with its last message and unread count (none past its retention
    at timestamp ``now``), most recent first."""
    result = []
    for conv in conversation_ids(db):
        meta = metadata(db, conv)
        assert meta is not None  # listed just above, inside one read
        oldest = retention_cutoff(meta.retention_days, now)  # known from the metadata: not read again
        last = _page(db, conv, oldest, None, 1)
        result.append(ConversationSummary(meta, last[0] if last else None, _unread_count(db, conv, reader, oldest)))
    result.sort(key=lambda s: s.last_message.sort_key if s.last_message else (s.metadata.created_at, ""), reverse=True)
    return result


def purge_expired(db: sqlite3.Connection, conv: str, before_ts: int) -> int:
    """Drop messages older than ``before_ts`` from the index (retention); returns how many."""
    db.execute("DELETE FROM early_changes WHERE conv = ? AND ts < ?", (conv, before_ts))
    return db.execute("DELETE FROM messages WHERE conv = ? AND ts < ?", (conv, before_ts)).rowcount


def past_retention(db: sqlite3.Connection, now: int) -> list[str]:
    """The conversations whose index holds a message older than their retention allows at
    timestamp ``now``."""
    rows = db.execute(
        "SELECT id FROM conversations AS c WHERE retention_days IS NOT NULL AND EXISTS "
        "(SELECT 1 FROM messages WHERE conv = c.id AND ts < ? - c.retention_days * ?)",
        (now, DAY_TICKS),
    ).fetchall()
    return [conv for (conv,) in rows]


def clear(db: sqlite3.Connection, conv: str) -> None:
    """Forget everything the index holds about one conversation (before a rebuild)."""
    for table in ("messages", "reactions", "receipts", "members", "stream_cursors", "early_changes"):
        db.execute(f"DELETE FROM {table} WHERE conv = ?", (conv,))


def _messages(db: sqlite3.Connection, conv: str, rows: Sequence[Sequence[object]]) -> list[Message]:
    if not rows:
        return []
    ids = [row[0] for row in rows]
    reactions: dict[str, dict[str, set[str]]] = {}
    for chunk in range(0, len(ids), 500):
        part = ids[chunk : chunk + 500]
        for target, emoji, reactor in db.execute(
            f"SELECT target, emoji, reactor FROM reactions WHERE conv = ? AND active = 1 "
            f"AND target IN ({', '.join('?' * len(part))})",
            (conv, *part),
        ):
            reactions.setdefault(target, {}).setdefault(emoji, set()).add(reactor)
    return [_message(row, reactions.get(str(row[0]), {})) for row in rows]


def _message(row: Sequence[object], reactions: dict[str, set[str]]) -> Message:
    message_id, author, nickname, ts, seq, kind, content, text, edited_at, deleted_at = row
    body: Content | None = None
    if content is not None:
        body = decode_content(kind, json.loads(str(content)))
    elif kind == "text":
        body = Text(str(text))
    return Message(
        id=str(message_id),
        author=str(author),
        nickname=str(nickname),
        timestamp=int(ts),  # type: ignore[call-overload]
        seq=int(seq),  # type: ignore[call-overload]
        content=body,
        edited_at=edited_at,  # type: ignore[arg-type]
        deleted_at=deleted_at,  # type: ignore[arg-type]
        reactions={emoji: frozenset(who) for emoji, who in reactions.items()} if body is not None else {},
    )
