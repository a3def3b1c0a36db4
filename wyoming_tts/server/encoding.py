"""The HTTP door's audio formats, encoded piece by piece as the audio is made.

WAV and raw PCM cost nothing: a header for a stream of unknown length, then the
samples. FLAC, MP3 and Opus go through soundfile (libsndfile), fed each piece
as it comes, with its output taken at once, so the first bytes leave while the
rest is being synthesized. libsndfile rewrites a header at close when it can
seek back; bytes already sent cannot change, so those rewrites are dropped, and
every format here is still valid without them (FLAC then says "length unknown",
MP3 is constant bitrate so its length follows from its size).
"""

from __future__ import annotations

import math
import struct
from typing import Any, Protocol

import numpy as np
import soundfile

from ..audio import CHANNELS, SAMPLE_WIDTH

#: A WAV size field that says "as long as the stream goes" (players read to the end).
_UNKNOWN_SIZE = 0xFFFFFFFF
#: Opus encodes only these rates; other voices are resampled to the next one up.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
#: MP3 quality, 0 (best) to 1: ~80 kbit/s at 22.05 kHz mono, ample for speech.
MP3_COMPRESSION = 0.5
#: Input samples each output sample of the resampler is made from.
RESAMPLER_TAPS = 32


class Encoder(Protocol):
    """Turns a reply's PCM pieces into one format's bytes, in order."""

    media_type: str
    #: Whether `encode` costs enough CPU to be run off the event loop.
    blocking: bool

    def encode(self, pcm: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def close(self) -> None: ...


def wav_header(rate: int, width: int = SAMPLE_WIDTH, channels: int = CHANNELS) -> bytes:
    """A PCM WAV header whose sizes are unknown: the audio follows as it is made."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        _UNKNOWN_SIZE,
        b"WAVE",
        b"fmt ",
        16,
        1,
        channels,
        rate,
        rate * width * channels,
        width * channels,
        width * 8,
        b"data",
        _UNKNOWN_SIZE,
    )


class RawEncoder:
    """16-bit little-endian mono PCM, after an optional header (a WAV's)."""

    blocking = False

    def __init__(self, media_type: str, header: bytes = b"") -> None:
        self.media_type = media_type
        self._header = header

    def encode(self, pcm: bytes) -> bytes:
        header, self._header = self._header, b""
        return header + pcm

    def finish(self) -> bytes:
        return self._header  # a reply with no audio is still a well-formed file

    def close(self) -> None:
        pass


class SoundfileEncoder:
    """A libsndfile format, written to a sink whose bytes are taken after every piece."""

    blocking = True

    def __init__(self, media_type: str, rate: int, out_rate: int, **options: Any) -> None:
        self.media_type = media_type
        self._rate = out_rate
        self._options = options
        self._sink = _SentSink()
        self._file: soundfile.SoundFile | None = None
        self._resampler = Resampler(rate, out_rate) if out_rate != rate else None

    def encode(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2")
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        self._writer().write(samples)
        return self._sink.take()

    def finish(self) -> bytes:
        writer = self._writer()
        if self._resampler is not None:
            writer.write(self._resampler.process(np.zeros(0, dtype="<i2"), final=True))
        self.close()
        return self._sink.take()

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def _writer(self) -> soundfile.SoundFile:
        if self._file is None:
            self._file = soundfile.SoundFile(self._sink, "w", self._rate, CHANNELS, **self._options)
        return self._file


class _SentSink:
    """A write-only file for libsndfile: bytes are taken as written; rewrites of bytes
    already taken (header sizes at close) are dropped."""

    def __init__(self) -> None:
        self._pos = 0
        self._end = 0
        self._sent = 0
        self._pending = bytearray()

    def write(self, data: Any) -> int:
        data = bytes(data)
        skip = max(0, self._sent - self._pos)
        offset = self._pos + skip - self._sent
        if offset > len(self._pending):
            self._pending.extend(bytes(offset - len(self._pending)))
        self._pending[offset : offset + len(data) - skip] = data[skip:]
        self._pos += len(data)
        self._end = max(self._end, self._pos)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset + (0, self._pos, self._end)[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        out = bytes(self._pending)
        self._sent += len(out)
        self._pending.clear()
        return out


class Resampler:
    """Windowed-sinc rate conversion by a rational factor, one piece at a time."""

    def __init__(self, rate: int, out_rate: int, taps: int = RESAMPLER_TAPS) -> None:
        common = math.gcd(rate, out_rate)
        self._up, self._down = out_rate // common, rate // common
        self._half = taps // 2
        self._offsets = np.arange(1 - self._half, self._half + 1)
        # Row p weighs the inputs around an output that falls p/up past an input sample.
        x = self._offsets[None, :] - (np.arange(self._up) / self._up)[:, None]
        cutoff = 0.95 * min(1.0, out_rate / rate)
        window = 0.5 * (1 + np.cos(np.pi * x / self._half))
        bank = cutoff * np.sinc(cutoff * x) * window
        self._bank = bank / bank.sum(axis=1, keepdims=True)
        self._buffer = np.zeros(self._half - 1)  # silence before the first sample
        self._start = 1 - self._half  # input index of _buffer[0]
        self._next = 0  # index of the next output sample
        self._received = 0

    def process(self, samples: np.ndarray, final: bool = False) -> np.ndarray:
        """Resampled 16-bit samples for what can be computed; `final` flushes the rest."""
        self._received += len(samples)
        parts = [self._buffer, samples.astype(np.float64)]
        if final:
            parts.append(np.zeros(self._half))
        self._buffer = np.concatenate(parts)
        last = self._start + len(self._buffer) - 1 - self._half  # newest usable centre
        end = ((last + 1) * self._up - 1) // self._down + 1
        if final:
            end = min(end, -(-self._received * self._up // self._down))
        outputs = np.arange(self._next, max(end, self._next))
        where = outputs * self._down
        centres, phases = where // self._up, where % self._up
        taps = self._buffer[centres[:, None] + self._offsets[None, :] - self._start]
        out = np.einsum("ij,ij->i", taps, self._bank[phases])
        self._next = int(outputs[-1]) + 1 if len(outputs) else self._next
        keep_from = (self._next * self._down) // self._up + 1 - self._half
        drop = max(0, keep_from - self._start)
        self._buffer, self._start = self._buffer[drop:], self._start + drop
        return np.clip(np.rint(out), -32768, 32767).astype("<i2")


#: Formats the HTTP door speaks, by the name a client asks for.
FORMATS = ("wav", "pcm", "flac", "mp3", "opus")


def soundfile_format(name: str, rate: int) -> tuple[int, dict[str, Any]]:
    """(output rate, soundfile options) of a compressed format: the HTTP door's and the
    `synth` command's files are encoded alike."""
    if name == "flac":
        return rate, {"format": "FLAC", "subtype": "PCM_16"}
    if name == "mp3":
        return rate, {
            "format": "MP3",
            "subtype": "MPEG_LAYER_III",
            "bitrate_mode": "CONSTANT",
            "compression_level": MP3_COMPRESSION,
        }
    if name == "opus":
        out_rate = next((r for r in OPUS_RATES if r >= rate), OPUS_RATES[-1])
        return out_rate, {"format": "OGG", "subtype": "OPUS"}
    raise ValueError(f"unknown format {name!r}")


def encoder_for(name: str, rate: int) -> Encoder:
    """A fresh encoder of format `name` (one of FORMATS) for audio at `rate`."""
    if name == "wav":
        return RawEncoder("audio/wav", wav_header(rate))
    if name == "pcm":
        return RawEncoder("audio/pcm")
    media_types = {"flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg"}
    if name not in media_types:
        raise ValueError(f"unknown format {name!r}")
    out_rate, options = soundfile_format(name, rate)
    return SoundfileEncoder(media_types[name], rate, out_rate, **options)
