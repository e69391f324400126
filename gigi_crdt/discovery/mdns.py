"""LAN discovery over mDNS/DNS-SD: the one module that touches zeroconf and its asyncio thread.

zeroconf brings two threads of its own when no asyncio loop runs in the thread that creates it
(and none ever does in a trio program):

- its **event loop thread**: sockets, the record cache, our registration, and the resolution
  coroutines we hand it;
- the **ServiceBrowser thread**: calls our handler for every added, updated or removed service.

The bridge, in both directions, never blocks the other side:

- zeroconf -> trio: the handler only calls ``token.run_sync_soon`` with a name; the callback
  (in trio's thread) does ``send_nowait`` into a bounded channel. ``RunFinishedError`` (trio
  gone) is ignored; ``WouldBlock`` (channel full) drops the change and counts it, and once the
  backlog is drained we rescan zeroconf's cache, so nothing dropped is lost for good (zeroconf
  itself would not repeat an "added" for a record it already holds).
- trio -> zeroconf: coroutines (register, resolve, read the cache) run on zeroconf's loop via
  ``asyncio.run_coroutine_threadsafe``; trio waits for a ``run_sync_soon`` wake-up, and
  cancelling the trio task cancels the asyncio task, so no thread is ever left abandoned.
  Calls that block by design (creating and closing zeroconf, joining the browser thread) run
  in ``trio.to_thread.run_sync``.

Everything about which records to believe lives in ``records.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import ifaddr
import trio
from zeroconf import (
    BadTypeInNameException,
    EventLoopBlocked,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf._dns import DNSPointer
from zeroconf.asyncio import AsyncServiceInfo
from zeroconf.const import _CLASS_IN, _TYPE_PTR

from ..errors import GigiError
from .events import DiscoveryEvent
from .records import (
    CONFLICT_WINDOW,
    MAX_PEERS,
    PEER_ID,
    SERVICE_TYPE,
    InvalidRecord,
    PeerTable,
    ServiceRecord,
    encode_txt,
    instance_label,
    instance_name,
    parse_record,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANGE_BUFFER = 64
EVENT_BUFFER = 64
RESOLVE_TIMEOUT = 3.0


class DiscoveryError(GigiError):
    """mDNS cannot run here: no usable interface, or another node already holds our peer id."""


@dataclass(frozen=True, slots=True)
class _Change:
    """What the browser thread saw: a service name appeared or changed, or went away."""

    name: str
    gone: bool


class MdnsDiscovery:
    """A running mDNS advertisement and browser; create it with ``open_mdns``."""

    def __init__(
        self,
        zc: Zeroconf,
        peer_id: str,
        *,
        ip_version: IPVersion,
        allow_loopback: bool,
        max_peers: int,
        conflict_window: float,
        buffer: int,
        resolve_timeout: float,
    ) -> None:
        self._zc = zc
        self._token = trio.lowlevel.current_trio_token()
        self._own_name = instance_name(peer_id)
        self._ip_version = ip_version
        self._allow_loopback = allow_loopback
        self._resolve_timeout = resolve_timeout
        self._table = PeerTable(peer_id, max_peers=max_peers, conflict_window=conflict_window)
        self._changes_send, self._changes_receive = trio.open_memory_channel[_Change](CHANGE_BUFFER)
        self._events_send, self._events_receive = trio.open_memory_channel[DiscoveryEvent](buffer)
        self._rescan_needed = False
        self.dropped = 0
        """Changes dropped because trio fell behind (each one triggers a rescan)."""

    def events(self) -> trio.MemoryReceiveChannel[DiscoveryEvent]:
        """``PeerFound`` / ``PeerLost`` events, for one consumer; ends when discovery closes."""
        return self._events_receive

    @property
    def peers(self) -> int:
        """How many peers are currently reported found."""
        return len(self._table)

    # -- zeroconf's side: runs on the ServiceBrowser thread ---------------------------------

    def _on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        change = _Change(name, state_change is ServiceStateChange.Removed)
        try:
            self._token.run_sync_soon(self._accept, change)
        except trio.RunFinishedError:
            pass  # trio has finished: nobody is left to tell

    # -- trio's side --------------------------------------------------------------------------

    def _accept(self, change: _Change) -> None:
        """Called by trio's run loop from ``run_sync_soon``: must never raise."""
        try:
            self._changes_send.send_nowait(change)
        except trio.WouldBlock:
            self.dropped += 1
            if not self._rescan_needed:  # one line per backlog, not one per dropped change
                log.warning("mDNS: trio is behind, dropping changes (%d so far); will rescan", self.dropped)
            self._rescan_needed = True
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # shutting down

    async def _process(self) -> None:
        """Turn browser changes into validated events, one at a time (so a loss never overtakes a find)."""
        while True:
            if self._rescan_needed and self._changes_receive.statistics().current_buffer_used == 0:
                self._rescan_needed = False
                await self._rescan()
            change = await self._changes_receive.receive()
            await self._apply(change)

    async def _apply(self, change: _Change) -> None:
        if change.name == self._own_name:
            return
        if change.gone:
            event: DiscoveryEvent | None = self._table.lost(change.name)
        elif change.name not in self._table and self._table.is_full():
            log.info("mDNS: peer table full (%d), ignoring %r", self._table.max_peers, change.name)
            return
        else:
            try:
                record = await self._resolve(change.name)
            except InvalidRecord as exc:
                log.info("mDNS: ignoring advert: %s", exc)
                return
            event = self._table.found(record, trio.current_time())
        if event is not None:
            await self._events_send.send(event)

    async def _rescan(self) -> None:
        names = await self._on_loop(self._cached_names())
        log.info("mDNS: rescanning %d cached adverts after dropped changes", len(names))
        for name in self._table.names() - names:
            await self._apply(_Change(name, gone=True))
        for name in names:
            await self._apply(_Change(name, gone=False))

    async def _resolve(self, name: str) -> ServiceRecord:
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
        except BadTypeInNameException as exc:
            raise InvalidRecord(f"{name!r}: bad service name") from exc
        if not await self._on_loop(info.async_request(self._zc, self._resolve_timeout * 1000)):
            raise InvalidRecord(f"{name!r}: no complete answer within {self._resolve_timeout} s")
        return parse_record(
            name,
            info.properties,
            info.parsed_scoped_addresses(self._ip_version),
            info.port,
            allow_loopback=self._allow_loopback,
        )

    async def _cached_names(self) -> set[str]:
        """Runs on zeroconf's loop: the instance names its cache holds for our service type."""
        records = self._zc.cache.async_all_by_details(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN)
        return {record.alias for record in records if isinstance(record, DNSPointer)}

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on zeroconf's event loop and wait for it; cancelling us cancels it."""
        loop = self._zc.loop
        if loop is None:  # set before Zeroconf() returns
            raise DiscoveryError("zeroconf has no event loop")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        done = trio.Event()
        token = self._token

        def wake(_: object) -> None:  # on zeroconf's thread, or ours if already done
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(wake)
        try:
            await done.wait()
        finally:
            future.cancel()  # a no-op once done
        return future.result()


