"""An always-on relay: standard y-websocket rooms, persisted in SQLite, behind a token.

Needs the ``relay`` extra (``pip install 'gigi-crdt[relay]'``: pycrdt-websocket, hypercorn).
"""

from ._serve import DATABASE_NAME as DATABASE_NAME
from ._serve import serve_relay as serve_relay

__all__ = ["DATABASE_NAME", "serve_relay"]
