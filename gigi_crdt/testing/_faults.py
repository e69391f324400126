"""The fault-injecting link layer: whole frames lost, duplicated, delayed and reordered.

The engine sends exactly one frame (4-byte big-endian length, then the body) per
``send_all`` call, so ``FaultyStream`` decides the fate of each whole frame: framing is
never corrupted, and every fault is one a reliable stream under a lossy network would
show after retransmission gave up (a lost frame), or a relay that resent (a duplicate),
or a multipath route (reordering). Repairing lost frames is anti-entropy's job.

Hello and Close frames are exempt: a lost Hello only costs a handshake timeout and a
redial, and a duplicated one is (rightly) a protocol error that ends the link; neither
tests convergence. Every other frame type is fair game.

Latency is real time (a few milliseconds), not ``trio.testing.MockClock``: replicas do
their SQLite work in worker threads, and a task waiting for a thread counts as idle, so
an autojumping clock would leap over engine timeouts while SQLite works and the timing
would depend on thread scheduling. Short real delays keep the engine's own timers honest.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from ..protocol.codec import FrameType

HEADER_BYTES = 4
EXEMPT_TYPES = frozenset({FrameType.HELLO, FrameType.CLOSE})
PUMP_BACKLOG = 64  # frames held in flight per direction before the sender waits


class Fate(enum.Enum):
    """What happens to one frame."""

    DELIVER = "deliver"
    DROP = "drop"
    DUPLICATE = "duplicate"
    DELAY = "delay"  # held back long enough for later frames to overtake it


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probabilities per frame (checked in this order) and the latency of a link, in seconds.

    Attributes:
        loss: the frame is dropped.
        dup: the frame is delivered twice.
        reorder: the frame is held back by ``reorder_delay`` so that later frames overtake it.
        latency: base one-way delay of every frame.
        jitter: extra uniform delay in [0, jitter) per frame (small: it reorders only rarely).
        reorder_delay: how long a reordered frame is held back.
    """

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    latency: float = 0.001
    jitter: float = 0.0
    reorder_delay: float = 0.01

    def __post_init__(self) -> None:
        for name in ("loss", "dup", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {value}")
        if self.loss + self.dup + self.reorder > 1.0:
            raise ValueError("loss + dup + reorder must not exceed 1")
        for name in ("latency", "jitter", "reorder_delay"):
            value = getattr(self, name)
            if not (0.0 <= value < math.inf):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value}")

    @property
    def faulty(self) -> bool:
        """True if any frame may be lost, duplicated or reordered."""
        return self.loss > 0 or self.dup > 0 or self.reorder > 0


class FaultSource:
    """Decides each frame's fate and extra delay. Subclass or use one of the two below."""

    def fate(self) -> Fate:
        """The fate of the next faultable frame."""
        return Fate.DELIVER

    def jitter(self) -> float:
        """Extra delay (seconds) for the next frame."""
        return 0.0


class RandomFaults(FaultSource):
    """Fates drawn from a seeded ``random.Random`` at the given rates."""

    def __init__(self, rates: FaultRates, rng: random.Random) -> None:
        self.rates = rates
        self._rng = rng

    def fate(self) -> Fate:
        draw = self._rng.random()
        rates = self.rates
        if draw < rates.loss:
            return Fate.DROP
        if draw < rates.loss + rates.dup:
            return Fate.DUPLICATE
        if draw < rates.loss + rates.dup + rates.reorder:
            return Fate.DELAY
        return Fate.DELIVER

    def jitter(self) -> float:
        return self._rng.random() * self.rates.jitter if self.rates.jitter else 0.0


class ScriptedFaults(FaultSource):
    """Fates read from a fixed script, then ``DELIVER`` forever (for hypothesis: it shrinks)."""

    def __init__(self, script: Sequence[Fate]) -> None:
        self._script = iter(list(script))

    def fate(self) -> Fate:
        return next(self._script, Fate.DELIVER)


@dataclass(slots=True)
class WireStats:
    """What crossed one direction of one link (shared by all links of a network)."""

    frames: int = 0
    bytes: int = 0
    dropped: int = 0
    duplicated: int = 0
    delayed: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


def frame_type(frame: bytes | bytearray | memoryview) -> int | None:
    """The frame's type (first element of its msgpack array) without decoding the rest."""
    if len(frame) < HEADER_BYTES + 2:
        return None
    head = frame[HEADER_BYTES]
    if 0x90 <= head <= 0x9F:  # fixarray: every gigi-sync v1 frame
        return int(frame[HEADER_BYTES + 1])
    return None


def split_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """Whole frames at the start of ``data``, and the incomplete rest."""
    frames = []
    start = 0
    while len(data) - start >= HEADER_BYTES:
        length = int.from_bytes(data[start : start + HEADER_BYTES], "big")
        end = start + HEADER_BYTES + length
        if end > len(data):
            break
        frames.append(data[start:end])
        start = end
    return frames, data[start:]


class FaultyStream(trio.abc.Stream):
    """Wraps the sending side of ``inner``: frames go through a delaying, lossy pump.

    Run ``pump`` in a nursery for as long as the stream is used; ``faults.fate`` is asked
    once per faultable frame. Receiving passes straight through (the peer's own
    ``FaultyStream`` governs the other direction). ``enabled`` may be switched off at any
    time (the network heals); latency stays.
    """

    def __init__(self, inner: trio.abc.Stream, rates: FaultRates, faults: FaultSource, stats: WireStats) -> None:
        self.inner = inner
        self.rates = rates
        self.faults = faults
        self.stats = stats
        self.enabled = True
        self._pending = b""
        self._send, self._receive = trio.open_memory_channel[tuple[float, bytes]](PUMP_BACKLOG)
        self._order = itertools.count()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        frames, self._pending = split_frames(self._pending + bytes(data))
        for frame in frames:
            await self._route(frame)

    async def _route(self, frame: bytes) -> None:
        stats = self.stats
        stats.frames += 1
        stats.bytes += len(frame)
        kind = frame_type(frame)
        name = FrameType(kind).name if kind is not None and kind in FrameType._value2member_map_ else "?"
        stats.by_type[name] = stats.by_type.get(name, 0) + 1
        fate = Fate.DELIVER
        if self.enabled and kind not in EXEMPT_TYPES and self.rates.faulty:
            fate = self.faults.fate()
        due = trio.current_time() + self.rates.latency + self.faults.jitter()
        if fate is Fate.DROP:
            stats.dropped += 1
            return
        if fate is Fate.DELAY:
            stats.delayed += 1
            due += self.rates.reorder_delay
        await self._send.send((due, frame))
        if fate is Fate.DUPLICATE:
            stats.duplicated += 1
            await self._send.send((due, frame))

    async def pump(self) -> None:
        """Deliver queued frames to ``inner`` in order of due time (ties: in order sent)."""
        held: list[tuple[float, int, bytes]] = []
        try:
            await self._pump(held)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the link was cut: what was in flight is lost, as on a real network

    async def _pump(self, held: list[tuple[float, int, bytes]]) -> None:
        while True:
            deadline = held[0][0] if held else math.inf
            if len(held) < PUMP_BACKLOG:
                with trio.move_on_at(deadline):
                    try:
                        due, frame = await self._receive.receive()
                    except trio.EndOfChannel:
                        break
                    heapq.heappush(held, (due, next(self._order), frame))
                    continue
            else:
                await trio.sleep_until(deadline)
            while held and held[0][0] <= trio.current_time():
                await self.inner.send_all(heapq.heappop(held)[2])
        for _, _, frame in sorted(held):
            await self.inner.send_all(frame)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self._send.close()
        await self.inner.aclose()
