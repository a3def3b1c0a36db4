"""Wyoming `info` from the voices actually installed, never a download catalog."""

from __future__ import annotations

from collections.abc import Mapping

from wyoming.info import Attribution, Info, TtsProgram, TtsVoice, TtsVoiceSpeaker

from . import __version__
from .presets import Preset
from .voices.catalog import VoiceEntry

PROGRAM_NAME = "wyoming-tts"
PIPER_ATTRIBUTION = Attribution(name="rhasspy", url="https://github.com/rhasspy/piper")


def build_info(
    entries: Mapping[str, VoiceEntry],
    streaming: bool,
    presets: Mapping[str, Preset] | None = None,
) -> Info:
    """Installed voices, then presets as voices of their own (HA lists both in its picker).

    A preset named like its base voice takes that voice's place; one whose base voice
    is gone is left out, as its requests would be refused.
    """
    presets = presets or {}
    voices = [
        _voice(entry.name, entry, entry.info.description)
        for entry in sorted(entries.values(), key=lambda e: e.name)
        if entry.name not in presets
    ]
    for preset in sorted(presets.values(), key=lambda p: p.name):
        base = entries.get(preset.voice)
        if base is not None:
            description = preset.description or (
                base.info.description if preset.name == base.name else preset.summary
            )
            voices.append(_voice(preset.name, base, description, pinned=preset.speaker is not None))
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


def _voice(name: str, entry: VoiceEntry, description: str, pinned: bool = False) -> TtsVoice:
    info = entry.info
    return TtsVoice(
        name=name,
        description=description,
        attribution=PIPER_ATTRIBUTION,
        installed=True,
        version=info.version,
        languages=[info.language],
        speakers=(
            [TtsVoiceSpeaker(name=s) for s in info.speaker_id_map]
            if not pinned and info.num_speakers > 1 and info.speaker_id_map
            else None
        ),
    )


def voice_languages(entries: Mapping[str, VoiceEntry]) -> list[str]:
    return sorted({e.info.language for e in entries.values()})
