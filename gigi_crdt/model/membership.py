"""Signed membership: the member list of a conversation is what its creator signed.

A conversation created with a signer (a node always has one: its identity key) is
*signed*. Its id commits to the creator's key: twelve random bytes followed by the first
twelve bytes of SHA-256(domain, creator key, those random bytes), base64url, 32
characters (unsigned conversations have 24-character random ids). Nobody can present
another key as the creator's without a 2^96 search.

In a signed conversation every member record carries ``by`` (the signer's peer id),
``key`` (its public key) and ``sig`` (its signature of the conversation id and the
record's fields). A record counts only if it is signed by

- the creator: adding, re-adding or removing anyone, with any role; or
- the member it describes, leaving (``left`` set, not ``removed``).

A record's version is its latest timestamp (``left`` if set, else ``since``); of the
valid records a peer has seen for a member, the newest holds (ties go to the greater
signature, so every peer picks the same). So a member writing a record it was not given,
under whatever Yjs client id (adding an outsider, making itself admin, undoing its
removal), changes nothing on any peer; nor does putting back an older signed record.

The rule is one administrator, the creator: in a signed group nobody else can change
the member list (an ``admin`` role given to others lets them rename the group). Records
the creator signs stay valid when the creator leaves, but nobody can add members after
that. Unsigned conversations (plain replicas in tests and the harness) take member
records as written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any, Final, cast

from ..errors import SchemaError
from ..signatures import Signer, check_public_key, peer_id_for, verify
from .metadata import Member, encode_member, parse_member

__all__ = [
    "SIGNED_ID_CHARS",
    "Statement",
    "check_statement",
    "is_creator_key",
    "is_signed",
    "new_signed_conversation_id",
    "sign_member",
]

SIGNED_ID_CHARS: Final = 32
_NONCE_BYTES: Final = 12
_DIGEST_BYTES: Final = 12
_ID_DOMAIN: Final = b"gigi-crdt conversation v1\x00"
_CONTEXT: Final = "member record"
_SIGNATURE_BYTES: Final = 64


@dataclass(frozen=True, slots=True)
class Statement:
    """A member record whose signature and signer were checked."""

    member: Member
    signer: str
    signature: bytes
    record: dict[str, Any]
    """The record as stored, to write it back."""

    @property
    def version(self) -> int:
        """When the record was written: the member left then, or joined then."""
        return self.member.joined_at if self.member.left_at is None else self.member.left_at

    def supersedes(self, other: Statement | None) -> bool:
        """True if this record holds over ``other`` (the same member's)."""
        if other is None:
            return True
        return (self.version, self.signature) > (other.version, other.signature)


def new_signed_conversation_id(creator_key: bytes) -> str:
    """A fresh id for a conversation created by the owner of ``creator_key``."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return base64.urlsafe_b64encode(nonce + _commitment(creator_key, nonce)).decode("ascii")


def is_signed(conversation: str) -> bool:
    """True if ``conversation`` names a signed conversation (see the module docstring)."""
    return len(conversation) == SIGNED_ID_CHARS


def is_creator_key(conversation: str, key: bytes) -> bool:
    """True if the signed ``conversation`` was created by the owner of ``key``."""
    raw = base64.urlsafe_b64decode(conversation)
    nonce, digest = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
    return hmac.compare_digest(digest, _commitment(key, nonce))


def _commitment(key: bytes, nonce: bytes) -> bytes:
    return hashlib.sha256(_ID_DOMAIN + check_public_key(key) + nonce).digest()[:_DIGEST_BYTES]


def sign_member(signer: Signer, conversation: str, member: Member) -> dict[str, Any]:
    """``member``'s record in ``conversation``, signed by ``signer``."""
    record = encode_member(member)
    record["by"] = signer.peer_id
    record["key"] = _b64(signer.public_key)
    record["sig"] = _b64(signer.sign(_signed_fields(conversation, member), context=_CONTEXT))
    return record


def check_statement(conversation: str, peer_id: str, raw: object) -> Statement:
    """The member record ``raw`` of ``peer_id`` in the signed ``conversation``, if its
    signature is good and its signer may write it; ``SchemaError`` otherwise."""
    member = parse_member(peer_id, raw)
    record = cast(dict[str, Any], raw)  # parse_member checked it is a map
    signer, key, signature = record.get("by"), _unb64(record.get("key"), "key"), _unb64(record.get("sig"), "signature")
    if len(signature) != _SIGNATURE_BYTES or peer_id_for(key) != signer:
        raise SchemaError(f"member record of {peer_id}: signer {signer!r} does not match its key")
    if not verify(key, signature, _signed_fields(conversation, member), context=_CONTEXT):
        raise SchemaError(f"member record of {peer_id}: bad signature by {signer}")
    if not is_creator_key(conversation, key) and not (signer == peer_id and member.has_left):
        raise SchemaError(f"member record of {peer_id}: {signer} may not write it (not the creator)")
    return Statement(member, signer, signature, record)


def _signed_fields(conversation: str, member: Member) -> bytes:
    fields = [
        conversation,
        member.peer_id,
        member.nickname,
        member.role.value,
        member.joined_at,
        member.left_at,
        member.removed,
    ]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > 128:
        raise SchemaError(f"member record: missing or malformed {what}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SchemaError(f"member record: {what} is not base64") from None
