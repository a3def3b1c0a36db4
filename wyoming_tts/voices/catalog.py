"""Installed voices: what is on disk in the data dirs, and nothing else.

A voice is ``<name>.onnx`` beside ``<name>.onnx.json``. Names are file stems and
are looked up, never joined onto a path, so ``../x`` cannot reach outside a
data dir. Configs are cached and re-read only when their mtime changes; the
directories are rescanned at most every ``ttl`` seconds (or when forced).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VoiceNotFound

_LOGGER = logging.getLogger(__name__)

Clock = Callable[[], float]

#: Seconds between rescans of the data dirs; Describe always rescans.
CATALOG_TTL = 60.0


@dataclass(frozen=True)
class VoiceInfo:
    """What a voice's `.onnx.json` tells us, parsed once per mtime."""

    name: str
    sample_rate: int
    num_speakers: int
    speaker_id_map: dict[str, int]
    language: str
    description: str
    version: str | None
    hop_length: int
    raw: dict[str, Any] = field(repr=False, compare=False)

    def speaker_id(self, speaker: str | None) -> int | None:
        """The id of a speaker named or numbered; None for the voice's default speaker,
        which is also what a voice without that speaker (or with one only) gives."""
        if self.num_speakers <= 1 or not speaker:
            return None
        if speaker in self.speaker_id_map:
            return self.speaker_id_map[speaker]
        if speaker.isdigit() and int(speaker) < self.num_speakers:
            return int(speaker)
        return None

    def has_speaker(self, speaker: str) -> bool:
        return self.num_speakers > 1 and self.speaker_id(speaker) is not None


@dataclass(frozen=True)
class VoiceEntry:
    """An installed voice and the file identity that a loaded copy must match."""

    name: str
    model_path: Path
    config_path: Path
    model_mtime_ns: int
    model_size: int
    config_mtime_ns: int
    info: VoiceInfo

    @property
    def identity(self) -> tuple[int, int, int]:
        """Changes whenever either file is replaced; a loaded copy of another identity is stale."""
        return (self.model_mtime_ns, self.model_size, self.config_mtime_ns)


def parse_voice_config(name: str, raw: dict[str, Any]) -> VoiceInfo:
    """Piper's config keys, defaulted as piper itself defaults them."""
    audio = raw.get("audio") or {}
    sample_rate = int(audio.get("sample_rate", 22050))
    num_speakers = int(raw.get("num_speakers", 1))
    speaker_id_map = {str(k): int(v) for k, v in (raw.get("speaker_id_map") or {}).items()}
    language_block = raw.get("language") or {}
    language = str(
        language_block.get("code") or (raw.get("espeak") or {}).get("voice") or name.split("-")[0]
    )
    dataset = raw.get("dataset") or name
    quality = audio.get("quality")
    description = f"{dataset} ({quality})" if quality else str(dataset)
    version = raw.get("piper_version")
    if not isinstance(sample_rate, int) or sample_rate <= 0 or num_speakers <= 0:
        raise ValueError("bad sample rate or speaker count")
    if not isinstance(raw.get("phoneme_id_map"), dict):
        raise ValueError("no phoneme_id_map")
    return VoiceInfo(
        name=name,
        sample_rate=sample_rate,
        num_speakers=num_speakers,
        speaker_id_map=speaker_id_map,
        language=language,
        description=description,
        version=str(version) if version is not None else None,
        hop_length=int(raw.get("hop_length", 256)),
        raw=raw,
    )


def is_safe_voice_name(name: object) -> bool:
    """A bare file stem: no separators, no dot-dot, no NUL, not absolute."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 200
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and ".." not in name
        and not name.startswith(".")
    )


class VoiceCatalog:
    """The data dirs' voices, rescanned lazily. All methods do file I/O: call off the loop."""

    def __init__(
        self, data_dirs: Iterable[Path], ttl: float = CATALOG_TTL, clock: Clock = time.monotonic
    ) -> None:
        self._data_dirs = tuple(data_dirs)
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, VoiceEntry] = {}
        self._config_cache: dict[Path, tuple[int, VoiceInfo]] = {}
        self._scanned_at: float | None = None
        self._warned: set[Path] = set()
        self.config_reads = 0

    def refresh(self, force: bool = False) -> dict[str, VoiceEntry]:
        """Rescan if the TTL passed (or forced); returns the current entries."""
        now = self._clock()
        if force or self._scanned_at is None or now - self._scanned_at >= self._ttl:
            self._entries = self._scan()
            self._scanned_at = now
        return self._entries

    def get(self, name: str) -> VoiceEntry:
        """The installed voice called `name`, rescanning once if it is unknown or changed."""
        if not is_safe_voice_name(name):
            raise VoiceNotFound(f"'{_printable(name)}' is not a voice name.")
        entry = self.refresh().get(name)
        if entry is None or not _still_there(entry):
            entry = self.refresh(force=True).get(name)
        if entry is None:
            raise VoiceNotFound(f"Voice '{name}' is not installed.")
        return entry

    def _scan(self) -> dict[str, VoiceEntry]:
        found: dict[str, VoiceEntry] = {}
        live_configs: set[Path] = set()
        for data_dir in self._data_dirs:
            try:
                candidates = sorted(data_dir.glob("*.onnx"))
            except OSError:
                continue
            for model_path in candidates:
                name = model_path.name[: -len(".onnx")]
                if name in found or not is_safe_voice_name(name):
                    continue  # earlier data dirs win
                config_path = model_path.with_name(model_path.name + ".json")
                try:
                    model_stat = model_path.stat()
                    config_stat = config_path.stat()
                except OSError:
                    continue
                info = self._read_config(name, config_path, config_stat.st_mtime_ns)
                if info is None:
                    continue
                live_configs.add(config_path)
                found[name] = VoiceEntry(
                    name=name,
                    model_path=model_path,
                    config_path=config_path,
                    model_mtime_ns=model_stat.st_mtime_ns,
                    model_size=model_stat.st_size,
                    config_mtime_ns=config_stat.st_mtime_ns,
                    info=info,
                )
        for stale in set(self._config_cache) - live_configs:
            del self._config_cache[stale]
        return found

    def _read_config(self, name: str, path: Path, mtime_ns: int) -> VoiceInfo | None:
        cached = self._config_cache.get(path)
        if cached is not None and cached[0] == mtime_ns and cached[1].name == name:
            return cached[1]
        try:
            self.config_reads += 1
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            info = parse_voice_config(name, raw)
        except (OSError, ValueError, TypeError) as err:
            if path not in self._warned:
                self._warned.add(path)
                _LOGGER.warning("Skipping voice %s: unreadable config %s (%s)", name, path, err)
            return None
        self._warned.discard(path)
        self._config_cache[path] = (mtime_ns, info)
        return info


def _still_there(entry: VoiceEntry) -> bool:
    try:
        stat = entry.model_path.stat()
        cstat = entry.config_path.stat()
    except OSError:
        return False
    return (stat.st_mtime_ns, stat.st_size, cstat.st_mtime_ns) == entry.identity


def _printable(name: object) -> str:
    text = name if isinstance(name, str) else repr(name)
    return text.encode("unicode_escape").decode("ascii")[:80]
