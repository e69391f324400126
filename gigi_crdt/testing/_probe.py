"""The only place the harness reaches past ``Replica``'s public API.

``Replica`` lists receipts from its index, which only ever moves them forward; the
harness must see the document's own counters to catch one going back.
"""

from __future__ import annotations

from ..model import Receipt
from ..replica import Replica


async def receipts(replica: Replica, conversation: str) -> list[Receipt]:
    """Every delivered/read counter in the replica's copy of the document."""
    return (await replica._document(conversation)).receipts()
