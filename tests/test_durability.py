"""Durability across SIGKILL, exclusive use of a data directory, checkpoints beside the writer.

A child process (``tests/sigkill_writer.py``) sends messages in a loop and prints each
message id once ``send`` has returned. The parent kills it with SIGKILL at a random
moment, reopens the data directory in-process and checks that every acknowledged message
is in the index (``history``) and in the CRDT document (``export``), in order, with no
phantom or duplicate messages.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from model_helpers import ALICE, fixed_clock

from gigi_crdt.errors import StoreCorrupt, StoreFull, StoreInUse
from gigi_crdt.identity import Identity
from gigi_crdt.model import Conversation, ConversationKind, Text
from gigi_crdt.replica import open_replica
from gigi_crdt.store import Record, Store
from gigi_crdt.store.database import _SCHEMA, DATABASE_NAME, SCHEMA_VERSION
from gigi_crdt.store.worker import StoreWorker

WRITER = Path(__file__).with_name("sigkill_writer.py")
PEER_ID = "writer-peer-0001"  # must match sigkill_writer.PEER_ID
NICKNAME = "writer"
CHILD_TIMEOUT = 30  # seconds; a guard against a hung child, not synchronisation


@dataclass
class Writer:
    """A running sigkill_writer child and what it has acknowledged so far."""

    process: trio.Process
    conversation: str | None = None
    acked: dict[int, str] = field(default_factory=dict)  # index -> message id
    _buffer: bytes = b""
    _eof: bool = False

    async def _line(self) -> str | None:
        while b"\n" not in self._buffer:
            if self._eof:
                return None
            assert self.process.stdout is not None
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                self._eof = True
                continue
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _record(self, line: str) -> None:
        kind, *rest = line.split()
        if kind == "conv":
            self.conversation = rest[0]
        else:
            assert kind == "sent", line
            self.acked[int(rest[0])] = rest[1]

    async def read_until(self, predicate) -> None:  # type: ignore[no-untyped-def]
        while not predicate():
            line = await self._line()
            assert line is not None, f"writer exited early with {await self.process.wait()}"
            self._record(line)

    async def kill_and_drain(self) -> None:
        """SIGKILL the child, then take every line it managed to print before dying."""
        self.process.send_signal(signal.SIGKILL)
        while (line := await self._line()) is not None:
            self._record(line)
        assert await self.process.wait() == -signal.SIGKILL


async def start_writer(data_dir: Path, conversation: str | None, start: int) -> Writer:
    # stderr is inherited: pytest's fd capture shows a crashing child's traceback.
    process = await trio.lowlevel.open_process(
        [sys.executable, str(WRITER), str(data_dir), conversation or "new", str(start)],
        stdout=subprocess.PIPE,
    )
    return Writer(process, conversation)


async def check_store(data_dir: Path, conversation: str, acked: dict[int, str], most: int) -> list[str]:
    """Assert the acknowledged messages are all stored, in order; return the stored ids.

    ``most`` bounds how many messages may be stored at all (acknowledged ones plus at most
    one per kill that landed between a commit and its print).
    """
    async with open_replica(data_dir, nickname=NICKNAME, peer_id=PEER_ID) as replica:
        history = await replica.history(conversation, limit=1_000_000)
        exported = await replica.export(conversation)
    for name, messages in (("history", history), ("export", exported)):
        texts = [m.content.text for m in messages]  # type: ignore[union-attr]
        # Contiguous m0..mN in order: nothing lost, duplicated, reordered or invented.
        assert texts == [f"m{i}" for i in range(len(texts))], f"{name}: {texts}"
        ids = [m.id for m in messages]
        for index, message_id in acked.items():
            assert index < len(ids), f"{name}: acknowledged message m{index} ({message_id}) lost after SIGKILL"
            assert ids[index] == message_id, f"{name}: m{index} is {ids[index]}, child reported {message_id}"
        assert all(m.author == PEER_ID for m in messages)
        assert len(messages) <= most, f"{name}: {len(messages)} stored, at most {most} were sent"
        timestamps = [m.timestamp for m in messages]
        assert timestamps == sorted(timestamps)
    assert [m.id for m in history] == [m.id for m in exported]
    return [m.id for m in history]


async def run_kill_loop(tmp_path: Path, iterations: int, seed: int) -> None:
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    conversation: str | None = None
    acked: dict[int, str] = {}
    kill_points = []
    stored: list[str] = []
    with trio.fail_after(CHILD_TIMEOUT * iterations):
        for _ in range(iterations):
            start = len(stored)
            writer = await start_writer(data_dir, conversation, start)
            # Vary where the kill lands: right after creation/open, or after a random
            # number of acknowledged sends (the child is then inside the next send).
            kill_after = rng.choice([0, rng.randint(1, 5), rng.randint(1, 40)])
            kill_points.append(kill_after)
            target = start + kill_after
            await writer.read_until(
                lambda w=writer, t=target, s=start: w.conversation is not None and (t == s or t - 1 in w.acked)
            )
            await writer.kill_and_drain()
            assert sorted(writer.acked) == list(range(start, start + len(writer.acked)))
            conversation = writer.conversation
            acked.update(writer.acked)
            assert conversation is not None
            # Reopen after every kill: each crash must leave a store that opens and is complete.
            stored = await check_store(data_dir, conversation, acked, most=start + len(writer.acked) + 1)
    assert len(set(kill_points)) > 1, "the kill moment should vary across iterations"
    assert len(stored) >= len(acked) > 0


ITERATIONS = int(os.environ.get("GIGI_DURABILITY_ITERATIONS", "10"))


async def test_acknowledged_messages_survive_sigkill(tmp_path: Path) -> None:
    await run_kill_loop(tmp_path, ITERATIONS, seed=20240601)


@pytest.mark.slow  # deselected unless --run-slow (tests/conftest.py)
async def test_acknowledged_messages_survive_many_sigkills(tmp_path: Path) -> None:
    await run_kill_loop(tmp_path, 100, seed=7)


# -- one process per data directory ------------------------------------------------------


async def test_second_open_in_same_process_is_store_in_use(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with open_replica(data_dir, nickname="first") as first:
        with pytest.raises(StoreInUse, match=re.escape(str(data_dir)) + ".*already in use"):
            async with open_replica(data_dir, nickname="second"):
                pytest.fail("a second replica opened a directory that is in use")
        # The failed attempt must not have released or broken the first one's lock.
        with pytest.raises(StoreInUse):
            async with open_replica(data_dir, nickname="third"):
                pass
        assert await first.conversations() == []
    # Closing releases the directory.
    async with open_replica(data_dir, nickname="again") as again:
        assert again.peer_id == first.peer_id


_OPEN_IN_CHILD = """
import sys, trio
from gigi_crdt.replica import open_replica
async def main():
    async with open_replica(sys.argv[1], nickname="child"):
        print("opened", flush=True)
