"""Slow, silent, greedy, log-flooding and vanishing clients against the real app in-process.

Every test asserts the client's answer and that the server still serves a fresh
request afterwards. What is measured on the server process itself (resident
memory, CPU) is in `test_process.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from wyoming.event import async_read_event
from wyoming.info import Describe
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeVoice

from wyoming_tts.model.vits import StagedDecoder, WholeDecoder

from .conftest import (
    VOICE,
    Server,
    connect,
    link_voice,
    open_raw,
    read_like_home_assistant,
    read_until,
    rms_dbfs,
    run_server,
    still_serves,
)

#: Seconds a started event may take to arrive whole (the package's is 10).
READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("hostile-data")
    link_voice(data, "en_US-spare-medium")
    return data


@pytest.fixture(scope="module")
async def tight(cache_dir: Path, data_dir: Path) -> AsyncIterator[Server]:
    """A server with short timeouts and few connections, to reach the limits quickly."""
    with pytest.MonkeyPatch.context() as patch:
        # Read when a connection opens: set before the server accepts any.
        patch.setattr("wyoming_tts.server.handler.READ_TIMEOUT", READ_TIMEOUT)
        async with run_server(
            "--cache-dir",
            str(cache_dir),
            "--data-dir",
            str(data_dir),
            "--connection-idle-timeout",
            "2",
            "--max-connections",
            "6",
        ) as srv:
            yield srv


async def test_idle_connection_is_closed(tight: Server) -> None:
    reader, writer = await open_raw(tight)
    async with asyncio.timeout(20):
        assert await reader.read() == b""
    writer.close()
    await still_serves(tight)


async def test_half_sent_event_times_out(tight: Server) -> None:
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


async def test_connection_limit(tight: Server) -> None:
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


async def test_log_is_not_flooded(tight: Server, caplog: pytest.LogCaptureFixture) -> None:
    """200 bad events from one client: one log line about it (at the server's INFO level)."""
    caplog.set_level(logging.INFO, logger="wyoming_tts")
    async with connect(tight.uri) as client:
        for _ in range(200):
            await client.write_event(SynthesizeChunk(text="x").event())
        await client.write_event(Describe().event())
        resp = await read_until(client, ("info",))
        assert resp.types.count("error") == 200
        host, port = client._writer.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
    await asyncio.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if f"{host}:{port}" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "Traceback" not in caplog.text


async def test_voice_files_deleted_or_corrupted(tight: Server, data_dir: Path) -> None:
    """Each refused request ends with its connection (as Home Assistant needs); the next
    connection is served."""
    spare = SynthesizeVoice(name="en_US-broken-medium")
    link_voice(data_dir, "en_US-broken-medium")
    async with connect(tight.uri) as client:
        await client.write_event(Synthesize(text="Works first.", voice=spare).event())
        assert (await read_until(client)).types[-1] == "audio-stop"
    model = data_dir / "en_US-broken-medium.onnx"
    model.unlink()
    model.write_bytes(b"garbage" * 1000)
    async with connect(tight.uri) as client:
        await client.write_event(Synthesize(text="Now broken.", voice=spare).event())
        resp = await read_like_home_assistant(client)
        assert resp.error is not None and resp.error.code == "voice-load-failed"
        assert resp.eof
    model.unlink()
    (data_dir / "en_US-broken-medium.onnx.json").unlink()
    async with connect(tight.uri) as client:
        await client.write_event(Synthesize(text="Gone now.", voice=spare).event())
        resp = await read_like_home_assistant(client)
        assert resp.error is not None and resp.error.code in (
            "voice-load-failed",
            "voice-not-found",
        )
        assert resp.eof
    async with connect(tight.uri) as client:
        await client.write_event(
            Synthesize(
                text="Others fine.", voice=SynthesizeVoice(name="en_US-spare-medium")
            ).event()
        )
        resp = await read_until(client)
        assert rms_dbfs(resp.audio) > -35


async def test_abandoned_stream_is_closed(tight: Server) -> None:
    """A stream whose client goes quiet (or half-closes) never holds its slot forever."""
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


async def test_an_unusable_cache_dir_costs_a_warning_never_the_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache dir under a regular file (an odd $HOME in a container): the split goes to
    this user's temp folder; if that cannot be written either, the voice is used whole.
    Either way the server starts and speaks."""
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    cache = in_the_way / "cache"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))  # a real, empty temp
    with caplog.at_level("WARNING"):
        async with run_server("--cache-dir", str(cache), "--phrase-cache-mb", "0") as srv:
            voice = srv.app.pool.loaded()[VOICE]
            assert isinstance(voice.model.decoder, StagedDecoder)  # still split, so streams
            await still_serves(srv)
    warnings = [r.getMessage() for r in caplog.records if "Cannot write the split" in r.message]
    assert len(warnings) == 1 and str(tmp_path / "temp") in warnings[0]
    caplog.clear()
    monkeypatch.setattr(tempfile, "tempdir", str(in_the_way / "temp"))  # temp unusable too
    with caplog.at_level("WARNING"):
        async with run_server("--cache-dir", str(cache), "--phrase-cache-mb", "0") as srv:
            voice = srv.app.pool.loaded()[VOICE]
            assert isinstance(voice.model.decoder, WholeDecoder)
            await still_serves(srv)
    warnings = [r.getMessage() for r in caplog.records if "Cannot write the split" in r.message]
    assert len(warnings) == 2 and "using the voice whole" in warnings[1]
