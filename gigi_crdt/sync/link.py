"""One peer link: a thin trio driver around ``protocol.Connection``.

One reader loop feeds the protocol; one writer task sends everything, in order, from a
bounded queue. The reader never waits for the queue: a reply that does not fit marks its
conversation for resync instead, and the writer resends from the peer's last state vector
once the queue has drained. So a slow or stuck peer costs a bounded amount of memory and
never holds up anyone else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from ..errors import ConfigError
from ..model.ydecode import clocks_of
from ..protocol import (
    Close,
    CloseCode,
    Connection,
    ConnectionClosed,
    Event,
    Hello,
    LocalProtocolError,
    NeedData,
    RemoteProtocolError,
    SyncPart,
    SyncStep2,
    Update,
)

log = logging.getLogger(__name__)

EMPTY_STATE_VECTOR = b"\x00"
RECEIVE_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Timeouts and bounds of one link.

    Attributes:
        handshake_timeout: seconds from connect until the peer's HELLO; on a node's links
            the TLS handshake before it has as long again.
        ping_interval: seconds between our PINGs, so that a quiet peer never looks idle.
        idle_timeout: seconds without a byte from the peer before the link is closed.
        anti_entropy_interval: seconds between rounds of state vectors that repair lost frames.
        catch_up_wait: seconds a new link waits, before it asks for a conversation, for the
            catch-up another link is bringing of it (``gigi_crdt.sync.turns``).
        queue_size: frames queued for the peer before it is resynced instead.
        max_frames_per_second: frames the peer may send per second, sustained; more ends
            the link with CLOSE 1008 RATE_LIMITED (see ``gigi_crdt.sync.limits``).
        frame_burst: frames the peer may send at once above that rate: a catch-up sends a
            few per shared conversation, so this allows for thousands of conversations.
        max_bytes_per_second: bytes read from the peer per second, sustained; a peer that
            sends more is read more slowly (never disconnected for it).
        byte_burst: bytes read at full speed before the throttle starts: one frame of the
            largest size the protocol allows.
        progress_bytes: frames at least this large are reported as they arrive
            (``TransferProgress``): a catch-up of a big conversation on a slow link.
    """

    handshake_timeout: float = 10.0
    ping_interval: float = 15.0
    idle_timeout: float = 45.0
    anti_entropy_interval: float = 30.0
    catch_up_wait: float = 10.0
    queue_size: int = 256
    max_frames_per_second: float = 1000.0
    frame_burst: int = 10_000
    max_bytes_per_second: float = 64 * 1024 * 1024
    byte_burst: int = 64 * 1024 * 1024
    progress_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_frames_per_second", "frame_burst", "max_bytes_per_second", "byte_burst", "progress_bytes"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)!r}")