try:
    trio.run(main)
except Exception as exc:
    print(type(exc).__name__, exc, flush=True)
    sys.exit(3)
"""


def open_in_child(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _OPEN_IN_CHILD, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )


async def test_other_process_gets_store_in_use(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with open_replica(data_dir, nickname="parent"):
        result = await trio.to_thread.run_sync(open_in_child, data_dir)
        assert result.returncode == 3, result
        assert result.stdout.startswith("StoreInUse "), result
        assert str(data_dir) in result.stdout
        assert "already in use" in result.stdout
    result = await trio.to_thread.run_sync(open_in_child, data_dir)
    assert (result.returncode, result.stdout) == (0, "opened\n"), result


async def test_lock_held_by_child_then_released_by_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with trio.fail_after(CHILD_TIMEOUT):
        writer = await start_writer(data_dir, None, 0)
        await writer.read_until(lambda: 0 in writer.acked)
        with pytest.raises(StoreInUse, match=re.escape(str(data_dir))):
            async with open_replica(data_dir, nickname=NICKNAME, peer_id=PEER_ID):
                pass
        await writer.kill_and_drain()
    # The kernel drops the dead child's flock: no stale lock file blocks the next open.
    assert writer.conversation is not None
    await check_store(data_dir, writer.conversation, writer.acked, most=len(writer.acked) + 1)


# -- interrupted creation ---------------------------------------------------------------


async def test_database_whose_creation_was_interrupted_can_be_opened(tmp_path: Path) -> None:
    """A kill during the very first open must not leave a directory that never opens again.

    The database is created under a draft name and renamed into place once its schema is
    committed, so an interrupted creation leaves only a draft (half-written here: schema
    but no version) and no database; the next open starts over.
    """
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    raw = sqlite3.connect(data_dir / (DATABASE_NAME + ".new"), isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
    raw.close()
    async with open_replica(data_dir, nickname="me") as replica:
        assert await replica.conversations() == []
    assert not (data_dir / (DATABASE_NAME + ".new")).exists()


async def test_schema_less_database_in_place_is_corrupt_not_recreated(tmp_path: Path) -> None:
    """A database file that exists but lacks our schema version was damaged after creation."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    raw = sqlite3.connect(data_dir / DATABASE_NAME, isolation_level=None)
    raw.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
    raw.close()
    with pytest.raises(StoreCorrupt, match="not a gigi-crdt database"):
        async with open_replica(data_dir, nickname="me"):
            pass


