"""Link certificates: each node's Ed25519 identity key in an X.509 certificate, and their checks.

Why every certificate is issued by one *public* anchor instead of being self-signed:
stdlib ``ssl`` has no verify callback, and OpenSSL, when a server asks for a client
certificate (``CERT_OPTIONAL`` or ``CERT_REQUIRED``), aborts the handshake for any
certificate that does not chain to a loaded trust anchor; a self-signed one from an
unknown peer fails with "self-signed certificate". The trust store cannot be filled per
connection before first contact either. So every node issues its link certificate from
the same anchor, whose private key is *derived from a published constant*. The anchor
vouches for nothing (anyone can issue from it); it only lets OpenSSL require and accept
a client certificate from a peer it has never met. What authenticates a peer is that the
certificate's subject key is its identity key and TLS 1.3's CertificateVerify proves the
peer holds the private half; we read the key from the certificate after the handshake,
derive the peer id from it and pin it. A certificate is thus as good as a self-signed
one (an attacker can issue one for your public key but cannot use it without your
private key) while OpenSSL still enforces "client certificate required", the validity
period and the signature for us; :func:`check_certificate` checks them again.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ANCHOR_SEED_TEXT = b"gigi-crdt link certificate anchor v1 - this key is public and vouches for nothing"
ANCHOR_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gigi-crdt public link anchor v1")])
# Peers' clocks may disagree: a certificate is valid from a day before it is made.
CLOCK_SKEW = dt.timedelta(days=1)
VALIDITY = dt.timedelta(days=365)


class CertificateRejected(Exception):
    """A peer's certificate is unusable; ``expired`` tells a validity problem from garbage."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@functools.cache
def anchor_key() -> Ed25519PrivateKey:
    """The anchor's private key: public knowledge, derived from :data:`ANCHOR_SEED_TEXT`."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(ANCHOR_SEED_TEXT).digest())


@functools.cache
def anchor_certificate() -> x509.Certificate:
    """The anchor certificate, byte-identical on every node (Ed25519 signatures are deterministic)."""
    key = anchor_key()
    return (
        x509.CertificateBuilder()
        .subject_name(ANCHOR_NAME)
        .issuer_name(ANCHOR_NAME)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, False, False, False), critical=True
        )  # keyCertSign only
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )


def anchor_pem() -> str:
    """The anchor certificate as PEM, for ``SSLContext.load_verify_locations(cadata=...)``."""
    return anchor_certificate().public_bytes(serialization.Encoding.PEM).decode("ascii")


def issue_certificate(
    private_key: Ed25519PrivateKey,
    common_name: str,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """A link certificate for ``private_key``'s public key, issued by the anchor."""
    anchor = anchor_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ANCHOR_NAME)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )  # digitalSignature only
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(anchor.public_key()), critical=False)
        .sign(anchor, None)
    )


def check_certificate(der: bytes, now: dt.datetime) -> bytes:
    """The raw Ed25519 public key of a peer's certificate, once it passes our own checks.

    Raises:
        CertificateRejected: not DER X.509, not an Ed25519 key, not issued by the anchor,
            or outside its validity period at ``now``.
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateRejected(f"not an X.509 certificate: {exc}") from exc
    key = certificate.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise CertificateRejected(f"the certificate key is {type(key).__name__}, not Ed25519")
    try:
        certificate.verify_directly_issued_by(anchor_certificate())
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateRejected(f"the certificate is not issued by the gigi-crdt anchor: {exc}") from exc
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise CertificateRejected(
            f"the certificate is valid from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} "
            f"to {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now",
            expired=True,
        )
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
