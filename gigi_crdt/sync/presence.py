"""Presence (y-protocols awareness): who is online in a conversation, and who is typing.

Each node announces one awareness state per shared conversation and renews it while it
is linked; a state not renewed within ``OUTDATED_SECONDS`` counts as gone, as in
y-protocols. Pure bookkeeping: the caller passes the time in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..protocol import AwarenessEntry

OUTDATED_SECONDS = 30.0
RENEW_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class Presence:
    """What one peer last said about itself in one conversation."""

    peer_id: str
    nickname: str
    typing: bool
    seen_at: float  # engine clock (trio.current_time) when last heard


@dataclass(slots=True)
class _Heard:
    client_id: int
    clock: int
    presence: Presence | None


class PresenceTable:
    """The latest awareness each peer sent, per conversation."""

    def __init__(self) -> None:
        self._heard: dict[tuple[str, str], _Heard] = {}

    def record(self, now: float, conversation: str, peer_id: str, nickname: str, entry: AwarenessEntry) -> bool:
        """Take one awareness entry from ``peer_id``; ``True`` if what others see changed."""
        key = (conversation, peer_id)
        before = self._heard.get(key)
        if before is not None and before.client_id == entry.client_id:
            removal = entry.state is None and entry.clock == before.clock
            if entry.clock <= before.clock and not removal:
                return False  # stale or repeated: awareness clocks only move forward
        presence = None if entry.state is None else Presence(peer_id, nickname, _typing(entry.state), now)
        self._heard[key] = _Heard(entry.client_id, entry.clock, presence)
        old = before.presence if before else None
        return (old is None) != (presence is None) or (
            old is not None and presence is not None and old.typing != presence.typing
        )

    def forget_peer(self, peer_id: str) -> None:
        """The link to ``peer_id`` ended: its presence goes with it."""
        for key in [key for key in self._heard if key[1] == peer_id]:
            del self._heard[key]

    def present(self, now: float, conversation: str) -> list[Presence]:
        """Peers present in ``conversation`` that renewed their state recently enough."""
        return [
            heard.presence
            for (conv, _), heard in self._heard.items()
            if conv == conversation and heard.presence is not None and now - heard.presence.seen_at < OUTDATED_SECONDS
        ]


def local_state(nickname: str, typing: bool) -> dict[str, Any]:
    """The awareness state this node announces."""
    return {"nickname": nickname, "typing": typing}


def _typing(state: dict[str, Any]) -> bool:
    return state.get("typing") is True