# What each older version lacked, undone on a current database to make one.
# Version 4 kept no stream seq beside a message's shown edit, nor early changes.
_TO_4 = "ALTER TABLE messages DROP COLUMN edit_seq; DROP TABLE early_changes; "
# Version 3 kept no state vectors beside the log either.
_TO_3 = _TO_4 + "ALTER TABLE conversations DROP COLUMN state_vector; "
OLDER_VERSIONS = {
    # Version 1 had no ``removed`` column in ``members`` and kept a text's fields as JSON
    # (now its body alone), which is still read.
    1: _TO_3 + "ALTER TABLE members DROP COLUMN removed; DROP TABLE signed_records; "
    """UPDATE messages SET content = '{"text":"hello, from JSON"}';""",
    # Version 2 kept no signed records.
    2: _TO_3 + "DROP TABLE signed_records;",
    3: _TO_3,
    4: _TO_4,
}


@pytest.mark.parametrize("version", sorted(OLDER_VERSIONS))
async def test_an_older_database_is_migrated_in_place(tmp_path: Path, version: int) -> None:
    data_dir = tmp_path / "data"
    identity = Identity.generate()
    async with open_replica(data_dir, nickname="me", signer=identity) as replica:
        conversation = await replica.create_conversation(ConversationKind.GROUP, others={"other-peer-1": "other"})
        await replica.send(conversation, Text("hello"))
    raw = sqlite3.connect(data_dir / DATABASE_NAME, isolation_level=None)
    raw.executescript(
        f"BEGIN; {OLDER_VERSIONS[version]} "
        f"UPDATE gigi_settings SET value = {version} WHERE key = 'schema_version'; COMMIT;"
    )
    raw.close()
    async with open_replica(data_dir, nickname="me", signer=identity) as replica:
        members = await replica.members(conversation)
        assert members["other-peer-1"].nickname == "other"
        text = "hello, from JSON" if version == 1 else "hello"
        assert [m.content for m in await replica.history(conversation)] == [Text(text)]
        assert not replica.is_loaded(conversation)
        await replica.state_vector(conversation)  # versions before 4 stored none: learnt by loading
        assert replica.is_loaded(conversation) == (version < 4)
        await replica.remove_member(conversation, "other-peer-1")  # stores the signed records it holds
        assert (await replica.members(conversation))["other-peer-1"].removed
        (message,) = await replica.history(conversation)
        await replica.edit(conversation, message.id, Text("edited"))  # a message's edit keeps its seq
        assert [m.content for m in await replica.history(conversation)] == [Text("edited")]
        state = await replica.state_vector(conversation)
    async with open_replica(data_dir, nickname="me", signer=identity) as replica:
        assert await replica.state_vector(conversation) == state  # stored with the last write
        assert not replica.is_loaded(conversation)
    raw = sqlite3.connect(data_dir / DATABASE_NAME)
    assert raw.execute("SELECT value FROM gigi_settings WHERE key = 'schema_version'").fetchone() == (SCHEMA_VERSION,)
    held = raw.execute("SELECT root, key FROM signed_records WHERE conv = ?", (conversation,)).fetchall()
    expected = [
        ("heads", identity.peer_id),
        ("members", identity.peer_id),
        ("members", "other-peer-1"),
        ("meta", "charter"),
    ]
    assert sorted(held) == sorted(expected)
    raw.close()


