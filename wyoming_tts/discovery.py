"""mDNS (zeroconf) advertisement of the Wyoming TTS service.

Home Assistant's ``wyoming`` integration and LAN tools browse ``_wyoming._tcp.local.``;
advertising there lets users add the server without typing an address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Final

import psutil
from zeroconf import InterfaceChoice, InterfacesType
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_wyoming._tcp.local."
MDNS_GROUP_V4: Final = "224.0.0.251"
LOOPBACK_V4: Final = "127.0.0.1"
TXT_MAX_BYTES: Final = 255
"""One TXT character-string ("key=value") is length-prefixed by a single byte."""
INSTANCE_NAME_MAX_BYTES: Final = 63
GOODBYE_TIMEOUT_S: Final = 2.0
"""Bound on waiting for goodbye packets so shutdown never hangs on a dead network."""
ADDRESS_WATCH_S: Final = 30.0
"""How often the LAN addresses are read again: a DHCP renewal or an interface going up
or down is advertised within a minute (two reads; each is a route lookup and a list)."""

_UNSPECIFIED_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})
_NOT_DNS_LABEL_CHARS: Final = re.compile(r"[^a-z0-9-]+")


def select_addresses(host: str | None, candidates: Iterable[str]) -> list[str]:
    """Choose the addresses to advertise; never an unspecified, multicast or link-local one.

    A specific IP ``host`` is what the server listens on, so it is advertised exactly.
    Otherwise (None, "", "0.0.0.0", "::") usable ``candidates`` are kept in their order
    (callers put the preferred one first), IPv4 before IPv6.  IPv6 is only kept for
    ``"::"`` because a server bound to 0.0.0.0 cannot be reached over IPv6.  Returns []
    when nothing usable is left; the caller decides on the loopback fallback.
    """
    if host not in _UNSPECIFIED_HOSTS and host is not None:
        explicit = _parse_ip(host)
        if explicit is None:
            raise ValueError(f"host must be an IP address or unspecified, got {host!r}")
        if not explicit.is_unspecified:
            return [str(explicit)]
    include_v6 = host == "::"
    v4: list[str] = []
    v6: list[str] = []
    for candidate in candidates:
        ip = _parse_ip(candidate)
        if ip is None or not _is_advertisable(ip):
            continue
        bucket = v4 if ip.version == 4 else v6
        if str(ip) not in bucket and (ip.version == 4 or include_v6):
            bucket.append(str(ip))
    return v4 + v6


def txt_properties(
    program: str, version: str, voices: Sequence[str], languages: Sequence[str]
) -> dict[str, str]:
    """Build TXT properties that fit mDNS's 255-byte limit per "key=value" string.

    Lists are cut at a comma (never mid-name); a cut list gets a ``<key>_count``
    entry with the real length so clients know it is incomplete.
    """
    props = {
        "program": _truncate_utf8(program, TXT_MAX_BYTES - len(b"program=")),
        "version": _truncate_utf8(version, TXT_MAX_BYTES - len(b"version=")),
    }
    for key, items in (("voices", voices), ("languages", languages)):
        joined, complete = _join_within(items, TXT_MAX_BYTES - len(key) - 1)
        props[key] = joined
        if not complete:
            props[f"{key}_count"] = str(len(items))
    return props


def detect_addresses(host: str | None) -> list[str]:
    """Addresses to advertise for ``host`` (an IP, a hostname, or unspecified).

    Returns [] only when auto-detection found no non-loopback address at all.
    """
    if host is not None and host not in _UNSPECIFIED_HOSTS and _parse_ip(host) is None:
        resolved = _resolve_hostname(host)
        if resolved:
            return sorted(resolved, key=lambda address: ":" in address)  # IPv4 first
        _LOGGER.warning("Cannot resolve host %r; advertising detected addresses instead", host)
        host = None
    if host is not None and host not in _UNSPECIFIED_HOSTS:
        return select_addresses(host, ())
    route = _route_address()
    # The multicast route's source address goes first: it is the interface mDNS
    # peers actually reach, unlike e.g. a docker bridge that enumeration may list first.
    return select_addresses(host, [*([route] if route else []), *_interface_addresses()])


class Discovery:
    """Registers our service on enter and unregisters it (goodbye packets) on exit.

    The zeroconf instance is created on enter so it runs on the caller's event loop
    instead of spawning its own thread.  Addresses are picked at construction (a
    hostname ``host`` is resolved there, blocking) so ``addresses`` is known up front;
    while active they are read again off the loop every ``watch_interval`` seconds,
    and a change is advertised anew.
    """

    def __init__(
        self,
        name: str,
        port: int,
        properties: Mapping[str, str],
        *,
        host: str | None = None,
        interfaces: InterfacesType | None = None,
        address_source: Callable[[], list[str]] | None = None,
        watch_interval: float = ADDRESS_WATCH_S,
    ) -> None:
        if not name or len(name.encode()) > INSTANCE_NAME_MAX_BYTES or "." in name:
            raise ValueError(
                f"mDNS instance name must be 1-{INSTANCE_NAME_MAX_BYTES} bytes without dots"
            )
        if not 0 < port < 65536:
            raise ValueError(f"invalid port {port}")
        self.port = port
        self.service_name = f"{name}.{SERVICE_TYPE}"
        self.properties = _checked_properties(properties)
        self._source = address_source or partial(detect_addresses, host)
        self._watch_interval = watch_interval
        self._fixed_interfaces = interfaces
        self.addresses = self._usable(self._source(), warn=True)
        self._interfaces = self._interfaces_for(self.addresses)
        # Our own host name, not the machine's: reusing the machine's name would fight
        # avahi's A records; the node id keeps two machines' names from colliding.
        label = _NOT_DNS_LABEL_CHARS.sub("-", name.lower()).strip("-")[:40] or "wyoming"
        self._server = f"{label}-{uuid.getnode():012x}.local."
        self._aiozc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._broadcasts: set[asyncio.Future[object]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._entered = False

    @staticmethod
    def _usable(addresses: list[str], warn: bool = False) -> list[str]:
        if addresses:
            return addresses
        if warn:
            _LOGGER.warning(
                "No non-loopback network address found; advertising %s (LAN clients "
                "will not be able to connect)",
                LOOPBACK_V4,
            )
        return [LOOPBACK_V4]

    def _interfaces_for(self, addresses: list[str]) -> InterfacesType:
        if self._fixed_interfaces is not None:
            return self._fixed_interfaces
        only_loopback = all(ipaddress.ip_address(a).is_loopback for a in addresses)
        # Announcing a loopback address on the LAN would point peers at themselves.
        return [LOOPBACK_V4] if only_loopback else InterfaceChoice.All

    async def __aenter__(self) -> Discovery:
        """Register, then re-read the LAN addresses every `watch_interval` seconds."""
        await self._register()
        self._entered = True
        if self._watch_interval > 0:
            self._watcher = asyncio.create_task(self._watch(), name="mdns-address-watch")
        return self

    async def refresh_addresses(self) -> bool:
        """Re-advertise if the machine's addresses changed; True if they had.

        zeroconf's sockets are bound to the interfaces' addresses of the moment, so a
        change means a new stack: goodbyes for the old records, then a fresh register.
        """
        if not self._entered:
            raise RuntimeError("Discovery is not active")
        addresses = self._usable(await asyncio.to_thread(self._source))
        if addresses == self.addresses and self._aiozc is not None:
            return False
        if addresses != self.addresses:
            _LOGGER.info(
                "Network addresses changed from %s to %s; advertising again",
                ", ".join(self.addresses),
                ", ".join(addresses),
            )
        await self._unregister()  # nothing to do if the last re-register failed
        self.addresses, self._interfaces = addresses, self._interfaces_for(addresses)
        await self._register()
        return True

    async def _watch(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._watch_interval)
            try:
                await self.refresh_addresses()
                failing = False
            except Exception as err:
                if not failing:  # once per outage, not every interval
                    _LOGGER.warning("mDNS re-advertisement failed (will retry): %r", err)
                failing = True

    async def _register(self) -> None:
        """Register (probing for conflicts, renaming if needed) and start announcing."""
        if self._aiozc is not None:
            raise RuntimeError("Discovery is already active")
        aiozc = AsyncZeroconf(interfaces=self._interfaces)
        try:
            info = self._service_info(self.properties)
            announce = await aiozc.async_register_service(info, allow_name_change=True)
        except BaseException:
            await aiozc.async_close()
            raise
        self._aiozc, self._info = aiozc, info
        self._track(announce)
        if info.name != self.service_name:
            _LOGGER.warning("mDNS name %s is taken; using %s", self.service_name, info.name)
            self.service_name = info.name
        _LOGGER.info(
            "Advertising %s on %s port %d", self.service_name, ", ".join(self.addresses), self.port
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop watching, send goodbyes and close; network errors are logged, never raised."""
        self._entered = False
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await self._unregister()

    async def _unregister(self) -> None:
        aiozc, info = self._aiozc, self._info
        self._aiozc = self._info = None
        if aiozc is None:
            return
        error: Exception | None = None
        try:
            await self._cancel_broadcasts()
            if info is not None:
                goodbye = await aiozc.async_unregister_service(info)
                async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                    await goodbye
        except Exception as err:
            error = err
        try:
            await aiozc.async_close()
        except Exception as err:
            error = error or err
        if error is not None:
            _LOGGER.warning("mDNS unregister of %s failed: %r", self.service_name, error)

    async def update(self, properties: Mapping[str, str]) -> None:
        """Re-announce changed TXT properties (e.g. after the voice list changed)."""
        checked = _checked_properties(properties)
        if not self._entered:
            raise RuntimeError("Discovery is not active")
        if checked == self.properties:
            return
        if self._aiozc is None:  # between a failed re-register and the next try
            self.properties = checked
            return
        info = self._service_info(checked)
        self._track(await self._aiozc.async_update_service(info))
        self.properties, self._info = checked, info

    def _service_info(self, properties: Mapping[str, str]) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            self.service_name,
            port=self.port,
            properties=dict(properties),
            server=self._server,
            parsed_addresses=self.addresses,
        )

    def _track(self, broadcast: Awaitable[object]) -> None:
        """Keep announcement tasks so exit can cancel them instead of leaking them."""
        future = asyncio.ensure_future(broadcast)
        self._broadcasts.add(future)
        future.add_done_callback(self._broadcasts.discard)

    async def _cancel_broadcasts(self) -> None:
        pending = [f for f in self._broadcasts if not f.done()]
        for future in pending:
            future.cancel()
        if pending:
            await asyncio.wait(pending)


