"""The only place the harness reaches past ``Replica``'s public API.

``Replica`` has no membership changes (add a member, leave a group) and no listing of a
document's receipt counters yet; both exist on the ``Conversation`` document. These
helpers go through the replica's own ``_document``/``_persist`` so that the change is
stored, indexed and offered to the sync engine exactly as a public method would. Replace
them with the public calls when those land.
"""

from __future__ import annotations

from ..model import Receipt, Role
from ..replica import Replica


async def add_member(replica: Replica, conversation: str, peer_id: str, nickname: str) -> None:
    """Add (or re-add) ``peer_id`` to a group; the replica must be an admin of it."""
    doc = await replica._document(conversation)
    await replica._persist(doc, doc.add_member(peer_id, nickname, Role.MEMBER))


async def leave(replica: Replica, conversation: str) -> None:
    """The replica's own peer leaves ``conversation``."""
    doc = await replica._document(conversation)
    await replica._persist(doc, doc.remove_member(replica.peer_id))


async def receipts(replica: Replica, conversation: str) -> list[Receipt]:
    """Every delivered/read counter in the replica's copy of the document."""
    return (await replica._document(conversation)).receipts()
