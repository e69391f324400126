"""Ed25519 peer ids and signatures: the pure part of identity, which the model checks too.

**Peer id**: lowercase base32 (RFC 4648 alphabet, no padding) of the SHA-256 of the raw
32-byte public key, cut to 32 characters (160 bits). Only ``a-z`` and ``2-7`` occur, so
it fits the id rule of the model and the protocol (``[A-Za-z0-9_-]{8,64}``). A peer id
names one key: a new key is a new peer id.

**Signatures** cover a domain tag, a caller-chosen context and the data, so they can
never be mistaken for the TLS 1.3 CertificateVerify signatures the same key makes on peer
links (those start with 64 spaces) or for signatures made for another purpose.

Signing needs the private key, which only :class:`gigi_crdt.identity.Identity` holds;
the model takes any :class:`Signer`.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import SchemaError

__all__ = ["PEER_ID_CHARS", "PUBLIC_KEY_BYTES", "Signer", "check_public_key", "peer_id_for", "signed_message", "verify"]

PUBLIC_KEY_BYTES: Final = 32
PEER_ID_CHARS: Final = 32
_SIGNATURE_DOMAIN: Final = b"gigi-crdt signature v1\x00"


class Signer(Protocol):
    """Who signs: an identity's peer id and public key, and its signing operation."""

    @property
    def peer_id(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    def sign(self, data: bytes, *, context: str) -> bytes:
        """The signature of ``data`` for ``context``, checkable with :func:`verify`."""
        ...


def check_public_key(public_key: bytes) -> bytes:
    """``public_key`` if it is 32 raw bytes, else ``SchemaError``."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        raise SchemaError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes")
    return public_key


def peer_id_for(public_key: bytes) -> str:
    """The peer id of a raw 32-byte Ed25519 public key."""
    digest = hashlib.sha256(check_public_key(public_key)).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:PEER_ID_CHARS]


def signed_message(context: str, data: bytes) -> bytes:
    """The bytes a signature of ``data`` for ``context`` is made over."""
    tag = context.encode("utf-8")
    if not tag or len(tag) > 255:
        raise SchemaError("a signature context is 1 to 255 UTF-8 bytes")
    return _SIGNATURE_DOMAIN + bytes([len(tag)]) + tag + data


def verify(public_key: bytes, signature: bytes, data: bytes, *, context: str) -> bool:
    """Whether ``signature`` is the key's signature of ``data`` made for ``context``."""
    message = signed_message(context, data)
    try:
        Ed25519PublicKey.from_public_bytes(check_public_key(public_key)).verify(signature, message)
    except (InvalidSignature, ValueError):  # ValueError: 32 bytes that are no curve point
        return False
    return True
