"""One catch-up at a time per conversation.

A peer back from offline links to its peers all at once: mDNS finds them together, and a
healed partition brings a whole side back together. Asked at once, each of them sends the
whole of what it missed, so it gets n copies of one catch-up and checks and merges each.
So a conversation's step 1 goes to one link at a time: the next link asks once the
catch-up from the one before has merged, with the state vector of then, and gets only
what that one lacked (usually nothing).

This only saves bytes; it never holds a catch-up back for long. A link that ends lets
the next one ask at once, and a link waits for another's catch-up only until its
deadline, then asks anyway. A peer that held a turn that long without bringing its
catch-up is late: for ``LATE_FOR`` its links hold no turn (they still wait their turn,
but nobody waits for theirs), so a member that never answers holds the others back once,
not each time it links.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

LATE_FOR = 3600.0  # seconds a peer that let a turn run out holds no turn


@dataclass(slots=True)
class _Turn:
    link: object
    peer: str
    since: float
    arrived: trio.Event


class CatchUpTurns:
    """Per conversation, the link whose catch-up we await (the holder of the turn); a
    turn held for ``wait`` seconds is one that ran out, if a link stopped waiting for it."""

    def __init__(self, wait: float) -> None:
        self._wait = wait
        self._awaited: dict[str, _Turn] = {}
        self._late: dict[str, float] = {}  # peer -> when it last let a turn run out

    def try_take(self, conversation: str, link: object, peer: str) -> bool:
        """Take the turn for ``link`` (of ``peer``) unless another link's catch-up is
        awaited; a late peer's link may then ask (True) but holds no turn."""
        turn = self._awaited.get(conversation)
        if turn is not None:
            return turn.link is link
        if not self.is_late(peer):
            self._awaited[conversation] = _Turn(link, peer, trio.current_time(), trio.Event())
        return True

    async def take(self, conversation: str, link: object, peer: str, deadline: float) -> None:
        """Take the turn once no other link's catch-up is awaited, or at ``deadline``
        whatever is awaited: a slow peer then holds no one else back."""
        while not self.try_take(conversation, link, peer):
            turn = self._awaited[conversation]
            with trio.move_on_at(deadline):
                await turn.arrived.wait()
                continue
            if trio.current_time() - turn.since >= self._wait:
                self._note_late(turn.peer)
            self._end(conversation)

    def is_late(self, peer: str) -> bool:
        """Whether ``peer`` let a turn run out in the last ``LATE_FOR`` seconds."""
        at = self._late.get(peer)
        return at is not None and trio.current_time() - at < LATE_FOR

    def arrived(self, conversation: str, link: object) -> None:
        """A catch-up of ``conversation`` from ``link`` has merged (or was refused)."""
        turn = self._awaited.get(conversation)
        if turn is not None and turn.link is link:
            self._end(conversation)

    def release(self, link: object) -> None:
        """``link`` ended: no catch-up is awaited from it any more."""
        for conversation in [c for c, turn in self._awaited.items() if turn.link is link]:
            self._end(conversation)

    def _end(self, conversation: str) -> None:
        turn = self._awaited.pop(conversation, None)
        if turn is not None:
            turn.arrived.set()

    def _note_late(self, peer: str) -> None:
        now = trio.current_time()
        self._late = {other: at for other, at in self._late.items() if now - at < LATE_FOR}
        self._late[peer] = now
