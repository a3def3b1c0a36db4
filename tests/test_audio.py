"""Samples on their way to the listener: the soft limiter, the framer."""

from __future__ import annotations

import numpy as np
from wyoming.audio import AudioChunk

from wyoming_tts.audio import AudioFramer, ffmpeg_gathers, soft_limit


def test_limiter_never_clips() -> None:
    x = np.linspace(-4, 4, 10001, dtype=np.float32)
    y = soft_limit(x)
    assert float(np.max(np.abs(y))) < 1.0
    assert np.all(np.diff(y) >= 0)  # monotonic: no distortion folds
    small = np.array([0.5, -0.85], dtype=np.float32)
    assert np.array_equal(soft_limit(small), small)


def test_framer_sends_each_piece_whole_in_chunks_of_at_most_its_size() -> None:
    framer = AudioFramer(rate=1000, samples_per_chunk=1024)
    first = [AudioChunk.from_event(e) for e in framer.push(bytes(2 * 1500))]
    second = [AudioChunk.from_event(e) for e in framer.push(bytes(2 * 100))]
    assert [len(c.audio) // 2 for c in first + second] == [1024, 476, 100]
    assert [c.timestamp for c in first + second] == [0, 1024, 1500]
    assert framer.stop().data["timestamp"] == 1600


def test_what_ha_s_ffmpeg_gathers_follows_its_packets_not_a_fixed_time() -> None:
    """Measured with Home Assistant's argv and ffmpeg 9.0 (WAV, FLAC and MP3 alike)."""
    measured = {22050: 4.644, 16000: 3.2, 24000: 4.267, 44100: 4.644, 48000: 4.267, 8000: 4.096}
    for rate, seconds in measured.items():
        assert abs(ffmpeg_gathers(rate) / rate - seconds) < 0.001, rate
