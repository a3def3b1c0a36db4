"""Float audio to 16-bit PCM, and the Wyoming audio framing of one response.

Piper normalises each sentence by its own peak, which is only known once the
sentence is complete. A streaming decoder cannot wait for that, so we apply a
fixed per-voice gain (calibrated at load) and a soft limiter that never clips.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event

SAMPLE_WIDTH = 2
CHANNELS = 1
#: Packets Home Assistant's ffmpeg step reads from a streamed WAV before it writes
#: anything (ffmpeg's `max_ts_probe`), and the least it reads (`ffmpeg_gathers`).
_FFMPEG_PROBE_PACKETS = 50
_FFMPEG_PROBE_FLOOR_BYTES = 65536
_INT16_MAX = 32767.0
#: Above this level the limiter bends the curve so the output never reaches full scale.
LIMITER_KNEE = 0.9
#: The limiter's asymptote: a hair under full scale, so no sample is ever clipped.
LIMITER_CEILING = 0.99
#: Seconds of fade-out at the end of an utterance, against a click if it ends off zero.
END_FADE_SECONDS = 0.004
#: Seconds of fade-in at the start of a reply, against a pop as a speaker's output opens.
START_FADE_SECONDS = 0.005


def soft_limit(audio: np.ndarray, knee: float = LIMITER_KNEE) -> np.ndarray:
    """Identity below the knee; above it a tanh curve that never reaches the ceiling."""
    out = audio.astype(np.float32, copy=True)
    over = np.abs(out) > knee
    if np.any(over):
        span = LIMITER_CEILING - knee
        x = out[over]
        out[over] = np.sign(x) * (knee + span * np.tanh((np.abs(x) - knee) / span))
    return out


def to_pcm16(audio: np.ndarray, gain: float) -> bytes:
    """Gain, limit and convert to little-endian int16 bytes."""
    limited = soft_limit(audio * np.float32(gain))
    return np.round(limited * _INT16_MAX).astype("<i2").tobytes()


def fade_out(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    n = min(len(audio), int(sample_rate * END_FADE_SECONDS))
    if n <= 1:
        return audio
    out = audio.copy()
    out[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return out


def fade_in(pcm: bytes, sample_rate: int) -> bytes:
    """16-bit PCM with its first few ms ramped up from zero."""
    samples = np.frombuffer(pcm, dtype="<i2")
    n = min(len(samples), int(sample_rate * START_FADE_SECONDS))
    if n <= 1:
        return pcm
    head = np.round(samples[:n] * np.linspace(0.0, 1.0, n, dtype=np.float32)).astype("<i2")
    return head.tobytes() + pcm[n * SAMPLE_WIDTH :]


def ffmpeg_gathers(rate: int) -> int:
    """Samples of a streamed reply HA's ffmpeg step reads before a satellite hears any.

    Its WAV demuxer reads packets of the power of two at or below rate/10 samples and
    probes 50 of them, at least 64 KiB: 4.644 s at 22050 Hz, 3.2 s at 16000 Hz, measured
    with Home Assistant's argv for WAV, FLAC and MP3 (docs/decisions.md). A shorter
    reply is heard at its end.
    """
    packet = 1 << max(0, (rate // 10).bit_length() - 1)
    floor = _FFMPEG_PROBE_FLOOR_BYTES // (SAMPLE_WIDTH * CHANNELS)
    return max(_FFMPEG_PROBE_PACKETS * packet, floor)


def silence(seconds: float, sample_rate: int) -> bytes:
    return bytes(int(seconds * sample_rate) * SAMPLE_WIDTH * CHANNELS)


@dataclass
class AudioFramer:
    """Cuts PCM into `audio-chunk` events of at most `samples_per_chunk` samples.

    Owns the response's one `audio-start` and its timestamps, so every chunk of a
    response, whatever sentence it came from, has the same format. A piece is sent in
    full, its short end too (as wyoming-piper ends each sentence): audio held back until
    the next piece is made would delay the moment Home Assistant's ffmpeg has enough.
    """

    rate: int
    samples_per_chunk: int
    started: bool = False
    stopped: bool = False
    _samples_sent: int = 0

    def start(self) -> Event | None:
        if self.started:
            return None
        self.started = True
        return AudioStart(rate=self.rate, width=SAMPLE_WIDTH, channels=CHANNELS).event()

    def push(self, pcm: bytes) -> Iterator[Event]:
        """The piece's chunks, the last one shorter if it does not divide evenly."""
        chunk_bytes = self.samples_per_chunk * SAMPLE_WIDTH * CHANNELS
        for offset in range(0, len(pcm), chunk_bytes):
            yield self._chunk(pcm[offset : offset + chunk_bytes])

    def stop(self) -> Event:
        self.stopped = True
        return AudioStop(timestamp=self._timestamp_ms()).event()

    def _timestamp_ms(self) -> int:
        return int(self._samples_sent * 1000 / self.rate)

    def _chunk(self, data: bytes) -> Event:
        event = AudioChunk(
            rate=self.rate,
            width=SAMPLE_WIDTH,
            channels=CHANNELS,
            audio=data,
            timestamp=self._timestamp_ms(),
        ).event()
        self._samples_sent += len(data) // (SAMPLE_WIDTH * CHANNELS)
        return event
