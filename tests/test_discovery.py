"""Tests for mDNS advertisement: pure helpers, plus real zeroconf traffic over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from wyoming_tts import discovery
from wyoming_tts.discovery import (
    SERVICE_TYPE,
    TXT_MAX_BYTES,
    Discovery,
    detect_addresses,
    select_addresses,
    txt_properties,
)

from .conftest import loopback_multicast_problem, run_server, still_serves

UNSPECIFIED = (None, "", "0.0.0.0", "::")
LOOPBACK_IFACE = ["127.0.0.1"]
STEP_TIMEOUT_S = 5.0

# --- address selection -------------------------------------------------------------


@pytest.mark.parametrize("host", ["192.168.1.20", "10.0.0.5", "127.0.0.1", "fd00::2", "::1"])
def test_explicit_host_is_advertised_exactly(host: str) -> None:
    assert select_addresses(host, ["192.0.2.9", "fd00::9"]) == [host]
    assert detect_addresses(host) == [host]


def test_explicit_ipv6_host_is_normalised() -> None:
    assert select_addresses("FD00:0:0::2", []) == ["fd00::2"]


def test_hostname_is_rejected_by_pure_selection_but_resolved_by_detection() -> None:
    with pytest.raises(ValueError, match="IP address"):
        select_addresses("localhost", [])
    assert detect_addresses("localhost")
    assert all(ipaddress.ip_address(a).is_loopback for a in detect_addresses("localhost"))


@pytest.mark.parametrize("host", UNSPECIFIED)
def test_unspecified_host_drops_unusable_candidates(host: str | None) -> None:
    candidates = [
        "0.0.0.0",
        "127.0.0.1",
        "169.254.3.4",
        "224.0.0.251",
        "::",
        "::1",
        "fe80::1%eth0",
        "garbage",
        "192.168.1.20",
        "192.168.1.20",
        "172.17.0.1",
        "fd00::2",
    ]
    expected = ["192.168.1.20", "172.17.0.1"] + (["fd00::2"] if host == "::" else [])
    assert select_addresses(host, candidates) == expected


def test_ipv4_listed_before_ipv6_and_order_kept() -> None:
    assert select_addresses("::", ["fd00::2", "10.0.0.2", "10.0.0.1"]) == [
        "10.0.0.2",
        "10.0.0.1",
        "fd00::2",
    ]


def test_nothing_usable_gives_empty_list() -> None:
    assert select_addresses(None, ["127.0.0.1", "::1", "0.0.0.0"]) == []


@given(
    host=st.sampled_from(UNSPECIFIED),
    candidates=st.lists(st.ip_addresses().map(str), max_size=8),
)
def test_selection_never_yields_unspecified_or_loopback(
    host: str | None, candidates: list[str]
) -> None:
    for address in select_addresses(host, candidates):
        ip = ipaddress.ip_address(address)
        assert not ip.is_unspecified
        assert not ip.is_loopback
        assert not ip.is_link_local
        assert not ip.is_multicast


@pytest.mark.parametrize("host", UNSPECIFIED)
def test_discovery_never_advertises_unspecified(host: str | None) -> None:
    disco = Discovery("wyoming-tts", 10200, {}, host=host)
    assert disco.addresses
    assert all(not ipaddress.ip_address(a).is_unspecified for a in disco.addresses)
    assert disco.service_name == "wyoming-tts._wyoming._tcp.local."


def test_loopback_only_machine_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(discovery, "_interface_addresses", lambda: ["127.0.0.1", "::1"])
    monkeypatch.setattr(discovery, "_route_address", lambda: None)
    with caplog.at_level(logging.WARNING, logger=discovery.__name__):
        disco = Discovery("wyoming-tts", 10200, {})
    assert disco.addresses == ["127.0.0.1"]
    assert len(caplog.records) == 1


def test_route_address_is_preferred(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "_interface_addresses", lambda: ["172.17.0.1", "10.1.2.3"])
    monkeypatch.setattr(discovery, "_route_address", lambda: "10.1.2.3")
    assert detect_addresses(None) == ["10.1.2.3", "172.17.0.1"]


@pytest.mark.parametrize("name", ["", "a.b", "x" * 64])
def test_bad_instance_name_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="instance name"):
        Discovery(name, 10200, {})


def test_oversized_txt_entry_rejected() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        Discovery("wyoming-tts", 10200, {"voices": "v" * 300})


# --- TXT properties ----------------------------------------------------------------


def _entry_bytes(key: str, value: str) -> int:
    return len(f"{key}={value}".encode())


def test_txt_properties_short_lists_are_complete() -> None:
    props = txt_properties("wyoming-tts", "0.1.0", ["en_US-joe-medium", "de_DE-x-low"], ["en_US"])
    assert props == {
        "program": "wyoming-tts",
        "version": "0.1.0",
        "voices": "en_US-joe-medium,de_DE-x-low",
        "languages": "en_US",
    }


def test_txt_properties_empty_lists() -> None:
    props = txt_properties("p", "1", [], [])
    assert props["voices"] == ""
    assert props["languages"] == ""
    assert "voices_count" not in props


@pytest.mark.parametrize("voice_len", [1, 7, 20, 60, 247, 248, 249, 300])
def test_txt_properties_truncate_voices_at_comma(voice_len: int) -> None:
    voices = [f"v{i:03d}".ljust(voice_len, "x")[: max(voice_len, 4)] for i in range(200)]
    props = txt_properties("wyoming-tts", "0.1.0", voices, ["en_US"])
    for key, value in props.items():
        assert _entry_bytes(key, value) <= TXT_MAX_BYTES
    kept = props["voices"].split(",") if props["voices"] else []
    assert kept == voices[: len(kept)]  # whole names, in order, never a partial one
    assert props["voices_count"] == "200"
    # Greedy: the next voice really would not have fit.
    assert _entry_bytes("voices", ",".join(voices[: len(kept) + 1])) > TXT_MAX_BYTES


def test_txt_properties_exact_fit_is_not_truncated() -> None:
    value_budget = TXT_MAX_BYTES - len("voices=")
    voices = ["a" * 100, "b" * (value_budget - 101)]
    props = txt_properties("p", "1", voices, [])
    assert props["voices"] == ",".join(voices)
    assert "voices_count" not in props


def test_txt_properties_multibyte_and_long_scalars() -> None:
    voices = ["ünïcødé-" + "é" * 30 + str(i) for i in range(20)]
    langs = [f"l{i}" for i in range(200)]
    props = txt_properties("p" * 400, "ü" * 300, voices, langs)
    for key, value in props.items():
        assert _entry_bytes(key, value) <= TXT_MAX_BYTES
    assert props["voices"].split(",") == voices[: len(props["voices"].split(","))]
    assert props["voices_count"] == "20"
    assert props["languages_count"] == "200"
    assert props["version"] == "ü" * ((TXT_MAX_BYTES - len("version=")) // 2)


@given(
    voices=st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters=","), min_size=1),
        max_size=40,
    )
)
def test_txt_properties_always_fit(voices: list[str]) -> None:
    props = txt_properties("wyoming-tts", "0.1.0", voices, ["en_US"])
    assert _entry_bytes("voices", props["voices"]) <= TXT_MAX_BYTES
    kept = props["voices"].split(",") if props["voices"] else []
    assert voices[: len(kept)] == kept or (kept == [] and not props["voices"])
    assert ("voices_count" in props) == (len(kept) < len(voices))


# --- real mDNS over loopback -------------------------------------------------------


@pytest.fixture(scope="module")
def loopback_multicast() -> None:
    problem = loopback_multicast_problem()
    if problem is not None:
        pytest.skip(f"{problem} (is lo up? try `ip link set lo up multicast on`)")


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail at once if a test leaves zeroconf threads behind (the loop's executor is exempt)."""
    threads_before = set(threading.enumerate())
    yield
    leftover = [
        t
        for t in threading.enumerate()
        if t not in threads_before and t.is_alive() and not t.name.startswith("asyncio_")
    ]
    assert not leftover, leftover