@asynccontextmanager
async def open_mdns(
    peer_id: str,
    port: int,
    *,
    interfaces: Sequence[str] | None = None,
    ipv6: bool = False,
    max_peers: int = MAX_PEERS,
    conflict_window: float = CONFLICT_WINDOW,
    buffer: int = EVENT_BUFFER,
    resolve_timeout: float = RESOLVE_TIMEOUT,
) -> AsyncIterator[MdnsDiscovery]:
    """Advertise ``peer_id`` at ``port`` on the LAN and report the other gigi-crdt peers.

    ``interfaces`` lists the local IP addresses to use (default: every interface, for real
    users; tests pass ``["127.0.0.1"]`` inside a network namespace). IPv4 only unless ``ipv6``.
    On exit or cancellation the service is withdrawn (goodbye packets), and zeroconf's sockets
    and threads are closed before this returns.

    Raises:
        ValueError: ``peer_id`` or ``port`` is malformed.
        DiscoveryError: mDNS cannot start on these interfaces, or the peer id is taken.
    """
    if not PEER_ID.fullmatch(peer_id):
        raise ValueError(f"malformed peer id {peer_id!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    ip_version = IPVersion.All if ipv6 else IPVersion.V4Only
    addresses = _advertised_addresses(interfaces, ipv6)
    if not addresses:
        raise DiscoveryError(f"no address to advertise on {interfaces or 'any interface'}")
    choice: list[str | int] | InterfaceChoice = list(interfaces) if interfaces is not None else InterfaceChoice.All
    try:
        zc = await trio.to_thread.run_sync(partial(Zeroconf, choice, ip_version=ip_version, use_asyncio=False))
    except OSError as exc:
        raise DiscoveryError(f"cannot start mDNS on {interfaces or 'all interfaces'}: {exc}") from exc
    try:
        discovery = MdnsDiscovery(
            zc,
            peer_id,
            ip_version=ip_version,
            allow_loopback=any(ipaddress.ip_address(address).is_loopback for address in addresses),
            max_peers=max_peers,
            conflict_window=conflict_window,
            buffer=buffer,
            resolve_timeout=resolve_timeout,
        )
        info = ServiceInfo(
            SERVICE_TYPE,
            instance_name(peer_id),
            port=port,
            properties=encode_txt(peer_id),
            server=f"gigi-{instance_label(peer_id)}.local.",
            parsed_addresses=addresses,
        )
        # Browse first: probing for our name takes ~0.75 s (3 probes), and finding others need not wait.
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[discovery._on_state_change])
        try:
            try:
                await discovery._on_loop(_register(zc, info))
            except NonUniqueNameException as exc:
                raise DiscoveryError(f"another node on the network already advertises peer id {peer_id}") from exc
            async with trio.open_nursery() as nursery:
                nursery.start_soon(discovery._process)
                yield discovery
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(browser.cancel)  # joins its thread; our handler never blocks it
            discovery._events_send.close()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_close, zc)


async def _register(zc: Zeroconf, info: ServiceInfo) -> None:
    """Runs on zeroconf's loop: probe for the name, then wait for the announcements to go out."""
    announced = await zc.async_register_service(info, allow_name_change=False)
    await announced


def _close(zc: Zeroconf) -> None:
    """Blocking: say goodbye, then stop zeroconf's loop and join its thread."""
    try:
        zc.unregister_all_services()
    except EventLoopBlocked:
        log.warning("mDNS: goodbye not sent in time; peers will notice when our records expire")
    zc.close()


def _advertised_addresses(interfaces: Sequence[str] | None, ipv6: bool) -> list[str]:
    """The addresses to put in our A/AAAA records: the chosen ones, or every non-loopback one."""
    if interfaces is not None:
        candidates = list(interfaces)
    else:
        candidates = [str(ip.ip if isinstance(ip.ip, str) else ip.ip[0]) for a in ifaddr.get_adapters() for ip in a.ips]
    usable = []
    for text in candidates:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue  # an interface name or index: zeroconf resolves those, we cannot advertise them
        if address.version == 6 and (not ipv6 or address.is_link_local):
            continue
        if interfaces is None and address.is_loopback:
            continue
        usable.append(str(address))
    return usable
