"""One catch-up at a time per conversation.

A peer back from offline links to its peers all at once: mDNS finds them together, and a
healed partition brings a whole side back together. Asked at once, each of them sends the
whole of what it missed, so it gets n copies of one catch-up and checks and merges each.
So a conversation's step 1 goes to one link at a time: the next link asks once the
catch-up from the one before has merged, with the state vector of then, and gets only
what that one lacked (usually nothing).

This only saves bytes; it never holds a catch-up back for long. A link that ends lets
the next one ask at once, and a link waits for another's catch-up only until its
deadline, then asks anyway.
"""

from __future__ import annotations

import trio


class CatchUpTurns:
    """Per conversation, the link whose catch-up we await (the holder of the turn)."""

    def __init__(self) -> None:
        self._awaited: dict[str, tuple[object, trio.Event]] = {}

    def try_take(self, conversation: str, link: object) -> bool:
        """Take the turn for ``link`` unless another link's catch-up is awaited."""
        held = self._awaited.get(conversation)
        if held is not None and held[0] is not link:
            return False
        self._awaited[conversation] = (link, trio.Event() if held is None else held[1])
        return True

    async def take(self, conversation: str, link: object, deadline: float) -> None:
        """Take the turn once no other link's catch-up is awaited, or at ``deadline``
        whatever is awaited: a slow peer then holds no one else back."""
        while not self.try_take(conversation, link):
            with trio.move_on_at(deadline):
                await self._awaited[conversation][1].wait()
                continue
            self._end(conversation)

    def arrived(self, conversation: str, link: object) -> None:
        """A catch-up of ``conversation`` from ``link`` has merged (or was refused)."""
        held = self._awaited.get(conversation)
        if held is not None and held[0] is link:
            self._end(conversation)

    def release(self, link: object) -> None:
        """``link`` ended: no catch-up is awaited from it any more."""
        for conversation in [c for c, (holder, _) in self._awaited.items() if holder is link]:
            self._end(conversation)

    def _end(self, conversation: str) -> None:
        held = self._awaited.pop(conversation, None)
        if held is not None:
            held[1].set()
