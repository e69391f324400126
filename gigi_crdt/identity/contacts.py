"""The contact book: trust on first use, nickname -> peer id and public key.

The first key seen for a nickname is trusted and remembered; later the same key is
``KNOWN`` and a different key is ``KEY_CHANGED``. A changed key is never stored by
:meth:`ContactBook.observe`: the caller refuses the link and reports it (showing both
safety numbers); only an explicit :meth:`ContactBook.replace`, after the user has
compared the new safety number, accepts it. Since a peer id is derived from its key, a
changed key always comes with a different peer id.

The book is a small JSON file, ``contacts.json`` (mode 0600), rewritten atomically on
every change with blocking file I/O of a few kilobytes; call it from a thread
(``trio.to_thread.run_sync``) if that matters to you.
"""

from __future__ import annotations

import binascii
import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import SchemaError, StoreCorrupt
from ..model.ops import check_nickname
from ._files import read_private, write_private
from .keys import peer_id_for

__all__ = ["CONTACTS_FILE_NAME", "Contact", "ContactBook", "Trust"]

CONTACTS_FILE_NAME = "contacts.json"
_FORMAT = "gigi-crdt contacts"
_VERSION = 1


class Trust(enum.StrEnum):
    """What :meth:`ContactBook.observe` concluded about a nickname and key."""

    NEW = "new"  #: first contact: trusted on first use and remembered
    KNOWN = "known"  #: the key remembered for this nickname
    KEY_CHANGED = "key-changed"  #: another key than the remembered one: refuse and report


@dataclass(frozen=True, slots=True)
class Contact:
    """A remembered peer."""

    nickname: str
    peer_id: str
    public_key: bytes


class ContactBook:
    """Trust-on-first-use contacts kept in one file of the data directory."""

    def __init__(self, path: Path, contacts: dict[str, Contact]) -> None:
        """Use :meth:`load`; this only wraps what was read."""
        self.path = path
        self._contacts = contacts

    @classmethod
    def load(cls, directory: str | Path) -> ContactBook:
        """The book kept in ``directory`` (empty if there is none yet).

        Raises:
            StoreCorrupt: the file is not a contact book.
            StorageError: it cannot be read.
        """
        path = Path(directory) / CONTACTS_FILE_NAME
        data = read_private(path)
        return cls(path, {} if data is None else _decode(data, path))

    def observe(self, nickname: str, peer_id: str, public_key: bytes) -> Trust:
        """Check a peer's authenticated key against the book, remembering it on first use.

        Raises:
            SchemaError: ``peer_id`` is not the id of ``public_key``, or the nickname is malformed.
        """
        contact = _contact(nickname, peer_id, public_key)
        known = self._contacts.get(nickname)
        if known is None:
            self._save({**self._contacts, nickname: contact})
            return Trust.NEW
        return Trust.KNOWN if known.public_key == public_key else Trust.KEY_CHANGED

    def replace(self, nickname: str, peer_id: str, public_key: bytes) -> None:
        """Accept a new key for ``nickname``: only after the user compared its safety number."""
        self._save({**self._contacts, nickname: _contact(nickname, peer_id, public_key)})

    def forget(self, nickname: str) -> None:
        """Drop a contact (nothing happens if it is unknown)."""
        if nickname in self._contacts:
            self._save({name: c for name, c in self._contacts.items() if name != nickname})

    def get(self, nickname: str) -> Contact | None:
        """The contact remembered under ``nickname``, if any."""
        return self._contacts.get(nickname)

    def by_peer_id(self, peer_id: str) -> Contact | None:
        """The contact with that peer id, if any."""
        return next((c for c in self._contacts.values() if c.peer_id == peer_id), None)

    def __iter__(self) -> Iterator[Contact]:
        return iter(sorted(self._contacts.values(), key=lambda c: c.nickname))

    def __len__(self) -> int:
        return len(self._contacts)

    def _save(self, contacts: dict[str, Contact]) -> None:
        document = {
            "format": _FORMAT,
            "version": _VERSION,
            "contacts": [
                {"nickname": c.nickname, "peer_id": c.peer_id, "public_key": c.public_key.hex()}
                for c in sorted(contacts.values(), key=lambda c: c.nickname)
            ],
        }
        write_private(self.path, json.dumps(document, indent=1).encode("utf-8"), replace=True)
        self._contacts = contacts  # only once it is on disk


def _contact(nickname: str, peer_id: str, public_key: bytes) -> Contact:
    if not isinstance(nickname, str) or not nickname:
        raise SchemaError("a contact needs a nickname")
    check_nickname(nickname)
    if peer_id_for(public_key) != peer_id:
        raise SchemaError(f"peer id {peer_id!r} does not belong to that public key")
    return Contact(nickname, peer_id, public_key)


def _decode(data: bytes, path: Path) -> dict[str, Contact]:
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise ValueError("not a gigi-crdt contact book")
        if document.get("version") != _VERSION:
            raise ValueError(f"unsupported version {document.get('version')!r}")
        contacts: dict[str, Contact] = {}
        for entry in document["contacts"]:
            public_key = bytes.fromhex(entry["public_key"])
            contact = _contact(entry["nickname"], entry["peer_id"], public_key)
            contacts[contact.nickname] = contact
        return contacts
    except (ValueError, TypeError, KeyError, binascii.Error, SchemaError) as exc:
        raise StoreCorrupt(f"{path}: the contact book is damaged: {exc}") from exc
