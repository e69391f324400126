"""The sync engine: links to peers, fan-out of local updates, catch-up and anti-entropy.

``SyncEngine.run_link(stream)`` runs one peer link over any trio stream (TCP, TLS, memory)
until it ends, and never raises for anything the peer does. Updates the replica stores are
offered to every linked member of their conversation except the peer they came from.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from ..errors import GigiError, NotAllowed, SchemaError, StoreClosed
from ..model import Changes
from ..protocol import (
    HEADS_CAPABILITY,
    MAX_REACHED,
    PARTS_CAPABILITY,
    REACH_CAPABILITY,
    Announce,
    Awareness,
    AwarenessEntry,
    Close,
    CloseCode,
    Connection,
    Event,
    HeadRecord,
    Hello,
    Limits,
    Ping,
    Pong,
    RemoteProtocolError,
    SyncPart,
    SyncStep1,
    SyncStep2,
    Update,
)
from ..replica import EMPTY_UPDATE, Replica, StoredUpdate
from .activity import (
    Activity,
    EventsDropped,
    PeerOffline,
    PeerOnline,
    PresenceChanged,
    SyncProgress,
    TransferProgress,
    describe_changes,
    describe_vanished,
)
from .limits import RateLimitedStream
from .link import EMPTY_STATE_VECTOR, LinkSettings, PeerLink, read_events
from .presence import RENEW_SECONDS, Presence, PresenceTable, local_state
from .standing import PeerStanding
from .turns import CatchUpTurns

log = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0
EVENT_BUFFER = 1024
MISSING_ASK_INTERVAL = 1.0  # seconds between asks for what a live update waits for
REACHED_ROOM = 8 * 1024  # the most ``Update.reached`` takes in a frame: MAX_REACHED ids of 64 characters


@dataclass(frozen=True, slots=True)
class LinkOutcome:
    """How a link ended: why, and with whom (``None`` if the peer never said hello)."""

    reason: str
    peer_id: str | None


@dataclass(slots=True)
class _Session:
    """What one link knows about its peer while it runs."""

    link: PeerLink
    nursery: trio.Nursery
    handshake: trio.CancelScope
    expected_peer: str | None
    standing: PeerStanding
    fetching: set[str] = field(default_factory=set)
    catching_up: set[str] = field(default_factory=set)
    catch_up_total: int = 0
    registered: bool = False
    asked_missing: dict[str, float] = field(default_factory=dict)  # conversation -> when
    arriving_percent: int = -1  # last told of the large frame under way (-1: none told yet)
    parts: dict[str, list[bytes]] = field(default_factory=dict)  # step 2 parts held, by conversation
    parts_bytes: int = 0


class SyncEngine:
    """Keeps a replica's conversations in sync with every peer linked to it."""

    def __init__(
        self,
        replica: Replica,
        *,
        settings: LinkSettings | None = None,
        limits: Limits | None = None,
        awareness_client_id: int | None = None,
        event_buffer: int = EVENT_BUFFER,
    ) -> None:
        self.replica = replica
        self.settings = settings or LinkSettings()
        self.limits = limits or Limits()
        # One awareness client id per engine run, as a Yjs client id is per session.
        self._awareness_client_id = secrets.randbits(53) if awareness_client_id is None else awareness_client_id
        self._links: dict[str, PeerLink] = {}
        self._turns = CatchUpTurns(self.settings.catch_up_wait)
        self._presence = PresenceTable()
        self._presence_clock = 0
        self._typing: set[str] = set()
        self._events_send, self._events_receive = trio.open_memory_channel[Activity](event_buffer)
        self._dropped = 0
        self._nonces = itertools.count(1)

    # -- the application's view ------------------------------------------------------

    def events(self) -> trio.MemoryReceiveChannel[Activity]:
        """The engine's events, for one consumer: ``async for event in engine.events()``."""
        return self._events_receive

    @property
    def online_peers(self) -> dict[str, str]:
        """Linked peers: peer id -> nickname."""
        return {peer: link.peer.nickname for peer, link in self._links.items() if link.peer is not None}

    def presence(self, conversation: str) -> list[Presence]:
        """Peers present in ``conversation`` right now (renewed within the last 30 s)."""
        return self._presence.present(trio.current_time(), conversation)

    def set_typing(self, conversation: str, typing: bool) -> None:
        """Tell the conversation's linked members whether we are typing in it."""
        if typing == (conversation in self._typing):
            return
        (self._typing.add if typing else self._typing.discard)(conversation)
        for link in self._links.values():
            if conversation in link.shared:
                self._announce_presence(link, conversation)

    def _announce_presence(self, link: PeerLink, conversation: str) -> None:
        self._presence_clock += 1
        state = local_state(self.replica.nickname, conversation in self._typing)
        entry = AwarenessEntry(self._awareness_client_id, self._presence_clock, state)
        link.offer(Awareness(conversation, (entry,)))

    def offer(self, stored: StoredUpdate) -> None:
        """Pass a stored update on to every linked member that lacks it (``UpdateListener``):
        not to its origin, nor to the peers the origin says it reached, nor to those whose
        last state vector holds its structs (a catch-up passed on, when a peer back from
        offline gets it from all of them).

        Each peer it goes to hears which others have it (``Update.reached``), so that in a
        mesh where everyone is linked to everyone an update crosses each link once, not
        once from its author and again from every other member passing it on.

        A linked peer that has just become a member (a new conversation, an invitation)
        is told about the conversation instead, and fetches all of it; one that has left
        or been removed gets nothing from now on.
        """
        conversation, update, origin, reached = stored.conversation, stored.update, stored.origin, stored.reached
        members = self.replica.loaded_members(conversation) or {}  # stored just now: in memory
        # Only peer ids go in the word: an origin that is no linked peer (a relay's) stays out.
        told = set(reached) | ({origin} if origin in self._links else set())
        targets: list[PeerLink] = []
        for peer_id, link in self._links.items():
            if peer_id == origin:
                continue
            member = members.get(peer_id)
            if member is None or not member.active:
                link.shared.discard(conversation)
            elif conversation not in link.shared:
                told.add(peer_id)
                link.shared.add(conversation)
                link.offer(Announce((conversation,)))
                self._announce_presence(link, conversation)  # not only at the next renewal
            elif peer_id not in reached and link.accepting:  # a link that is ending gets nothing
                told.add(peer_id)
                if stored.ends is None or not link.holds(conversation, stored.ends):
                    targets.append(link)
        word = sorted(told)
        for link in targets:
            link.offer_update(conversation, update, self._reached_word(word, link.peer, update))

    # -- links -----------------------------------------------------------------------

    async def run_link(self, stream: trio.abc.Stream, *, expected_peer: str | None = None) -> LinkOutcome:
        """Sync with the peer at the other end of ``stream`` until the link ends.

        With ``expected_peer`` the link is refused unless the peer says it is that peer.
        Nothing the peer does makes this raise; a peer sending over the link settings'
        rates is slowed down (bytes) or closed (frames).
        """
        stream = RateLimitedStream(stream, self.settings)
        link = PeerLink(Connection(self.limits), self.settings)
        reason = "cancelled"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, link, stream, nursery.cancel_scope)
                capabilities = frozenset({HEADS_CAPABILITY, PARTS_CAPABILITY, REACH_CAPABILITY})
                link.offer(Hello(self.replica.peer_id, self.replica.nickname, self._awareness_client_id, capabilities))
                handshake = trio.CancelScope(deadline=trio.current_time() + self.settings.handshake_timeout)
                announce = functools.partial(self._announce_presence, link)
                standing = PeerStanding(self.replica, link, self.settings.anti_entropy_interval, announce)
                session = _Session(link, nursery, handshake, expected_peer, standing)
                reason = await self._read(stream, session)
                log.info("link to %s ended: %s", self._name(link), reason)
                link.close()
                nursery.cancel_scope.deadline = trio.current_time() + FLUSH_SECONDS
        finally:
            self._unregister(link, link.lost or reason)
            self._turns.release(link)
            with trio.CancelScope(shield=True):
                await stream.aclose()
        return LinkOutcome(link.lost or reason, link.peer.peer_id if link.peer else None)

    async def _read(self, stream: trio.abc.Stream, session: _Session) -> str:
        link = session.link

        async def handle(event: Event) -> None:
            await self._handle(session, event)

        try:
            with session.handshake:
                arriving = functools.partial(self._arriving, session)
                return await read_events(stream, link.connection, handle, self.settings.idle_timeout, arriving)
            return self._refuse(link, CloseCode.TIMEOUT, "no handshake in time")
        except RemoteProtocolError as exc:
            return self._refuse(link, exc.code, exc.reason)
        except SchemaError as exc:
            # An update that failed the schema check (``UnsafeUpdate``) or did not apply:
            # end this link only; nothing of it was stored or passed on.
            return self._refuse(link, CloseCode.INTERNAL_ERROR, f"update refused: {exc}")
        except StoreClosed as exc:
            # Our replica closed under a link still running: we are going away.
            return self._refuse(link, CloseCode.GOING_AWAY, str(exc))
        except GigiError as exc:
            # Our side failed to store what the peer sent: end this link only.
            return self._refuse(link, CloseCode.INTERNAL_ERROR, str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return f"connection lost: {exc or type(exc).__name__}"

    def _arriving(self, session: _Session, received: int, total: int) -> None:
        """Tell the application how much of a large frame is in (``TransferProgress``)."""
        peer = session.link.peer
        if peer is None or total < self.settings.progress_bytes:
            return
        percent = received * 100 // total
        if percent > session.arriving_percent:
            self._publish(TransferProgress(peer.peer_id, received, total))
            session.arriving_percent = percent
        if received == total:
            session.arriving_percent = -1  # the next large frame starts from nothing

    def _refuse(self, link: PeerLink, code: CloseCode, reason: str) -> str:
        log.warning("closing link to %s: %s (%s)", self._name(link), reason, code.name)
        link.offer(Close(code, reason[:200]))
        return reason

    async def _write(self, link: PeerLink, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        """The writer; when it ends (all flushed, or the peer gone) the whole link ends."""
        try:
            await link.write_queued(stream, functools.partial(self._catch_up, link))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            link.lost = f"connection lost while sending: {exc or type(exc).__name__}"
        except GigiError as exc:
            # Our side failed to make a catch-up (the store, say): end this link only, as
            # the reader does when it fails to store what the peer sent.
            log.warning("link to %s: cannot make a catch-up: %s", self._name(link), exc)
            link.lost = f"cannot make a catch-up: {exc}"
        scope.cancel()

    # -- handling what the peer says -----------------------------------------------------

    async def _handle(self, session: _Session, event: Event) -> None:
        link = session.link
        if isinstance(event, Hello):
            await self._on_hello(session, event)
        elif isinstance(event, Announce):
            await self._on_announce(session, event)
        elif isinstance(event, SyncStep1):
            await self._on_step1(session, event)
        elif isinstance(event, SyncStep2):
            try:
                await self._on_update(session, event)
            finally:
                self._turns.arrived(event.conversation, link)
        elif isinstance(event, Update):
            await self._on_update(session, event)
        elif isinstance(event, SyncPart):
            self._on_part(session, event)
        elif isinstance(event, Awareness):
            self._on_awareness(session, event)
        elif isinstance(event, Ping):
            link.offer(Pong(event.nonce))

    async def _on_hello(self, session: _Session, hello: Hello) -> None:
        link = session.link
        session.handshake.deadline = math.inf
        if hello.peer_id == self.replica.peer_id:
            raise RemoteProtocolError("connected to ourselves", CloseCode.FORBIDDEN)
        if session.expected_peer is not None and hello.peer_id != session.expected_peer:
            raise RemoteProtocolError(
                f"expected peer {session.expected_peer}, got {hello.peer_id}", CloseCode.FORBIDDEN
            )
        if hello.peer_id in self._links:
            raise RemoteProtocolError("already linked to this peer", CloseCode.GOING_AWAY)
        link.peer = hello
        self._links[hello.peer_id] = link
        session.registered = True
        self._publish(PeerOnline(hello.peer_id, hello.nickname))
        shared = await self.replica.shared_conversations(hello.peer_id)
        link.shared.update(shared)
        session.catching_up = set(shared)
        session.catch_up_total = len(shared)
        link.offer(Announce(tuple(shared)))
        later = []
        for conversation in shared:
            if self._turns.try_take(conversation, link, hello.peer_id):
                link.offer(SyncStep1(conversation, await self.replica.state_vector(conversation)))
            else:
                later.append(conversation)
            self._announce_presence(link, conversation)
        if later:
            session.nursery.start_soon(self._ask_in_turn, session, later)
        session.nursery.start_soon(self._keep_alive, link)
        session.nursery.start_soon(self._repair_periodically, session)

    async def _ask_in_turn(self, session: _Session, conversations: list[str]) -> None:
        """Ask for each of ``conversations`` once the catch-up another link is bringing of
        it has merged (``CatchUpTurns``): the peer then sends only what that one lacked,
        and a conversation that was new to us is no longer fetched whole."""
        link = session.link
        assert link.peer is not None  # after its hello
        deadline = trio.current_time() + self.settings.catch_up_wait
        for conversation in conversations:  # in the order the other link's answers come
            await self._turns.take(conversation, link, link.peer.peer_id, deadline)
            asked = False
            with self._failing_softly(session, conversation):
                if conversation in link.shared:
                    link.offer(SyncStep1(conversation, await self.replica.state_vector(conversation)))
                    asked = True
                else:
                    asked = await self._ask_announced(session, conversation, set(await self.replica.conversation_ids()))
            if not asked:
                self._turns.arrived(conversation, link)  # nothing asked: nothing to wait for

    def _on_awareness(self, session: _Session, awareness: Awareness) -> None:
        link, peer = session.link, session.link.peer
        conversation = awareness.conversation
        if peer is None or (conversation not in link.shared and conversation not in session.fetching):
            return  # presence only counts among members (and a peer is one of a conversation it is sending us)
        for entry in awareness.entries:  # the protocol allowed only the peer's own client id
            if self._presence.record(trio.current_time(), awareness.conversation, peer.peer_id, peer.nickname, entry):
                typing = entry.state is not None and entry.state.get("typing") is True
                self._publish(
                    PresenceChanged(
                        awareness.conversation, peer.peer_id, peer.nickname, entry.state is not None, typing
                    )
                )

    async def _on_announce(self, session: _Session, announce: Announce) -> None:
        link = session.link
        assert link.peer is not None  # the protocol allows an announce only after a hello
        known = set(await self.replica.conversation_ids())
        later = []
        for conversation in announce.conversations:
            if conversation in link.shared or conversation in session.fetching:
                continue
            if conversation not in known and not self._turns.try_take(conversation, link, link.peer.peer_id):
                later.append(conversation)  # another link is fetching it: ask this one after
            else:
                await self._ask_announced(session, conversation, known)
        if later:
            session.nursery.start_soon(self._ask_in_turn, session, later)

    async def _ask_announced(self, session: _Session, conversation: str, known: set[str]) -> bool:
        """Ask for what we lack of a conversation the peer announced: all of it if it is
        new to us (we were added elsewhere). False if we asked nothing."""
        link = session.link
        if conversation not in known:
            session.fetching.add(conversation)
            session.catching_up.add(conversation)
            session.catch_up_total += 1
            link.offer(SyncStep1(conversation, EMPTY_STATE_VECTOR))
        elif await session.standing.may_share(conversation):
            link.offer(SyncStep1(conversation, await self.replica.state_vector(conversation)))
        else:
            return await session.standing.ask_outsider(conversation)
        return True

    async def _on_step1(self, session: _Session, step: SyncStep1) -> None:
        link = session.link
        if step.conversation in session.fetching:
            # We are fetching it from this peer and hold nothing of it yet.
            link.offer(SyncStep2(step.conversation, EMPTY_UPDATE))
            return
        if not await session.standing.may_share(step.conversation):
            if not await session.standing.ask_outsider(step.conversation):
                log.info("%s asked for %s, which we do not share with it", self._name(link), step.conversation)
            return
        link.peer_state[step.conversation] = step.state_vector
        if link.is_behind(step.conversation):
            # The writer makes the catch-up once the peer reads again, from its last state
            # vector: a peer that stopped reading costs no diff however often it asks.
            link.mark_resync(step.conversation)
            return
        if not link.offer_all(await self._catch_up(link, step.conversation, step.state_vector)):
            link.mark_resync(step.conversation)

    async def _catch_up(self, link: PeerLink, conversation: str, state_vector: bytes) -> list[SyncPart | SyncStep2]:
        """What a peer at ``state_vector`` lacks, with the signed heads that cover it if the
        peer takes them (``Replica.heads_for``) and our other peers that share the
        conversation (``SyncStep2.reached``): a step 2, after the parts it is cut into if it
        is too large for one frame and the peer takes parts."""
        update = await self.replica.diff(conversation, state_vector)
        capabilities = link.peer.capabilities if link.peer is not None else frozenset()
        heads: tuple[HeadRecord, ...] = ()
        if update != EMPTY_UPDATE and HEADS_CAPABILITY in capabilities:
            heads = await self.replica.heads_for(conversation, state_vector)
        parts: list[bytes] = []
        if len(update) > self.limits.max_update_bytes and PARTS_CAPABILITY in capabilities:
            *parts, update = await self.replica.split_update(update, self.limits.max_update_bytes // 2)
        reached = () if update == EMPTY_UPDATE else self._reached_word(self._sharing(conversation), link.peer, update)
        return [*(SyncPart(conversation, part) for part in parts), SyncStep2(conversation, update, heads, reached)]

    def _sharing(self, conversation: str) -> list[str]:
        """Our linked peers that share ``conversation`` (sorted): each gets from us, in its
        catch-up and in what we pass on after it, all we hold of it."""
        return sorted(p for p, link in self._links.items() if conversation in link.shared and link.accepting)

    def _on_part(self, session: _Session, part: SyncPart) -> None:
        """Hold a part of a step 2 too large for one frame until the step 2 that ends it
        (``_on_update``), within ``Limits.max_parts_bytes`` for the link."""
        session.parts_bytes += len(part.update)
        if session.parts_bytes > self.limits.max_parts_bytes:
            raise RemoteProtocolError(
                f"step 2 parts over {self.limits.max_parts_bytes} bytes held at once", CloseCode.LIMIT_EXCEEDED
            )
        session.parts.setdefault(part.conversation, []).append(part.update)

    async def _on_update(self, session: _Session, event: SyncStep2 | Update) -> None:
        link = session.link
        assert link.peer is not None  # the state machine allows no update before Hello
        conversation = event.conversation
        parts = session.parts.pop(conversation, []) if isinstance(event, SyncStep2) else []
        session.parts_bytes -= sum(map(len, parts))
        fetched = conversation in session.fetching
        if fetched and isinstance(event, Update):
            return  # the step 2 we asked for is still coming, and holds this update too
        taken, proving = (True, False) if fetched else await session.standing.takes_from(event)
        if not taken:
            log.info("%s sent an update for %s, which it is not a member of; ignored", self._name(link), conversation)
            return
        catch_up = isinstance(event, SyncStep2)

        def tell_application(changes: Changes) -> None:
            # Merged, not yet on disk: the delivered receipt below waits for the disk.
            for activity in describe_changes(conversation, changes, catch_up=catch_up):
                self._publish(activity)

        try:
            update = await self.replica.merged_parts([*parts, event.update]) if parts else event.update
            changes = await self.replica.receive(
                conversation,
                update,
                origin=link.peer.peer_id,
                acknowledge=False,
                applied=tell_application,
                proving=proving,
                heads=event.heads if isinstance(event, SyncStep2) else (),
                reached=event.reached,
            )
        except NotAllowed as exc:  # from a non-member, or a conversation new to us that is not ours
            log.warning("%s: %s; not stored", self._name(link), exc)
            session.fetching.discard(conversation)
            return
        self.replica.acknowledge_nowait(conversation, changes)  # no checkpoint before: see ``Replica.settled``
        await self._after_update(session, conversation, changes, fetched=fetched, catch_up=catch_up)

    async def _after_update(
        self, session: _Session, conversation: str, changes: Changes, *, fetched: bool, catch_up: bool
    ) -> None:
        """Once an update from the peer is stored: tell the application what vanished,
        share a conversation fetched from a member, ask at once for what a live update
        waits for, and count a catch-up done."""
        link = session.link
        assert link.peer is not None  # the state machine allows no update before Hello
        for activity in describe_vanished(conversation, changes):
            self._publish(activity)
        if fetched:
            session.fetching.discard(conversation)
            if await self.replica.is_member(conversation, link.peer.peer_id):
                link.shared.add(conversation)
        if changes.waiting and not catch_up:
            await self._ask_missing(session, conversation)
        if catch_up and conversation in session.catching_up:
            session.catching_up.discard(conversation)
            done = session.catch_up_total - len(session.catching_up)
            self._publish(SyncProgress(link.peer.peer_id, done, session.catch_up_total))

    async def _ask_missing(self, session: _Session, conversation: str) -> None:
        """A live update left structs waiting for something we lack (an update lost on the
        way, or sent before this link shared the conversation; in a signed conversation
        each head of an author hangs on the one before): ask its sender at once instead of
        at the next anti-entropy round, at most once per ``MISSING_ASK_INTERVAL``."""
        now = trio.current_time()
        if now - session.asked_missing.get(conversation, -math.inf) >= MISSING_ASK_INTERVAL:
            session.asked_missing[conversation] = now
            session.link.offer(SyncStep1(conversation, await self.replica.state_vector(conversation)))

    # -- periodic work -----------------------------------------------------------------

    async def _keep_alive(self, link: PeerLink) -> None:
        """Ping so that a quiet but healthy peer never hits the idle timeout; renew presence."""
        while True:
            await trio.sleep(min(self.settings.ping_interval, RENEW_SECONDS))
            link.offer(Ping(next(self._nonces)))
            for conversation in sorted(link.shared):
                self._announce_presence(link, conversation)

    async def _repair_periodically(self, session: _Session) -> None:
        """Anti-entropy: repeat what a lost frame may have dropped.

        Our state vectors (so the peer resends what we lack), our announce (so the peer
        fetches what it never heard of) and our unanswered fetches.
        """
        link = session.link
        while True:
            await trio.sleep(self.settings.anti_entropy_interval)
            link.offer(Announce(tuple(sorted(link.shared))))
            for conversation in sorted(session.fetching):
                link.offer(SyncStep1(conversation, EMPTY_STATE_VECTOR))
            for conversation in sorted(link.shared):
                with self._failing_softly(session, conversation):
                    link.offer(SyncStep1(conversation, await self.replica.state_vector(conversation)))

    @contextlib.contextmanager
    def _failing_softly(self, session: _Session, conversation: str) -> Iterator[None]:
        """Around a task beside the link's reader, which must not fail the link: a
        document that cannot load now is skipped (the others go on); if our replica has
        closed under the link, the link ends, going away."""
        try:
            yield
        except StoreClosed as exc:
            session.link.lost = f"going away: {exc}"
            session.nursery.cancel_scope.cancel()
        except GigiError as exc:
            log.warning("skipping %s with %s: %s", conversation, self._name(session.link), exc)

    # -- bookkeeping -------------------------------------------------------------------

    def _unregister(self, link: PeerLink, reason: str) -> None:
        if link.peer is not None and self._links.get(link.peer.peer_id) is link:
            del self._links[link.peer.peer_id]
            self._presence.forget_peer(link.peer.peer_id)
            self._publish(PeerOffline(link.peer.peer_id, reason))

    def _publish(self, activity: Activity) -> None:
        """Hand an event to the application; if it has fallen behind, count what is lost."""
        try:
            if self._dropped:
                self._events_send.send_nowait(EventsDropped(self._dropped))
                self._dropped = 0
            self._events_send.send_nowait(activity)
        except trio.WouldBlock:
            self._dropped += 1

    @staticmethod
    def _name(link: PeerLink) -> str:
        return f"{link.peer.nickname} ({link.peer.peer_id})" if link.peer else "an unidentified peer"

    def _reached_word(self, told: list[str], peer: Hello | None, update: bytes) -> tuple[str, ...]:
        """The peers ``told`` (sorted) but ``peer`` itself, beside ``update`` to a peer that
        takes them (``REACH_CAPABILITY``); at most ``MAX_REACHED`` of them: any of them is
        true. None beside an update near the frame limit, where they may not fit."""
        if peer is None or REACH_CAPABILITY not in peer.capabilities:
            return ()
        if len(update) + REACHED_ROOM > self.limits.max_frame_bytes:
            return ()
        return tuple(p for p in told if p != peer.peer_id)[:MAX_REACHED]
