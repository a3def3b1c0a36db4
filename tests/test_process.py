"""The server as a user starts it: a real `python -m wyoming_tts` process.

Only what needs the process itself is here: the command line and its exit codes,
start-up order, signals, the stdio and unix-socket transports, zeroconf, and the
server process's own resident memory and CPU (read with psutil, as figures checked
against documented bounds, never as wall-clock durations).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from wyoming.client import AsyncUnixClient
from wyoming.event import async_read_event, read_event, write_event
from wyoming.info import Describe
from wyoming.tts import Synthesize
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from .conftest import (
    VOICE,
    ServerProcess,
    connect,
    link_voice,
    loopback_multicast_problem,
    open_raw,
    read_until,
    running_server,
    still_serves,
)

MB = 2**20
#: The README's documented bound on what one request adds to resident memory (defaults).
REQUEST_MEMORY_BOUND = 150 * MB
PROSE = (
    "The morning was quiet. A light rain fell over the garden, and the kettle began to sing. "
    "Somewhere down the street a dog barked twice, then thought better of it. "
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wyoming_tts", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---------------------------------------------------------------------- command line


def test_cli_invalid_value_is_one_line_and_exit_2() -> None:
    proc = run_cli("--max-voices", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "max_voices" in proc.stderr


def test_help_lists_the_settings_only() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--uri", "--voice", "--data-dir", "--zeroconf", "--max-connections"):
        assert flag in proc.stdout
    # Settings that became constants are accepted (with a warning) but not offered.
    assert "--read-timeout" not in proc.stdout
    assert "--max-chunk-frames" not in proc.stdout


def test_bad_default_voice_stops_startup(tmp_path: Path, cache_dir: Path) -> None:
    srv = ServerProcess(["--cache-dir", str(cache_dir), "--voice", "en_US-missing-medium"])
    with pytest.raises(RuntimeError, match="exited early"):
        srv.start(tmp_path / "log", timeout=60)
    assert srv.proc is not None and srv.proc.returncode == 1
    assert "en_US-missing-medium" in srv.log() and "Installed voices" in srv.log()


# ---------------------------------------------------------------------- start-up and signals


def test_primed_before_ready_and_sigterm_exits_zero(tmp_path: Path, cache_dir: Path) -> None:
    srv = ServerProcess(["--cache-dir", str(cache_dir), "--debug"])
    srv.start(tmp_path / "log")
    code = srv.stop()  # SIGTERM
    assert code == 0, srv.log()
    log = srv.log()
    assert "Ready" in log
    assert log.index("Primed voice en_US-joe-medium") < log.index("Ready")


@pytest.mark.parametrize(
    ("grace", "repeats", "finishes"),
    [("20", 2, True), ("0.5", 40, False)],
    ids=["finishes-within-grace", "cancelled-after-grace"],
)
def test_sigterm_under_load(
    tmp_path: Path, cache_dir: Path, grace: str, repeats: int, finishes: bool
) -> None:
    """SIGTERM mid-response: finish it within the grace period, else cut it; exit 0 either way."""
    srv = ServerProcess(["--cache-dir", str(cache_dir), "--shutdown-grace", grace])
    srv.start(tmp_path / "log")

    async def run() -> list[str]:
        async with connect(srv.uri) as client:
            await client.write_event(Synthesize(text=PROSE * repeats).event())
            first = await client.read_event()
            assert first is not None and first.type == "audio-start"
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGTERM)
            return (await read_until(client, timeout=60)).types

    try:
        types = asyncio.run(run())
        if finishes:
            assert types[-1] == "audio-stop"
        assert srv.proc is not None
        assert srv.proc.wait(timeout=30) == 0, srv.log()
    finally:
        srv.stop()


# ---------------------------------------------------------------------- other transports


def test_stdio_transport(cache_dir: Path) -> None:
    """`--uri stdio://`, which a wyoming-piper user may have configured."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wyoming_tts", "--uri", "stdio://", "--cache-dir", str(cache_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    assert proc.stdin is not None and proc.stdout is not None
    write_event(Synthesize(text="Over standard input.").event(), proc.stdin)
    proc.stdin.flush()
    types = []
    while True:
        event = read_event(proc.stdout)
        assert event is not None
        types.append(event.type)
        if event.type == "audio-stop":
            break
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    proc.stdout.close()
    assert types[0] == "audio-start"


def test_unix_socket_transport(tmp_path: Path, cache_dir: Path) -> None:
    """`--uri unix://PATH`: served there, and the socket file is removed on exit."""
    sock = tmp_path / "tts.sock"
    unix = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wyoming_tts",
            "--uri",
            f"unix://{sock}",
            "--cache-dir",
            str(cache_dir),
        ],
        stderr=subprocess.DEVNULL,
    )

    async def over_unix() -> list[str]:
        for _ in range(600):
            if sock.exists():
                break
            await asyncio.sleep(0.1)
        async with AsyncUnixClient(str(sock)) as client:
            await client.write_event(Synthesize(text="Over a unix socket.").event())
            resp = await read_until(client)  # type: ignore[arg-type]
        return resp.types

    try:
        assert asyncio.run(over_unix())[-1] == "audio-stop"
    finally:
        unix.terminate()
        assert unix.wait(timeout=30) == 0
    assert not sock.exists()


