"""Presets, language routing, the lexicon and the speaker-safe envelope, over real sockets.

Noise is off, so the same words give the same samples, and each server here runs
without the phrase cache unless the test is about it: every reply is synthesized.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from wyoming_tts.server.app import StartupError

from .conftest import (
    VOICE,
    Response,
    Server,
    assert_speech,
    connect,
    http_base,
    link_voice,
    read_like_home_assistant,
    rms_dbfs,
    run_server,
    same_speech,
)
from .test_http import parse_wav

TEXT = "The washing machine has finished its cycle."
QUIET = ("--noise-scale", "0", "--noise-w-scale", "0")


def foreign_voice(data_dir: Path, name: str, code: str, espeak: str) -> None:
    """The bundled voice under another name, speaking another language through espeak."""
    link_voice(data_dir, name)
    config_path = data_dir / f"{name}.onnx.json"
    config = json.loads(config_path.read_text())
    config["language"] = {"code": code}
    config["espeak"] = {"voice": espeak}
    config_path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("preset-voices")
    foreign_voice(data, "de_DE-test-medium", "de_DE", "de")
    foreign_voice(data, "fr_FR-test-medium", "fr_FR", "fr")
    lexicon = data / "lexicon.toml"
    lexicon.write_text('[en]\nnginx = "engine x"\nHA = "home assistant"\n')
    return data


@pytest.fixture(scope="module")
async def presets_server(cache_dir: Path, data_dir: Path) -> AsyncIterator[Server]:
    config = data_dir / "presets.toml"
    config.write_text(
        "[presets.kitchen-slow]\n"
        'voice = "en_US-joe-medium"\n'
        "speed = 0.5\n"
        'description = "Kitchen, slowly"\n'
        "[presets.quiet]\n"
        'voice = "en_US-joe-medium"\n'
        "volume = 0.5\n"
        "[presets.framed]\n"
        'voice = "en_US-joe-medium"\n'
        "lead_in = 0.25\n"
        "tail = 0.5\n"
        "[presets.raw]\n"
        'voice = "en_US-joe-medium"\n'
        "text_cleanup = false\n"
        "[default_voice_per_language]\n"
        'fr = "fr_FR-test-medium"\n'
    )
    args = (
        *("--config", str(config), "--cache-dir", str(cache_dir), "--data-dir", str(data_dir)),
        *("--preset", "loud=en_US-joe-medium:volume=+3dB", "--phrase-cache-mb", "0"),
        *("--lexicon", str(data_dir / "lexicon.toml"), "--http", "127.0.0.1:0", *QUIET),
    )
    async with run_server(*args) as srv:
        yield srv


async def speak(server: Server, text: str = TEXT, voice: SynthesizeVoice | None = None) -> Response:
    """A one-shot request, read the way Home Assistant reads it."""
    async with connect(server.uri) as client:
        await client.write_event(Synthesize(text=text, voice=voice).event())
        return await read_like_home_assistant(client)


async def stream(server: Server, text: str, voice: SynthesizeVoice | None = None) -> Response:
    """A streamed request as Home Assistant 2025.7+ sends it."""
    async with connect(server.uri) as client:
        await client.write_event(SynthesizeStart(voice=voice).event())
        for i in range(0, len(text), 9):
            await client.write_event(SynthesizeChunk(text=text[i : i + 9]).event())
        await client.write_event(Synthesize(text=text, voice=voice).event())
        await client.write_event(SynthesizeStop().event())
        return await read_like_home_assistant(client)


def named(name: str) -> SynthesizeVoice:
    return SynthesizeVoice(name=name)


async def describe(server: Server) -> Info:
    async with connect(server.uri) as client:
        await client.write_event(Describe().event())
        while (event := await client.read_event()) is not None:
            if Info.is_type(event.type):
                return Info.from_event(event)
    raise AssertionError("no info")


# ----------------------------------------------------------------------- presets


async def test_presets_are_advertised_as_voices_home_assistant_can_pick(
    presets_server: Server,
) -> None:
    voices = {v.name: v for v in (await describe(presets_server)).tts[0].voices}
    for name in ("kitchen-slow", "quiet", "framed", "raw", "loud"):
        assert voices[name].installed
        assert voices[name].languages == ["en_US"]
    assert voices["kitchen-slow"].description == "Kitchen, slowly"
    assert "volume +3.0 dB" in (voices["loud"].description or "")
    assert "en_US-joe-medium" in voices  # the base voice stays a voice of its own


async def test_a_preset_at_half_speed_speaks_about_twice_as_long(presets_server: Server) -> None:
    base = await speak(presets_server)
    slow = await speak(presets_server, voice=named("kitchen-slow"))
    assert_speech(base, TEXT)
    assert slow.types[-1] == "audio-stop"
    assert rms_dbfs(slow.audio) > -35
    assert 1.7 < slow.seconds / base.seconds < 2.3


async def test_a_preset_at_half_volume_is_about_6_db_quieter(presets_server: Server) -> None:
    base = await speak(presets_server)
    quiet = await speak(presets_server, voice=named("quiet"))
    assert len(quiet.audio) == len(base.audio)  # the same speech, only quieter
    assert rms_dbfs(quiet.audio) - rms_dbfs(base.audio) == pytest.approx(-6.02, abs=0.5)
    loud = await speak(presets_server, voice=named("loud"))
    assert int(np.max(np.abs(loud.audio.astype(np.int32)))) < 32767  # louder, never clipped
    assert rms_dbfs(loud.audio) > rms_dbfs(base.audio) + 1.5


async def test_lead_in_and_tail_frame_the_reply_in_silence(presets_server: Server) -> None:
    base = await speak(presets_server)
    framed = await speak(presets_server, voice=named("framed"))
    rate = framed.start.rate
    lead, tail = int(0.25 * rate), int(0.5 * rate)
    assert len(framed.audio) == len(base.audio) + lead + tail
    assert not framed.audio[:lead].any()
    assert not framed.audio[-tail:].any()
    speech = framed.audio[lead : len(framed.audio) - tail].astype(np.int32)
    assert int(np.abs(speech - base.audio.astype(np.int32)).max()) <= 2


async def test_a_reply_fades_in(presets_server: Server) -> None:
    """The first few ms ramp up from zero, so a speaker's output opens without a pop."""
    audio = (await speak(presets_server)).audio
    assert audio[0] == 0
    assert np.abs(audio[:20].astype(np.int32)).max() <= np.abs(audio[20:200].astype(np.int32)).max()