def _created() -> tuple[Conversation, Record]:
    """A new group of alice's, and the record that stores its creation."""
    doc, created = Conversation.create(
        kind=ConversationKind.GROUP,
        title="g",
        local_peer=ALICE,
        nickname="alice",
        clock=fixed_clock(),
    )
    return doc, Record(doc.id, created.update, created.changes, doc.metadata(), list(doc.members().values()))


def _creation_record() -> Record:
    return _created()[1]


def _in_database_file(store: Store, conversation: str, copy: Path) -> bool:
    """Whether the database file alone, without its write-ahead log, holds ``conversation``."""
    copy.mkdir()
    (copy / DATABASE_NAME).write_bytes(store.path.read_bytes())
    raw = sqlite3.connect(copy / DATABASE_NAME)
    try:
        return raw.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation,)).fetchone() is not None
    finally:
        raw.close()


def test_a_checkpoint_beside_the_writer_copies_commits_into_the_database_file(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "data")
    try:
        record = _creation_record()
        store.commit([record])
        # The writer left the commit in the log: checkpointing inside commits is kept rare.
        assert not _in_database_file(store, record.conversation, tmp_path / "before")
        store.checkpoint()
        assert _in_database_file(store, record.conversation, tmp_path / "after")
    finally:
        store.close()


async def test_the_store_worker_checkpoints_what_it_commits(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "data")
    checkpointed = trio.Event()
    token = trio.lowlevel.current_trio_token()
    checkpoint = store.checkpoint

    def checkpoint_and_tell() -> None:  # runs in the worker's checkpoint thread
        checkpoint()
        token.run_sync_soon(checkpointed.set)

    store.checkpoint = checkpoint_and_tell  # type: ignore[method-assign]
    try:
        async with trio.open_nursery() as nursery:
            worker = StoreWorker(store)
            await nursery.start(worker.run)
            record = _creation_record()
            await worker.commit(record)
            with trio.fail_after(CHILD_TIMEOUT):
                await checkpointed.wait()
            assert _in_database_file(store, record.conversation, tmp_path / "copy")
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_failing_background_checkpoints_are_told_once_and_lose_no_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Real time (three checkpoint intervals): a mock clock would jump while threads work.
    store = Store.open(tmp_path / "data")
    send_attempt, attempts = trio.open_memory_channel[None](10)
    token = trio.lowlevel.current_trio_token()

    def failing_checkpoint() -> None:  # runs in the worker's checkpoint thread
        token.run_sync_soon(send_attempt.send_nowait, None)
        raise StoreFull(f"{store.path}: disk full")

    store.checkpoint = failing_checkpoint  # type: ignore[method-assign]
    try:
        async with trio.open_nursery() as nursery:
            worker = StoreWorker(store)
            await nursery.start(worker.run)
            records = [_creation_record() for _ in range(3)]
            for record in records:
                await worker.commit(record)
                with trio.fail_after(CHILD_TIMEOUT):
                    await attempts.receive()
            nursery.cancel_scope.cancel()
        assert [r.message for r in caplog.records if "checkpoints" in r.message] == [
            f"background checkpoints of {store.path} fail: {store.path}: disk full"
        ]
        assert all(store.load_log(record.conversation) for record in records)
    finally:
        store.close()


async def test_compactions_of_one_conversation_take_turns(tmp_path: Path) -> None:
    # The background compaction and the retention's (or the application's) may be asked for
    # at once. Each swaps the rows it read for its snapshot and writes the rows committed
    # since after it: overlapping, the second would write the first's snapshot back after
    # its own, and with it whatever deleted content the second had collected.
    doc, creation = _created()
    records = [creation]
    for i in range(20):
        posted = doc.post(Text(f"m{i}"), "alice")
        records.append(Record(doc.id, posted.update, posted.changes))
    store = Store.open(tmp_path / "data")
    try:
        async with trio.open_nursery() as nursery:
            worker = StoreWorker(store)
            await nursery.start(worker.run)
            for record in [*records, _creation_record()]:  # another conversation's rows come after
                await worker.commit(record)
            async with trio.open_nursery() as both:
                both.start_soon(worker.compact, doc.id)
                both.start_soon(worker.compact, doc.id)
            assert len(store.load_log(doc.id)) == 1
            nursery.cancel_scope.cancel()
    finally:
        store.close()
