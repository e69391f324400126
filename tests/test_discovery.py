"""Discovery: record validation, static peers, the dialer, and real mDNS inside a private network namespace."""

from __future__ import annotations

import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing

import gigi_crdt.discovery as discovery
from gigi_crdt.discovery import Dialer, InvalidPeerAddress, PeerFound, PeerLost, parse_peer_address, static_peers
from gigi_crdt.discovery.mdns import CHANGE_BUFFER, MdnsDiscovery, _Change
from gigi_crdt.discovery.records import (
    SERVICE_TYPE,
    InvalidRecord,
    PeerTable,
    ServiceRecord,
    encode_txt,
    instance_name,
    parse_record,
)
from gigi_crdt.errors import GigiError
from gigi_crdt.sync.engine import LinkOutcome

ALICE = "alice-peer-0001"
BOB = "bob-peer-0002"


def test_exports_are_complete() -> None:
    public = {name for name in dir(discovery) if not name.startswith("_")}
    modules = {"dialer", "events", "mdns", "records", "static"}
    assert public - modules == set(discovery.__all__)


# -- TXT records: what we advertise, and what we believe -------------------------------------


def props(peer_id: str = BOB, **extra: bytes | None) -> dict[bytes, bytes | None]:
    txt: dict[bytes, bytes | None] = {k.encode(): v.encode() for k, v in encode_txt(peer_id).items()}
    txt.update({k.encode(): v for k, v in extra.items()})
    return txt


def test_advert_carries_only_what_is_needed_to_connect() -> None:
    assert encode_txt(ALICE) == {"id": ALICE, "v": "1"}


def test_a_valid_record_parses() -> None:
    record = parse_record(instance_name(BOB), props(), ["192.168.1.20"], 7000)
    assert record == ServiceRecord(instance_name(BOB), BOB, "192.168.1.20", 7000)


def test_unknown_txt_keys_are_tolerated() -> None:
    assert parse_record(instance_name(BOB), props(future=b"x"), ["10.0.0.2"], 1).peer_id == BOB


@pytest.mark.parametrize(
    ("txt", "reason"),
    [
        ({b"id": BOB.encode()}, "protocol version"),
        (props(v=b"2"), "protocol version"),
        (props(v=None), "protocol version"),
        (props(v=b"01"), "protocol version"),
        ({b"v": b"1"}, "malformed peer id"),
        (props(id=b"short"), "malformed peer id"),
        (props(id=b"bad id with spaces"), "malformed peer id"),
        (props(id=b"\xff\xfe" * 8), "malformed peer id"),
        (props(id=b"x" * 65), "malformed peer id"),
        (props(id=None), "malformed peer id"),
        (props(id=ALICE.encode()), "does not match"),
    ],
)
def test_malformed_txt_is_refused(txt: dict[bytes, bytes | None], reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason):
        parse_record(instance_name(BOB), txt, ["10.0.0.2"], 7000)


@pytest.mark.parametrize("port", [None, 0, -1, 65536])
def test_ports_out_of_range_are_refused(port: int | None) -> None:
    with pytest.raises(InvalidRecord, match="port"):
        parse_record(instance_name(BOB), props(), ["10.0.0.2"], port)


@pytest.mark.parametrize(
    "addresses",
    [[], ["224.0.0.251"], ["0.0.0.0"], ["8.8.8.8"], ["2001:4860::8888"], ["fe80::1"], ["not-an-ip"], ["127.0.0.1"]],
)
def test_addresses_we_must_not_dial_are_refused(addresses: list[str]) -> None:
    with pytest.raises(InvalidRecord, match="no usable address"):
        parse_record(instance_name(BOB), props(), addresses, 7000)


def test_address_choice() -> None:
    name = instance_name(BOB)
    assert parse_record(name, props(), ["fd00::5", "10.0.0.2"], 1).host == "10.0.0.2"
    assert parse_record(name, props(), ["8.8.8.8", "fe80::1%2"], 1).host == "fe80::1%2"
    assert parse_record(name, props(), ["127.0.0.1"], 1, allow_loopback=True).host == "127.0.0.1"