async def test_a_streamed_request_speaks_its_preset(presets_server: Server) -> None:
    base = await stream(presets_server, TEXT)
    slow = await stream(presets_server, TEXT, named("kitchen-slow"))
    assert slow.types[-1] == "audio-stop"
    assert 1.7 < slow.seconds / base.seconds < 2.3


async def test_cleanup_can_be_turned_off_per_preset(presets_server: Server) -> None:
    marked = "## Sunny today"
    cleaned = await speak(presets_server, marked)
    plain = await speak(presets_server, "Sunny today.")
    raw = await speak(presets_server, marked, named("raw"))
    assert same_speech(cleaned, plain)
    assert not same_speech(raw, plain)  # espeak reads the heading's hashes


async def test_a_preset_shares_its_base_voices_loaded_copy(presets_server: Server) -> None:
    pool = presets_server.app.pool
    loads = pool.stats().loads
    for name in ("kitchen-slow", "quiet", "framed", "loud"):
        assert (await speak(presets_server, voice=named(name))).types[-1] == "audio-stop"
    assert pool.stats().loads == loads
    assert "kitchen-slow" not in pool.loaded()


async def test_the_http_door_speaks_and_lists_presets(presets_server: Server) -> None:
    """Open WebUI and curl name a preset as their voice, as HA does."""
    base = http_base(presets_server)
    body = {"input": TEXT, "voice": "quiet", "response_format": "wav"}
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{base}/v1/audio/speech", json=body) as resp:
            assert resp.status == 200, await resp.text()
            (rate, _width, _channels), quiet = parse_wav(await resp.read())
        async with client.post(f"{base}/v1/audio/speech", json={**body, "voice": VOICE}) as resp:
            _fmt, loud = parse_wav(await resp.read())
        async with client.get(f"{base}/api/voices") as resp:
            listing = await resp.json()
    assert rate == 22050
    assert rms_dbfs(quiet) - rms_dbfs(loud) == pytest.approx(-6.02, abs=0.5)
    assert "kitchen-slow" in listing["presets"]
    assert "kitchen-slow" in [v["name"] for v in listing["voices"]]


# ----------------------------------------------------------------------- languages


async def test_a_language_only_request_takes_its_routed_voice(presets_server: Server) -> None:
    text = "Bonjour, la machine à laver a terminé."
    routed = await speak(presets_server, text, SynthesizeVoice(language="fr-FR"))
    direct = await speak(presets_server, text, named("fr_FR-test-medium"))
    assert routed.types[-1] == "audio-stop"
    assert same_speech(routed, direct)


