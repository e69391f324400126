import datetime as dt
import functools
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from gigi_crdt.errors import GigiError
from gigi_crdt.identity import Identity
from gigi_crdt.transport import AuthenticatedStream, HandshakeRefused, Refusal, TlsCredentials, open_tls_stream
from gigi_crdt.transport._certificates import ANCHOR_NAME, anchor_key, issue_certificate
from gigi_crdt.transport.tls import make_ssl_context

TIMEOUT = 10
NOW = dt.datetime.now(dt.UTC)
ALICE, BOB, CAROL = Identity.generate(), Identity.generate(), Identity.generate()
CREDENTIALS = {identity.peer_id: TlsCredentials(identity) for identity in (ALICE, BOB)}

Side = Callable[[trio.abc.Stream], Awaitable[Any]]


async def outcome_of(side: Side, stream: trio.abc.Stream) -> Any:
    """What one end came to: its result, or the HandshakeRefused it raised (nothing else may escape)."""
    try:
        return await side(stream)
    except HandshakeRefused as exc:
        return exc


async def over_memory(server: Side, client: Side) -> tuple[Any, Any]:
    server_stream, client_stream = trio.testing.memory_stream_pair()
    results: dict[str, Any] = {}

    async def run(name: str, side: Side, stream: trio.abc.Stream) -> None:
        results[name] = await outcome_of(side, stream)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "server", server, server_stream)
            nursery.start_soon(run, "client", client, client_stream)
    return results["server"], results["client"]


async def over_tcp(server: Side, client: Side) -> tuple[Any, Any]:
    """One connection over real loopback TCP, the server side run by ``trio.serve_tcp``."""
    send, receive = trio.open_memory_channel[Any](1)

    async def handle(stream: trio.SocketStream) -> None:
        await send.send(await outcome_of(server, stream))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            client_result = await outcome_of(client, await trio.open_tcp_stream("127.0.0.1", port))
            server_result = await receive.receive()
            nursery.cancel_scope.cancel()
    return server_result, client_result


@pytest.fixture(params=["memory", "tcp"])
def link(request: pytest.FixtureRequest) -> Callable[[Side, Side], Awaitable[tuple[Any, Any]]]:
    return over_memory if request.param == "memory" else over_tcp


def end(identity: Identity | TlsCredentials, *, server: bool, expected_peer: str | None = None) -> Side:
    """A gigi end that says hello over the link once it is up, and returns who it talked to."""

    async def side(stream: trio.abc.Stream) -> tuple[str, bytes, bytes]:
        authenticated = await open_tls_stream(stream, identity, server=server, expected_peer=expected_peer)
        async with authenticated:
            assert isinstance(authenticated, AuthenticatedStream)
            await authenticated.send_all(b"hello from " + (b"server" if server else b"client"))
            heard = await authenticated.receive_some()
        return authenticated.peer_id, authenticated.public_key, bytes(heard)

    return side


def with_client_context(identity: Identity, context: ssl.SSLContext) -> TlsCredentials:
    credentials = TlsCredentials(identity)
    credentials.client_context = context
    return credentials


def with_server_context(identity: Identity, context: ssl.SSLContext) -> TlsCredentials:
    credentials = TlsCredentials(identity)
    credentials.server_context = context
    return credentials


def assert_refused(result: Any, refusal: Refusal, *, by_peer: bool) -> HandshakeRefused:
    assert isinstance(result, HandshakeRefused), result
    assert isinstance(result, GigiError)
    assert (result.refusal, result.by_peer) == (refusal, by_peer), result
    return result


# -- success and pinning ---------------------------------------------------------------


async def test_two_identities_learn_each_others_peer_id(link: Any) -> None:
    server, client = await link(end(ALICE, server=True), end(BOB, server=False, expected_peer=ALICE.peer_id))
    assert server == (BOB.peer_id, BOB.public_key, b"hello from client")
    assert client == (ALICE.peer_id, ALICE.public_key, b"hello from server")


