"""Child process for tests/test_durability.py: sends messages until it is killed.

Usage: python sigkill_writer.py DATA_DIR CONVERSATION|new START

Prints ``conv <id>`` once the conversation exists, then ``sent <i> <message id>`` after
each ``send`` has returned (that is, after the library said the message is on disk),
flushing stdout each time so the parent knows exactly what was acknowledged.
"""

from __future__ import annotations

import sys

import trio

from gigi_crdt.model import ConversationKind, Text
from gigi_crdt.replica import open_replica

PEER_ID = "writer-peer-0001"
NICKNAME = "writer"


async def main(data_dir: str, conversation: str, start: int) -> None:
    async with open_replica(data_dir, nickname=NICKNAME, peer_id=PEER_ID) as replica:
        if conversation == "new":
            conversation = await replica.create_conversation(
                ConversationKind.GROUP, title="durability", others={"other-peer-0001": "other"}
            )
        print(f"conv {conversation}", flush=True)
        i = start
        while True:
            message_id = await replica.send(conversation, Text(f"m{i}"))
            print(f"sent {i} {message_id}", flush=True)
            i += 1


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
