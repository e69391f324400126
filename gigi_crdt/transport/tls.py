"""TLS 1.3 peer links: both sides present their identity key, and each pins the other's.

``open_tls_stream`` runs over any trio stream (TCP, memory) and returns an
:class:`AuthenticatedStream` that knows the peer's id and public key, or raises
:class:`HandshakeRefused` saying why. Nothing the peer does raises anything else.

How a link is set up:

1. A TLS 1.3 handshake (stdlib ``ssl`` through ``trio.SSLStream``; never TLS 1.2 or
   less, no plaintext fallback, ALPN ``gigi-crdt/1``). Each side presents a certificate
   whose key is its Ed25519 identity key and requires one from the other side; OpenSSL
   checks the certificate's signature and validity period (see ``_certificates`` for why
   certificates are issued by a public anchor rather than self-signed: stdlib ``ssl``
   cannot request a client certificate and accept an unknown self-signed one).
2. Each side checks the peer's certificate again itself, derives the peer id from its key
   and, given ``expected_peer``, refuses any other peer id (pinning).
3. Each side sends a one-byte verdict, 0 for "accepted" or the :class:`Refusal` code, and
   reads the other's, so both ends of a refused link learn why; TLS alerts do the same
   for failures inside the handshake. Only then does application data flow.

Timeouts are the caller's: wrap the call in ``trio.move_on_after`` / ``fail_after`` (a
silent peer is otherwise waited for forever). On refusal or cancellation the stream is
closed; on success the caller owns the returned stream.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import secrets
import ssl
import tempfile
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import GigiError
from ..identity.keys import Identity, peer_id_for
from ._certificates import CLOCK_SKEW, VALIDITY, CertificateRejected, anchor_pem, check_certificate, issue_certificate

__all__ = [
    "ALPN_PROTOCOL",
    "AuthenticatedStream",
    "HandshakeRefused",
    "Refusal",
    "TlsCredentials",
    "make_ssl_context",
    "open_tls_stream",
]

ALPN_PROTOCOL = "gigi-crdt/1"
_ACCEPTED = 0


class Refusal(enum.IntEnum):
    """Why a link was refused; the values are the verdict byte on the wire."""

    WRONG_PEER = 1  #: the peer's key is not the one of the expected peer id
    BAD_CERTIFICATE = 2  #: garbage, not Ed25519, not issued by the link anchor
    EXPIRED_CERTIFICATE = 3  #: outside its validity period (expired or not yet valid)
    NO_CERTIFICATE = 4  #: the peer presented no certificate
    TLS_VERSION = 5  #: the peer does not speak TLS 1.3
    NOT_TLS = 6  #: the peer does not speak TLS at all (plaintext, another protocol)
    WRONG_PROTOCOL = 7  #: TLS 1.3, but not gigi-crdt (ALPN) or a malformed verdict
    CONNECTION_LOST = 8  #: the connection ended before the link was set up
    HANDSHAKE_FAILED = 9  #: any other TLS failure


class HandshakeRefused(GigiError):
    """A peer link was not set up; ``refusal`` says why, ``by_peer`` whether the peer refused us."""

    def __init__(self, refusal: Refusal, detail: str, *, by_peer: bool = False, peer_id: str | None = None) -> None:
        who = "the peer refused the link" if by_peer else "link refused"
        super().__init__(f"{who}: {refusal.name.lower().replace('_', ' ')}: {detail}")
        self.refusal = refusal
        self.detail = detail
        self.by_peer = by_peer
        #: The peer's authenticated id, if the TLS handshake got that far.
        self.peer_id = peer_id


def make_ssl_context(certificate: x509.Certificate, private_key: Ed25519PrivateKey, *, server: bool) -> ssl.SSLContext:
    """The TLS settings of a link end: TLS 1.3 only, certificates required both ways, no hostnames.

    stdlib ``ssl`` loads certificates and keys only from files: they are written to a
    private temporary directory (the key encrypted with a one-time password) and removed
    as soon as they are loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # peers are named by their key, not by a host name
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=anchor_pem())
    context.set_alpn_protocols([ALPN_PROTOCOL])
    if server:
        context.num_tickets = 0  # no resumption: every link presents and checks certificates
    password = secrets.token_hex(32).encode("ascii")
    with tempfile.TemporaryDirectory(prefix="gigi-tls-") as directory:  # mode 0700
        certificate_path, key_path = Path(directory, "link.crt"), Path(directory, "link.key")
        certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password),
            )
        )
        context.load_cert_chain(certificate_path, key_path, password=password)
    return context