async def test_reused_credentials_serve_many_links() -> None:
    for _ in range(3):
        server, client = await over_tcp(
            end(CREDENTIALS[ALICE.peer_id], server=True), end(CREDENTIALS[BOB.peer_id], server=False)
        )
        assert server[0] == BOB.peer_id
        assert client[0] == ALICE.peer_id


async def test_dialing_the_wrong_peer_is_refused_on_both_sides(link: Any) -> None:
    server, client = await link(end(ALICE, server=True), end(BOB, server=False, expected_peer=CAROL.peer_id))
    refused = assert_refused(client, Refusal.WRONG_PEER, by_peer=False)
    assert CAROL.peer_id in str(refused)
    assert ALICE.peer_id in str(refused)
    assert refused.peer_id == ALICE.peer_id
    refused = assert_refused(server, Refusal.WRONG_PEER, by_peer=True)
    assert refused.peer_id == BOB.peer_id


async def test_a_server_expecting_someone_else_refuses_on_both_sides(link: Any) -> None:
    server, client = await link(end(ALICE, server=True, expected_peer=CAROL.peer_id), end(BOB, server=False))
    assert_refused(server, Refusal.WRONG_PEER, by_peer=False)
    assert_refused(client, Refusal.WRONG_PEER, by_peer=True)


# -- bad certificates and protocols ----------------------------------------------------


def bare_context(*, server: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["gigi-crdt/1"])
    return context


def certificate(key: Any, *, issuer_key: Any, issuer: x509.Name, days: tuple[int, int]) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + dt.timedelta(days=days[0]))
        .not_valid_after(NOW + dt.timedelta(days=days[1]))
        .sign(issuer_key, None)
    )


def expired_context(*, server: bool) -> ssl.SSLContext:
    key = Ed25519PrivateKey.generate()
    cert = issue_certificate(key, "old", not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1))
    return make_ssl_context(cert, key, server=server)


def self_signed_context(*, server: bool) -> ssl.SSLContext:
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")])
    return make_ssl_context(certificate(key, issuer_key=key, issuer=name, days=(-1, 1)), key, server=server)


