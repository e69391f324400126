"""``open_replica``: a replica's store, its worker and the chores that run beside it, for
the duration of a block.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

from ..errors import GigiError, single_errors_unwrapped
from ..model import HybridClock
from ..model.ops import check_id, check_nickname
from ..signatures import Signer
from ..store import Store, StoreWorker
from ._receipts import FLUSH_SECONDS
from ._replica import Replica

log = logging.getLogger(__name__)

REST_AFTER = 300.0  # seconds a conversation document stays in memory unused (see ``Replica.rest_idle``)
RETENTION_EVERY = 3600.0  # seconds between checks for messages past retention (see ``Replica.apply_retention``)
RETENTION_FIRST = 60.0  # seconds after opening before the first such check


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@contextlib.asynccontextmanager
async def open_replica(
    data_dir: str | Path,
    *,
    nickname: str,
    peer_id: str | None = None,
    signer: Signer | None = None,
    now_ms: Callable[[], int] = _wall_ms,
    rest_after: float | None = REST_AFTER,
    retention_every: float | None = RETENTION_EVERY,
) -> AsyncIterator[Replica]:
    """Open the replica stored in ``data_dir`` (created if missing) for the duration of the block.

    ``peer_id`` is fixed on first open (a random id if not given) and checked afterwards.
    With a ``signer`` (the peer's identity; its peer id is then the replica's), the
    conversations it creates are signed and it signs the member records it writes (see
    ``gigi_crdt.model.signed``).

    A conversation document unused for ``rest_after`` seconds leaves memory (``Replica.rest_idle``;
    ``None``: documents stay loaded until the replica closes).

    Every ``retention_every`` seconds (the first time a minute after opening, at most),
    conversations with messages past their retention have it applied (``Replica.apply_retention``;
    ``None``: only when the application calls it, or ``compact``).
    """
    for name, value in (("rest_after", rest_after), ("retention_every", retention_every)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, not {value}")
    if signer is not None:
        if peer_id is not None and peer_id != signer.peer_id:
            raise ValueError(f"peer id {peer_id} is not the signer's ({signer.peer_id})")
        peer_id = signer.peer_id
    store = await trio.to_thread.run_sync(Store.open, Path(data_dir))
    try:
        worker = StoreWorker(store)
        stored_id = store.setting("peer_id")
        if stored_id is None:
            stored_id = check_id(peer_id or secrets.token_urlsafe(12), "peer id")
            store.set_setting("peer_id", stored_id)
        elif peer_id is not None and peer_id != stored_id:
            raise ValueError(f"{data_dir} belongs to peer {stored_id}, not {peer_id}")
        with single_errors_unwrapped():
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                replica = Replica(worker, stored_id, check_nickname(nickname), HybridClock(now_ms), signer)
                nursery.start_soon(replica._receipts.run)
                if rest_after is not None:
                    nursery.start_soon(_rest_idle_documents, replica, rest_after)
                if retention_every is not None:
                    nursery.start_soon(_apply_retention_periodically, replica, retention_every)
                try:
                    yield replica
                finally:
                    # Receipts queued by ``Replica.acknowledge_nowait`` are owed to their senders.
                    with trio.move_on_after(FLUSH_SECONDS, shield=True):
                        await replica._receipts.flush()
                nursery.cancel_scope.cancel()
    finally:
        store.close()


async def _rest_idle_documents(replica: Replica, rest_after: float) -> None:
    while True:
        await trio.sleep(rest_after / 4)  # so a document rests within 1.25 x rest_after
        rested = await replica.rest_idle(rest_after)
        if rested:
            log.debug("%d idle conversation documents left memory", len(rested))


async def _apply_retention_periodically(replica: Replica, every: float) -> None:
    await trio.sleep(min(RETENTION_FIRST, every))
    while True:
        try:
            await replica.apply_retention()
        except GigiError as exc:  # the store could not be read: a chore, tried again later
            log.warning("checking for messages past their retention failed: %s", exc)