# ---------------------------------------------------------------------- zeroconf


async def test_zeroconf_registration_and_goodbye(tmp_path: Path, cache_dir: Path) -> None:
    """A LAN browser (a second zeroconf stack on loopback) sees us, then sees us leave."""
    if (problem := loopback_multicast_problem()) is not None:
        pytest.skip(problem)
    name = f"wyoming-tts-e2e-{os.getpid()}"
    data = tmp_path / "data"
    data.mkdir()
    srv = ServerProcess(
        ["--cache-dir", str(cache_dir), "--zeroconf", name, "--data-dir", str(data)]
    )
    srv.start(tmp_path / "log")
    peer = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        info = AsyncServiceInfo("_wyoming._tcp.local.", f"{name}._wyoming._tcp.local.")
        found = False
        for _ in range(10):
            if await info.async_request(peer.zeroconf, 2000):
                found = True
                break
        assert found, srv.log()
        assert info.port == srv.port
        assert "0.0.0.0" not in info.parsed_addresses()
        props = info.decoded_properties
        assert props["program"] == "wyoming-tts"
        assert VOICE in (props["voices"] or "")
        assert props["languages"] == "en_US"
        # A voice copied in shows up in the TXT record after the next Describe.
        link_voice(data, "en_GB-added-medium")
        async with connect(srv.uri) as client:
            await client.write_event(Describe().event())
            await read_until(client, ("info",))
        for _ in range(20):
            fresh = AsyncServiceInfo("_wyoming._tcp.local.", f"{name}._wyoming._tcp.local.")
            await fresh.async_request(peer.zeroconf, 1000)
            if "en_GB-added-medium" in (fresh.decoded_properties.get("voices") or ""):
                break
            await asyncio.sleep(0.2)
        assert "en_GB-added-medium" in (fresh.decoded_properties.get("voices") or "")
        assert srv.stop() == 0
        await asyncio.sleep(2)  # goodbye packets expire cached records after 1 s
        gone = AsyncServiceInfo("_wyoming._tcp.local.", f"{name}._wyoming._tcp.local.")
        assert not await gone.async_request(peer.zeroconf, 1500)
    finally:
        await peer.async_close()
        if srv.proc and srv.proc.poll() is None:
            srv.stop()


# ---------------------------------------------------------------------- memory and CPU


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[ServerProcess]:
    """A server process whose memory and CPU are read; short idle timeout, few connections."""
    args = ["--cache-dir", str(cache_dir), "--keep-alive-interval", "0"]
    args += ["--connection-idle-timeout", "3", "--max-connections", "6"]
    with running_server(args, tmp_path_factory.mktemp("measured") / "server.log") as srv:
        yield srv


def rss(srv: ServerProcess) -> int:
    assert srv.proc is not None
    return int(psutil.Process(srv.proc.pid).memory_info().rss)


