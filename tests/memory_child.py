"""Child process for tests/test_memory.py: how much resident memory a compaction leaves
behind, how much letting a document rest gives back, and how much committing a large
update keeps, in a fresh process.

Usage: python memory_child.py trimmed|untrimmed DATA_DIR

``untrimmed`` stubs out ``release_free_memory`` (as before it existed). Prints one JSON
object: ``compaction_growth``, ``rest_freed`` and ``commit_held``, in bytes.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import trio

import gigi_crdt.replica._documents as documents_module
import gigi_crdt.store.worker as worker_module
from gigi_crdt import ConversationKind, Text, open_replica
from gigi_crdt._memory import release_free_memory
from gigi_crdt.model import Changes, Conversation, HybridClock
from gigi_crdt.store import Record, Store, StoreWorker

PEER_ID = "alice-peer-0001"


def resident() -> int:
    gc.collect()
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def write_log(directory: Path) -> str:
    """A conversation of 3,000 messages of 7 KB, stored as 31 log rows (a 21 MB update)."""
    clock = HybridClock(lambda: 1_700_000_000_000)
    doc, created = Conversation.create(
        kind=ConversationKind.GROUP, title="memory", local_peer=PEER_ID, nickname="a", clock=clock
    )
    store = Store.open(directory)
    try:
        store.commit([Record(doc.id, created.update, created.changes, doc.metadata(), list(doc.members().values()))])
        for batch in range(30):
            writes = [doc.post(Text(f"message {batch}-{i} " * 400), "a") for i in range(100)]
            store.commit([Record(doc.id, write.update, write.changes) for write in writes])
    finally:
        store.close()
    return doc.id


async def compaction_growth(directory: Path, conversation: str) -> int:
    """Resident memory after a garbage-collecting compaction (which rebuilds the document
    in a worker thread and drops it), less before."""
    store = Store.open(directory)
    worker = StoreWorker(store)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            before = resident()
            await worker.compact(conversation, collect_garbage=True)
            await worker.plan_snapshots()  # as ``Replica.compact`` does: the snapshot is let go
            growth = resident() - before
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    return growth


async def rest_freed(directory: Path, conversation: str) -> int:
    """Resident memory before the loaded document rests, less after."""
    async with open_replica(directory, nickname="a", peer_id=PEER_ID) as replica:
        await replica.export(conversation)  # loads it
        before = resident()
        if await replica.rest_idle(0) != [conversation]:
            raise RuntimeError("the document did not rest")
        return before - resident()


def commit_held(directory: Path, conversation: str) -> int:
    """Resident memory after committing a 32 MiB update and letting it go, less before
    (trimmed in both variants: this is about what stays in use)."""
    store = Store.open(directory)
    try:
        release_free_memory()
        before = resident()
        store.commit([Record(conversation, bytes(32 * 2**20), Changes())])
        release_free_memory()
        return resident() - before
    finally:
        store.close()


def main(variant: str, directory: Path) -> None:
    if variant == "untrimmed":
        for module in (worker_module, documents_module):
            module.release_free_memory = lambda: None
    directory.mkdir()
    conversation = write_log(directory)
    growth = trio.run(compaction_growth, directory, conversation)
    freed = trio.run(rest_freed, directory, conversation)
    held = commit_held(directory, conversation)
    print(json.dumps({"compaction_growth": growth, "rest_freed": freed, "commit_held": held}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
