"""Hostile, slow, greedy and vanishing clients against the real server.

Every test asserts the client's answer and that the server still serves a fresh
request afterwards; where it applies, resident memory and CPU are read from the
server process (psutil) as figures, never wall-clock durations.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from wyoming.event import async_read_event
from wyoming.info import Describe
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeVoice

from .conftest import (
    ServerProcess,
    connect,
    link_voice,
    read_until,
    rms_dbfs,
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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("robust-data")
    link_voice(data, "en_US-spare-medium")
    return data


@pytest.fixture(scope="module")
def tight(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, data_dir: Path
) -> Iterator[ServerProcess]:
    """A server with short timeouts and few connections, to reach the limits quickly."""
    args = ["--cache-dir", str(cache_dir), "--data-dir", str(data_dir)]
    args += ["--connection-idle-timeout", "3", "--read-timeout", "1", "--max-connections", "6"]
    args += ["--keep-alive-interval", "0"]
    with running_server(args, tmp_path_factory.mktemp("robust-logs") / "server.log") as srv:
        yield srv


def rss(srv: ServerProcess) -> int:
    assert srv.proc is not None
    return int(psutil.Process(srv.proc.pid).memory_info().rss)


def cpu_seconds(srv: ServerProcess) -> float:
    assert srv.proc is not None
    times = psutil.Process(srv.proc.pid).cpu_times()
    return float(times.user + times.system)


async def open_raw(srv: ServerProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = srv.uri.removeprefix("tcp://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def test_idle_connection_is_closed(tight: ServerProcess) -> None:
    reader, writer = await open_raw(tight)
    async with asyncio.timeout(20):
        assert await reader.read() == b""
    writer.close()
    await still_serves(tight)


async def test_half_sent_event_times_out(tight: ServerProcess) -> None:
    reader, writer = await open_raw(tight)
    writer.write(b'{"type": "synthesize", "da')
    await writer.drain()
    async with asyncio.timeout(20):
        event = await async_read_event(reader)
        assert event is not None and event.type == "error"
        assert event.data["code"] == "bad-event"
        assert await reader.read() == b""
    writer.close()
    await still_serves(tight)


async def test_connection_limit(tight: ServerProcess) -> None:
    conns = [await open_raw(tight) for _ in range(6)]
    reader, writer = await open_raw(tight)
    async with asyncio.timeout(20):
        event = await async_read_event(reader)
        assert event is not None and event.data["code"] == "busy"
        assert await reader.read() == b""
    writer.close()
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.2)
    await still_serves(tight)


async def test_vanishing_client_stops_work(tight: ServerProcess) -> None:
    reader, writer = await open_raw(tight)
    request = Synthesize(text=PROSE * 30).event()
    data = json.dumps(request.data).encode()
    writer.write(
        json.dumps({"type": "synthesize", "data_length": len(data)}).encode() + b"\n" + data
    )
    async with asyncio.timeout(60):
        event = await async_read_event(reader)
    assert event is not None and event.type == "audio-start"
    writer.transport.abort()  # vanish: RST, no goodbye
    await asyncio.sleep(0.5)
    before = cpu_seconds(tight)
    await asyncio.sleep(1.0)
    spent = cpu_seconds(tight) - before
    assert spent < 0.3, f"server kept burning {spent:.2f} CPU-seconds after the client left"
    await still_serves(tight)


async def test_greedy_pipelining_client_is_bounded(tight: ServerProcess) -> None:
    """A client that pipelines long requests and never reads costs a bounded buffer."""
    baseline = rss(tight)
    reader, writer = await open_raw(tight)
    request = Synthesize(text=PROSE * 40).event()
    data = json.dumps(request.data).encode()
    framed = json.dumps({"type": "synthesize", "data_length": len(data)}).encode() + b"\n" + data
    writer.write(framed * 5 + b'{"type": "describe"}\n' * 2000)
    await asyncio.sleep(3)
    # Others are served meanwhile.
    async with connect(tight.uri) as other:
        await other.write_event(Describe().event())
        resp = await read_until(other, ("info",), timeout=10)
        assert resp.types == ["info"]
    await still_serves(tight)
    grown = rss(tight) - baseline
    assert grown < 120 * MB, f"resident memory grew {grown / MB:.0f} MB"
    writer.transport.abort()
    del reader


async def test_log_is_not_flooded(tight: ServerProcess) -> None:
    async with connect(tight.uri) as client:
        for _ in range(200):
            await client.write_event(SynthesizeChunk(text="x").event())
        await client.write_event(Describe().event())
        resp = await read_until(client, ("info",))
        assert resp.types.count("error") == 200
        host, port = client._writer.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
    await asyncio.sleep(0.2)
    lines = [line for line in tight.log().splitlines() if f"{host}:{port}" in line]
    assert len(lines) == 1, lines
    assert "Traceback" not in tight.log()


async def test_run_on_sentence_memory_bounded(tight: ServerProcess) -> None:
    baseline = rss(tight)
    run_on = " ".join(["and the little robot walked on down the long road"] * 40)  # ~2,000 chars
    peak = baseline
    async with connect(tight.uri) as client:
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
                        peak = max(peak, rss(tight))
                if event.type in ("audio-stop", "error"):
                    break
        assert event.type == "audio-stop"
    assert len(run_on) / seconds > 6  # plausible speaking rate: the whole text was spoken
    assert peak - baseline < REQUEST_MEMORY_BOUND, f"peak grew {(peak - baseline) / MB:.0f} MB"
    print(f"run-on peak over baseline: {(peak - baseline) / MB:.0f} MB")


async def test_voice_files_deleted_or_corrupted(tight: ServerProcess, data_dir: Path) -> None:
    spare = SynthesizeVoice(name="en_US-broken-medium")
    link_voice(data_dir, "en_US-broken-medium")
    async with connect(tight.uri) as client:
        await client.write_event(Synthesize(text="Works first.", voice=spare).event())
        assert (await read_until(client)).types[-1] == "audio-stop"
        model = data_dir / "en_US-broken-medium.onnx"
        model.unlink()
        model.write_bytes(b"garbage" * 1000)
        await client.write_event(Synthesize(text="Now broken.", voice=spare).event())
        resp = await read_until(client, ("error", "audio-stop"))
        assert resp.error is not None and resp.error.code == "voice-load-failed"
        model.unlink()
        (data_dir / "en_US-broken-medium.onnx.json").unlink()
        await client.write_event(Synthesize(text="Gone now.", voice=spare).event())
        resp = await read_until(client, ("error", "audio-stop"))
        assert resp.error is not None and resp.error.code in (
            "voice-load-failed",
            "voice-not-found",
        )
        await client.write_event(
            Synthesize(
                text="Others fine.", voice=SynthesizeVoice(name="en_US-spare-medium")
            ).event()
        )
        resp = await read_until(client)
        assert rms_dbfs(resp.audio) > -35


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

    types = asyncio.run(run())
    if finishes:
        assert types[-1] == "audio-stop"
    assert srv.proc is not None
    assert srv.proc.wait(timeout=30) == 0, srv.log()


def test_unix_socket_and_stdio(tmp_path: Path, cache_dir: Path) -> None:
    """The other transports a wyoming-piper user may have configured."""
    import subprocess
    import sys

    from wyoming.event import read_event, write_event

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
        from wyoming.client import AsyncUnixClient

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


async def test_memory_given_back_after_burst(tight: ServerProcess) -> None:
    """After long and hostile requests, resident memory returns near its steady state."""
    for _ in range(2):
        await still_serves(tight)
    steady = rss(tight)
    async with connect(tight.uri) as client:
        for text in (PROSE * 8, " ".join(["on and on the road went"] * 120)):
            await client.write_event(Synthesize(text=text).event())
            resp = await read_until(client, timeout=240)
            assert resp.types[-1] == "audio-stop"
    await raw_hostile(tight)
    await still_serves(tight)
    await asyncio.sleep(1.0)
    after = rss(tight)
    assert after <= steady * 1.10, f"steady {steady / MB:.0f} MB, after burst {after / MB:.0f} MB"


async def raw_hostile(srv: ServerProcess) -> None:
    reader, writer = await open_raw(srv)
    writer.write(b"{" * 60_000 + b"\n")
    await writer.drain()
    async with asyncio.timeout(20):
        await reader.read()
    writer.close()


async def test_exception_in_one_synthesis_fails_only_that_request(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug inside one synthesis: that client gets internal-error, everyone else is served."""
    from wyoming_tts.config import load_settings
    from wyoming_tts.server.app import App

    from .conftest import free_port

    port = free_port()
    settings, _ = load_settings(
        [
            "--uri",
            f"tcp://127.0.0.1:{port}",
            "--cache-dir",
            str(cache_dir),
            "--keep-alive-interval",
            "0",
        ],
        {},
    )
    app = App(settings)
    real_speak = app.synthesizer.speak

    def flaky_speak(voice, params, sentences, stats):  # type: ignore[no-untyped-def]
        async def checked():  # type: ignore[no-untyped-def]
            async for sentence in sentences:
                if "explode" in sentence:
                    raise RuntimeError("simulated bug")
                yield sentence

        return real_speak(voice, params, checked(), stats)

    app.synthesizer.speak = flaky_speak  # type: ignore[method-assign]
    runner = asyncio.create_task(app.run())
    try:
        uri = f"tcp://127.0.0.1:{port}"
        for _ in range(600):
            if app.bound_port:
                break
            await asyncio.sleep(0.05)
        async with connect(uri) as bad, connect(uri) as good:
            await bad.write_event(Synthesize(text="Please explode now.").event())
            await good.write_event(Synthesize(text="I am fine.").event())
            bad_resp = await read_until(bad, ("error", "audio-stop"))
            good_resp = await read_until(good)
            assert bad_resp.error is not None and bad_resp.error.code == "internal-error"
            assert "simulated" not in bad_resp.error.text
            assert rms_dbfs(good_resp.audio) > -35
            await bad.write_event(Synthesize(text="And now I am fine too.").event())
            assert (await read_until(bad)).types[-1] == "audio-stop"
        assert (
            sum(
                "simulated bug" in r.getMessage()
                or (r.exc_info and "simulated" in str(r.exc_info[1]))
                for r in caplog.records
            )
            == 1
        )
    finally:
        app.request_stop()
        await asyncio.wait_for(runner, 30)


async def test_abandoned_stream_is_closed(tight: ServerProcess) -> None:
    """A stream whose client goes quiet (or half-closes) never holds its slot forever."""
    from wyoming.tts import SynthesizeStart

    reader, writer = await open_raw(tight)
    for event in (SynthesizeStart().event(), SynthesizeChunk(text="Half a sentence").event()):
        data = json.dumps(event.data).encode()
        header = (
            {"type": event.type, "data_length": len(data)}
            if data != b"{}"
            else {"type": event.type}
        )
        writer.write(json.dumps(header).encode() + b"\n" + (data if data != b"{}" else b""))
    await writer.drain()
    async with asyncio.timeout(20):
        assert await reader.read() == b""  # idle timeout applies while waiting for text
    writer.close()
    reader, writer = await open_raw(tight)
    start = SynthesizeStart().event()
    writer.write(json.dumps({"type": start.type}).encode() + b"\n")
    writer.write_eof()
    async with asyncio.timeout(20):
        assert await reader.read() == b""
    writer.close()
    await still_serves(tight)
