"""Audio files, the manifest and the playlist, none under its final name until whole.

Each file is written to a hidden ``.NAME.part`` beside it and renamed when
complete, so an interrupted run leaves nothing half-written that looks finished
(and `discard` removes the temp). The manifest (a small JSON file next to the
output) records each finished file's key and size: a rerun skips a file whose
key and size still match. Everything here blocks; the command calls it on a
thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from ..audio import CHANNELS, SAMPLE_WIDTH
from ..server.encoding import Resampler, soundfile_format
from .sources import InputError

#: Formats `synth` writes, by `--format` name (and file extension).
FORMATS = ("wav", "flac", "mp3", "opus")
#: File extension of each format.
EXTENSIONS = {"wav": "wav", "flac": "flac", "mp3": "mp3", "opus": "opus"}
MANIFEST_VERSION = 1
PLAYLIST_NAME = "playlist.m3u"


def manifest_path(out_file: Path | None, out_dir: Path | None) -> Path:
    if out_dir is not None:
        return out_dir / "wyoming-tts-manifest.json"
    if out_file is None:
        raise ValueError("an output file or directory is needed")
    return out_file.with_name(out_file.name + ".manifest.json")


def check_writable(directory: Path) -> None:
    """Make the directory if needed and prove a file can be made in it (else InputError)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".wyoming-tts-probe-"):
            pass
    except OSError as err:
        raise InputError(f"{directory}: cannot write there: {err.strerror or err}") from None


class AudioFile:
    """One output file being written: PCM pieces in, the finished file renamed into place."""

    def __init__(self, path: Path, fmt: str, rate: int) -> None:
        self.path = path
        self.temp = path.with_name(f".{path.name}.part")
        self.rate = rate
        self.samples = 0
        out_rate, options = (
            (rate, {"format": "WAV", "subtype": "PCM_16"})
            if fmt == "wav"
            else soundfile_format(fmt, rate)
        )
        self._resampler = Resampler(rate, out_rate) if out_rate != rate else None
        self._open = (out_rate, options)
        self._file: soundfile.SoundFile | None = None
        """Opened at the first write (on a thread): making one costs no I/O."""

    def write(self, pcm: bytes) -> None:
        samples = np.frombuffer(pcm, dtype="<i2")
        self.samples += len(samples)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        self._writer().write(samples)

    def _writer(self) -> soundfile.SoundFile:
        if self._file is None:
            out_rate, options = self._open
            self._file = soundfile.SoundFile(self.temp, "w", out_rate, CHANNELS, **options)
        return self._file

    def finish(self) -> float:
        """Close, flush to disk and rename into place; the audio's seconds."""
        writer = self._writer()
        if self._resampler is not None:
            writer.write(self._resampler.process(np.zeros(0, dtype="<i2"), final=True))
        writer.close()
        with open(self.temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.temp, self.path)
        return self.samples / self.rate

    def discard(self) -> None:
        """Drop the unfinished file (Ctrl-C, a failure)."""
        if self._file is None:
            return  # never opened: nothing on disk
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.temp.unlink()


def pcm_bytes(seconds: float, rate: int) -> int:
    return int(seconds * rate) * SAMPLE_WIDTH * CHANNELS


@dataclass
class Manifest:
    """What has been written: file name -> its key, size and seconds."""

    path: Path
    files: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """The manifest at ``path``; a missing or unreadable one is empty (all redone)."""
        try:
            data = json.loads(path.read_text())
            files = data["files"] if data.get("version") == MANIFEST_VERSION else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            files = {}
        return cls(path, dict(files) if isinstance(files, dict) else {})

    def done(self, directory: Path, name: str, key: str) -> bool:
        """The file exists whole, made from the same text and settings."""
        entry = self.files.get(name)
        if not isinstance(entry, dict) or entry.get("key") != key:
            return False
        try:
            return (directory / name).stat().st_size == entry.get("bytes")
        except OSError:
            return False

    def seconds(self, name: str) -> float:
        entry = self.files.get(name) or {}
        value = entry.get("seconds", 0.0)
        return float(value) if isinstance(value, (int, float)) else 0.0

    def record(self, directory: Path, name: str, key: str, title: str, seconds: float) -> None:
        """Note a finished file and save the manifest (temp + rename)."""
        size = (directory / name).stat().st_size
        self.files[name] = {"key": key, "bytes": size, "seconds": round(seconds, 3), "title": title}
        _replace_text(self.path, json.dumps({"version": MANIFEST_VERSION, "files": self.files}))


def write_playlist(directory: Path, entries: list[tuple[str, str, float]]) -> Path:
    """An extended M3U of (file, title, seconds), in order."""
    lines = ["#EXTM3U"]
    for name, title, seconds in entries:
        lines += [f"#EXTINF:{round(seconds)},{' '.join(title.split())}", name]
    path = directory / PLAYLIST_NAME
    _replace_text(path, "\n".join(lines) + "\n")
    return path


def _replace_text(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.part")
    temp.write_text(text)
    os.replace(temp, path)