def _checked_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """Reject TXT entries that zeroconf would otherwise fail on with an obscure error."""
    checked = dict(properties)
    for key, value in checked.items():
        if len(f"{key}={value}".encode()) > TXT_MAX_BYTES:
            raise ValueError(f"TXT entry {key!r} exceeds {TXT_MAX_BYTES} bytes")
    return checked


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        # psutil reports IPv6 link-local addresses with a "%iface" zone suffix.
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _is_advertisable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Link-local needs a zone that mDNS records cannot carry; the rest is unreachable."""
    return not (ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_multicast)


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode()[:max_bytes].decode(errors="ignore")


def _join_within(items: Sequence[str], max_bytes: int) -> tuple[str, bool]:
    """Join ``items`` with commas, keeping only whole items that fit in ``max_bytes``."""
    kept: list[str] = []
    size = 0
    for item in items:
        size += len(item.encode()) + (1 if kept else 0)
        if size > max_bytes:
            return ",".join(kept), False
        kept.append(item)
    return ",".join(kept), True


def _interface_addresses() -> list[str]:
    """Addresses of interfaces that are up, in the OS's enumeration order."""
    try:
        stats = psutil.net_if_stats()
        return [
            addr.address
            for iface, addrs in psutil.net_if_addrs().items()
            if iface in stats and stats[iface].isup
            for addr in addrs
            if addr.family in (socket.AF_INET, socket.AF_INET6)
        ]
    except OSError as err:
        _LOGGER.debug("Listing interfaces failed: %r", err)
        return []


def _route_address() -> str | None:
    """Source address the OS would use for mDNS multicast (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((MDNS_GROUP_V4, 5353))
            address: str = sock.getsockname()[0]
            return address
    except OSError:
        return None


def _resolve_hostname(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    found: list[str] = []
    for info in infos:
        ip = _parse_ip(str(info[4][0]))
        if ip is not None and not ip.is_unspecified and str(ip) not in found:
            found.append(str(ip))
    return found