def cpu_seconds(srv: ServerProcess) -> float:
    assert srv.proc is not None
    times = psutil.Process(srv.proc.pid).cpu_times()
    return float(times.user + times.system)


def framed(text: str) -> bytes:
    """One synthesize event as raw Wyoming bytes."""
    data = json.dumps(Synthesize(text=text).event().data).encode()
    return json.dumps({"type": "synthesize", "data_length": len(data)}).encode() + b"\n" + data


async def test_vanishing_client_stops_work(measured: ServerProcess) -> None:
    reader, writer = await open_raw(measured)
    writer.write(framed(PROSE * 30))
    async with asyncio.timeout(60):
        event = await async_read_event(reader)
    assert event is not None and event.type == "audio-start"
    writer.transport.abort()  # vanish: RST, no goodbye
    await asyncio.sleep(0.5)
    before = cpu_seconds(measured)
    await asyncio.sleep(1.0)
    spent = cpu_seconds(measured) - before
    assert spent < 0.3, f"server kept burning {spent:.2f} CPU-seconds after the client left"
    await still_serves(measured)


async def test_greedy_pipelining_client_is_bounded(measured: ServerProcess) -> None:
    """A client that pipelines long requests and never reads costs a bounded buffer."""
    baseline = rss(measured)
    reader, writer = await open_raw(measured)
    writer.write(framed(PROSE * 40) * 5 + b'{"type": "describe"}\n' * 2000)
    await asyncio.sleep(3)
    # Others are served meanwhile.
    async with connect(measured.uri) as other:
        await other.write_event(Describe().event())
        resp = await read_until(other, ("info",), timeout=10)
        assert resp.types == ["info"]
    await still_serves(measured)
    grown = rss(measured) - baseline
    assert grown < 120 * MB, f"resident memory grew {grown / MB:.0f} MB"
    writer.transport.abort()
    del reader


async def test_run_on_sentence_memory_bounded(measured: ServerProcess) -> None:
    baseline = rss(measured)
    run_on = " ".join(["and the little robot walked on down the long road"] * 40)  # ~2,000 chars
    peak = baseline
    async with connect(measured.uri) as client:
        await client.write_event(Synthesize(text=run_on).event())
        resp_events = 0
        seconds = 0.0
        async with asyncio.timeout(240):
            while True:
                event = await client.read_event()
                assert event is not None
                resp_events += 1
                if event.type == "audio-chunk":
                    seconds += len(event.payload or b"") / 2 / 22050
                    if resp_events % 50 == 0:
                        peak = max(peak, rss(measured))
                if event.type in ("audio-stop", "error"):
                    break
        assert event.type == "audio-stop"
    assert len(run_on) / seconds > 6  # plausible speaking rate: the whole text was spoken
    assert peak - baseline < REQUEST_MEMORY_BOUND, f"peak grew {(peak - baseline) / MB:.0f} MB"
    print(f"run-on peak over baseline: {(peak - baseline) / MB:.0f} MB")


async def test_memory_given_back_after_burst(measured: ServerProcess) -> None:
    """After long and hostile requests, resident memory returns near its steady state."""
    for _ in range(2):
        await still_serves(measured)
    steady = rss(measured)
    async with connect(measured.uri) as client:
        for text in (PROSE * 8, " ".join(["on and on the road went"] * 120)):
            await client.write_event(Synthesize(text=text).event())
            resp = await read_until(client, timeout=240)
            assert resp.types[-1] == "audio-stop"
    await raw_hostile(measured)
    await still_serves(measured)
    await asyncio.sleep(1.0)
    after = rss(measured)
    assert after <= steady * 1.10, f"steady {steady / MB:.0f} MB, after burst {after / MB:.0f} MB"


async def raw_hostile(srv: ServerProcess) -> None:
    reader, writer = await open_raw(srv)
    writer.write(b"{" * 60_000 + b"\n")
    await writer.drain()
    async with asyncio.timeout(20):
        await reader.read()
    writer.close()
