"""Samples on their way to the listener: the soft limiter."""

from __future__ import annotations

import numpy as np

from wyoming_tts.audio import soft_limit


def test_limiter_never_clips() -> None:
    x = np.linspace(-4, 4, 10001, dtype=np.float32)
    y = soft_limit(x)
    assert float(np.max(np.abs(y))) < 1.0
    assert np.all(np.diff(y) >= 0)  # monotonic: no distortion folds
    small = np.array([0.5, -0.85], dtype=np.float32)
    assert np.array_equal(soft_limit(small), small)
