"""Fresh ids for messages and conversations."""

from __future__ import annotations

import base64
import os
import secrets
import time

# base64's alphabet, and the same characters in ASCII order: an id's characters then sort
# as the bits they encode.
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_IN_ORDER = bytes.maketrans(_BASE64, b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")


def new_id() -> str:
    """A fresh id for a message, 16 URL-safe characters: a set bit and the wall clock in
    milliseconds (47 bits: the id starts with a letter, not "-"), then 48 random bits. Ids
    written later sort later (by each writer's clock), so the index's unique (conversation,
    id) B-tree takes new rows near its end, not on a random page each."""
    bits = (2**47 | time.time_ns() // 1_000_000 % 2**47).to_bytes(6, "big") + os.urandom(6)
    return base64.b64encode(bits).translate(_IN_ORDER).decode("ascii")


def new_conversation_id() -> str:
    """A fresh conversation id: 144 bits, URL-safe, 24 characters. It is also the room name
    on relays, where knowing it is what lets anyone with the relay's token in: unguessable."""
    return secrets.token_urlsafe(18)