def ecdsa_context(*, server: bool) -> ssl.SSLContext:
    """Issued by the anchor, so OpenSSL accepts it; only our own check sees it is no Ed25519 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate(key, issuer_key=anchor_key(), issuer=ANCHOR_NAME, days=(-1, 1))
    return make_ssl_context(cert, key, server=server)  # type: ignore[arg-type]


def tls12_context(*, server: bool) -> ssl.SSLContext:
    context = make_ssl_context(CREDENTIALS[ALICE.peer_id].certificate, ALICE.private_key, server=server)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


BAD_CONTEXTS = {
    "no-certificate": (bare_context, Refusal.NO_CERTIFICATE),
    "expired": (expired_context, Refusal.EXPIRED_CERTIFICATE),
    "self-signed": (self_signed_context, Refusal.BAD_CERTIFICATE),
    "ecdsa": (ecdsa_context, Refusal.BAD_CERTIFICATE),
    "tls-1.2": (tls12_context, Refusal.TLS_VERSION),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTEXTS))
async def test_a_bad_client_is_refused_and_told_why(link: Any, case: str) -> None:
    make, refusal = BAD_CONTEXTS[case]
    bad = with_client_context(BOB, make(server=False))
    server, client = await link(end(ALICE, server=True), end(bad, server=False))
    assert_refused(server, refusal, by_peer=False)
    assert_refused(client, refusal, by_peer=True)


@pytest.mark.parametrize("case", sorted(set(BAD_CONTEXTS) - {"no-certificate"}))
async def test_a_bad_server_is_refused_and_told_why(link: Any, case: str) -> None:
    make, refusal = BAD_CONTEXTS[case]
    bad = with_server_context(ALICE, make(server=True))
    server, client = await link(end(bad, server=True), end(BOB, server=False))
    # A TLS 1.2 server is the one to find no common version: it refuses, the client is told.
    client_refused = case != "tls-1.2"
    assert_refused(client, refusal, by_peer=not client_refused)
    assert_refused(server, refusal, by_peer=client_refused)


async def test_a_server_without_certificate_cannot_even_start() -> None:
    server, client = await over_memory(
        end(with_server_context(ALICE, bare_context(server=True)), server=True), end(BOB, server=False)
    )
    # OpenSSL's server finds no usable signature algorithm and gives up first.
    assert isinstance(server, HandshakeRefused)
    assert not server.by_peer
    assert isinstance(client, HandshakeRefused)
    assert client.by_peer


async def test_a_client_without_gigi_alpn_is_refused() -> None:
    context = make_ssl_context(CREDENTIALS[BOB.peer_id].certificate, BOB.private_key, server=False)
    context.set_alpn_protocols(["http/1.1"])
    server, client = await over_memory(end(ALICE, server=True), end(with_client_context(BOB, context), server=False))
    # Without a common protocol the server selects none, and each end refuses on its own.
    assert_refused(server, Refusal.WRONG_PROTOCOL, by_peer=False)
    assert_refused(client, Refusal.WRONG_PROTOCOL, by_peer=False)


# -- not TLS at all ----------------------------------------------------------------------


def client_hello() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = bare_context(server=False).wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


GARBAGE = {
    "nothing": b"",
    "gigi-hello-in-plaintext": b"\x00\x00\x00\x20\x85\xa1t\xa5hello\xa1p\xa9gigi-sync\xa1v\x01\xa4peer\xa8alice-01",
    "http": b"GET / HTTP/1.1\r\nHost: gigi\r\n\r\n",
    "zeros": bytes(64),
    "handshake-header-only": b"\x16\x03\x01\x00\x05",
    "truncated-client-hello": client_hello()[:100],
    "client-hello-then-garbage": client_hello() + b"\x17\x03\x03\x00\x10" + bytes(16),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
async def test_garbage_only_ever_gives_a_refusal(case: str) -> None:
    async def plaintext_client(stream: trio.abc.Stream) -> bytes:
        async with stream:
            await stream.send_all(GARBAGE[case])
            # A half-closing memory stream is not available: closing our side is the EOF.
            return b""

    server, _ = await over_memory(end(ALICE, server=True), plaintext_client)
    assert isinstance(server, HandshakeRefused)
    assert server.refusal in {Refusal.NOT_TLS, Refusal.CONNECTION_LOST, Refusal.HANDSHAKE_FAILED}


async def test_a_plaintext_client_gets_nothing_and_the_server_carries_on() -> None:
    results, results_receive = trio.open_memory_channel[Any](10)

    async def handle(stream: trio.SocketStream) -> None:
        await results.send(await outcome_of(end(ALICE, server=True), stream))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]

            async with await trio.open_tcp_stream("127.0.0.1", port) as plaintext:
                await plaintext.send_all(GARBAGE["gigi-hello-in-plaintext"])
                received = b""
                while chunk := await plaintext.receive_some():
                    received += chunk
            # At most a TLS alert record (content type 21), never any application data.
            assert received == b"" or (received[0] == 21 and len(received) <= 7 + 2 * 5)
            assert_refused(await results_receive.receive(), Refusal.NOT_TLS, by_peer=False)

            async with await trio.open_tcp_stream("127.0.0.1", port) as silent:
                pass  # connects and hangs up
            assert_refused(await results_receive.receive(), Refusal.CONNECTION_LOST, by_peer=False)
            del silent

            client = await outcome_of(end(BOB, server=False), await trio.open_tcp_stream("127.0.0.1", port))
            assert client[0] == ALICE.peer_id
            assert (await results_receive.receive())[0] == BOB.peer_id
            nursery.cancel_scope.cancel()


async def test_a_silent_peer_is_the_callers_timeout(autojump_clock: trio.testing.MockClock) -> None:
    server_stream, _client_stream = trio.testing.memory_stream_pair()
    with trio.move_on_after(30) as scope:
        await open_tls_stream(server_stream, ALICE, server=True)
    assert scope.cancelled_caught
    with pytest.raises(trio.ClosedResourceError):  # the stream was closed on the way out
        await server_stream.send_all(b"x")
