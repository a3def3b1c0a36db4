"""Every Piper family over real sockets: x_low, low, medium and high, single and multi-speaker.

The voices are the random-weight ones `script/gen-test-voices` builds with piper's own
model code (`tests/voices/`). One server serves all eight with noise off, so each reply
is deterministic: streamed chunks are compared with a whole decode by the same loaded
voice, and one speaker's audio with another's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from wyoming.info import Describe, Info

from wyoming_tts.audio import fade_in, fade_out, to_pcm16
from wyoming_tts.model.vits import StagedDecoder
from wyoming_tts.voices.loader import LoadedVoice

from .conftest import Server, connect, read_until, rms_dbfs, run_server, speak_as
from .voices.structure import structure

VOICES_DIR = Path(__file__).parent / "voices"
VOICES = sorted(p.name.removesuffix(".onnx") for p in VOICES_DIR.glob("*.onnx"))
MULTI = [name for name in VOICES if "-testmulti-" in name]
TEXT = "The kitchen lights are on now."
MAX_LSB = 2


def _config(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((VOICES_DIR / f"{name}.onnx.json").read_text("utf-8"))
    return config


def test_every_family_is_there() -> None:
    qualities = sorted(_config(name)["audio"]["quality"] for name in VOICES)
    assert qualities == sorted(["x_low", "low", "medium", "high"] * 2)
    assert all(2 <= _config(name)["num_speakers"] <= 4 for name in MULTI)
    assert all((VOICES_DIR / f"{name}.onnx").stat().st_size < 3_000_000 for name in VOICES)


@pytest.mark.parametrize("name", VOICES)
def test_fixture_has_the_structure_of_a_full_width_export(name: str) -> None:
    """Narrowed only: the same ops wired the same way as the real-size model of its family."""
    record = json.loads((VOICES_DIR / "structure.json").read_text("utf-8"))[name]
    got = structure(onnx.load(str(VOICES_DIR / f"{name}.onnx")))
    assert got["op_counts"] == record["op_counts"]
    assert got == {k: record[k] for k in got}


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def log_warnings() -> Iterator[_Warnings]:
    """WARNING lines the package logs while this module's server runs."""
    handler = _Warnings()
    logger = logging.getLogger("wyoming_tts")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
async def families(
    tmp_path_factory: pytest.TempPathFactory, log_warnings: _Warnings
) -> AsyncIterator[Server]:
    """A server with the eight test voices, noise off, all of them loaded split and warm at
    start (a voice's first use is served whole: `test_first_use.py`)."""
    args = ["--data-dir", str(VOICES_DIR), "--voice", VOICES[0], "--max-voices", "9"]
    args += ["--preload", ",".join(VOICES[1:])]
    args += ["--cache-dir", str(tmp_path_factory.mktemp("families-cache"))]
    args += ["--noise-scale", "0", "--noise-w-scale", "0"]
    async with run_server(*args) as srv:
        yield srv


def _loaded(server: Server, name: str) -> LoadedVoice:
    return server.app.pool.loaded()[name]


async def test_info_advertises_every_voice_and_its_speakers(families: Server) -> None:
    async with connect(families.uri) as client:
        await client.write_event(Describe().event())
        info = Info.from_event((await read_until(client, ("info",))).events[-1])
    voices = {v.name: v for v in info.tts[0].voices}
    for name in VOICES:
        config = _config(name)
        assert voices[name].languages == [config["language"]["code"]]
        speakers = [s.name for s in voices[name].speakers or []]
        assert speakers == (list(config["speaker_id_map"]) if name in MULTI else [])


@pytest.mark.parametrize("name", VOICES)
async def test_family_streams_what_a_whole_decode_says(
    families: Server, log_warnings: _Warnings, name: str
) -> None:
    """Heard: the voice's own rate, speech, a fitting length; streamed through the flow/
    vocoder split (no fallback), each chunk as the whole utterance decoded at once."""
    resp = await speak_as(families, name, TEXT)
    rate = _config(name)["audio"]["sample_rate"]
    assert (resp.start.rate, resp.start.width, resp.start.channels) == (rate, 2, 1)
    assert all((c.rate, c.width, c.channels) == (rate, 2, 1) for c in resp.chunks)
    assert rms_dbfs(resp.audio) > -35, "audio is near silence"
    # ~3 frames of 256 samples per phoneme id, two ids per character or so.
    assert 6 < len(TEXT) / resp.seconds < 30, f"{resp.seconds:.2f} s for {len(TEXT)} chars"

    voice = _loaded(families, name)
    assert isinstance(voice.model.decoder, StagedDecoder)
    assert not [m for m in log_warnings.messages if "unusable" in m or "Using the" in m]
    assert len(resp.chunks) > 1, "not streamed"
    params = voice.params(None, 0.0, None, 0.0)
    whole = np.concatenate(voice.speak_blocking(TEXT, params))
    pcm = fade_in(to_pcm16(fade_out(whole, rate), voice.gain), rate)  # as the engine does
    expected = np.frombuffer(pcm, dtype="<i2")
    assert resp.audio.shape == expected.shape
    worst = int(np.abs(resp.audio.astype(np.int32) - expected).max())
    assert worst <= MAX_LSB, f"streamed audio is {worst} LSB from the whole decode"


@pytest.mark.parametrize("name", MULTI)
async def test_speaker_by_name_and_by_id(families: Server, name: str) -> None:
    """Each speaker sounds different; a speaker's name and its id say the same."""
    speakers = _config(name)["speaker_id_map"]
    by_name = {s: (await speak_as(families, name, TEXT, s)).audio for s in speakers}
    for speaker, sid in speakers.items():
        by_id = (await speak_as(families, name, TEXT, str(sid))).audio
        # Chunks are planned from timing, so seams may fall elsewhere: within MAX_LSB.
        assert by_id.shape == by_name[speaker].shape
        assert np.abs(by_id.astype(np.int32) - by_name[speaker]).max() <= MAX_LSB
    first, *others = by_name.values()
    for audio in others:
        if audio.shape == first.shape:
            assert np.abs(audio.astype(np.int32) - first).mean() > 100, "same voice twice"
    assert isinstance(_loaded(families, name).model.decoder, StagedDecoder)