async def test_a_language_without_a_route_finds_a_voice_of_that_language(
    presets_server: Server,
) -> None:
    text = "Die Waschmaschine ist fertig."
    found = await speak(presets_server, text, SynthesizeVoice(language="de"))
    direct = await speak(presets_server, text, named("de_DE-test-medium"))
    assert same_speech(found, direct)
    # en-GB: no en_GB voice, so the default en_US voice speaks rather than a refusal.
    british = await speak(presets_server, TEXT, SynthesizeVoice(language="en-GB"))
    assert same_speech(british, await speak(presets_server))


async def test_a_language_no_voice_speaks_is_refused_and_the_reply_ends(
    presets_server: Server,
) -> None:
    one_shot = await speak(presets_server, TEXT, SynthesizeVoice(language="ja"))
    assert one_shot.eof and one_shot.error is not None
    assert one_shot.error.code == "voice-not-found"
    streamed = await stream(presets_server, TEXT, SynthesizeVoice(language="ja"))
    assert streamed.types[-1] == "synthesize-stopped"
    assert streamed.error is not None and streamed.error.code == "voice-not-found"


# ----------------------------------------------------------------------- lexicon


async def test_the_lexicon_respells_words_before_phonemization(presets_server: Server) -> None:
    respelled = await speak(presets_server, "Restart engine x and home assistant.")
    assert same_speech(await speak(presets_server, "Restart nginx and HA."), respelled)
    assert same_speech(await speak(presets_server, "Restart NGINX and HA."), respelled)
    # "HA" has capitals, so it matches only that spelling; "ha" stays a word of its own.
    assert not same_speech(await speak(presets_server, "Restart nginx and ha."), respelled)


# ----------------------------------------------------------------------- phrase cache


async def test_a_repeated_phrase_is_answered_from_the_cache(cache_dir: Path) -> None:
    args = ("--cache-dir", str(cache_dir), "--preset", "slow=en_US-joe-medium:speed=0.5", *QUIET)
    async with run_server(*args) as srv:
        phrases = srv.app.synthesizer.phrases
        assert phrases is not None
        first = await speak(srv, "The front door is open. Please close it.")
        hits = phrases.hits
        again = await speak(srv, "The front door is open. Please close it.")
        assert phrases.hits == hits + 2  # both sentences
        assert same_speech(again, first)
        streamed = await stream(srv, "Please close it.")
        assert phrases.hits == hits + 3  # a streamed reply hits (and fills) it too
        assert_speech(streamed, "Please close it.")
        # Another speed is other audio: a miss, not the cached samples.
        slow = await speak(srv, "Please close it.", named("slow"))
        assert phrases.hits == hits + 3
        assert len(slow.audio) > 1.5 * len(streamed.audio)


async def test_the_phrase_cache_stays_within_its_bound(cache_dir: Path) -> None:
    args = ("--cache-dir", str(cache_dir), "--phrase-cache-mb", "1", *QUIET)
    async with run_server(*args) as srv:
        phrases = srv.app.synthesizer.phrases
        assert phrases is not None
        for i in range(12):
            await speak(srv, f"Reminder number {i}: the bins go out tonight, before nine.")
        assert 0 < phrases.bytes <= 2**20
        assert len(phrases) < 12  # the oldest were let go


# ----------------------------------------------------------------------- bad presets


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--preset", "x=en_US-nobody-medium"), "preset x: voice: no installed voice"),
        (("--preset", "x=en_US-joe-medium:speaker=7"), "preset x: speaker:"),
        (("--default-voice-per-language", "de=de_DE-nobody"), "default_voice_per_language: de"),
    ],
)
async def test_a_preset_that_cannot_be_served_stops_start_up(
    cache_dir: Path, args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(StartupError, match=message):
        async with run_server("--cache-dir", str(cache_dir), *args):
            pass


async def test_an_invalid_preset_stops_the_command_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[presets.kitchen]\nvoice = "en_US-joe-medium"\nspeed = "fast"\n')
    cases = [
        (["--config", str(config)], 2, "preset kitchen: speed: expected a number"),
        (["--preset", "kitchen=en_US-joe-medium:pitch=2"], 2, "preset kitchen: pitch: unknown key"),
        (["--preset", "kitchen=en_US-nobody"], 1, "preset kitchen: voice: no installed voice"),
    ]
    for argv, code, message in cases:
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "wyoming_tts", "--uri", "tcp://127.0.0.1:0", *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == code, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if message in line]
        assert len(lines) == 1, proc.stderr
