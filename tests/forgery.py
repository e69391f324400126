"""What a malicious member does: write into a conversation's Yjs document with pycrdt
directly, under its own client id, bypassing the model's checks."""

from __future__ import annotations

from typing import Any

from pycrdt import Doc, Map


def forge_member_records(document: bytes, records: dict[str, Any]) -> bytes:
    """An update writing ``records`` (peer id -> raw member record) over ``document``
    (a conversation's whole state, as an update)."""
    doc: Doc[Any] = Doc()
    doc.apply_update(document)
    before = doc.get_state()
    members = doc.get("members", type=Map)
    with doc.transaction():
        for peer_id, record in records.items():
            members[peer_id] = record
    return doc.get_update(before)