class PeerLink:
    """The sending side of one link, shared by the engine (fan-out) and the link's own reader."""

    def __init__(self, connection: Connection, settings: LinkSettings) -> None:
        self.connection = connection
        self.settings = settings
        self.peer: Hello | None = None
        self.shared: set[str] = set()  # conversations this peer may receive
        self.peer_state: dict[str, bytes] = {}  # last state vector the peer told us
        self._peer_clocks: dict[str, tuple[bytes, dict[int, int]]] = {}  # peer_state's, decoded
        self.lost: str | None = None  # why sending failed, if it did
        self._unsendable: set[str] = set()  # conversations whose update the peer would refuse (told once)
        self._send, self._receive = trio.open_memory_channel[Event](settings.queue_size)
        self._resync: set[str] = set()
        self._wake = trio.Event()

    def holds(self, conversation: str, ends: Mapping[int, int]) -> bool:
        """Whether the peer's last state vector reaches ``ends`` (per client, the clock after
        an update's last struct): it holds the update's structs, and so its deletions, which
        come with the structs of the same write. An update without structs: not known."""
        state = self.peer_state.get(conversation)
        if state is None or not ends:
            return False
        seen, clocks = self._peer_clocks.get(conversation, (b"", {}))
        if seen != state:
            clocks = clocks_of(state)
            self._peer_clocks[conversation] = (state, clocks)
        return all(clocks.get(client, 0) >= end for client, end in ends.items())

    @property
    def accepting(self) -> bool:
        """Whether events offered now can still reach the peer: not closed, no send failed."""
        return self.lost is None and self._send.statistics().open_send_channels > 0

    def offer(self, event: Event) -> bool:
        """Queue ``event`` without waiting; ``False`` if the queue is full."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return True  # the link is ending; nothing more to do
        self._wake.set()
        return True

    def offer_all(self, events: Sequence[Event]) -> bool:
        """Queue ``events`` together, or none of them (``False``: the queue lacks room)."""
        queue = self._send.statistics()
        if queue.max_buffer_size - queue.current_buffer_used < len(events):
            return False
        for event in events:
            self.offer(event)
        return True

    def offer_update(self, conversation: str, update: bytes, reached: tuple[str, ...] = ()) -> None:
        """Queue a live update, or fall back to a resync if the peer is behind."""
        if conversation in self._resync or not self.offer(Update(conversation, update, reached)):
            self.mark_resync(conversation)

    def is_behind(self, conversation: str) -> bool:
        """Whether the peer is behind on ``conversation``: the queue is full, or a resync
        of it waits (anything queued for it now would be sent after that resync)."""
        queue = self._send.statistics()
        return conversation in self._resync or queue.current_buffer_used >= queue.max_buffer_size

    def mark_resync(self, conversation: str) -> None:
        """Send this conversation's delta from the peer's last state vector once the queue drains."""
        self._resync.add(conversation)
        self._wake.set()

    def close(self) -> None:
        """Stop accepting events (the writer ends after what is queued)."""
        self._send.close()
        self._wake.set()

    async def write_queued(
        self, stream: trio.abc.Stream, catch_up: Callable[[str, bytes], Awaitable[Sequence[Event]]]
    ) -> None:
        """The writer task: send queued events in order, then pending resyncs (``catch_up``
        makes the step 2 for a conversation and the peer's state vector, after its parts
        if it has any); ends after a Close."""
        while True:
            try:
                events: Sequence[Event] = (self._receive.receive_nowait(),)
            except trio.WouldBlock:
                if not self._resync:
                    # No await between the empty check and this wait: no wake-up is lost.
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                conversation = self._resync.pop()
                state = self.peer_state.get(conversation, EMPTY_STATE_VECTOR)
                # A step 2: it answers a step 1 that overflowed, and completes a fetch.
                events = await catch_up(conversation, state)
            except trio.EndOfChannel:
                return
            for event in events:
                try:
                    data = self.connection.send(event)
                except LocalProtocolError as exc:
                    self._refused(event, exc)
                    break  # the rest of a step 2's parts would be of no use
                await stream.send_all(data)
                if isinstance(event, Close):
                    return

    def _refused(self, event: Event, error: LocalProtocolError) -> None:
        """``event`` is ours, but the peer would refuse it (``Connection.send`` checks it as
        the peer will): a catch-up over the frame limit, say, a conversation of some 400,000
        signed messages at the default 64 MiB. Not sending it keeps the link, and every
        other conversation on it, going; the peer goes without this conversation."""
        if not isinstance(event, SyncStep2 | SyncPart | Update):
            log.error("not sending %s: %s", type(event).__name__, error.reason)
        elif event.conversation not in self._unsendable:
            self._unsendable.add(event.conversation)
            log.error("not sending %s of %s: %s", type(event).__name__, event.conversation, error.reason)


async def read_events(
    stream: trio.abc.Stream,
    connection: Connection,
    handle: Callable[[Event], Awaitable[None]],
    idle_timeout: float,
    arriving: Callable[[int, int], None] | None = None,
) -> str:
    """The reader loop: feed bytes to the protocol and hand each event over; returns why it
    ended. ``arriving`` hears, after each read and before waiting for the next, how much
    of the frame under way is in (``Connection.frame_under_way``): after a read, which may
    complete a frame; before the next, of the frame that follows the ones the read
    completed (their read may have brought a large part of it)."""

    def tell_arriving() -> None:
        under_way = connection.frame_under_way()
        if arriving is not None and under_way is not None:
            arriving(*under_way)

    while True:
        event = connection.next_event()
        if isinstance(event, NeedData):
            tell_arriving()
            with trio.move_on_after(idle_timeout) as idle:
                data = await stream.receive_some(RECEIVE_CHUNK)
            if idle.cancelled_caught:
                raise RemoteProtocolError(f"no traffic for {idle_timeout:g} s", CloseCode.TIMEOUT)
            connection.receive_data(data)
            tell_arriving()
            continue
        if isinstance(event, ConnectionClosed):
            return "closed by the peer" if event.clean else "the stream ended"
        await handle(event)
        if isinstance(event, Close):
            return f"peer closed: {event.code.name} {event.reason}".rstrip()
