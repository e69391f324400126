"""What a malicious member does: write into a conversation's Yjs document with pycrdt
directly, under its own client id, bypassing the model's checks."""

from __future__ import annotations

from typing import Any

from pycrdt import Doc, Map


def forge_records(document: bytes, records: dict[tuple[str, str], Any]) -> bytes:
    """An update writing ``records`` ((root, key) -> value, in root maps such as
    ``members`` and ``meta``) over ``document`` (a conversation's whole state, as an update)."""
    doc: Doc[Any] = Doc()
    doc.apply_update(document)
    before = doc.get_state()
    with doc.transaction():
        for (root, key), value in records.items():
            doc.get(root, type=Map)[key] = value
    return doc.get_update(before)


def forge_member_records(document: bytes, records: dict[str, Any]) -> bytes:
    """An update writing ``records`` (peer id -> raw member record) over ``document``."""
    return forge_records(document, {("members", peer_id): record for peer_id, record in records.items()})