class TlsCredentials:
    """An identity's link certificate and SSL contexts: build once, use for every link."""

    def __init__(self, identity: Identity, *, now: dt.datetime | None = None) -> None:
        now = now or dt.datetime.now(dt.UTC)
        self.identity = identity
        self.certificate = issue_certificate(
            identity.private_key, identity.peer_id, not_before=now - CLOCK_SKEW, not_after=now + VALIDITY
        )
        self.server_context = make_ssl_context(self.certificate, identity.private_key, server=True)
        self.client_context = make_ssl_context(self.certificate, identity.private_key, server=False)


class AuthenticatedStream(trio.abc.Stream):
    """A TLS 1.3 link to an authenticated peer: a trio ``Stream`` plus who is at the other end."""

    def __init__(self, ssl_stream: trio.SSLStream[trio.abc.Stream], peer_id: str, public_key: bytes) -> None:
        self.ssl_stream = ssl_stream
        self.peer_id = peer_id
        self.public_key = public_key

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.ssl_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.ssl_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.ssl_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.ssl_stream.aclose()


async def open_tls_stream(
    stream: trio.abc.Stream,
    identity: Identity | TlsCredentials,
    *,
    server: bool,
    expected_peer: str | None = None,
) -> AuthenticatedStream:
    """Set up an authenticated TLS 1.3 link over ``stream``.

    Args:
        stream: a connected stream; it belongs to this call from now on.
        identity: ours; pass ``TlsCredentials`` to reuse one certificate for many links.
        server: whether this end accepted the connection (TLS server role).
        expected_peer: refuse the link unless the peer's key has this peer id.

    Raises:
        HandshakeRefused: the link was refused, by either side; ``stream`` is closed.
    """
    credentials = identity if isinstance(identity, TlsCredentials) else TlsCredentials(identity)
    context = credentials.server_context if server else credentials.client_context
    ssl_stream = trio.SSLStream(stream, context, server_side=server)
    try:
        try:
            await ssl_stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await _send_pending_alert(ssl_stream)
            raise _refusal_from(exc, "during the TLS handshake") from exc
        peer_id, public_key = await _check_peer(ssl_stream, expected_peer)
        await _exchange_verdicts(ssl_stream, peer_id)
    except BaseException:
        await trio.aclose_forcefully(ssl_stream)
        raise
    return AuthenticatedStream(ssl_stream, peer_id, public_key)


async def _check_peer(ssl_stream: trio.SSLStream[trio.abc.Stream], expected_peer: str | None) -> tuple[str, bytes]:
    """The peer's id and key; a refusal is sent to the peer before it is raised here."""
    try:
        version: str | None = ssl_stream.version()
        if version != "TLSv1.3":  # minimum_version rules this out; checked because it matters
            raise HandshakeRefused(Refusal.TLS_VERSION, f"the peer negotiated {version}")
        alpn: str | None = ssl_stream.selected_alpn_protocol()
        if alpn != ALPN_PROTOCOL:
            raise HandshakeRefused(Refusal.WRONG_PROTOCOL, f"the peer does not speak {ALPN_PROTOCOL} (ALPN {alpn!r})")
        der: bytes | None = ssl_stream.getpeercert(binary_form=True)
        if der is None:
            raise HandshakeRefused(Refusal.NO_CERTIFICATE, "the peer presented no certificate")
        try:
            public_key = check_certificate(der, dt.datetime.now(dt.UTC))
        except CertificateRejected as exc:
            kind = Refusal.EXPIRED_CERTIFICATE if exc.expired else Refusal.BAD_CERTIFICATE
            raise HandshakeRefused(kind, str(exc)) from exc
        peer_id = peer_id_for(public_key)
        if expected_peer is not None and peer_id != expected_peer:
            raise HandshakeRefused(
                Refusal.WRONG_PEER, f"expected peer {expected_peer}, the key is peer {peer_id}", peer_id=peer_id
            )
    except HandshakeRefused as refused:
        await _send_refusal(ssl_stream, refused.refusal)
        raise
    return peer_id, public_key


async def _send_refusal(ssl_stream: trio.SSLStream[trio.abc.Stream], refusal: Refusal) -> None:
    # Read the peer's verdict too: closing a TCP socket with unread data sends a reset,
    # which could destroy our verdict before the peer reads it.
    with contextlib.suppress(trio.BrokenResourceError):
        await ssl_stream.send_all(bytes([refusal]))
        await ssl_stream.receive_some(1)


