"""Signed conversations: what only the creator's signature (or a member's own) changes.

A conversation created with a signer (a node always has one: its identity key) is
*signed*. Its id commits to the creator's key: twelve random bytes followed by the first
twelve bytes of SHA-256(domain, creator key, those random bytes), base64url, 32
characters (unsigned conversations have 24-character random ids). Nobody can present
another key as the creator's without a 2^96 search.

Two kinds of record in a signed conversation carry ``by`` (the signer's peer id), ``key``
(its public key) and ``sig`` (its signature of the conversation id and the record's
fields):

- **member records**, signed by the creator (adding, re-adding or removing anyone, with
  any role) or by the member they describe, leaving (``left`` set, not ``removed``);
- **the charter** (``meta["charter"]``: kind, title, creation time, retention), signed by
  the creator alone. The plain ``meta`` fields beside it are kept for readers that do not
  check signatures, and ignored here: a member who could set ``retention_days`` could
  make every peer expire the whole history.

A third kind, **heads** (``heads[author]``), is signed by the author it describes and
rewritten at the end of each of its transactions: the seq and link of its newest stream
entry (see ``chain``), and the Yjs client id it writes under with that client's clock
after the transaction. Peers refuse structs under that client id past that clock unless
a newer head of the author covers them: a member cannot write under another's client id
ahead of it (which would take the place of the other's next writes on every peer that
took the forgery first).

A record's version is its timestamp (a member record's ``left`` if set, else its
``since``; the charter's ``at``; a head's ``t``); of the valid records a peer has seen for one member (or
for the charter), the newest holds, ties going to the greater signature so that every
peer picks the same. So a member writing a record it was not given, under whatever Yjs
client id (adding an outsider, making itself admin, undoing its removal, renaming the
group, changing its retention), changes nothing on any peer; nor does putting back an
older signed record.

The rule is one administrator, the creator: in a signed group nobody else changes the
member list, the title or the retention. Records the creator signed stay valid when it
leaves, but nothing can change after that. Unsigned conversations (plain replicas in
tests and the harness) take records as written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, cast

from ..errors import SchemaError
from ..signatures import Signer, check_public_key, peer_id_for, verify
from .metadata import Member, Metadata, encode_member, encode_metadata, parse_member, parse_metadata
from .ops import LINK_BYTES, parse_timestamp, parse_whole

__all__ = [
    "CHARTER",
    "HEAD_FIELDS",
    "SIGNED_ID_CHARS",
    "Head",
    "Signed",
    "check_charter",
    "check_anchor",
    "check_head",
    "check_member",
    "is_creator_key",
    "is_signed",
    "new_signed_conversation_id",
    "sign_charter",
    "head_key",
    "sign_anchor",
    "sign_head",
    "sign_member",
    "signed_conversation_id",
]

SIGNED_ID_CHARS: Final = 32
CHARTER: Final = "charter"
"""The ``meta`` key of a signed conversation's charter."""
_NONCE_BYTES: Final = 12
_DIGEST_BYTES: Final = 12
_ID_DOMAIN: Final = b"gigi-crdt conversation v1\x00"
_MEMBER_CONTEXT: Final = "member record"
_CHARTER_CONTEXT: Final = "conversation charter"
_HEAD_CONTEXT: Final = "stream head"
_ANCHOR_CONTEXT: Final = "stream anchor"
_SIGNATURE_BYTES: Final = 64
_SIGNATURE_FIELDS: Final = ("by", "key", "sig")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Signed(Generic[T]):
    """A record whose signature and signer were checked, and what it says."""

    value: T
    version: int
    signature: bytes
    record: dict[str, Any]
    """The record with the fields it signs and its signature fields only (whatever else
    a writer added is dropped), to store and to write back."""

    def supersedes(self, other: Signed[T] | None) -> bool:
        """True if this record holds over ``other`` (one for the same thing)."""
        if other is None:
            return True
        return (self.version, self.signature) > (other.version, other.signature)


def new_signed_conversation_id(creator_key: bytes) -> str:
    """A fresh id for a conversation created by the owner of ``creator_key``."""
    return signed_conversation_id(creator_key, secrets.token_bytes(_NONCE_BYTES))


