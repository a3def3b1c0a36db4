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
