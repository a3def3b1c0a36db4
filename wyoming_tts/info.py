"""Wyoming `info` from the voices actually installed, never a download catalog."""

from __future__ import annotations

from collections.abc import Mapping

from wyoming.info import Attribution, Info, TtsProgram, TtsVoice, TtsVoiceSpeaker

from . import __version__
from .voices.catalog import VoiceEntry

PROGRAM_NAME = "wyoming-tts"
PIPER_ATTRIBUTION = Attribution(name="rhasspy", url="https://github.com/rhasspy/piper")


def build_info(entries: Mapping[str, VoiceEntry], streaming: bool) -> Info:
    voices = [
        TtsVoice(
            name=entry.name,
            description=entry.info.description,
            attribution=PIPER_ATTRIBUTION,
            installed=True,
            version=entry.info.version,
            languages=[entry.info.language],
            speakers=(
                [TtsVoiceSpeaker(name=s) for s in entry.info.speaker_id_map]
                if entry.info.num_speakers > 1 and entry.info.speaker_id_map
                else None
            ),
        )
        for entry in sorted(entries.values(), key=lambda e: e.name)
    ]
    program = TtsProgram(
        name=PROGRAM_NAME,
        description="Streaming Piper text to speech",
        attribution=Attribution(name="wyoming-tts", url="https://github.com/OHF-Voice"),
        installed=True,
        version=__version__,
        voices=voices,
        supports_synthesize_streaming=streaming,
    )
    return Info(tts=[program])


def voice_languages(entries: Mapping[str, VoiceEntry]) -> list[str]:
    return sorted({e.info.language for e in entries.values()})
