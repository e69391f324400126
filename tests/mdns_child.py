"""One mDNS node for tests/test_discovery.py; run ONLY inside a test-made network namespace.

Usage: ``mdns_child.py PEER_ID PORT``. Line protocol on stdout:

    netns <ns link> <interfaces>      first, before any socket is opened
    started                           after "go" on stdin: advertising and browsing on 127.0.0.1
    found <peer id> <host> <port>     per PeerFound
    lost <peer id>                    per PeerLost
    closed <threads>                  after "leave" on stdin: discovery closed; threads still alive
                                      that were not there before ("-" if none)

It refuses to start mDNS unless the parent says "go", which it only does after checking that
this process is not in the host's network namespace.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

import trio

from gigi_crdt.discovery import PeerFound, open_mdns


def say(*words: object) -> None:
    print(*words, flush=True)


def foreign_threads(before: set[threading.Thread]) -> list[str]:
    # trio keeps idle worker threads cached for a while after to_thread.run_sync: not ours.
    return sorted(
        t.name
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    )


async def main(peer_id: str, port: int) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    lines = b""

    async def next_line() -> str:
        nonlocal lines
        while b"\n" not in lines:
            data = await stdin.receive_some()
            if not data:
                raise SystemExit("stdin closed")
            lines += data
        line, _, lines = lines.partition(b"\n")
        return line.decode().strip()

    if await next_line() != "go":
        raise SystemExit("expected go")
    before = set(threading.enumerate())
    with trio.fail_after(20):
        async with open_mdns(peer_id, port, interfaces=["127.0.0.1"]) as discovery:
            say("started")

            async def report() -> None:
                async for event in discovery.events():
                    if isinstance(event, PeerFound):
                        say("found", event.peer_id, event.host, event.port)
                    else:
                        say("lost", event.peer_id)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(report)
                while await next_line() != "leave":
                    pass
                nursery.cancel_scope.cancel()
    say("closed", ",".join(foreign_threads(before)) or "-")
    await stdin.aclose()


if __name__ == "__main__":
    say("netns", os.readlink("/proc/self/ns/net"), ",".join(name for _, name in socket.if_nameindex()))
    trio.run(main, sys.argv[1], int(sys.argv[2]))