def test_long_peer_ids_still_fit_in_a_dns_label() -> None:
    peer_id = "p" * 64
    label = instance_name(peer_id).removesuffix("." + SERVICE_TYPE)
    assert len(label) <= 63
    assert parse_record(instance_name(peer_id), props(peer_id), ["10.0.0.2"], 1).peer_id == peer_id


def record(peer_id: str = BOB, host: str = "10.0.0.2", port: int = 7000) -> ServiceRecord:
    return ServiceRecord(instance_name(peer_id), peer_id, host, port)


def test_table_reports_a_peer_once_and_its_loss() -> None:
    table = PeerTable(ALICE)
    assert table.found(record(), now=0) == PeerFound(BOB, "10.0.0.2", 7000)
    assert table.found(record(), now=1) is None
    assert table.lost(instance_name(BOB)) == PeerLost(BOB)
    assert table.lost(instance_name(BOB)) is None


def test_table_ignores_our_own_advert() -> None:
    assert PeerTable(ALICE).found(record(ALICE), now=0) is None


def test_conflicting_address_keeps_the_first_then_accepts_a_move() -> None:
    table = PeerTable(ALICE, conflict_window=10)
    table.found(record(), now=0)
    assert table.found(record(host="10.0.0.66"), now=5) is None
    assert table.ignored == 1
    assert table.found(record(port=7001), now=9) is None  # still within the window of the first
    assert table.found(record(host="10.0.0.3"), now=20) == PeerFound(BOB, "10.0.0.3", 7000)


def test_table_caps_the_number_of_peers() -> None:
    table = PeerTable(ALICE, max_peers=3)
    found = [table.found(record(f"peer-{i:04d}"), now=0) for i in range(10)]
    assert sum(event is not None for event in found) == 3
    assert table.is_full()
    assert table.ignored == 7
    table.lost(instance_name("peer-0000"))
    assert table.found(record("peer-0009"), now=1) is not None


async def test_bridge_drops_when_trio_is_behind_and_asks_for_a_rescan() -> None:
    mdns = MdnsDiscovery(
        None,  # type: ignore[arg-type]  # the bridge callback never touches zeroconf
        ALICE,
        ip_version=None,  # type: ignore[arg-type]
        allow_loopback=False,
        max_peers=8,
        conflict_window=1,
        buffer=1,
        resolve_timeout=1,
    )
    for i in range(CHANGE_BUFFER + 2):
        mdns._accept(_Change(f"n{i}.{SERVICE_TYPE}", gone=False))
    assert mdns.dropped == 2
    assert mdns._rescan_needed
    mdns._changes_send.close()
    mdns._accept(_Change("late", gone=True))  # after close: silently nothing
    assert mdns.dropped == 2


# -- static peers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.7:7000", ("192.0.2.7", 7000)),
        ("[2001:db8::1]:7000", ("2001:db8::1", 7000)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("alice.lan:65535", ("alice.lan", 65535)),
        ("localhost:80", ("localhost", 80)),
        ("my-box.example.org.:7000", ("my-box.example.org.", 7000)),
    ],
)
def test_static_peer_addresses_parse(text: str, expected: tuple[str, int]) -> None:
    assert parse_peer_address(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "missing ':port'"),
        ("alice.lan", "missing ':port'"),
        ("alice.lan:", "port ''"),
        ("alice.lan:0", "port '0'"),
        ("alice.lan:65536", "port '65536'"),
        ("alice.lan:+80", "port '\\+80'"),
        ("alice.lan:80 ", "port '80 '"),
        ("alice.lan:١٢", "port"),
        ("2001:db8::1:7000", "brackets"),
        ("[2001:db8::1]", "missing '\\]:port'"),
        ("[not-v6]:7000", "not an IPv6 address"),
        ("[10.0.0.1]:7000", "not an IPv6 address"),
        ("999.1.1.1:7000", "not an IPv4 address"),
        ("1.2.3:7000", "not an IPv4 address"),
        ("-bad-.lan:7000", "not a valid host name"),
        ("under_score.lan:7000", "not a valid host name"),
        ("a..b:7000", "not a valid host name"),
        (":7000", "not a valid host name"),
        ("x" * 64 + ".lan:7000", "not a valid host name"),
    ],
)
def test_malformed_static_peers_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(InvalidPeerAddress, match=reason) as info:
        parse_peer_address(text)
    assert info.value.text == text
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, GigiError)
    assert repr(text) in str(info.value)


