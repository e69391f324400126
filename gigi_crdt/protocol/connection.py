"""The gigi-sync connection state machine, sans I/O: bytes in, events out; events in, bytes out.

Rules (the transition table below is the whole of them):

- Each direction is ``IDLE`` until its ``Hello``, then ``OPEN`` until its ``Close``.
- The first frame in each direction must be ``Hello``; a second ``Hello`` is an error.
- ``Close`` may be sent at any time, also before ``Hello`` (to refuse a peer).
- A ``Hello`` for another protocol or version ends the link with ``VERSION_MISMATCH``.
- End of stream is the input ``receive_data(b"")``; it yields ``ConnectionClosed`` once
  every complete frame before it has been read, or an error if it cuts a frame.
- A frame is consumed only once it is complete: a partial frame is never half-read.
- Every malformed input raises ``RemoteProtocolError``; nothing else escapes. After one,
  the connection stays failed.

No clock is read here and nothing is sent by itself: the driver decides when to ping.
"""

from __future__ import annotations

import enum

from .codec import HEADER, Limits, decode_body, encode_frame, frame_length
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    NEED_DATA,
    Announce,
    Awareness,
    Close,
    ConnectionClosed,
    Event,
    Hello,
    NeedData,
    Ping,
    Pong,
    SyncPart,
    SyncStep1,
    SyncStep2,
    Update,
)


class State(enum.Enum):
    """Where one direction of a link stands."""

    IDLE = "idle"
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


_OPEN_TRAFFIC = (Announce, SyncStep1, SyncStep2, SyncPart, Update, Awareness, Ping, Pong)

# (state, event type) -> next state. Anything not listed is a protocol error.
TRANSITIONS: dict[tuple[State, type], State] = {
    (State.IDLE, Hello): State.OPEN,
    (State.IDLE, Close): State.CLOSED,
    (State.OPEN, Close): State.CLOSED,
    **{(State.OPEN, kind): State.OPEN for kind in _OPEN_TRAFFIC},
}


class Connection:
    """One side of a gigi-sync link."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.our_state = State.IDLE
        self.their_state = State.IDLE
        self.their_hello: Hello | None = None
        self._our_client_id: int | None = None
        self._buffer = bytearray()
        self._ended = False
        self._closed_reported = False
        self._error: RemoteProtocolError | None = None

    # -- sending ---------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes to write for ``event``; ``LocalProtocolError`` if it is not allowed now."""
        following = TRANSITIONS.get((self.our_state, type(event)))
        if following is None:
            raise LocalProtocolError(f"cannot send {type(event).__name__} while {self.our_state.value}")
        our_client_id = event.awareness_client_id if isinstance(event, Hello) else self._our_client_id
        data = encode_frame(event, self.limits, our_client_id)
        self._our_client_id = our_client_id
        self.our_state = following
        return data

    # -- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes read from the transport; ``b""`` means the stream ended."""
        if self._ended:
            if data:
                raise LocalProtocolError("data received after the end of the stream")
            return
        if data:
            self._buffer += data
        else:
            self._ended = True

    def next_event(self) -> Event | ConnectionClosed | NeedData:
        """The next complete event, ``NEED_DATA``, or ``ConnectionClosed`` once at the end."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._error = exc
            self.their_state = State.FAILED
            raise

    def frame_under_way(self) -> tuple[int, int] | None:
        """``(received, length)`` in bytes, header included, of the frame at the front of
        what was fed, once its header is in (``received == length``: complete, not read yet);
        ``None`` before that or if the header is bad (``next_event`` says what is wrong).
        For showing a large frame's progress as it arrives."""
        if len(self._buffer) < HEADER.size or self._error is not None:
            return None
        try:
            length = HEADER.size + frame_length(bytes(self._buffer[: HEADER.size]), self.limits)
        except RemoteProtocolError:
            return None
        return min(len(self._buffer), length), length

    def _next_event(self) -> Event | ConnectionClosed | NeedData:
        if len(self._buffer) < HEADER.size:
            return self._at_end_of_data()
        length = frame_length(bytes(self._buffer[: HEADER.size]), self.limits)
        if len(self._buffer) < HEADER.size + length:
            return self._at_end_of_data()
        body = bytes(self._buffer[HEADER.size : HEADER.size + length])
        if self.their_state is State.CLOSED:
            raise RemoteProtocolError("frame after the peer's Close")
        client_id = self.their_hello.awareness_client_id if self.their_hello else None
        event = decode_body(body, self.limits, client_id)
        del self._buffer[: HEADER.size + length]
        self._advance(event)
        return event

    def _at_end_of_data(self) -> ConnectionClosed | NeedData:
        if not self._ended:
            return NEED_DATA
        if self._buffer:
            raise RemoteProtocolError("the stream ended in the middle of a frame")
        if self._closed_reported:
            return NEED_DATA
        self._closed_reported = True
        clean = self.their_state is State.CLOSED
        self.their_state = State.CLOSED
        return ConnectionClosed(clean=clean)

    def _advance(self, event: Event) -> None:
        following = TRANSITIONS.get((self.their_state, type(event)))
        if following is None:
            expected = "Hello" if self.their_state is State.IDLE else "no Hello"
            raise RemoteProtocolError(f"unexpected {type(event).__name__} (expected {expected})")
        if isinstance(event, Hello):  # its protocol and version were checked when decoded
            self.their_hello = event
        self.their_state = following