def signed_conversation_id(creator_key: bytes, nonce: bytes) -> str:
    """The id of the conversation the owner of ``creator_key`` created with ``nonce``."""
    if len(nonce) != _NONCE_BYTES:
        raise ValueError(f"a conversation nonce is {_NONCE_BYTES} bytes")
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


# -- member records ----------------------------------------------------------------------


def sign_member(signer: Signer, conversation: str, member: Member) -> dict[str, Any]:
    """``member``'s record in ``conversation``, signed by ``signer``."""
    return _signed(signer, encode_member(member), _member_fields(conversation, member), _MEMBER_CONTEXT)


def check_member(conversation: str, peer_id: str, raw: object) -> Signed[Member]:
    """The member record ``raw`` of ``peer_id`` in the signed ``conversation``, if its
    signature is good and its signer may write it; ``SchemaError`` otherwise."""
    member = parse_member(peer_id, raw)
    record = cast(dict[str, Any], raw)  # parse_member checked it is a map
    what = f"member record of {peer_id}"
    signer, key, signature = _checked_signature(record, _member_fields(conversation, member), _MEMBER_CONTEXT, what)
    if not is_creator_key(conversation, key) and not (signer == peer_id and member.has_left):
        raise SchemaError(f"{what}: {signer} may not write it (not the creator)")
    version = member.joined_at if member.left_at is None else member.left_at
    return Signed(member, version, signature, encode_member(member) | _signature_fields(record))


def _member_fields(conversation: str, member: Member) -> list[object]:
    return [
        conversation,
        member.peer_id,
        member.nickname,
        member.role.value,
        member.joined_at,
        member.left_at,
        member.removed,
    ]


# -- the charter -------------------------------------------------------------------------


def sign_charter(signer: Signer, meta: Metadata, at: int) -> dict[str, Any]:
    """The charter of the conversation ``meta`` describes, as of ``at``, signed by ``signer``."""
    record = {key: value for key, value in encode_metadata(meta).items() if key != "id"} | {"at": at}
    return _signed(signer, record, _charter_fields(meta, at), _CHARTER_CONTEXT)


def check_charter(conversation: str, raw: object) -> Signed[Metadata]:
    """The charter ``raw`` of the signed ``conversation``, if the creator signed it;
    ``SchemaError`` otherwise."""
    if not isinstance(raw, dict):
        raise SchemaError("the charter is not a map")
    fields = {key: value for key, value in raw.items() if key not in _SIGNATURE_FIELDS and key != "at"}
    meta = parse_metadata(fields | {"id": conversation})
    at = parse_timestamp(raw.get("at"))
    _, key, signature = _checked_signature(raw, _charter_fields(meta, at), _CHARTER_CONTEXT, "the charter")
    if not is_creator_key(conversation, key):
        raise SchemaError("the charter: not signed by the creator")
    canonical = {name: value for name, value in encode_metadata(meta).items() if name != "id"} | {"at": at}
    return Signed(meta, at, signature, canonical | _signature_fields(raw))


def _charter_fields(meta: Metadata, at: int) -> list[object]:
    return [meta.id, meta.kind.value, meta.title, meta.created_at, meta.retention_days, at]


# -- stream heads ------------------------------------------------------------------------


HEAD_FIELDS: Final = frozenset({"s", "l", "c", "k", "t", "by", "key", "sig"})
"""The fields of a head record, which no other record has all of."""
_MAX_CLIENT_ID: Final = 2**53  # what the update check admits
_MAX_CLOCK: Final = 2**32


@dataclass(frozen=True, slots=True)
class Head:
    """What an author signs at the end of each of its transactions: the seq and link of
    its newest stream entry (-1 and the stream's genesis before the first; see ``chain``),
    the Yjs client id it writes under, that client's clock after the transaction, and when."""

    seq: int
    link: bytes
    client: int
    clock: int
    at: int