async def _assert_no_tasks_left(before: set[asyncio.Task[Any]]) -> None:
    """No task started since ``before`` (the loop may run other fixtures' servers) is left."""
    await asyncio.sleep(0)
    others = [
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task() and not t.done() and t not in before
    ]
    assert not others, others


@contextlib.asynccontextmanager
async def _peer() -> AsyncIterator[AsyncZeroconf]:
    """A second, independent mDNS stack on loopback, like another host's browser."""
    aiozc = AsyncZeroconf(interfaces=LOOPBACK_IFACE, ip_version=IPVersion.V4Only)
    try:
        yield aiozc
    finally:
        await aiozc.async_close()


async def _resolve(
    aiozc: AsyncZeroconf, name: str, timeout_ms: int = 2000
) -> AsyncServiceInfo | None:
    info = AsyncServiceInfo(SERVICE_TYPE, name)
    return info if await info.async_request(aiozc.zeroconf, timeout_ms) else None


def _unique_name() -> str:
    return f"wyoming-tts-test-{uuid.uuid4().hex[:10]}"


@pytest.mark.usefixtures("loopback_multicast", "no_leaks")
async def test_register_resolve_update_and_goodbye() -> None:
    before = asyncio.all_tasks()
    props = txt_properties("wyoming-tts", "0.1.0", ["en_US-joe-medium"], ["en_US"])
    disco = Discovery(_unique_name(), 10234, props, host="127.0.0.1", interfaces=LOOPBACK_IFACE)
    events: list[tuple[str, ServiceStateChange]] = []
    removed = asyncio.Event()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        events.append((name, state_change))
        if state_change is ServiceStateChange.Removed and name == disco.service_name:
            removed.set()

    async with _peer() as peer:
        browser = AsyncServiceBrowser(peer.zeroconf, SERVICE_TYPE, handlers=[on_change])
        try:
            async with asyncio.timeout(STEP_TIMEOUT_S), disco:
                info = await _resolve(peer, disco.service_name)
                assert info is not None
                assert info.port == 10234
                assert info.decoded_properties == props
                assert info.parsed_addresses() == ["127.0.0.1"]
                assert "0.0.0.0" not in info.parsed_addresses()

                new_props = {**props, "voices": "en_US-joe-medium,en_GB-alba-medium"}
                await disco.update(new_props)
                while True:  # the peer's cache is refreshed by the re-announcement
                    info = await _resolve(peer, disco.service_name)
                    if info is not None and info.decoded_properties == new_props:
                        break
                    await asyncio.sleep(0.1)
            async with asyncio.timeout(STEP_TIMEOUT_S):
                await removed.wait()
        finally:
            await browser.async_cancel()
    assert (disco.service_name, ServiceStateChange.Added) in events
    await _assert_no_tasks_left(before)


