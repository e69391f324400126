"""``open_node``: one peer, with its store, sync engine, secure listener, dialer and discovery.

Everything runs in one nursery for the duration of ``async with open_node(...) as node``;
leaving the block (or cancelling it) stops the tasks, closes the links, withdraws the mDNS
advertisement and closes the store before it returns.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import trio

from ..discovery import Dialer, PeerFound, PeerLost, open_mdns, static_peers
from ..errors import ConfigError, GigiError, single_errors_unwrapped
from ..identity import Contact, ContactBook, Identity, Trust
from ..model import Content, ConversationKind, Member, Message, Metadata, ReceiptKind
from ..replica import Replica, open_replica
from ..store import ConversationSummary
from ..sync import PeerOnline, Presence, SyncEngine, connect_tcp
from ..sync.limits import ConnectionLimiter
from ..sync.relay import RelayClient
from ..transport import TlsCredentials
from ..transport.websocket import RelayAddress
from ._config import NodeConfig, default_data_dir
from ._events import ContactKeyChanged, EventHub, NodeEvent
from ._links import SecureLinks

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def open_node(
    data_dir: str | Path | None = None, *, nickname: str, config: NodeConfig | None = None
) -> AsyncIterator[Node]:
    """Run a node for the duration of the block.

    Args:
        data_dir: where its identity key, contacts and store live (created if missing);
            default: ``default_data_dir(nickname)``.
        nickname: the name others see.
        config: network and sync settings; default ``NodeConfig()`` (mDNS on, every interface,
            a port the OS picks).

    Raises:
        ConfigError: the listen address or interface cannot be used.
        StorageError: the data directory cannot be used (``StoreInUse``: another process has it).
        DiscoveryError: mDNS cannot start on the chosen interfaces.
    """
    config = config or NodeConfig()
    directory = Path(data_dir) if data_dir is not None else default_data_dir(nickname)
    static = static_peers(config.peers)
    identity = await trio.to_thread.run_sync(Identity.load_or_create, directory)
    credentials = await trio.to_thread.run_sync(TlsCredentials, identity)
    contacts = await trio.to_thread.run_sync(ContactBook.load, directory)
    async with open_replica(
        directory,
        nickname=nickname,
        signer=identity,
        rest_after=config.rest_after,
        retention_every=config.retention_every,
    ) as replica:
        engine = SyncEngine(replica, settings=config.links)
        replica.add_listener(engine)
        limiter = ConnectionLimiter(per_address=config.max_connections_per_address, total=config.max_connections)
        links = SecureLinks(engine, credentials, handshake_timeout=config.links.handshake_timeout, limiter=limiter)
        hub = EventHub()
        listeners = await _listen(config)
        try:
            with single_errors_unwrapped():
                async with trio.open_nursery() as nursery:
                    await nursery.start(trio.serve_listeners, links.accept, listeners)
                    dialer = Dialer(
                        links,
                        connect_tcp,
                        grace=config.lost_grace,
                        min_backoff=config.min_backoff,
                        max_backoff=config.max_backoff,
                    )
                    await nursery.start(dialer.run)
                    address = _bound_address(listeners)
                    node = Node(replica, engine, links, contacts, hub, address, directory, identity)
                    nursery.start_soon(node._relay_engine_events)
                    if config.mdns:
                        await nursery.start(node._discover, dialer, config.mdns_addresses())
                    for peer in static:
                        dialer.feed(peer)
                    for relay in config.relays:  # each in its own tasks: a dead relay holds up nothing
                        client = RelayClient(
                            replica,
                            RelayAddress.parse(relay),
                            hub.publish,
                            min_backoff=config.min_backoff,
                            max_backoff=config.max_backoff,
                        )
                        await nursery.start(client.run)
                    yield node
                    nursery.cancel_scope.cancel()
        finally:
            hub.close()


async def _listen(config: NodeConfig) -> list[trio.SocketListener]:
    host = config.listen_host()
    try:
        return await trio.open_tcp_listeners(config.port, host=host)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{config.port}: {exc.strerror or exc}") from exc


def _bound_address(listeners: list[trio.SocketListener]) -> tuple[str, int]:
    host, port = listeners[0].socket.getsockname()[:2]
    return str(host), int(port)


class Node:
    """A running peer: its conversations, its links, and one stream of events. Get one from ``open_node``."""

    def __init__(
        self,
        replica: Replica,
        engine: SyncEngine,
        links: SecureLinks,
        contacts: ContactBook,
        hub: EventHub,
        address: tuple[str, int],
        data_dir: Path,
        identity: Identity,
    ) -> None:
        self._replica = replica
        self._engine = engine
        self._links = links
        self._contacts = contacts
        self._hub = hub
        #: The address and port the listener actually bound.
        self.address = address
        #: Where the identity key, contacts and store live.
        self.data_dir = data_dir
        self._identity = identity

    # -- who and what ------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        """This node's peer id, derived from its identity key."""
        return self._identity.peer_id

    @property
    def nickname(self) -> str:
        """The name others see."""
        return self._replica.nickname

    @property
    def fingerprint(self) -> str:
        """This node's key fingerprint, for users to compare out of band."""
        return self._identity.fingerprint

    def safety_number(self, peer_id: str) -> str | None:
        """The 60-digit number this node and a contact both show; ``None`` if ``peer_id`` is no contact.

        Two users who read the same number to each other (in person, on a call) know that
        their nodes hold each other's real keys: no one sits in between.
        """
        contact = self._contacts.by_peer_id(peer_id)
        return None if contact is None else self._identity.safety_number(contact.public_key)

    def events(self) -> trio.MemoryReceiveChannel[NodeEvent]:
        """Everything that happens, for one consumer: ``async for event in node.events()``.

        Sync events (``gigi_crdt.sync``), mDNS ``PeerFound``/``PeerLost``, and
        ``ContactKeyChanged``. The iteration ends when the node closes.
        """
        return self._hub.events()

    def online_peers(self) -> dict[str, str]:
        """Peers linked right now: peer id -> nickname."""
        return self._engine.online_peers

    def presence(self, conversation: str) -> list[Presence]:
        """Members present in ``conversation`` right now, and whether they are typing."""
        return self._engine.presence(conversation)

    def set_typing(self, conversation: str, typing: bool) -> None:
        """Tell the conversation's linked members whether we are typing in it."""
        self._engine.set_typing(conversation, typing)

    def contacts(self) -> list[Contact]:
        """Peers met so far (trusted on first use), by nickname."""
        return list(self._contacts)

    # -- conversations -----------------------------------------------------------------

    async def create_direct(self, peer_id: str, nickname: str, *, retention_days: int | None = None) -> str:
        """Start a direct conversation with one peer; returns its id. With ``retention_days``,
        every peer drops messages older than that (``NodeConfig.retention_every``)."""
        return await self._replica.create_conversation(
            ConversationKind.DIRECT, others={peer_id: nickname}, retention_days=retention_days
        )

    async def create_group(self, title: str, members: Mapping[str, str], *, retention_days: int | None = None) -> str:
        """Start a group with ``members`` (peer id -> nickname), us as its admin; returns its id.

        The group is signed with our identity key: only we can ever change its member list
        or its retention (see ``gigi_crdt.model.signed``, and ``create_direct`` for
        ``retention_days``)."""
        return await self._replica.create_conversation(
            ConversationKind.GROUP, title=title, others=dict(members), retention_days=retention_days
        )

    async def direct_with(self, peer_id: str) -> str | None:
        """Our direct conversation with ``peer_id``, if there is one."""
        for conversation in await self._replica.shared_conversations(peer_id):
            if (await self._replica.metadata(conversation)).kind is ConversationKind.DIRECT:
                return conversation
        return None

    async def invite(self, conversation: str, peer_id: str, nickname: str) -> str:
        """Add a member to a group we created and post a ``GroupInvite`` there; returns its id.

        Both are one change: as a member the invitee receives the whole group, the invite
        with it, as soon as it is linked to any member; the invite message tells everyone
        in the group what happened.
        """
        return await self._replica.invite(conversation, peer_id, nickname)

    async def remove_member(self, conversation: str, peer_id: str) -> None:
        """Remove a member from a group we created: it is sent nothing written after this."""
        await self._replica.remove_member(conversation, peer_id)

    async def leave(self, conversation: str) -> None:
        """Leave a conversation: its members stop sending us anything new."""
        await self._replica.leave(conversation)

    async def conversations(self) -> list[ConversationSummary]:
        """Every conversation with its last message and unread count, most recent first."""
        return await self._replica.conversations()

    async def metadata(self, conversation: str) -> Metadata:
        """A conversation's kind, title and creation time."""
        return await self._replica.metadata(conversation)

    async def members(self, conversation: str) -> dict[str, Member]:
        """Everyone who is or was a member of ``conversation``."""
        return await self._replica.members(conversation)

    # -- messages ----------------------------------------------------------------------

    async def send(self, conversation: str, content: Content) -> str:
        """Post a message; returns its id once it is on disk (peers get it as soon as linked)."""
        return await self._replica.send(conversation, content)

    async def edit(self, conversation: str, message_id: str, content: Content) -> None:
        """Replace the content of one of our messages."""
        await self._replica.edit(conversation, message_id, content)

    async def delete(self, conversation: str, message_id: str) -> None:
        """Delete one of our messages."""
        await self._replica.delete(conversation, message_id)

    async def react(self, conversation: str, message_id: str, emoji: str, on: bool = True) -> None:
        """Add (or withdraw) our reaction to a message."""
        await self._replica.react(conversation, message_id, emoji, on)

    async def mark_read(self, conversation: str, message_id: str | None = None) -> None:
        """Mark everything up to ``message_id`` (default: the latest) as read; the authors see it."""
        await self._replica.mark_read(conversation, message_id)

    async def history(self, conversation: str, *, before: Message | None = None, limit: int = 50) -> list[Message]:
        """Up to ``limit`` messages before ``before`` (default: the latest), oldest first."""
        return await self._replica.history(conversation, before=before, limit=limit)

    async def unread_count(self, conversation: str) -> int:
        """Messages from others not marked read yet."""
        return await self._replica.unread_count(conversation)

    async def search(self, text: str, conversation: str | None = None, limit: int = 50) -> list[tuple[str, Message]]:
        """Full-text search, newest first, as (conversation id, message)."""
        return await self._replica.search(text, conversation, limit)

    async def receipts(self, conversation: str, message: Message) -> dict[ReceiptKind, list[str]]:
        """Which members have delivered and read ``message``."""
        return await self._replica.receipts(conversation, message)

    # -- background tasks (started by open_node) ---------------------------------------

    async def _relay_engine_events(self) -> None:
        async for event in self._engine.events():
            if isinstance(event, PeerOnline) and not await self._trust(event):
                continue
            self._hub.publish(event)

    async def _trust(self, online: PeerOnline) -> bool:
        """Trust on first use: remember a new peer; refuse one that took a known nickname."""
        public_key = self._links.public_key(online.peer_id)
        if public_key is None:
            return True  # the link is already gone
        try:
            trust = await trio.to_thread.run_sync(self._contacts.observe, online.nickname, online.peer_id, public_key)
        except GigiError as exc:  # a contact book we cannot write must not stop the chat
            log.warning("cannot remember contact %s: %s", online.nickname, exc)
            return True
        if trust is not Trust.KEY_CHANGED:
            return True
        known = self._contacts.get(online.nickname)
        assert known is not None  # KEY_CHANGED means the book holds this nickname
        log.warning("refusing %s (%s): its key is not the one known for that nickname", online.nickname, online.peer_id)
        self._links.drop(online.peer_id)
        self._hub.publish(ContactKeyChanged(online.nickname, known.peer_id, online.peer_id))
        return False

    async def _discover(
        self,
        dialer: Dialer,
        addresses: list[str] | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with open_mdns(self.peer_id, self.address[1], interfaces=addresses) as mdns:
            task_status.started()
            async for event in mdns.events():
                # Two peers that find each other would both dial, and the engine would refuse one
                # of the two links, maybe on both sides at once: only the smaller peer id dials.
                if _peer_of(event) > self.peer_id:
                    dialer.feed(event)
                self._hub.publish(event)


def _peer_of(event: PeerFound | PeerLost) -> str:
    assert event.peer_id is not None  # mDNS always names the peer
    return event.peer_id