def sign_head(signer: Signer, conversation: str, head: Head) -> Signed[Head]:
    """``signer``'s own head in ``conversation`` (held as it is written)."""
    link = _b64(head.link)
    values = {"s": head.seq, "l": link, "c": head.client, "k": head.clock, "t": head.at}
    record = _signed(signer, values, _head_fields(conversation, signer.peer_id, values), _HEAD_CONTEXT)
    return Signed(head, head.at, base64.b64decode(record["sig"]), record)


def check_head(conversation: str, author: str, raw: object) -> Signed[Head]:
    """The head ``raw`` of ``author`` in the signed ``conversation``, if ``author`` signed
    it; ``SchemaError`` otherwise."""
    what = f"head of {author}"
    if not isinstance(raw, dict):
        raise SchemaError(f"{what} is not a map")
    if raw.get("by") != author:
        raise SchemaError(f"{what}: signed by {raw.get('by')!r}, not by its author")
    seq = parse_whole(raw.get("s"), -1, _MAX_CLIENT_ID, f"{what}: seq")
    client = parse_whole(raw.get("c"), 0, _MAX_CLIENT_ID, f"{what}: client id")
    clock = parse_whole(raw.get("k"), 0, _MAX_CLOCK, f"{what}: clock")
    at = parse_timestamp(raw.get("t"))
    link = raw.get("l")
    digest = _unb64(link, "link")
    if len(digest) != LINK_BYTES:
        raise SchemaError(f"{what}: malformed link")
    values = {"s": seq, "l": link, "c": client, "k": clock, "t": at}
    _, _, signature = _checked_signature(raw, _head_fields(conversation, author, values), _HEAD_CONTEXT, what)
    return Signed(Head(seq, digest, client, clock, at), at, signature, values | _signature_fields(raw))


def _head_fields(conversation: str, author: str, values: dict[str, Any]) -> list[object]:
    return [conversation, author, values["s"], values["l"], values["c"], values["k"], values["t"]]


def sign_anchor(signer: Signer, conversation: str, seq: int, prev: bytes) -> bytes:
    """``signer``'s signature of the ``prev`` of its entry at ``seq`` (see ``chain``)."""
    return signer.sign(_canonical(_anchor_fields(conversation, signer.peer_id, seq, prev)), context=_ANCHOR_CONTEXT)


def check_anchor(conversation: str, author: str, key: bytes, seq: int, prev: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``author``'s (whose public key is ``key``) anchor signature
    of ``prev`` at ``seq``."""
    if peer_id_for(key) != author:
        return False
    return verify(key, signature, _canonical(_anchor_fields(conversation, author, seq, prev)), context=_ANCHOR_CONTEXT)


def head_key(head: Signed[Head]) -> bytes:
    """The public key of the author of a checked head."""
    return base64.b64decode(head.record["key"])


def _anchor_fields(conversation: str, author: str, seq: int, prev: bytes) -> list[object]:
    return [conversation, author, seq, _b64(prev)]


# -- signatures --------------------------------------------------------------------------


def _signed(signer: Signer, record: dict[str, Any], fields: list[object], context: str) -> dict[str, Any]:
    record["by"] = signer.peer_id
    record["key"] = _b64(signer.public_key)
    record["sig"] = _b64(signer.sign(_canonical(fields), context=context))
    return record


def _checked_signature(
    record: dict[str, Any], fields: list[object], context: str, what: str
) -> tuple[str, bytes, bytes]:
    """(signer, key, signature) of ``record``, or ``SchemaError`` if they do not check out."""
    signer, key, signature = record.get("by"), _unb64(record.get("key"), "key"), _unb64(record.get("sig"), "signature")
    if not isinstance(signer, str) or len(signature) != _SIGNATURE_BYTES or peer_id_for(key) != signer:
        raise SchemaError(f"{what}: signer {signer!r} does not match its key")
    if not verify(key, signature, _canonical(fields), context=context):
        raise SchemaError(f"{what}: bad signature by {signer}")
    return signer, key, signature


def _signature_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record[name] for name in _SIGNATURE_FIELDS}


def _canonical(fields: list[object]) -> bytes:
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > 128:
        raise SchemaError(f"missing or malformed {what}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SchemaError(f"{what} is not base64") from None