@pytest.mark.usefixtures("loopback_multicast", "no_leaks")
async def test_detected_addresses_advertised_over_loopback() -> None:
    """Default host: the LAN address goes out in the records, never 0.0.0.0."""
    before = asyncio.all_tasks()
    name = _unique_name()
    # Detecting the addresses blocks (a route lookup): the constructor runs off the loop.
    disco = await asyncio.to_thread(
        Discovery, name, 10235, {"program": "t"}, interfaces=LOOPBACK_IFACE
    )
    async with _peer() as peer, asyncio.timeout(STEP_TIMEOUT_S):
        async with disco:
            info = await _resolve(peer, disco.service_name)
            assert info is not None
            assert info.parsed_addresses() == disco.addresses
            assert "0.0.0.0" not in info.parsed_addresses()
        # Goodbyes (TTL 0) expire the peer's cache within ~1 s; then nobody answers.
        while True:
            if await _resolve(peer, disco.service_name, timeout_ms=300) is None:
                break
            await asyncio.sleep(0.1)
    await _assert_no_tasks_left(before)


@pytest.mark.usefixtures("loopback_multicast", "no_leaks")
async def test_name_conflict_gets_renamed(caplog: pytest.LogCaptureFixture) -> None:
    before = asyncio.all_tasks()
    name = _unique_name()
    first = Discovery(name, 10236, {"n": "1"}, host="127.0.0.1", interfaces=LOOPBACK_IFACE)
    second = Discovery(name, 10237, {"n": "2"}, host="127.0.0.1", interfaces=LOOPBACK_IFACE)
    async with asyncio.timeout(3 * STEP_TIMEOUT_S), first, second:
        assert first.service_name == f"{name}.{SERVICE_TYPE}"
        assert second.service_name == f"{name}-2.{SERVICE_TYPE}"
        assert any(second.service_name in r.getMessage() for r in caplog.records)
    await _assert_no_tasks_left(before)


