"""What `describe` answers: the Info built from the installed voices, kept current.

The Info a Home Assistant user sees for the shared server's voices is checked in
`test_handler.py`; here, the Info of a multi-speaker voice, and a voice copied in
while the server runs.
"""

from __future__ import annotations

from pathlib import Path

from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from wyoming_tts.info import build_info
from wyoming_tts.presets import preset_from_text
from wyoming_tts.voices.catalog import VoiceEntry, parse_voice_config

from .conftest import TRIO_CONFIG, assert_speech, connect, link_voice, read_until, run_server


def test_multi_speaker_voice_info() -> None:
    info = parse_voice_config("en_GB-trio-medium", TRIO_CONFIG)
    entry = VoiceEntry("en_GB-trio-medium", Path("x.onnx"), Path("x.onnx.json"), 0, 0, 0, info)
    voice = build_info({entry.name: entry}, streaming=False).tts[0]
    assert not voice.supports_synthesize_streaming
    assert voice.voices[0].languages == ["en_GB"]
    assert [s.name for s in voice.voices[0].speakers or []] == ["alice", "bob", "carol"]
    assert voice.voices[0].version == "1.0.0"


def test_presets_are_voices_with_their_base_voices_languages_and_speakers() -> None:
    info = parse_voice_config("en_GB-trio-medium", TRIO_CONFIG)
    entry = VoiceEntry("en_GB-trio-medium", Path("x.onnx"), Path("x.onnx.json"), 0, 0, 0, info)
    presets = {
        p.name: p
        for p in (
            preset_from_text("trio-slow=en_GB-trio-medium:speed=0.8"),
            preset_from_text("bob=en_GB-trio-medium:speaker=bob"),
            preset_from_text("en_GB-trio-medium=en_GB-trio-medium:volume=0.7"),
            preset_from_text("orphan=en_US-gone-medium"),  # its base voice was removed
        )
    }
    voices = {v.name: v for v in build_info({entry.name: entry}, False, presets).tts[0].voices}
    assert sorted(voices) == ["bob", "en_GB-trio-medium", "trio-slow"]
    assert voices["trio-slow"].languages == ["en_GB"]
    assert [s.name for s in voices["trio-slow"].speakers or []] == ["alice", "bob", "carol"]
    assert voices["trio-slow"].description == "en_GB-trio-medium (speed 0.8)"
    assert voices["bob"].speakers is None  # pinned: nothing to pick
    # A preset named like its voice takes its place, with the voice's own description.
    assert voices["en_GB-trio-medium"].description == info.description


async def test_voice_added_while_running_is_described_and_spoken(
    tmp_path: Path, cache_dir: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    async with run_server("--cache-dir", str(cache_dir), "--data-dir", str(data)) as srv:
        link_voice(data, "en_US-new-medium")
        async with connect(srv.uri) as client:
            await client.write_event(Describe().event())
            info = Info.from_event((await read_until(client, ("info",))).events[-1])
            assert "en_US-new-medium" in [v.name for v in info.tts[0].voices]
            await client.write_event(
                Synthesize(
                    text="New voice.", voice=SynthesizeVoice(name="en_US-new-medium")
                ).event()
            )
            resp = await read_until(client)
            assert resp.types[-1] == "audio-stop"
            assert_speech(resp, "New voice.")