def test_static_peers_become_found_events_without_duplicates() -> None:
    assert static_peers(["10.0.0.2:7000", "[::1]:7000", "10.0.0.2:7000"]) == [
        PeerFound(None, "10.0.0.2", 7000),
        PeerFound(None, "::1", 7000),
    ]
    with pytest.raises(InvalidPeerAddress):
        static_peers(["10.0.0.2:7000", "oops"])


# -- the dialer, on memory streams -----------------------------------------------------------


class FakeEngine:
    """Runs a 'link' until the far end closes; records who was expected."""

    def __init__(self) -> None:
        self.expected: list[str | None] = []

    async def run_link(self, stream: trio.abc.Stream, *, expected_peer: str | None = None) -> LinkOutcome:
        self.expected.append(expected_peer)
        try:
            while await stream.receive_some():
                pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
        return LinkOutcome("closed", expected_peer)


class Network:
    """A fake ``connect``: every dial opens a memory stream; the test holds the far end."""

    def __init__(self) -> None:
        self.dials_send, self.dials = trio.open_memory_channel[tuple[str, int, trio.abc.Stream]](100)

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        near, far = trio.testing.memory_stream_pair()
        self.dials_send.send_nowait((host, port, far))
        return near

    async def quiet(self) -> None:
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            self.dials.receive_nowait()


async def start_dialer(nursery: trio.Nursery, grace: float = 30) -> tuple[Dialer, FakeEngine, Network]:
    engine, network = FakeEngine(), Network()
    dialer = Dialer(engine, network.connect, grace=grace, rng=random.Random(0))
    await nursery.start(dialer.run)
    return dialer, engine, network


async def test_each_peer_is_dialled_once_whatever_the_source() -> None:
    async with trio.open_nursery() as nursery:
        dialer, engine, network = await start_dialer(nursery)
        for event in [
            PeerFound(None, "10.0.0.5", 7000),  # static
            PeerFound(ALICE, "10.0.0.5", 7000),  # the same peer, found by mDNS
            PeerFound(BOB, "10.0.0.6", 7000),
            PeerFound(BOB, "10.0.0.6", 7000),
            PeerFound(None, "10.0.0.6", 7000),  # static, already dialled by mDNS
        ]:
            dialer.feed(event)
        dials = {(await network.dials.receive())[:2] for _ in range(2)}
        assert dials == {("10.0.0.5", 7000), ("10.0.0.6", 7000)}
        await network.quiet()
        assert sorted(engine.expected, key=str) == [None, BOB]
        assert sorted(dialer.targets) == [(ALICE, "10.0.0.5", 7000), (BOB, "10.0.0.6", 7000)]
        nursery.cancel_scope.cancel()


