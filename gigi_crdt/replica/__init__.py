"""The local-first replica: every conversation of one peer, readable and writable offline.

``open_replica`` ties the conversation documents (``model``) to the durable store
(``store``). Every write returns only once its update is on disk. Reads of history,
unread counts and search come from the index and never load a document; a document is
loaded on first write or sync and kept in memory.

The layers, inner first: ``_updates`` (checks of remote updates, what listeners hear),
``_receipts`` (delivered receipts written in the background), ``_documents`` (documents
in memory, resting, commits), ``_receiving`` (remote updates taken in), ``_replica`` (the
API) and ``_open`` (``open_replica``). The constants here are copies: a test that changes
one patches the module that reads it.
"""

from ._documents import RESTING_RECENT_BYTES as RESTING_RECENT_BYTES
from ._open import REST_AFTER as REST_AFTER
from ._open import RETENTION_EVERY as RETENTION_EVERY
from ._open import RETENTION_FIRST as RETENTION_FIRST
from ._open import open_replica as open_replica
from ._receipts import ACKNOWLEDGE_DELAY as ACKNOWLEDGE_DELAY
from ._receipts import ACKNOWLEDGE_RETRY as ACKNOWLEDGE_RETRY
from ._receipts import FLUSH_SECONDS as FLUSH_SECONDS
from ._receiving import RESTORE_INTERVAL as RESTORE_INTERVAL
from ._replica import HEAD_ROOTS as HEAD_ROOTS
from ._replica import Replica as Replica
from ._updates import EMPTY_UPDATE as EMPTY_UPDATE
from ._updates import IN_THREAD_BYTES as IN_THREAD_BYTES
from ._updates import StoredUpdate as StoredUpdate
from ._updates import UpdateListener as UpdateListener
from ._updates import check_remote_update as check_remote_update
from ._updates import held_at as held_at
from ._updates import left_waiting as left_waiting
