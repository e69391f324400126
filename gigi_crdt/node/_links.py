"""A node's peer links: TLS 1.3 with both ends authenticated, then the sync engine.

Every stream, accepted or dialled, goes through ``open_tls_stream`` before the engine sees a
byte; a peer that does not complete it (plaintext, wrong key, silence) is dropped with a log
line, and nothing else happens. The engine is then told to expect exactly the peer id the
TLS handshake authenticated, so a peer can only ever speak as the key it holds: its HELLO
naming anyone else ends the link.

Against floods: an accepted connection over the ``ConnectionLimiter``'s caps (per remote
address, and in total) is closed before its TLS handshake, which is the expensive part; the
handshake itself must finish within ``handshake_timeout``, so a silent client holds its slot
only that long; the engine rate-limits what each link's peer sends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from ..sync import LinkOutcome, SyncEngine
from ..sync.limits import ConnectionLimiter, remote_address
from ..transport import HandshakeRefused, TlsCredentials, open_tls_stream

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Peer:
    """What is known about an authenticated peer while at least one of its links runs."""

    public_key: bytes
    scopes: set[trio.CancelScope] = field(default_factory=set)


class SecureLinks:
    """Runs the engine's links over authenticated TLS; a ``LinkRunner`` for the dialer.

    The outcome of a link that was refused or dropped here names no peer, so that the
    dialer keeps backing off instead of redialling at once.
    """

    def __init__(
        self,
        engine: SyncEngine,
        credentials: TlsCredentials,
        *,
        handshake_timeout: float,
        limiter: ConnectionLimiter,
    ) -> None:
        self.engine = engine
        self._credentials = credentials
        self._handshake_timeout = handshake_timeout
        #: Caps on accepted connections (dialled ones are bounded by the dialer's targets).
        self.limiter = limiter
        self._peers: dict[str, _Peer] = {}

    def public_key(self, peer_id: str) -> bytes | None:
        """The authenticated key of a peer whose link is up, if any."""
        peer = self._peers.get(peer_id)
        return None if peer is None else peer.public_key

    def drop(self, peer_id: str) -> None:
        """End every link to ``peer_id`` (the dialer will try again later, and be refused again)."""
        peer = self._peers.get(peer_id)
        for scope in peer.scopes if peer is not None else ():
            scope.cancel()

    async def accept(self, stream: trio.abc.Stream) -> None:
        """Serve one incoming connection (the TLS server side) until its link ends.

        Over the limiter's caps it is closed at once, before any TLS work.
        """
        address = remote_address(stream)
        if not self.limiter.acquire(address):
            await trio.aclose_forcefully(stream)
            return
        try:
            await self._run(stream, server=True, expected_peer=None)
        finally:
            self.limiter.release(address)

    async def run_link(self, stream: trio.abc.Stream, *, expected_peer: str | None = None) -> LinkOutcome:
        """Run a dialled connection (the TLS client side), pinned to ``expected_peer`` if given."""
        return await self._run(stream, server=False, expected_peer=expected_peer)

    async def _run(self, stream: trio.abc.Stream, *, server: bool, expected_peer: str | None) -> LinkOutcome:
        side = "incoming" if server else "outgoing"
        secure = None
        with trio.move_on_after(self._handshake_timeout):
            try:
                secure = await open_tls_stream(stream, self._credentials, server=server, expected_peer=expected_peer)
            except HandshakeRefused as exc:
                log.warning("%s peer link: %s", side, exc)
                return LinkOutcome(str(exc), None)
        if secure is None:  # timed out; open_tls_stream closed the stream
            log.warning("%s peer link: no TLS handshake within %g s", side, self._handshake_timeout)
            return LinkOutcome("no TLS handshake in time", None)
        return await self._run_engine(secure.peer_id, secure.public_key, secure)

    async def _run_engine(self, peer_id: str, public_key: bytes, stream: trio.abc.Stream) -> LinkOutcome:
        peer = self._peers.setdefault(peer_id, _Peer(public_key))
        scope = trio.CancelScope()
        peer.scopes.add(scope)
        try:
            with scope:
                return await self.engine.run_link(stream, expected_peer=peer_id)
            return LinkOutcome("dropped by this node", None)
        finally:
            peer.scopes.discard(scope)
            if not peer.scopes:
                del self._peers[peer_id]
