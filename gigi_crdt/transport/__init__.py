"""Secure transports for peer links: TLS 1.3 with both ends authenticated by their identity keys."""

from .tls import ALPN_PROTOCOL as ALPN_PROTOCOL
from .tls import AuthenticatedStream as AuthenticatedStream
from .tls import HandshakeRefused as HandshakeRefused
from .tls import Refusal as Refusal
from .tls import TlsCredentials as TlsCredentials
from .tls import open_tls_stream as open_tls_stream

__all__ = ["ALPN_PROTOCOL", "AuthenticatedStream", "HandshakeRefused", "Refusal", "TlsCredentials", "open_tls_stream"]
