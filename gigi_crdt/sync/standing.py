"""Where a link's peer stands in each conversation: a member we share it with, one that
left, or a stranger that may prove itself a member (``PeerStanding``).

Asked of the replica each time, not kept: a peer may join or leave while its link is up.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from ..errors import GigiError
from ..protocol import SyncStep1, SyncStep2, Update
from ..replica import Replica
from .link import EMPTY_STATE_VECTOR, PeerLink


class PeerStanding:
    """The standing of one link's peer (after its hello), and the questions the link
    asked it as an outsider. ``on_shared`` hears of each conversation that comes to be
    shared with the peer while the link is up."""

    def __init__(self, replica: Replica, link: PeerLink, ask_every: float, on_shared: Callable[[str], None]) -> None:
        self._replica = replica
        self._link = link
        self._ask_every = ask_every
        self._on_shared = on_shared
        self._asked: dict[str, float] = {}  # conversation -> when it was last asked as an outsider
        self._proof_awaited: set[str] = set()  # asked as a stranger: its step 2 may prove it a member

    async def may_share(self, conversation: str) -> bool:
        """True if the peer is a member now (it may have joined or left since the link came up)."""
        link = self._link
        if link.peer is not None and await self._replica_says(self._replica.is_member, conversation, link.peer.peer_id):
            if conversation not in link.shared:
                link.shared.add(conversation)
                self._on_shared(conversation)  # not only at the next renewal
            return True
        link.shared.discard(conversation)
        return False

    async def takes_from(self, event: SyncStep2 | Update) -> tuple[bool, bool]:
        """Whether to take ``event`` (of a conversation we are not fetching) from the peer,
        and whether it is to prove the peer a member (``ask_outsider``): from a member
        yes; from one that left yes (it may hand over what it wrote before leaving); from
        a stranger only the one step 2 we asked it for."""
        conversation = event.conversation
        if await self.may_share(conversation):
            return True, False
        if isinstance(event, SyncStep2) and conversation in self._proof_awaited:
            self._proof_awaited.discard(conversation)  # one answer per question
            return True, True
        peer = self._link.peer
        return peer is not None and await self._replica_says(self._replica.has_left, conversation, peer.peer_id), False

    async def ask_outsider(self, conversation: str) -> bool:
        """Ask a peer that is no member as far as we know, but may hold what we lack, for
        it (our state vector); send it nothing. True if the peer is one of these:

        - it left: its leave may have reached us ahead of its last writes (a leave waits
          for its Yjs client's earlier writes, but a peer writes under a new client id
          each time it loads the conversation), and no one else may hold them. (A removed
          member is heard no more: what it wrote and had not shared before its removal is
          lost.)
        - it is a stranger to a signed conversation: it may be a member added by a record
          we never saw, whose signature it can show. It is asked for its whole copy (an
          empty state vector: it learns nothing of ours), and its answer is taken only if
          it makes it a member (``Replica.receive(proving=True)``).

        At most once per ``ask_every`` (the anti-entropy interval), so that two peers who
        each see the other as an outsider cannot keep asking each other.
        """
        link = self._link
        if link.peer is None:
            return False
        stranger = await self._replica_says(self._replica.is_stranger, conversation, link.peer.peer_id)
        if not stranger and not await self._replica_says(self._replica.has_left, conversation, link.peer.peer_id):
            return False
        now = trio.current_time()
        if now - self._asked.get(conversation, -math.inf) >= self._ask_every:
            self._asked[conversation] = now
            if stranger:
                self._proof_awaited.add(conversation)
                link.offer(SyncStep1(conversation, EMPTY_STATE_VECTOR))
            else:
                link.offer(SyncStep1(conversation, await self._replica.state_vector(conversation)))
        return True

    async def _replica_says(
        self, question: Callable[[str, str], Awaitable[bool]], conversation: str, peer_id: str
    ) -> bool:
        """The replica's answer to ``question``; False if it cannot tell (a document that
        cannot load now)."""
        try:
            return await question(conversation, peer_id)
        except GigiError:
            return False
