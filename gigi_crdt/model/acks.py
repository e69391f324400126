"""A conversation's delivered/read receipts: per-(member, author) counters in ``acks``.

Each member writes only its own counters and only moves them forward, so they converge
and never shift under concurrent inserts (see ``metadata.receipt_key``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pycrdt import Doc, Map

from ..errors import SchemaError
from .metadata import Receipt, ReceiptKind, parse_receipt, receipt_key
from .ops import check_id

log = logging.getLogger(__name__)


class Acks:
    """The ``acks`` root of one conversation document, as ``local_peer`` reads and writes it."""

    def __init__(self, doc: Doc[Any], local_peer: str) -> None:
        self.root: Map[Any] = doc.get("acks", type=Map)
        self._local_peer = local_peer
        self._remote: list[tuple[str, Any]] = []  # (key, value) set by remote transactions
        self._own_cache: dict[str, int] = {}
        self._own_new: list[Receipt] = []

    def receipts(self) -> list[Receipt]:
        """Every delivered/read counter in the document."""
        result = []
        for key, value in self.root.items():
            try:
                result.append(parse_receipt(key, value))
            except SchemaError as exc:
                log.warning("receipt %r skipped: %s", key, exc)
        return result

    def own(self) -> dict[str, int]:
        """The local peer's counters by key (only it writes them, so a cache stays true)."""
        if not self._own_cache:
            prefix = f"{self._local_peer}/"
            for receipt in self.receipts():
                if receipt.member == self._local_peer:
                    key = receipt_key(receipt.member, receipt.kind, receipt.author)
                    self._own_cache[key] = receipt.seq
            self._own_cache.setdefault(prefix, -1)  # marks the cache as loaded
        return self._own_cache

    def advance(self, kind: ReceiptKind, upto: Mapping[str, int], transaction: Any) -> None:
        """Move the local peer's counters forward to ``upto`` (author -> seq), never back,
        inside ``transaction`` (the running one, as yrs sees it)."""
        for author, seq in upto.items():
            key = receipt_key(self._local_peer, kind, check_id(author, "peer id"))
            if seq > self.own().get(key, -1):
                self.root.integrated.insert(transaction, key, seq)
                self._own_cache[key] = seq
                self._own_new.append(Receipt(self._local_peer, kind, author, seq))

    def take_own(self) -> list[Receipt]:
        """The receipts ``advance`` moved since the last call."""
        taken, self._own_new = self._own_new, []
        return taken

    def note(self, event: Any) -> None:
        """Note the counters a remote transaction set (yrs's event on the root)."""
        for key, change in event.keys.items():
            if "newValue" in change:
                self._remote.append((key, change["newValue"]))

    def take_remote(self) -> list[Receipt]:
        """The counters remote transactions set since the last call, each at its last value
        (an update applied in slices, see ``slices``, may move one twice)."""
        receipts = []
        for key, value in dict(self._remote).items():
            try:
                receipts.append(parse_receipt(key, value))
            except SchemaError as exc:
                log.warning("receipt %r skipped: %s", key, exc)
        self._remote.clear()
        return receipts
