"""Protocol errors, with the close code each one sends to the peer.

``RemoteProtocolError``: the peer broke the protocol (malformed or oversized frame, wrong
version, forbidden awareness). ``LocalProtocolError``: our side asked to send something the
protocol does not allow (a bug in the caller). Both carry the ``CloseCode`` that tells the
peer why the link ends.
"""

from __future__ import annotations

import enum

from ..errors import GigiError


class CloseCode(enum.IntEnum):
    """Why a link ends; sent in the CLOSE frame (see protocols/gigi-sync-v1.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    VERSION_MISMATCH = 1003
    FRAME_TOO_LARGE = 1004
    LIMIT_EXCEEDED = 1005
    TIMEOUT = 1006
    FORBIDDEN = 1007
    RATE_LIMITED = 1008
    INTERNAL_ERROR = 1011


class ProtocolError(GigiError):
    """A link had to end because the gigi-sync protocol was broken."""

    def __init__(self, reason: str, code: CloseCode = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow in the current state."""
