"""Seeded noise: the frontend's random ops fed from numpy, so a seed fixes the audio."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from wyoming_tts.model.noise import SeededFrontend, load_seeded, utterance_seed
from wyoming_tts.runtime.ort import session_options
from wyoming_tts.voices.loader import LoadedVoice

SCALES = (0.667, 1.0, 0.8)


@pytest.fixture(scope="module")
def front(voice: LoadedVoice, cache_dir: Path) -> SeededFrontend:
    seeded = load_seeded(voice.entry.model_path, cache_dir, session_options(1), voice.model.decoder)
    assert seeded is not None
    return seeded


def test_same_seed_same_latent_another_seed_another(
    voice: LoadedVoice, front: SeededFrontend
) -> None:
    (ids,) = voice.phoneme_ids("The kettle began to sing.")
    a, b = (front.frontend(ids, SCALES, None, 42) for _ in range(2))
    c = front.frontend(ids, SCALES, None, 43)
    assert a.z is not None and b.z is not None and c.z is not None
    assert np.array_equal(a.z, b.z)
    assert c.z.shape != a.z.shape or not np.array_equal(a.z, c.z)
    # Noise of the right size: z's spread is the voice's, not zero and not wild.
    unseeded = voice.model.frontend(ids, SCALES, None)
    assert unseeded.z is not None
    assert 0.5 < float(np.std(a.z)) / float(np.std(unseeded.z)) < 2


def test_an_utterance_longer_than_the_noise_fed_tiles_it(
    voice: LoadedVoice, front: SeededFrontend
) -> None:
    short = SeededFrontend(
        front._session, [replace(s, per_id=1) for s in front._specs], voice.model.decoder
    )
    (ids,) = voice.phoneme_ids("Somewhere down the street a dog barked twice.")
    latent = short.frontend(ids, SCALES, None, 1)
    assert latent.num_frames > len(ids)  # more frames than the noise fed: it was tiled
    audio = voice.model.decode(voice.model.with_flow(latent, 0), 0, latent.num_frames)
    assert float(np.abs(audio).max()) > 0.05


def test_utterance_seeds_depend_on_text_and_place() -> None:
    assert utterance_seed(1, "a", 0) == utterance_seed(1, "a", 0)
    assert (
        len(
            {
                utterance_seed(1, "a", 0),
                utterance_seed(1, "a", 1),
                utterance_seed(2, "a", 0),
                utterance_seed(1, "b", 0),
            }
        )
        == 4
    )
