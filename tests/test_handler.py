"""What a Home Assistant user hears over Wyoming: describe, synthesize, streaming.

The real app in this process (the shared `server`, or one with its own settings)
on a loopback port, the real voice, a real Wyoming client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from wyoming_tts.config import bundled_voice_dir

from .conftest import (
    VOICE,
    Server,
    assert_speech,
    connect,
    read_like_home_assistant,
    read_until,
    rms_dbfs,
    run_server,
)

SHORT = "Hello! The kitchen lights are now on."


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
    assert all(0 < s <= 1024 for s in sizes)
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


async def test_audio_levels_plausible(server: Server) -> None:
    async with connect(server.uri) as client:
        await client.write_event(Synthesize(text="Turning off the bedroom lamp.").event())
        resp = await read_until(client)
    assert np.max(np.abs(resp.audio)) < 32767


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


async def test_audio_is_sent_as_it_is_made_not_held_for_a_full_chunk(cache_dir: Path) -> None:
    """Each piece goes out whole as it is made: a remainder held for the next piece would
    come late to HA's ffmpeg, which plays nothing until it has read `ffmpeg_gathers`
    (4.644 s at 22050 Hz) or the reply ends."""
    text = "Three sentences make several pieces. Each is sent when made. None waits."
    args = ("--cache-dir", str(cache_dir), "--samples-per-chunk", "10000000")
    async with run_server(*args) as srv, connect(srv.uri) as client:
        await client.write_event(Synthesize(text=text).event())
        resp = await read_until(client)
    assert_speech(resp, text)
    chunks = resp.chunks
    assert len(chunks) > 1, "the whole reply was held back to the end"
    sent = 0
    for chunk in chunks:  # timestamps count the samples before each chunk
        assert chunk.timestamp == int(sent * 1000 / chunk.rate)
        sent += len(chunk.audio) // chunk.width


async def test_describe_answered_during_long_synthesis(server: Server) -> None:
    # ~30 s of audio: far more than the server buffers for a client that does not read.
    long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 10)
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


async def test_busy_beyond_the_queue(cache_dir: Path) -> None:
    """One worker, no queue: a second request while the first speaks gets `busy` at once."""
    async with run_server(
        "--cache-dir", str(cache_dir), "--workers", "1", "--max-queue", "0"
    ) as srv:
        long_text = "This is a long sentence that keeps the only worker busy for a while. " * 5
        async with connect(srv.uri) as first, connect(srv.uri) as second:
            await first.write_event(Synthesize(text=long_text).event())
            started = await first.read_event()
            assert started is not None and started.type == "audio-start"
            await second.write_event(Synthesize(text="Me too.").event())
            resp = await read_until(second, ("error", "audio-stop"))
            assert resp.error is not None and resp.error.code == "busy"
            await read_until(first, timeout=120)


async def test_exception_in_one_synthesis_fails_only_that_request(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug inside one synthesis: that client gets internal-error, everyone else is served."""
    synthesizer = server.app.synthesizer
    real_speak = synthesizer.speak

    def flaky_speak(voice, params, sentences, stats, *args, **options):  # type: ignore[no-untyped-def]
        async def checked():  # type: ignore[no-untyped-def]
            async for sentence in sentences:
                if "explode" in sentence:
                    raise RuntimeError("simulated bug")
                yield sentence

        return real_speak(voice, params, checked(), stats, *args, **options)

    monkeypatch.setattr(synthesizer, "speak", flaky_speak)
    async with connect(server.uri) as bad, connect(server.uri) as good:
        await bad.write_event(Synthesize(text="Please explode now.").event())
        await good.write_event(Synthesize(text="I am fine.").event())
        bad_resp = await read_until(bad, ("error", "audio-stop"))
        good_resp = await read_until(good)
        assert bad_resp.error is not None and bad_resp.error.code == "internal-error"
        assert "simulated" not in bad_resp.error.text
        assert rms_dbfs(good_resp.audio) > -35
        # A refused one-shot request ends with its connection (HA ignores `error`); the
        # same client's next connection is served.
        assert (await read_like_home_assistant(bad)).eof
    async with connect(server.uri) as again:
        await again.write_event(Synthesize(text="And now I am fine too.").event())
        assert (await read_until(again)).types[-1] == "audio-stop"
    assert (
        sum(
            "simulated bug" in r.getMessage() or (r.exc_info and "simulated" in str(r.exc_info[1]))
            for r in caplog.records
        )
        == 1
    )


