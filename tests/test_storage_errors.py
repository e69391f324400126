"""Damaged, foreign, read-only and locked databases fail loudly, naming the file.

Every case here uses a real SQLite file in ``tmp_path``. The contract under test is the
one in ``gigi_crdt.errors``: a storage failure reaches the caller as a ``StorageError``
subclass naming the file, and never as a silently empty (or partial) history.
"""

from __future__ import annotations

import ctypes
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from pycrdt import Doc
from pycrdt.store import SQLiteYStore

import gigi_crdt.store.compaction as compaction_module
import gigi_crdt.store.worker as worker_module
from gigi_crdt.errors import StorageError, StoreCorrupt, StoreInUse, StoreReadOnly
from gigi_crdt.identity import Identity
from gigi_crdt.model import Conversation, ConversationKind, HybridClock, Text
from gigi_crdt.replica import open_replica
from gigi_crdt.store.database import DATABASE_NAME

PEER_ID = "local-peer-0001"


async def make_store(data_dir: Path, count: int = 20) -> tuple[str, list[str]]:
    """A closed data directory holding one conversation with ``count`` messages."""
    async with open_replica(data_dir, nickname="me", peer_id=PEER_ID) as replica:
        conversation = await replica.create_conversation(
            ConversationKind.GROUP, title="t", others={"other-peer-0001": "other"}
        )
        ids = [await replica.send(conversation, Text(f"m{i} " + "x" * 200)) for i in range(count)]
    # A clean close checkpoints the WAL into the main file and removes it.
    assert sorted(os.listdir(data_dir)) == ["gigi.lock", DATABASE_NAME]
    return conversation, ids


def texts(messages) -> list[str]:  # type: ignore[no-untyped-def]
    return [m.content.text.split()[0] for m in messages]


# -- (a) garbage ------------------------------------------------------------------------


async def test_random_bytes_are_store_corrupt_naming_the_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / DATABASE_NAME
    garbage = random.Random(1).randbytes(64 * 1024)
    db.write_bytes(garbage)
    with pytest.raises(StoreCorrupt, match=str(db)):
        async with open_replica(data_dir, nickname="me"):
            pytest.fail("opened a file of random bytes")
    assert db.read_bytes() == garbage, "a damaged file must be left alone, not overwritten"


# -- (b) truncation ---------------------------------------------------------------------