async def test_lost_peer_is_dropped_after_the_grace_period(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        dialer, _, network = await start_dialer(nursery, grace=30)
        dialer.feed(PeerFound(BOB, "10.0.0.6", 7000))
        *_, far = await network.dials.receive()
        dialer.feed(PeerLost(BOB))
        await trio.sleep(29)
        assert dialer.targets == [(BOB, "10.0.0.6", 7000)]
        await trio.sleep(2)
        assert dialer.targets == []
        with pytest.raises(trio.BrokenResourceError):  # the link was cancelled and closed
            await far.send_all(b"x")
        nursery.cancel_scope.cancel()


async def test_a_peer_found_again_within_the_grace_period_is_kept(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        dialer, _, network = await start_dialer(nursery, grace=30)
        dialer.feed(PeerFound(BOB, "10.0.0.6", 7000))
        await network.dials.receive()
        dialer.feed(PeerLost(BOB))
        await trio.sleep(20)
        dialer.feed(PeerFound(BOB, "10.0.0.6", 7000))
        await trio.sleep(100)
        assert dialer.targets == [(BOB, "10.0.0.6", 7000)]
        await network.quiet()
        nursery.cancel_scope.cancel()


async def test_static_peers_are_never_lost(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        dialer, _, network = await start_dialer(nursery, grace=1)
        dialer.feed(PeerFound(None, "10.0.0.5", 7000))
        dialer.feed(PeerFound(ALICE, "10.0.0.5", 7000))
        dialer.feed(PeerLost(ALICE))
        await trio.sleep(10)
        assert dialer.targets == [(ALICE, "10.0.0.5", 7000)]
        nursery.cancel_scope.cancel()


async def test_a_peer_that_moved_is_redialled_at_its_new_address(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        dialer, engine, network = await start_dialer(nursery)
        dialer.feed(PeerFound(BOB, "10.0.0.6", 7000))
        *_, far = await network.dials.receive()
        dialer.feed(PeerFound(BOB, "10.0.0.9", 7001))
        await far.aclose()  # the old link ends; keep_connected backs off, then redials
        assert (await network.dials.receive())[:2] == ("10.0.0.9", 7001)
        assert engine.expected == [BOB, BOB]
        nursery.cancel_scope.cancel()


def test_feeding_a_dialer_that_is_not_running_is_an_error() -> None:
    dialer = Dialer(FakeEngine(), Network().connect)
    with pytest.raises(RuntimeError, match="not running"):
        dialer.feed(PeerFound(None, "10.0.0.5", 7000))


# -- real mDNS, inside a network namespace this test creates ------------------------------------

CHILD = Path(__file__).with_name("mdns_child.py")
SETUP_LO = 'ip link set lo up multicast on && ip route add 224.0.0.0/4 dev lo && exec "$@"'


class Child:
    """A child process whose stdout lines are read by a thread, with deadlines."""

    def __init__(self, argv: list[str], stderr: Path) -> None:
        self._stderr_path = stderr
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, deadline: float) -> str:
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                pytest.fail(f"no {prefix!r} from {self.proc.args!r}; saw {self.seen}; stderr:\n{self.stderr()}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        self._stderr.flush()
        return self._stderr_path.read_text()[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


def test_two_nodes_find_each_other_and_see_each_other_leave(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        pytest.skip("needs root with unshare, nsenter and ip to make a private network namespace")
    started = time.monotonic()
    deadline = started + 20
    host_netns = os.readlink("/proc/self/ns/net")
    children: list[Child] = []
    try:
        # A gets a fresh namespace (unshare -n) whose lo carries multicast; B joins it (nsenter).
        alice = Child(
            ["unshare", "-n", "sh", "-c", SETUP_LO, "sh", sys.executable, str(CHILD), ALICE, "7001"], tmp_path / "a"
        )
        children.append(alice)
        _, alice_ns, alice_ifaces = alice.expect("netns", deadline).split()
        bob = Child(
            ["nsenter", f"--net=/proc/{alice.proc.pid}/ns/net", sys.executable, str(CHILD), BOB, "7002"], tmp_path / "b"
        )
        children.append(bob)
        _, bob_ns, bob_ifaces = bob.expect("netns", deadline).split()
        # Hygiene before any socket opens: both in the same private namespace, which has only lo.
        assert alice_ns == bob_ns != host_netns
        assert alice_ifaces == bob_ifaces == "lo"

        for child in children:
            child.send("go")
        assert alice.expect("found", deadline) == f"found {BOB} 127.0.0.1 7002"
        assert bob.expect("found", deadline) == f"found {ALICE} 127.0.0.1 7001"

        bob.send("leave")
        assert bob.expect("closed", deadline) == "closed -"  # no zeroconf thread outlives open_mdns
        assert bob.proc.wait(max(0.1, deadline - time.monotonic())) == 0
        assert alice.expect("lost", deadline) == f"lost {BOB}"  # from bob's goodbye packets

        alice.send("leave")
        assert alice.expect("closed", deadline) == "closed -"
        assert alice.proc.wait(max(0.1, deadline - time.monotonic())) == 0
    finally:
        for child in children:
            child.close()
    print(f"mDNS namespace test took {time.monotonic() - started:.2f} s")