# ---------------------------------------------------------------------- any event order

EVENTS = st.sampled_from(
    [
        ("synthesize", {"text": "Hi."}),
        ("synthesize-start", {}),
        ("synthesize-chunk", {"text": "Ok. "}),
        ("synthesize-chunk", {"text": "y"}),
        ("synthesize-stop", {}),
        ("describe", {}),
    ]
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(EVENTS, min_size=1, max_size=8))
async def test_any_event_order_has_a_defined_outcome(
    server: Server, sequence: list[tuple[str, dict[str, Any]]]
) -> None:
    """Whatever the order: well-formed audio, the connection stays usable, nothing crashes."""
    async with connect(server.uri) as client:
        for event_type, data in sequence:
            await client.write_event(Event(event_type, data))
        if any(t == "synthesize-start" for t, _ in sequence):
            await client.write_event(Event("synthesize-stop", {}))
        await client.write_event(Event("describe", {}))
        await client.write_event(Event("synthesize", {"text": "Final check."}))
        events = []
        async with asyncio.timeout(60):
            # Read until the final request's audio-stop, which comes after the last info.
            seen_last_info = False
            while True:
                event = await client.read_event()
                assert event is not None
                events.append(event)
                if event.type == "info":
                    seen_last_info = sum(1 for e in events if e.type == "info") == 1 + sum(
                        1 for t, _ in sequence if t == "describe"
                    )
                if seen_last_info and event.type == "audio-stop":
                    break
    types = [e.type for e in events]
    depth = 0
    for t in types:
        if t == "audio-start":
            assert depth == 0
            depth += 1
        elif t == "audio-stop":
            assert depth == 1
            depth -= 1
        elif t == "audio-chunk":
            assert depth == 1
    codes = {e.data.get("code") for e in events if e.type == "error"}
    assert codes <= {"bad-sequence", "no-speech"}


def _multi_speaker_voice(data_dir: Path) -> str:
    """The bundled model under a config that names three speakers (the model ignores sid)."""
    name = "en_GB-trio-medium"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / f"{name}.onnx").symlink_to(bundled_voice_dir() / f"{VOICE}.onnx")
    config = json.loads((bundled_voice_dir() / f"{VOICE}.onnx.json").read_text())
    config.update(num_speakers=3, speaker_id_map={"alice": 0, "bob": 1, "carol": 2})
    (data_dir / f"{name}.onnx.json").write_text(json.dumps(config))
    return name


async def test_speakers_as_users_expect(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A speaker the voice lacks is spoken with its default: never silence, never a hang.

    Home Assistant keeps the speaker chosen for one voice when the user picks another.
    """
    caplog.set_level(logging.DEBUG, logger="wyoming_tts")
    trio = await asyncio.to_thread(_multi_speaker_voice, tmp_path / "voices")
    args = ("--cache-dir", str(cache_dir), "--data-dir", str(tmp_path / "voices"))
    async with run_server(*args) as srv:
        cases = [(VOICE, "7"), (trio, "dave"), (trio, "9"), (trio, "bob"), (trio, "dave")]
        for name, speaker in cases:
            async with connect(srv.uri) as client:
                voice = SynthesizeVoice(name=name, speaker=speaker)
                await client.write_event(Synthesize(text=SHORT, voice=voice).event())
                resp = await read_until(client, ("audio-stop", "error"))
            assert resp.error is None, (name, speaker, resp.error)
            assert_speech(resp, SHORT)
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "speaker" in r.message]
    assert len(warnings) == 1, [r.message for r in warnings]  # once per voice
    assert trio in warnings[0].message and "alice, bob, carol" in warnings[0].message
    ignored = [r for r in caplog.records if "one speaker" in r.message]
    assert ignored and all(r.levelname == "DEBUG" for r in ignored)