@pytest.mark.parametrize("keep", ["half", "all but the last page", "first page"])
async def test_truncated_database_is_store_corrupt_not_empty_history(tmp_path: Path, keep: str) -> None:
    data_dir = tmp_path / "data"
    conversation, ids = await make_store(data_dir, count=60)
    db = data_dir / DATABASE_NAME
    size = db.stat().st_size
    page = sqlite3.connect(db).execute("PRAGMA page_size").fetchone()[0]
    new_size = {"half": size // 2, "all but the last page": size - page, "first page": page}[keep]
    assert 0 < new_size < size
    os.truncate(db, new_size)

    async def read_back() -> None:
        async with open_replica(data_dir, nickname="me", peer_id=PEER_ID) as replica:
            # If opening does not notice, reading must: never an empty or partial history.
            try:
                history = await replica.history(conversation, limit=1000)
                exported = await replica.export(conversation)
            except StorageError as exc:
                error = exc  # raised outside the block, which would wrap it in an ExceptionGroup
            else:
                error = None
        if error is not None:
            raise error
        pytest.fail(f"truncated store read back {len(history)}/{len(exported)} of {len(ids)} messages")

    with pytest.raises(StoreCorrupt) as raised:
        await read_back()
    assert str(db) in str(raised.value)
    assert "damaged" in str(raised.value)


# -- (c) someone else's database --------------------------------------------------------


async def test_foreign_sqlite_database_is_not_ours(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / DATABASE_NAME
    raw = sqlite3.connect(db)
    raw.execute("CREATE TABLE foo (x)")
    raw.execute("INSERT INTO foo VALUES (42)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreCorrupt, match=f"{db}: not a gigi-crdt database"):
        async with open_replica(data_dir, nickname="me"):
            pytest.fail("opened a database that is not ours")
    raw = sqlite3.connect(db)
    tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"foo"}, "our schema must not be written into a foreign database"
    assert raw.execute("SELECT x FROM foo").fetchall() == [(42,)]
    raw.close()


# -- (d) read-only ----------------------------------------------------------------------

_READ_ONLY_CHILD = """
import os, sys, trio
from gigi_crdt.replica import open_replica
from gigi_crdt.model import Text
data_dir, conversation = sys.argv[1], sys.argv[2]
try:
    open(os.path.join(data_dir, "gigi.sqlite3"), "r+b").close()
    print("UNRESTRICTED", flush=True)
    sys.exit(0)
except PermissionError:
    pass
async def main():
    try:
        async with open_replica(data_dir, nickname="me") as replica:
            print("opened", flush=True)
            print("history", len(await replica.history(conversation, limit=1000)), flush=True)
            try:
                await replica.send(conversation, Text("while read-only"))
                print("sent", flush=True)
            except Exception as exc:
                print("send-error", type(exc).__name__, exc, flush=True)
    except Exception as exc:
        print("open-error", type(exc).__name__, exc, flush=True)
trio.run(main)
"""

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


def _drop_root_file_powers() -> None:  # runs in the child between fork and exec
    """Remove the capabilities that let root ignore file modes, for this child only.

    Dropped from the bounding set, they are gone from the permitted set after ``exec``,
    so root then obeys ``chmod`` like anyone else.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(77)


def run_read_only_child(data_dir: Path, conversation: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _READ_ONLY_CHILD, str(data_dir), conversation],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_drop_root_file_powers if os.geteuid() == 0 else None,
    )
    if result.returncode == 77 or result.stdout.startswith("UNRESTRICTED"):
        pytest.skip("cannot make files read-only for this process (root without CAP_SETPCAP?)")
    assert result.returncode == 0, result
    return result.stdout.splitlines()


async def test_read_only_database_file_refuses_writes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    conversation, ids = await make_store(data_dir, count=5)
    db = data_dir / DATABASE_NAME
    db.chmod(0o444)
    try:
        lines = await trio.to_thread.run_sync(run_read_only_child, data_dir, conversation)
    finally:
        db.chmod(0o644)
    # Reading still works; the write fails as StoreReadOnly naming the file.
    assert lines[:2] == ["opened", f"history {len(ids)}"], lines
    assert lines[2].startswith(f"send-error {StoreReadOnly.__name__} {db}: cannot write"), lines
    async with open_replica(data_dir, nickname="me", peer_id=PEER_ID) as replica:
        assert [m.id for m in await replica.history(conversation, limit=1000)] == ids


async def test_read_only_data_directory_is_store_read_only(tmp_path: Path) -> None:
    """A data directory on a read-only disk (or without write permission) at all.

    ``errors.py`` promises ``StoreReadOnly`` for "permissions or a read-only file system".
    """
    data_dir = tmp_path / "data"
    conversation, ids = await make_store(data_dir, count=5)
    for path in data_dir.iterdir():
        path.chmod(0o444)
    data_dir.chmod(0o555)
    try:
        lines = await trio.to_thread.run_sync(run_read_only_child, data_dir, conversation)
    finally:
        data_dir.chmod(0o755)
        for path in data_dir.iterdir():
            path.chmod(0o644)
    assert lines, "the child printed nothing"
    if lines[0] == "opened":  # opening read-only is acceptable if writes then fail clearly
        assert lines[1] == f"history {len(ids)}", lines
        assert lines[2].startswith(f"send-error {StoreReadOnly.__name__} "), lines
    else:
        assert lines[0].startswith(f"open-error {StoreReadOnly.__name__} "), lines
        assert str(data_dir) in lines[0], lines


# -- (e) locked by another connection ---------------------------------------------------


async def test_send_while_another_connection_holds_the_write_lock(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    conversation, ids = await make_store(data_dir, count=3)
    db = data_dir / DATABASE_NAME
    async with open_replica(data_dir, nickname="me", peer_id=PEER_ID) as replica:
        sent = list(ids)
        sent.append(await replica.send(conversation, Text("m3")))

        raw = sqlite3.connect(db, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        try:
            for attempt in ("lost-1", "lost-2"):
                started = time.monotonic()
                with trio.fail_after(10), pytest.raises(StoreInUse) as raised:
                    await replica.send(conversation, Text(attempt))
                assert time.monotonic() - started < 2, "a locked database must fail fast, not hang"
                assert isinstance(raised.value, StorageError)
                assert str(db) in str(raised.value)
                assert "locked" in str(raised.value)
            # Reads are not blocked by the other writer, and show nothing that failed.
            assert texts(await replica.history(conversation, limit=100)) == ["m0", "m1", "m2", "m3"]
            assert texts(await replica.export(conversation)) == ["m0", "m1", "m2", "m3"]
        finally:
            raw.execute("ROLLBACK")
            raw.close()

        sent.append(await replica.send(conversation, Text("m4")))
        history = await replica.history(conversation, limit=100)
        assert [m.id for m in history] == sent
        assert texts(history) == ["m0", "m1", "m2", "m3", "m4"]
        assert [m.id for m in await replica.export(conversation)] == sent

    # Nor do the failed messages turn up later, from the document or the log on disk.
    async with open_replica(data_dir, nickname="me", peer_id=PEER_ID) as replica:
        assert [m.id for m in await replica.history(conversation, limit=100)] == sent
        exported = await replica.export(conversation)
        assert [m.id for m in exported] == sent
        assert texts(exported) == ["m0", "m1", "m2", "m3", "m4"]


# -- (f) pycrdt-store reads our file ----------------------------------------------------


def decode_state_vector(state: bytes) -> dict[int, int]:
    """{client id: clock} from a Yjs v1 state vector (lib0 var-uints)."""
    position = 0

    def varuint() -> int:
        nonlocal position
        value = shift = 0
        while True:
            byte = state[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    return {varuint(): varuint() for _ in range(varuint())}


async def test_pycrdt_store_reads_our_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    db = data_dir / DATABASE_NAME
    async with open_replica(data_dir, nickname="me", peer_id=PEER_ID) as replica:
        conversation = await replica.create_conversation(
            ConversationKind.GROUP, title="interop", others={"other-peer-0001": "other"}
        )
        for i in range(25):
            await replica.send(conversation, Text(f"m{i}"))
        # A snapshot with its slice plan beside it, in the row's metadata (``store.plans``).
        for module in (compaction_module, worker_module):
            monkeypatch.setattr(module, "SLICE_BYTES", 64)
        await replica.compact(conversation)
        assert (await replica._worker.read(replica._store.load_log, conversation))[0].slices is not None
        await replica.send(conversation, Text("after the snapshot"))
        state = await replica.state_vector(conversation)
        ours = await replica.export(conversation)
    assert len(ours) == 26

    class GigiYStore(SQLiteYStore):
        db_path = str(db)

    doc = Doc()
    async with GigiYStore(path=conversation) as ystore:
        await ystore.apply_updates(doc)

    assert decode_state_vector(doc.get_state()) == decode_state_vector(state)
    loaded = Conversation(doc, "someone-else-01", HybridClock(lambda: 0))
    assert loaded.id == conversation
    assert loaded.history() == ours

    # pycrdt-store must not have judged the file foreign and renamed it aside.
    assert sorted(p.name for p in data_dir.iterdir()) == ["gigi.lock", DATABASE_NAME]
    async with open_replica(data_dir, nickname="me", peer_id=PEER_ID) as replica:
        assert [m.id for m in await replica.history(conversation, limit=100)] == [m.id for m in ours]
        assert await replica.export(conversation) == ours


@pytest.mark.parametrize("damage", ["not json", '"a string"', "[1, 2]", '{"nick": 3}'])
async def test_a_damaged_signed_record_row_is_skipped(tmp_path: Path, damage: str) -> None:
    identity = Identity.generate()
    async with open_replica(tmp_path, nickname="me", signer=identity) as replica:
        conversation = await replica.create_conversation(ConversationKind.GROUP, others={"other-peer-0001": "other"})
        await replica.send(conversation, Text("hello"))
    raw = sqlite3.connect(tmp_path / DATABASE_NAME, isolation_level=None)
    assert raw.execute("UPDATE signed_records SET record = ?", (damage,)).rowcount == 4  # charter, 2 members, a head
    raw.close()
    async with open_replica(tmp_path, nickname="me", signer=identity) as replica:
        assert await replica.state_vector(conversation)  # the document loads, from its own records
        assert await replica.is_member(conversation, "other-peer-0001")
        assert (await replica.metadata(conversation)).kind is ConversationKind.GROUP
        await replica.send(conversation, Text("still works"))
