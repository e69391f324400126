"""A node's long-term Ed25519 identity: its key file, its peer id, safety numbers, signatures.

The key pair is created on first use and kept in the data directory as ``identity.key``
(unencrypted PKCS#8 PEM, mode 0600, directory 0700). Whoever can read that file can be
this node; protecting the data directory is the operating system's job.

**Peer id** and **signatures**: see :mod:`gigi_crdt.signatures`.

**Fingerprint and safety number**: Signal's numeric scheme. A key's fingerprint is 30
digits: SHA-512 iterated 5200 times over a version tag and the key (the iterations make
searching for a key with a matching fingerprint ~2^12 times dearer), whose first 30
bytes are read as six 5-byte big-endian numbers, each taken modulo 100000. The safety
number of two peers is both fingerprints, the smaller first: 60 digits in 12 groups of
5, the same on both devices. Users compare it out of band (read aloud, side by side);
each half is one peer's own fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import StoreCorrupt
from ..signatures import PUBLIC_KEY_BYTES, check_public_key, peer_id_for, signed_message, verify
from ._files import read_private, write_private

__all__ = [
    "KEY_FILE_NAME",
    "PUBLIC_KEY_BYTES",
    "Identity",
    "fingerprint",
    "peer_id_for",
    "safety_number",
    "verify",
]

KEY_FILE_NAME = "identity.key"
FINGERPRINT_ITERATIONS = 5200
_FINGERPRINT_VERSION = b"gigi-crdt fingerprint v1\x00"


@functools.lru_cache(maxsize=256)
def fingerprint(public_key: bytes) -> str:
    """A key's 30-digit fingerprint, as six groups of five digits separated by spaces."""
    check_public_key(public_key)
    digest = hashlib.sha512(_FINGERPRINT_VERSION + public_key).digest()
    for _ in range(FINGERPRINT_ITERATIONS - 1):
        digest = hashlib.sha512(digest + public_key).digest()
    groups = (int.from_bytes(digest[i : i + 5], "big") % 100_000 for i in range(0, 30, 5))
    return " ".join(f"{group:05d}" for group in groups)


def safety_number(public_key: bytes, other_public_key: bytes) -> str:
    """The 60-digit safety number two peers compare: 12 groups of 5 digits, order-independent."""
    halves = sorted((fingerprint(public_key), fingerprint(other_public_key)))
    return " ".join(halves)


class Identity:
    """A long-term Ed25519 key pair and the peer id derived from it."""

    __slots__ = ("_private_key", "public_key", "peer_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        #: The raw 32-byte public key.
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        #: The peer id other nodes know this one by.
        self.peer_id: str = peer_id_for(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        """A new identity held only in memory (tests, throwaway nodes)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, directory: str | Path) -> Identity:
        """The identity kept in ``directory``, created there (0600 file, 0700 directory) if absent.

        Raises:
            StoreCorrupt: the key file exists but is not an Ed25519 private key.
            StorageError: the file cannot be read or written (``StoreReadOnly``, ``StoreFull``...).
        """
        path = Path(directory) / KEY_FILE_NAME
        data = read_private(path)
        if data is None:
            private_key = Ed25519PrivateKey.generate()
            pem = private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            if write_private(path, pem, replace=False):
                return cls(private_key)
            data = read_private(path)  # another process created it first: use theirs
            if data is None:
                raise StoreCorrupt(f"{path}: the identity key vanished while it was being created")
        return cls(_parse_private_key(data, path))

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """The private key (for TLS certificates); never send or log it."""
        return self._private_key

    @property
    def fingerprint(self) -> str:
        """This identity's 30-digit fingerprint (half of every safety number it is part of)."""
        return fingerprint(self.public_key)

    def safety_number(self, other_public_key: bytes) -> str:
        """The safety number this node and the owner of ``other_public_key`` compare."""
        return safety_number(self.public_key, other_public_key)

    def sign(self, data: bytes, *, context: str) -> bytes:
        """An Ed25519 signature of ``data`` for ``context`` (e.g. ``"membership"``); see :func:`verify`."""
        return self._private_key.sign(signed_message(context, data))

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id!r})"


def _parse_private_key(data: bytes, path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise StoreCorrupt(f"{path}: not a readable gigi-crdt identity key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise StoreCorrupt(f"{path}: the identity key is not an Ed25519 key")
    return key
