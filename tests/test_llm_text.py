"""LLM replies over real sockets: a marked-up reply sounds exactly like its plain words.

Noise is off, so the same words give the same samples.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from .conftest import (
    Response,
    Server,
    assert_speech,
    connect,
    read_until,
    run_server,
    same_speech,
)

MARKED = (
    "## Good morning\n\n"
    "It is **sunny** and *warm* ☀️ today. I turned on the `kitchen` lights 💡.\n"
    "- Read [the forecast](https://weather.example.com/today?city=x)\n"
    "- Visit https://www.home-assistant.io/docs/ later\n"
)
PLAIN = (
    "Good morning.\n\nIt is sunny and warm today. I turned on the kitchen lights.\n"
    "Read the forecast.\nVisit home-assistant.io later.\n"
)


@pytest.fixture(scope="module")
async def quiet_server(cache_dir: Path) -> AsyncIterator[Server]:
    # No phrase cache: each reply is synthesized, so equal audio means equal speech.
    args = ("--cache-dir", str(cache_dir), "--noise-scale", "0", "--noise-w-scale", "0")
    args += ("--phrase-cache-mb", "0")
    async with run_server(*args) as srv:
        yield srv


async def speak(server: Server, text: str, pieces: int = 0) -> Response:
    """One request: a one-shot `synthesize`, or streamed in ``pieces``-character chunks."""
    async with connect(server.uri) as client:
        if not pieces:
            await client.write_event(Synthesize(text=text).event())
            return await read_until(client)
        await client.write_event(SynthesizeStart().event())
        for i in range(0, len(text), pieces):
            await client.write_event(SynthesizeChunk(text=text[i : i + pieces]).event())
        await client.write_event(Synthesize(text=text).event())
        await client.write_event(SynthesizeStop().event())
        return await read_until(client, ("synthesize-stopped",))


async def test_marked_up_reply_sounds_like_its_plain_words(quiet_server: Server) -> None:
    plain = await speak(quiet_server, PLAIN)
    assert_speech(plain, PLAIN)
    marked = await speak(quiet_server, MARKED)
    assert same_speech(marked, plain)


async def test_streamed_reply_split_inside_markup_sounds_the_same(quiet_server: Server) -> None:
    """Home Assistant streams LLM text in pieces that end inside `**` or a URL."""
    plain = await speak(quiet_server, PLAIN, pieces=7)
    marked = await speak(quiet_server, MARKED, pieces=7)
    assert plain.types[-1] == marked.types[-1] == "synthesize-stopped"
    assert_speech(plain, PLAIN)
    assert same_speech(marked, plain)


async def test_cleanup_can_be_turned_off(cache_dir: Path) -> None:
    """Off, the markup is spoken as it is: longer audio than the words alone."""
    args = ("--cache-dir", str(cache_dir), "--no-text-cleanup")
    args += ("--noise-scale", "0", "--noise-w-scale", "0")
    async with run_server(*args) as srv:
        marked = await speak(srv, "See https://www.home-assistant.io/docs/automation/ now.")
        plain = await speak(srv, "See home-assistant.io now.")
    assert marked.seconds > plain.seconds + 0.5
