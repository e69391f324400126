import base64
import hashlib
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gigi_crdt.errors import SchemaError, StorageError, StoreCorrupt
from gigi_crdt.identity import ContactBook, Identity, Trust, fingerprint, peer_id_for, safety_number, verify
from gigi_crdt.identity.contacts import CONTACTS_FILE_NAME
from gigi_crdt.identity.keys import KEY_FILE_NAME

ID_RULE = re.compile(r"[A-Za-z0-9_-]{8,64}")  # gigi_crdt.model.ops._ID


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- keys ------------------------------------------------------------------------------


def test_key_is_created_once_and_reloaded(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    first = Identity.load_or_create(directory)
    again = Identity.load_or_create(directory)
    assert again.peer_id == first.peer_id
    assert again.public_key == first.public_key
    assert mode(directory) == 0o700
    assert mode(directory / KEY_FILE_NAME) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == [KEY_FILE_NAME]  # no drafts left behind


def test_existing_data_directory_keeps_its_mode_and_gets_a_private_key(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    Identity.load_or_create(tmp_path)
    assert mode(tmp_path) == 0o750
    assert mode(tmp_path / KEY_FILE_NAME) == 0o600


def test_peer_id_is_truncated_base32_of_the_key_hash_and_fits_the_id_rule() -> None:
    identity = Identity(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    expected = base64.b32encode(hashlib.sha256(identity.public_key).digest()).decode().lower().rstrip("=")[:32]
    assert identity.peer_id == expected == peer_id_for(identity.public_key)
    for _ in range(20):
        peer_id = Identity.generate().peer_id
        assert ID_RULE.fullmatch(peer_id)
        assert len(peer_id) == 32
        assert peer_id == peer_id.lower()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key at all",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
    ],
    ids=["empty", "text", "bad-base64", "ecdsa-key", "encrypted"],
)
def test_corrupt_key_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / KEY_FILE_NAME).write_bytes(content)
    with pytest.raises(StoreCorrupt, match=KEY_FILE_NAME):
        Identity.load_or_create(tmp_path)
    assert (tmp_path / KEY_FILE_NAME).read_bytes() == content  # never overwritten


def test_key_path_that_is_not_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).mkdir()
    with pytest.raises(StorageError, match=KEY_FILE_NAME):
        Identity.load_or_create(tmp_path)


# -- safety numbers and signatures -----------------------------------------------------


def test_safety_numbers_are_symmetric_and_differ_between_pairs() -> None:
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    number = alice.safety_number(bob.public_key)
    assert number == bob.safety_number(alice.public_key) == safety_number(bob.public_key, alice.public_key)
    assert re.fullmatch(r"\d{5}( \d{5}){11}", number)
    assert alice.fingerprint in number
    assert bob.fingerprint in number
    assert re.fullmatch(r"\d{5}( \d{5}){5}", alice.fingerprint)
    others = {alice.safety_number(carol.public_key), bob.safety_number(carol.public_key)}
    assert number not in others
    assert len(others) == 2


def test_fingerprint_is_stable() -> None:
    key = Identity(Ed25519PrivateKey.from_private_bytes(bytes(32))).public_key
    assert fingerprint(key) == fingerprint(bytes(key))
    with pytest.raises(SchemaError):
        fingerprint(key[:31])


def test_signatures_are_bound_to_key_data_and_context() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    signature = alice.sign(b"members: alice, bob", context="membership")
    assert verify(alice.public_key, signature, b"members: alice, bob", context="membership")
    assert not verify(alice.public_key, signature, b"members: alice, eve", context="membership")
    assert not verify(alice.public_key, signature, b"members: alice, bob", context="invite")
    assert not verify(bob.public_key, signature, b"members: alice, bob", context="membership")
    assert not verify(alice.public_key, b"\x00" * 64, b"members: alice, bob", context="membership")
    assert not verify(b"\xff" * 31, signature, b"members: alice, bob", context="membership")
    # The raw message is not what was signed: no confusion with TLS or other uses of the key.
    raw = alice.private_key.sign(b"members: alice, bob")
    assert not verify(alice.public_key, raw, b"members: alice, bob", context="membership")


# -- contacts --------------------------------------------------------------------------


def test_contacts_trust_on_first_use(tmp_path: Path) -> None:
    bob, impostor = Identity.generate(), Identity.generate()
    book = ContactBook.load(tmp_path)
    assert book.observe("bob", bob.peer_id, bob.public_key) is Trust.NEW
    assert book.observe("bob", bob.peer_id, bob.public_key) is Trust.KNOWN
    assert book.observe("bob", impostor.peer_id, impostor.public_key) is Trust.KEY_CHANGED
    assert book.observe("bob", impostor.peer_id, impostor.public_key) is Trust.KEY_CHANGED  # still refused
    contact = book.get("bob")
    assert contact is not None
    assert contact.public_key == bob.public_key
    assert contact.peer_id == bob.peer_id
    assert mode(tmp_path / CONTACTS_FILE_NAME) == 0o600

    reloaded = ContactBook.load(tmp_path)
    assert list(reloaded) == list(book)
    assert len(reloaded) == 1
    assert reloaded.observe("bob", impostor.peer_id, impostor.public_key) is Trust.KEY_CHANGED
    assert reloaded.by_peer_id(bob.peer_id) == contact

    reloaded.replace("bob", impostor.peer_id, impostor.public_key)  # the user compared safety numbers
    assert ContactBook.load(tmp_path).observe("bob", impostor.peer_id, impostor.public_key) is Trust.KNOWN
    reloaded.forget("bob")
    assert ContactBook.load(tmp_path).get("bob") is None


def test_contact_peer_id_must_belong_to_the_key(tmp_path: Path) -> None:
    bob, eve = Identity.generate(), Identity.generate()
    book = ContactBook.load(tmp_path)
    with pytest.raises(SchemaError):
        book.observe("bob", eve.peer_id, bob.public_key)
    with pytest.raises(SchemaError):
        book.observe("", bob.peer_id, bob.public_key)
    with pytest.raises(SchemaError):
        book.observe("x" * 65, bob.peer_id, bob.public_key)
    assert len(book) == 0
    assert not (tmp_path / CONTACTS_FILE_NAME).exists()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"format": "gigi-crdt contacts", "version": 99, "contacts": []}',
        b'{"format": "gigi-crdt contacts", "version": 1, "contacts": [{"nickname": "bob"}]}',
        b'{"format": "gigi-crdt contacts", "version": 1, "contacts": '
        b'[{"nickname": "bob", "peer_id": "aaaaaaaa", "public_key": "zz"}]}',
    ],
)
def test_corrupt_contact_book_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / CONTACTS_FILE_NAME).write_bytes(content)
    with pytest.raises(StoreCorrupt, match=CONTACTS_FILE_NAME):
        ContactBook.load(tmp_path)
