"""Bad input gets a clear error with a stable code, and nothing else breaks.

Each case talks to the real app (in this process) over TCP, checks the client's
answer, and then checks that a fresh request on another connection is still served.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from wyoming.event import Event, async_read_event
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from .conftest import (
    VOICE,
    Server,
    connect,
    read_like_home_assistant,
    read_until,
    run_server,
    still_serves,
)


async def request_error(server: Server, event: Event) -> tuple[str | None, str]:
    """Send one event as raw JSON and read the reply as Home Assistant does."""
    async with connect(server.uri) as client:
        # Raw JSON (ASCII-escaped) so that even lone surrogates reach the server.
        data = json.dumps(event.data).encode()
        line = json.dumps({"type": event.type, "data_length": len(data)}).encode() + b"\n"
        assert client._writer is not None
        client._writer.write(line + data)
        resp = await read_like_home_assistant(client)
    err = resp.error
    assert err is not None, resp.types
    assert "audio-start" not in resp.types
    # HA ignores the error: the refused one-shot request must end with the connection.
    assert resp.eof and resp.types == ["error"], resp.types
    return err.code, err.text


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"text": "Hello.", "voice": {"name": "no-such-voice"}}, "voice-not-found"),
        ({"text": "Hello.", "voice": {"name": "../../etc/passwd"}}, "voice-not-found"),
        ({"text": "Hello.", "voice": {"name": "/etc/passwd"}}, "voice-not-found"),
        ({"text": "Hello.", "voice": {"name": "a\x00b"}}, "voice-not-found"),
        ({"text": "Hello.", "voice": {"name": "..\\x"}}, "voice-not-found"),
        ({"text": "Hello.", "voice": {"language": "xx_XX"}}, "voice-not-found"),
        ({"text": ""}, "empty-text"),
        ({"text": "   \n\t "}, "empty-text"),
        ({"text": "... ?! ..."}, "no-speech"),
        ({"text": ".,; —"}, "no-speech"),
        ({"text": "\x00\x01\x02"}, "no-speech"),
        ({"text": "\ud800"}, "no-speech"),
        ({"text": 42}, "bad-request"),
        ({"text": ["a"]}, "bad-request"),
        ({}, "bad-request"),
        ({"text": "Hello.", "voice": "en_US-joe-medium"}, "bad-request"),
        ({"text": "Hello.", "voice": {"name": 5}}, "bad-request"),
        ({"text": "Hello.", "voice": {"name": VOICE, "speaker": 0}}, "bad-request"),
        ({"text": "a" * 100_001}, "text-too-long"),
    ],
)
async def test_request_errors(server: Server, data: dict[str, object], code: str) -> None:
    got, text = await request_error(server, Event(type="synthesize", data=data))
    assert got == code
    assert text and "Traceback" not in text and "Error(" not in text
    await still_serves(server)


@pytest.mark.parametrize(
    ("start", "chunks", "code"),
    [
        ({"voice": {"name": "no-such-voice"}}, ["Hello there."], "voice-not-found"),
        ({"voice": {"language": "xx_XX"}}, ["Hello there."], "voice-not-found"),
        ({"voice": "en_US-joe-medium"}, ["Hello there."], "bad-request"),
        ({"voice": {"name": 5}}, ["Hello there."], "bad-request"),
        ({}, [42], "bad-request"),
        ({}, ["word " * 20_001], "text-too-long"),
    ],
)
async def test_refused_streams_end_with_synthesize_stopped(
    server: Server, start: dict[str, object], chunks: list[object], code: str
) -> None:
    """Every refusal on the streaming path still ends the way HA waits for."""
    async with connect(server.uri) as client:
        await client.write_event(Event(type="synthesize-start", data=start))
        for chunk in chunks:
            await client.write_event(Event(type="synthesize-chunk", data={"text": chunk}))
        await client.write_event(Synthesize(text="Hello there.").event())  # HA's copy
        await client.write_event(SynthesizeStop().event())
        resp = await read_like_home_assistant(client, timeout=60)
        assert resp.types[-1] == "synthesize-stopped", resp.types
        assert resp.error is not None and resp.error.code == code
        assert resp.types.count("audio-start") == resp.types.count("audio-stop")
        # The stream was refused, the connection was not: the next request is served.
        await client.write_event(Synthesize(text="Now it works.").event())
        assert (await read_like_home_assistant(client)).types[-1] == "audio-stop"


async def test_refused_one_shot_closes_but_stray_stream_events_do_not(server: Server) -> None:
    async with connect(server.uri) as client:
        await client.write_event(Synthesize(text="Hi.", voice=SynthesizeVoice(name="nope")).event())
        resp = await read_like_home_assistant(client)
        assert resp.error is not None and resp.error.code == "voice-not-found"
        assert resp.eof
    async with connect(server.uri) as client:
        await client.write_event(SynthesizeChunk(text="orphan").event())
        resp = await read_until(client, ("error",))
        assert resp.error is not None and resp.error.code == "bad-sequence"
        await client.write_event(SynthesizeStop().event())
        resp = await read_like_home_assistant(client)
        assert resp.error is not None and resp.error.code == "bad-sequence"
        assert resp.types[-1] == "synthesize-stopped"
        await client.write_event(Synthesize(text="Now it works.").event())
        resp = await read_until(client)
        assert resp.types[-1] == "audio-stop"


async def test_streaming_refused_when_turned_off_still_ends(cache_dir: Path) -> None:
    async with (
        run_server("--cache-dir", str(cache_dir), "--no-streaming") as srv,
        connect(srv.uri) as client,
    ):
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="Hello there.").event())
        await client.write_event(SynthesizeStop().event())
        resp = await read_like_home_assistant(client)
        assert resp.types[-1] == "synthesize-stopped"
        assert resp.error is not None and resp.error.code == "streaming-disabled"
        await client.write_event(Synthesize(text="Plain still works.").event())
        assert (await read_like_home_assistant(client)).types[-1] == "audio-stop"


async def test_stream_restart_and_plain_after_stream(server: Server) -> None:
    async with connect(server.uri) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="First stream that is abandoned").event())
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="Second stream.").event())
        await client.write_event(SynthesizeStop().event())
        resp = await read_until(client, ("synthesize-stopped",))
        assert resp.types.count("synthesize-stopped") == 1
        assert resp.types.count("audio-start") == resp.types.count("audio-stop")
        await client.write_event(Synthesize(text="Plain again.").event())
        resp = await read_until(client)
        assert resp.types[-1] == "audio-stop"


async def test_stream_too_long_is_stopped(server: Server) -> None:
    async with connect(server.uri) as client:
        await client.write_event(SynthesizeStart().event())
        piece = "word " * 10_000  # 50,000 characters without a sentence end
        await client.write_event(SynthesizeChunk(text=piece).event())
        await client.write_event(SynthesizeChunk(text=piece).event())
        await client.write_event(SynthesizeChunk(text=piece).event())
        await client.write_event(SynthesizeStop().event())
        resp = await read_until(client, ("synthesize-stopped",), timeout=120)
        assert resp.error is not None and resp.error.code == "text-too-long"
        assert resp.types.count("audio-start") == resp.types.count("audio-stop")
    await still_serves(server)


async def test_empty_stream_is_well_formed(server: Server) -> None:
    async with connect(server.uri) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="  ... ").event())
        await client.write_event(SynthesizeStop().event())
        resp = await read_until(client, ("synthesize-stopped",))
    assert resp.types == ["synthesize-stopped"]


# ---------------------------------------------------------------------- framing


async def raw_exchange(server: Server, payload: bytes, wait: float = 15.0) -> list[Event]:
    """Send raw bytes; collect events until the server closes the connection."""
    host, port = server.uri.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(payload)
    await writer.drain()
    events: list[Event] = []
    try:
        async with asyncio.timeout(wait):
            while (event := await async_read_event(reader)) is not None:
                events.append(event)
    finally:
        writer.close()
    return events


NESTED: object = 1
for _ in range(40):
    NESTED = [NESTED]


def header(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json at all\n",
        b"[1, 2, 3]\n",
        b'"a string"\n',
        b"\xff\xfe\xfd\n",
        header({"type": 5}),
        header({"data": {}}),
        header({"type": "synthesize", "data": "text"}),
        header({"type": "synthesize", "data_length": -1}),
        header({"type": "synthesize", "data_length": 1.5}),
        header({"type": "synthesize", "data_length": "12"}),
        header({"type": "synthesize", "data_length": 10**12}),
        header({"type": "synthesize", "payload_length": 1 << 20}),
        header({"type": "synthesize", "data": {"text": "hi"}, "payload_length": 4}) + b"abcd",
        header({"type": "synthesize", "data_length": 5}) + b"[1,2]",
        header({"type": "synthesize", "data": {"text": "hi", "x": NESTED}}),
        b"{" * 100_000 + b"\n",
        b"x" * 70_000 + b"\n",
    ],
)
async def test_bad_framing_gets_bad_event_then_close(server: Server, payload: bytes) -> None:
    events = await raw_exchange(server, payload)
    assert [e.type for e in events] == ["error"]
    assert events[0].data["code"] == "bad-event"
    await still_serves(server)


async def test_unknown_event_type_is_ignored(server: Server) -> None:
    async with connect(server.uri) as client:
        await client.write_event(Event(type="ping-pong-whatever", data={"x": 1}))
        await client.write_event(Synthesize(text="Still speaking.").event())
        resp = await read_until(client)
    assert resp.types[0] == "audio-start"