async def _exchange_verdicts(ssl_stream: trio.SSLStream[trio.abc.Stream], peer_id: str) -> None:
    try:
        await ssl_stream.send_all(bytes([_ACCEPTED]))
        verdict = await ssl_stream.receive_some(1)
    except trio.BrokenResourceError as exc:
        raise _refusal_from(exc, "before confirming the link", peer_id) from exc
    if not verdict:
        raise HandshakeRefused(Refusal.CONNECTION_LOST, "the peer closed the link before confirming it", by_peer=True)
    if verdict[0] == _ACCEPTED:
        return
    try:
        refusal = Refusal(verdict[0])
    except ValueError:
        raise HandshakeRefused(Refusal.WRONG_PROTOCOL, f"malformed verdict {verdict[0]}", peer_id=peer_id) from None
    raise HandshakeRefused(refusal, "the peer sent this refusal after the TLS handshake", by_peer=True, peer_id=peer_id)


async def _send_pending_alert(ssl_stream: trio.SSLStream[trio.abc.Stream]) -> None:
    """Send the TLS alert OpenSSL wrote for a failed handshake, so the peer learns why.

    ``trio.SSLStream`` marks itself broken on an ``SSLError`` without sending what OpenSSL
    left in its outgoing buffer (the alert); we send it ourselves, best effort. This reads
    a private attribute of trio and does nothing if that ever changes.
    """
    outgoing = getattr(ssl_stream, "_outgoing", None)
    if isinstance(outgoing, ssl.MemoryBIO) and outgoing.pending:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await ssl_stream.transport_stream.send_all(outgoing.read())


# OpenSSL reason codes (``SSLError.reason``): the alerts a peer sends us, and our own failures.
_PEER_ALERTS = {
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": Refusal.EXPIRED_CERTIFICATE,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": Refusal.NO_CERTIFICATE,
    "SSLV3_ALERT_BAD_CERTIFICATE": Refusal.BAD_CERTIFICATE,
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": Refusal.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": Refusal.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_REVOKED": Refusal.BAD_CERTIFICATE,
    "TLSV1_ALERT_UNKNOWN_CA": Refusal.BAD_CERTIFICATE,
    "TLSV1_ALERT_DECRYPT_ERROR": Refusal.BAD_CERTIFICATE,
    "TLSV1_ALERT_PROTOCOL_VERSION": Refusal.TLS_VERSION,
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": Refusal.WRONG_PROTOCOL,
}
_LOCAL_FAILURES = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": Refusal.NO_CERTIFICATE,
    "UNSUPPORTED_PROTOCOL": Refusal.TLS_VERSION,
    "NO_PROTOCOLS_AVAILABLE": Refusal.TLS_VERSION,
    "WRONG_SSL_VERSION": Refusal.TLS_VERSION,
    "WRONG_VERSION_NUMBER": Refusal.NOT_TLS,
    "HTTP_REQUEST": Refusal.NOT_TLS,
    "HTTPS_PROXY_REQUEST": Refusal.NOT_TLS,
    "UNKNOWN_PROTOCOL": Refusal.NOT_TLS,
    "PACKET_LENGTH_TOO_LONG": Refusal.NOT_TLS,
    "RECORD_LAYER_FAILURE": Refusal.NOT_TLS,
    "UNEXPECTED_EOF_WHILE_READING": Refusal.CONNECTION_LOST,
}
_DATE_ERRORS = {9, 10}  # X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED


def _refusal_from(exc: trio.BrokenResourceError, when: str, peer_id: str | None = None) -> HandshakeRefused:
    """Our refusal for a transport or TLS failure while setting up a link."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        kind = Refusal.EXPIRED_CERTIFICATE if cause.verify_code in _DATE_ERRORS else Refusal.BAD_CERTIFICATE
        return HandshakeRefused(kind, f"peer certificate: {cause.verify_message}", peer_id=peer_id)
    if isinstance(cause, ssl.SSLError):
        reason = str(cause.reason or "")
        text = reason.lower().replace("_", " ") or str(cause)
        if reason in _PEER_ALERTS:
            return HandshakeRefused(_PEER_ALERTS[reason], f"TLS alert: {text}", by_peer=True, peer_id=peer_id)
        kind = _LOCAL_FAILURES.get(reason, Refusal.HANDSHAKE_FAILED)
        return HandshakeRefused(kind, f"{text} {when}", peer_id=peer_id)
    return HandshakeRefused(Refusal.CONNECTION_LOST, f"{cause or exc or 'connection broken'} {when}", peer_id=peer_id)
