"""Presets: an installed voice under a new name, with how it should be spoken.

Home Assistant's Wyoming entity passes only `voice`, `speaker` and `audio_output`,
so a voice name is the one channel through which a user can ask for a speed, a
volume or a lead-in per automation. A preset is that name; the server advertises
it as a voice and speaks it with its base voice's loaded copy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Speeds a preset may ask for (speed = 1 / length_scale), as wide as Piper stays intelligible.
SPEED_RANGE = (0.1, 10.0)
#: A volume factor above this (+18 dB) would only drive every word into the limiter.
MAX_VOLUME = 8.0
#: Longest lead-in, tail or sentence silence, in seconds.
MAX_SILENCE = 10.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_DB = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*db\s*$", re.IGNORECASE)


class PresetError(ValueError):
    """An invalid preset; the message names the preset and the key, on one line."""


@dataclass(frozen=True)
class Preset:
    """A virtual voice; an unset field keeps the server's setting (or the voice's own)."""

    name: str
    voice: str
    """The installed voice it speaks with (never another preset)."""
    speaker: str | None = None
    """Pinned speaker: the request's speaker is then ignored and none is advertised."""
    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w_scale: float | None = None
    volume: float | None = None
    """A factor on the voice's level, applied before the limiter."""
    sentence_silence: float | None = None
    lead_in: float | None = None
    tail: float | None = None
    text_cleanup: bool | None = None
    description: str | None = None

    @property
    def summary(self) -> str:
        """What a voice picker shows: the user's description, else what the preset changes."""
        if self.description:
            return self.description
        changes = []
        if self.length_scale is not None:
            changes.append(f"speed {1 / self.length_scale:.2g}")
        if self.volume is not None:
            changes.append(f"volume {20 * math.log10(self.volume):+.1f} dB")
        if self.speaker is not None:
            changes.append(f"speaker {self.speaker}")
        if self.lead_in:
            changes.append(f"lead-in {self.lead_in:g} s")
        return f"{self.voice} ({', '.join(changes)})" if changes else self.voice


#: Keys a preset takes, each with how its value is read.
KEYS = (
    "voice",
    "speaker",
    "speed",
    "length_scale",
    "noise_scale",
    "noise_w_scale",
    "volume",
    "sentence_silence",
    "lead_in",
    "tail",
    "text_cleanup",
    "description",
)


def parse_volume(value: Any, where: str) -> float:
    """A factor (0.5) or decibels ("-6dB"); raises PresetError naming ``where``."""
    if isinstance(value, str) and (match := _DB.match(value)):
        factor = 10 ** (float(match.group(1)) / 20)
    else:
        factor = _number(value, where)
    if not 0 < factor <= MAX_VOLUME:
        raise PresetError(f"{where}: volume must be above 0 and at most {MAX_VOLUME:g}")
    return factor


def preset_from_table(name: str, table: Mapping[str, Any]) -> Preset:
    """A `[presets.NAME]` table of the config file."""
    return _build(name, dict(table))


def preset_from_text(text: str) -> Preset:
    """``NAME=VOICE[:key=value,...]``, as `--preset` and the environment give it."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise PresetError(f"preset {text!r}: expected NAME=VOICE[:key=value,...]")
    voice, _colon, options = rest.partition(":")
    values: dict[str, Any] = {"voice": voice.strip()}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise PresetError(f"preset {name}: {item!r} is not key=value")
        if key == "voice":
            raise PresetError(f"preset {name}: voice: give it before the ':'")
        values[key] = value.strip()
    return _build(name, values)


def presets_from_text(text: str) -> tuple[Preset, ...]:
    """Several presets separated by ';' (one environment variable)."""
    return tuple(preset_from_text(part) for part in text.split(";") if part.strip())


def _build(name: str, values: dict[str, Any]) -> Preset:
    if not _NAME.match(name):
        raise PresetError(f"preset {name!r}: a name is letters, digits and . _ + -")
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise PresetError(f"preset {name}: {unknown[0]}: unknown key (keys: {', '.join(KEYS)})")

    def where(key: str) -> str:
        return f"preset {name}: {key}"

    voice = values.get("voice")
    if not isinstance(voice, str) or not voice:
        raise PresetError(f"{where('voice')}: the base voice is required")
    fields: dict[str, Any] = {"name": name, "voice": voice.removesuffix(".onnx")}
    for key in ("speaker", "description"):
        if values.get(key) is not None:
            fields[key] = str(values[key])
    if "speed" in values and "length_scale" in values:
        raise PresetError(f"{where('speed')}: give speed or length_scale, not both")
    if "speed" in values:
        speed = _number(values["speed"], where("speed"))
        if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
            raise PresetError(
                f"{where('speed')}: must be between {SPEED_RANGE[0]} and {SPEED_RANGE[1]}"
            )
        fields["length_scale"] = 1.0 / speed
    if "length_scale" in values:
        fields["length_scale"] = _ranged(
            values["length_scale"], where("length_scale"), 1 / SPEED_RANGE[1], 1 / SPEED_RANGE[0]
        )
    for key in ("noise_scale", "noise_w_scale"):
        if key in values:
            fields[key] = _ranged(values[key], where(key), 0.0, 10.0)
    for key in ("sentence_silence", "lead_in", "tail"):
        if key in values:
            fields[key] = _ranged(values[key], where(key), 0.0, MAX_SILENCE)
    if "volume" in values:
        fields["volume"] = parse_volume(values["volume"], where("volume"))
    if "text_cleanup" in values:
        fields["text_cleanup"] = _flag(values["text_cleanup"], where("text_cleanup"))
    return Preset(**fields)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise PresetError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PresetError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise PresetError(f"{where}: expected a finite number, got {value!r}")
    return number


def _ranged(value: Any, where: str, low: float, high: float) -> float:
    number = _number(value, where)
    if not low <= number <= high:
        raise PresetError(f"{where}: must be between {low:g} and {high:g}, got {value!r}")
    return number


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise PresetError(f"{where}: expected true or false, got {value!r}")


def merge(*layers: tuple[Preset, ...]) -> tuple[Preset, ...]:
    """Later layers replace earlier presets of the same name (file < env < CLI)."""
    merged: dict[str, Preset] = {}
    for layer in layers:
        for preset in layer:
            merged[preset.name] = preset
    return tuple(merged.values())
