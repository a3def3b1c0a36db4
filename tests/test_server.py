"""End to end over TCP with the real voice: what a Home Assistant user would hear."""

from __future__ import annotations

import asyncio
import os

import numpy as np
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from .conftest import VOICE, Server, ServerProcess, connect, link_voice, read_until, rms_dbfs

SHORT = "Hello! The kitchen lights are now on."
# Plausible speaking rate for this voice: ~10-20 characters per second of audio.


def assert_speech(resp, text: str) -> None:
    start = resp.start
    assert (start.rate, start.width, start.channels) == (22050, 2, 1)
    for chunk in resp.chunks:
        assert (chunk.rate, chunk.width, chunk.channels) == (
            start.rate,
            start.width,
            start.channels,
        )
    assert rms_dbfs(resp.audio) > -35, "audio is near silence"
    chars_per_second = len(text) / resp.seconds
    assert 6 < chars_per_second < 30, f"{resp.seconds:.2f}s of audio for {len(text)} chars"


async def test_describe_lists_installed_voices_only(server: Server) -> None:
    async with connect(server.uri) as client:
        await client.write_event(Describe().event())
        resp = await read_until(client, ("info",))
    info = Info.from_event(resp.events[-1])
    assert len(info.tts) == 1
    program = info.tts[0]
    assert program.name == "wyoming-tts"
    assert program.installed and program.supports_synthesize_streaming
    names = sorted(v.name for v in program.voices)
    assert names == ["en_US-joe-medium", "en_US-second-medium"]
    joe = next(v for v in program.voices if v.name == VOICE)
    assert joe.languages == ["en_US"]
    assert joe.installed


async def test_synthesize_plain(server: Server) -> None:
    async with connect(server.uri) as client:
        await client.write_event(Synthesize(text=SHORT).event())
        resp = await read_until(client)
    assert resp.types[0] == "audio-start"
    assert resp.types[-1] == "audio-stop"
    assert resp.types.count("audio-start") == 1
    assert_speech(resp, SHORT)
    sizes = [len(c.audio) // 2 for c in resp.chunks]
    assert all(s == 1024 for s in sizes[:-1]) and 0 < sizes[-1] <= 1024
    stamps = [c.timestamp for c in resp.chunks]
    assert stamps == sorted(stamps) and stamps[0] == 0


async def test_synthesize_named_voice_and_connection_reuse(server: Server) -> None:
    async with connect(server.uri) as client:
        for voice in ("en_US-second-medium", VOICE):
            await client.write_event(
                Synthesize(text="Good morning.", voice=SynthesizeVoice(name=voice)).event()
            )
            resp = await read_until(client)
            assert_speech(resp, "Good morning.")


async def test_streaming_like_home_assistant(server: Server) -> None:
    text = "The front door is locked. The garage is open, and it is raining outside. Goodbye."
    pieces = [
        "The fr",
        "ont door is lo",
        "cked. The gar",
        "age is open, and it is rain",
        "ing outside. Good",
        "bye.",
    ]
    async with connect(server.uri) as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name=VOICE)).event())
        for piece in pieces:
            await client.write_event(SynthesizeChunk(text=piece).event())
        await client.write_event(Synthesize(text=text, voice=SynthesizeVoice(name=VOICE)).event())
        await client.write_event(SynthesizeStop().event())
        resp = await read_until(client, ("synthesize-stopped",))
        assert resp.types.count("audio-start") == 1
        assert resp.types.count("audio-stop") == 1
        assert resp.types[-2:] == ["audio-stop", "synthesize-stopped"]
        assert_speech(resp, text)
        # Same connection: a plain request after the stream.
        await client.write_event(Synthesize(text=SHORT).event())
        resp2 = await read_until(client)
        assert_speech(resp2, SHORT)


async def test_stream_with_empty_start(server: Server) -> None:
    async with connect(server.uri) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="Testing one two three.").event())
        await client.write_event(SynthesizeStop().event())
        resp = await read_until(client, ("synthesize-stopped",))
    assert_speech(resp, "Testing one two three.")


async def test_first_sentence_arrives_before_stream_ends(server: Server) -> None:
    """Audio for a complete sentence is sent while the client is still streaming text."""
    async with connect(server.uri) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(
            SynthesizeChunk(text="This sentence is complete. And this").event()
        )
        async with asyncio.timeout(30):
            event = await client.read_event()
        assert event is not None and event.type == "audio-start"
        await client.write_event(SynthesizeChunk(text=" one ends later.").event())
        await client.write_event(SynthesizeStop().event())
        resp = await read_until(client, ("synthesize-stopped",))
        assert "audio-stop" in resp.types


async def test_describe_answered_during_long_synthesis(server: Server) -> None:
    long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)
    async with connect(server.uri) as speaker, connect(server.uri) as other:
        await speaker.write_event(Synthesize(text=long_text).event())
        first = await speaker.read_event()
        assert first is not None and first.type == "audio-start"
        await other.write_event(Describe().event())
        info = await read_until(other, ("info",), timeout=10)
        assert info.types == ["info"]
        # The speaker is still mid-response: its audio-stop has not been read yet.
        await other.write_event(Synthesize(text="Hi there.").event())
        resp = await read_until(other)
        assert_speech(resp, "Hi there.")
        rest = await read_until(speaker, timeout=120)
        assert rest.types[-1] == "audio-stop"


def test_sigterm_exits_zero(tmp_path, cache_dir) -> None:
    srv = ServerProcess(["--cache-dir", str(cache_dir)])
    srv.start(tmp_path / "log")
    code = srv.stop()
    assert code == 0, srv.log()
    assert "Ready" in srv.log()


async def test_audio_levels_plausible(server: Server) -> None:
    async with connect(server.uri) as client:
        await client.write_event(Synthesize(text="Turning off the bedroom lamp.").event())
        resp = await read_until(client)
    assert np.max(np.abs(resp.audio)) < 32767


async def test_zeroconf_registration_and_goodbye(tmp_path, cache_dir) -> None:
    """A LAN browser (a second zeroconf stack on loopback) sees us, then sees us leave."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    from .test_discovery import _loopback_multicast_problem

    if (problem := _loopback_multicast_problem()) is not None:
        import pytest

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
