"""Who a node is and whom it trusts: its Ed25519 identity and its trust-on-first-use contacts."""

from .contacts import Contact as Contact
from .contacts import ContactBook as ContactBook
from .contacts import Trust as Trust
from .keys import Identity as Identity
from .keys import fingerprint as fingerprint
from .keys import peer_id_for as peer_id_for
from .keys import safety_number as safety_number
from .keys import verify as verify

__all__ = ["Contact", "ContactBook", "Identity", "Trust", "fingerprint", "peer_id_for", "safety_number", "verify"]
