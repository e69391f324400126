"""Delivered receipts queued by ``Replica.acknowledge_nowait`` and written in the background
(``DeliveredReceipts``): a peer's reader loop does not wait for the disk, and a burst of
updates shares one write.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import trio

from ..errors import GigiError, StoreClosed

log = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0  # at most this long, on closing, to write the delivered receipts still queued
ACKNOWLEDGE_DELAY = 0.05  # seconds a queued delivered receipt waits for others to share its write
ACKNOWLEDGE_RETRY = 2.0  # seconds before receipts whose write failed are tried again


class DeliveredReceipts:
    """The delivered receipts owed, per conversation, until ``write`` (``Replica``'s: mark
    the authors' updates delivered and commit that) has written them."""

    def __init__(self, write: Callable[[str, set[str]], Awaitable[None]]) -> None:
        self._write = write
        self._unacknowledged: dict[str, set[str]] = {}  # conversation -> authors owed a delivered receipt
        self._flushes = 0  # writes of queued receipts under way
        self._acknowledgements_wanted = trio.Event()

    def __contains__(self, conversation: object) -> bool:
        """Whether receipts of ``conversation`` are queued (not those being written)."""
        return conversation in self._unacknowledged

    @property
    def busy(self) -> bool:
        """Whether delivered receipts are queued or being written (``Replica.acknowledging``)."""
        return bool(self._unacknowledged) or self._flushes > 0

    def queue(self, conversation: str, authors: Iterable[str]) -> None:
        """Owe ``authors`` a delivered receipt in ``conversation``, written soon by ``run``."""
        queued = self._unacknowledged.setdefault(conversation, set())
        queued.update(authors)
        if queued:
            self._acknowledgements_wanted.set()
        else:
            del self._unacknowledged[conversation]

    async def run(self) -> None:
        """Write the queued receipts, a little after they are queued (``open_replica`` runs it)."""
        while True:
            if self._unacknowledged:  # left by a write that failed: try again a little later
                with trio.move_on_after(ACKNOWLEDGE_RETRY):
                    await self._acknowledgements_wanted.wait()
            else:
                await self._acknowledgements_wanted.wait()
            # The receipts of a burst of updates (live chat, a backlog) then share one write:
            # one commit, one update on the wire and one signed head, instead of one each.
            await trio.sleep(ACKNOWLEDGE_DELAY)
            self._acknowledgements_wanted = trio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Write every queued delivered receipt, the conversations side by side (the store
        commits what is queued together)."""
        queued, self._unacknowledged = self._unacknowledged, {}
        self._flushes += 1
        try:
            async with trio.open_nursery() as nursery:
                for conversation, authors in queued.items():
                    nursery.start_soon(self._acknowledge_queued, conversation, authors)
        finally:
            self._flushes -= 1

    async def _acknowledge_queued(self, conversation: str, authors: set[str]) -> None:
        try:
            await self._write(conversation, authors)
        except StoreClosed as exc:  # cancelled while closing: nothing is lost (``Conversation.undelivered``)
            log.info("delivered receipts of %s left for its next load: %s", conversation, exc)
        except GigiError as exc:
            # Queued again, and tried again after ACKNOWLEDGE_RETRY: a disk that failed now
            # would most likely fail again at once.
            log.warning("delivered receipts of %s not written yet: %s", conversation, exc)
            self._unacknowledged.setdefault(conversation, set()).update(authors)
        except trio.Cancelled:
            self._unacknowledged.setdefault(conversation, set()).update(authors)  # for the flush on closing
            raise