@pytest.mark.usefixtures("loopback_multicast", "no_leaks")
async def test_exit_swallows_network_errors(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    before = asyncio.all_tasks()

    async def broken(self: AsyncZeroconf, info: AsyncServiceInfo) -> None:
        raise OSError(101, "Network is unreachable")

    disco = Discovery(_unique_name(), 10238, {}, host="127.0.0.1", interfaces=LOOPBACK_IFACE)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await disco.__aenter__()
        monkeypatch.setattr(AsyncZeroconf, "async_unregister_service", broken)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=discovery.__name__):
            await disco.__aexit__(None, None, None)
    warnings = [r for r in caplog.records if r.name == discovery.__name__]
    assert len(warnings) == 1
    assert "unreachable" in warnings[0].getMessage()
    await _assert_no_tasks_left(before)


async def test_update_requires_active_discovery() -> None:
    disco = await asyncio.to_thread(Discovery, "wyoming-tts", 10200, {})  # detection blocks
    with pytest.raises(RuntimeError, match="not active"):
        await disco.update({"a": "b"})
    await disco.__aexit__(None, None, None)  # exit without enter is a no-op


async def test_advertising_on_every_interface_never_blocks_the_loop(
    cache_dir: Path, loopback_multicast: None
) -> None:
    """Picking the LAN addresses (route lookup, interfaces) runs off the loop: blockbuster
    fails this test if start-up does it on the loop."""
    args = ("--cache-dir", str(cache_dir), "--zeroconf", "wyoming-tts-test")
    async with run_server(*args, "--uri", "tcp://0.0.0.0:0") as srv:
        assert srv.app.phase.value == "serving"
        await still_serves(srv)


@pytest.mark.usefixtures("loopback_multicast", "no_leaks")
async def test_a_change_of_network_address_is_advertised_anew() -> None:
    """A DHCP renewal, seen through a fake address source, reaches a peer's browser."""
    before = asyncio.all_tasks()
    addresses = ["192.0.2.10"]
    disco = Discovery(
        _unique_name(),
        10238,
        {"program": "t"},
        interfaces=LOOPBACK_IFACE,
        address_source=lambda: list(addresses),
        watch_interval=0.2,
    )
    # Two registrations with their probes, and a goodbye: generous on a loaded machine.
    async with _peer() as peer, asyncio.timeout(6 * STEP_TIMEOUT_S), disco:
        info = await _resolve(peer, disco.service_name)
        assert info is not None and info.parsed_addresses() == ["192.0.2.10"]
        assert await disco.refresh_addresses() is False  # unchanged: nothing sent
        addresses[:] = ["192.0.2.20", "198.51.100.7"]
        while True:  # the watcher notices on its own, then the peer hears it
            info = await _resolve(peer, disco.service_name, timeout_ms=500)
            if info is not None and sorted(info.parsed_addresses()) == sorted(addresses):
                break
            await asyncio.sleep(0.1)
        assert disco.addresses == addresses
    await _assert_no_tasks_left(before)


async def test_refresh_requires_active_discovery() -> None:
    disco = Discovery("x", 10239, {}, host="127.0.0.1", address_source=lambda: ["192.0.2.1"])
    with pytest.raises(RuntimeError, match="not active"):
        await disco.refresh_addresses()
