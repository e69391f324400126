"""Limits against hostile peers: a rate limit per link and connection caps per address.

The protocol already bounds what one frame may hold (``protocol.Limits``); what is left is
how fast a peer sends and how many connections it holds open.

- ``RateLimitedStream`` wraps a link's stream. Bytes are *throttled*: once a peer has used
  its budget we read from it more slowly and TCP's flow control slows it down, so a
  legitimate catch-up of any size still completes, only later (a limit that disconnected
  would make a large history impossible to sync: a step 2 is all or nothing). Frames are
  *capped*: every frame costs a decode and often a store lookup, and no legitimate peer
  sends thousands per second for long, so one that does is disconnected with CLOSE 1008
  RATE_LIMITED.
- ``ConnectionLimiter`` counts a listener's open connections per remote address and in
  total; one over either cap is closed at once, before it costs a TLS handshake.

The clock is trio's (``trio.current_time()``, so a ``MockClock`` drives it in tests);
``TokenBucket`` itself is pure and takes ``now`` as an argument.
"""

from __future__ import annotations

import logging

import trio

from ..protocol import CloseCode, RemoteProtocolError
from ..protocol.codec import HEADER
from .link import LinkSettings

log = logging.getLogger(__name__)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; it starts full."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._stamp = now

    def take(self, amount: float, now: float) -> bool:
        """Spend ``amount`` tokens if there are that many; if not, spend nothing and say so."""
        self._refill(now)
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True

    def charge(self, amount: float, now: float) -> None:
        """Spend ``amount`` tokens even into debt: for what has already happened (bytes read)."""
        self._refill(now)
        self.tokens -= amount

    def delay(self, now: float) -> float:
        """Seconds until any debt is paid off (0 if there is none)."""
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:  # never 0 * inf: an infinite rate is allowed and means "no limit"
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self._stamp = now


class FrameCounter:
    """Counts the frames that start in a stream of length-prefixed frames (spec §2).

    It only follows the 4-byte length prefixes; the protocol still checks every frame, and
    a length it refuses (0, or over its limit) ends the link there anyway.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._body_left = 0

    def feed(self, data: bytes | bytearray) -> int:
        """How many frames start in ``data``, the next bytes of the stream."""
        frames = offset = 0
        while offset < len(data):
            if self._body_left:
                step = min(self._body_left, len(data) - offset)
                self._body_left -= step
            else:
                step = min(HEADER.size - len(self._header), len(data) - offset)
                self._header += data[offset : offset + step]
                if len(self._header) == HEADER.size:
                    (self._body_left,) = HEADER.unpack(self._header)
                    self._header.clear()
                    frames += 1
            offset += step
        return frames


class RateLimitedStream(trio.abc.Stream):
    """A link's stream whose incoming bytes are throttled and incoming frames capped.

    ``receive_some`` raises ``RemoteProtocolError`` (``CloseCode.RATE_LIMITED``) when the peer
    goes over the frame limit: the engine then closes this link, and only this one.
    """

    def __init__(self, stream: trio.abc.Stream, settings: LinkSettings) -> None:
        now = trio.current_time()
        self.stream = stream
        self._bytes = TokenBucket(settings.max_bytes_per_second, settings.byte_burst, now)
        self._frames = TokenBucket(settings.max_frames_per_second, settings.frame_burst, now)
        self._counter = FrameCounter()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        # Wait out a byte debt *before* reading: if the wait is cancelled (the idle timeout,
        # the link ending) no bytes that were already read are lost.
        delay = self._bytes.delay(trio.current_time())
        if delay > 0:
            await trio.sleep(delay)
        data = await self.stream.receive_some(max_bytes)
        now = trio.current_time()
        self._bytes.charge(len(data), now)
        if not self._frames.take(self._counter.feed(data), now):
            rate, burst = self._frames.rate, self._frames.burst
            raise RemoteProtocolError(f"more than {rate:g} frames/s (bursts of {burst:g})", CloseCode.RATE_LIMITED)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


class ConnectionLimiter:
    """Caps a listener's open connections per remote address and in total.

    The first refusal of an address is logged as a warning, later ones at debug level until
    some connection closes: a flood of connections must not flood the log too.
    """

    def __init__(self, *, per_address: int, total: int) -> None:
        self.max_per_address = per_address
        self.max_total = total
        self.open_total = 0
        self._open: dict[str, int] = {}
        self._refusing: set[str | None] = set()

    def open_from(self, address: str) -> int:
        """Connections from ``address`` open now."""
        return self._open.get(address, 0)

    def acquire(self, address: str | None) -> bool:
        """Count a new connection from ``address`` (``None``: unknown) if it is within the caps.

        Returns ``False`` if it must be refused; otherwise call ``release`` once it closes.
        """
        reason = self._refusal(address)
        if reason is not None:
            level = logging.DEBUG if address in self._refusing else logging.WARNING
            self._refusing.add(address)
            log.log(level, "refusing a connection from %s: %s", address or "an unknown address", reason)
            return False
        self.open_total += 1
        if address is not None:
            self._open[address] = self.open_from(address) + 1
        return True

    def release(self, address: str | None) -> None:
        """A connection counted by ``acquire`` has closed."""
        self.open_total -= 1
        if address is not None:
            self._open[address] -= 1
            if not self._open[address]:
                del self._open[address]
        self._refusing.clear()

    def _refusal(self, address: str | None) -> str | None:
        if self.open_total >= self.max_total:
            return f"{self.max_total} connections are open, the most allowed"
        if address is not None and self.open_from(address) >= self.max_per_address:
            return f"{self.max_per_address} connections from that address are open, the most allowed"
        return None


def remote_address(stream: trio.abc.Stream) -> str | None:
    """The IP address at the other end of a TCP stream; ``None`` for other streams."""
    if not isinstance(stream, trio.SocketStream):
        return None
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:  # it is gone already; it still counts towards the total
        return None
