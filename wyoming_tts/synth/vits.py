"""Frame-chunked VITS synthesis: run the frontend once, decode the latent in windows.

The decoder is convolutional over frames, so decoding frames [start, end) with ``margin``
frames of context on each side and keeping the centre reproduces the full decode (within
float rounding). That lets audio be streamed with a latency of one chunk rather than one
utterance. Voices whose graph cannot be split fall back to whole-utterance synthesis behind
the same interface.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

from .split import SplitModel, split_voice_model

_LOGGER = logging.getLogger(__name__)

#: Frames of context decoded on each side of a chunk; the flow + HiFi-GAN receptive field
#: of medium Piper voices fits in this (chunked output within 1 int16 LSB of a full decode).
MARGIN_FRAMES = 32
DEFAULT_HOP_LENGTH = 256
_PROVIDERS = ["CPUExecutionProvider"]
#: Phoneme ids valid in every Piper voice (BOS, pad, EOS) for the load-time probe.
_PROBE_IDS = (1, 0, 2, 0, 1, 0, 2)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Latent:
    """One utterance's frontend output (or, for unsplit voices, its whole audio).

    Arrays are read-only so a Latent can be shared between decoding threads.
    """

    num_frames: int
    z: np.ndarray | None = None
    """Prior sample z_p, shape [1, C, num_frames] (split voices)."""
    mask: np.ndarray | None = None
    """Frame mask y_mask, shape [1, 1, num_frames] (split voices)."""
    g: np.ndarray | None = None
    """Speaker embedding, shape [1, G, 1] (multi-speaker split voices)."""
    audio: FloatArray | None = None
    """Whole-utterance audio (unsplit voices)."""


class VitsModel:
    """A Piper voice that synthesises an utterance as frontend + frame-range decodes.

    Thread-safe: it holds only immutable state and onnxruntime sessions, whose ``run`` may
    be called concurrently.
    """

    def __init__(
        self,
        *,
        hop_length: int,
        frontend_session: onnxruntime.InferenceSession,
        decoder_session: onnxruntime.InferenceSession | None,
        split: SplitModel | None,
        margin: int = MARGIN_FRAMES,
        shrink_arena: bool = False,
    ) -> None:
        if hop_length <= 0:
            raise ValueError(f"hop_length must be positive, got {hop_length}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.hop_length = hop_length
        self.margin = margin
        self.splittable = decoder_session is not None and split is not None
        self._frontend = frontend_session
        self._decoder = decoder_session
        self._split = split
        # With the CPU arena on, each run shrinks it afterwards: the arena's speed inside a
        # run (~10% on the decoder) without holding its peak between runs.
        self._run_options = onnxruntime.RunOptions()
        if shrink_arena:  # onnxruntime rejects the entry when the session has no arena
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._frontend_inputs = frozenset(i.name for i in frontend_session.get_inputs())
        self._frontend_outputs = [o.name for o in frontend_session.get_outputs()]

    @classmethod
    def load(
        cls,
        model_path: Path,
        cache_dir: Path,
        session_options: onnxruntime.SessionOptions,
        hop_length: int,
        margin: int = MARGIN_FRAMES,
    ) -> VitsModel:
        """Load a voice, splitting it (or reusing the cached split) when possible.

        Unsplittable voices, or splits that fail the load-time probe, are loaded whole so
        the server still works, only without chunked decoding.
        """
        split = split_voice_model(model_path, cache_dir)
        if split is not None:
            try:
                model = cls(
                    hop_length=hop_length,
                    frontend_session=onnxruntime.InferenceSession(
                        str(split.frontend_path), sess_options=session_options, providers=_PROVIDERS
                    ),
                    decoder_session=onnxruntime.InferenceSession(
                        str(split.decoder_path), sess_options=session_options, providers=_PROVIDERS
                    ),
                    split=split,
                    margin=margin,
                    shrink_arena=session_options.enable_cpu_mem_arena,
                )
                problem = model._probe()
            except Exception as err:  # e.g. a damaged cache file; the whole model still works
                problem = f"{type(err).__name__}: {err}"
            if problem is None:
                return model
            _LOGGER.warning(
                "Split of %s is unusable (%s); using whole-utterance synthesis", model_path, problem
            )
        else:
            _LOGGER.info(
                "No decoder seam recognised in %s; using whole-utterance synthesis", model_path
            )
        whole = onnxruntime.InferenceSession(
            str(model_path), sess_options=session_options, providers=_PROVIDERS
        )
        return cls(
            hop_length=hop_length,
            frontend_session=whole,
            decoder_session=None,
            split=None,
            margin=margin,
            shrink_arena=session_options.enable_cpu_mem_arena,
        )

    def frontend(
        self,
        phoneme_ids: Sequence[int],
        scales: tuple[float, float, float],
        speaker_id: int | None,
    ) -> Latent:
        """Run the per-utterance part (including the random sampling) once.

        ``scales`` is (noise_scale, length_scale, noise_w), as in Piper.
        """
        feeds = self._feeds(phoneme_ids, scales, speaker_id)
        if not self.splittable:
            audio = _readonly(
                self._frontend.run(None, feeds, self._run_options)[0]
                .reshape(-1)
                .astype(np.float32, copy=False)
            )
            return Latent(num_frames=math.ceil(audio.shape[0] / self.hop_length), audio=audio)
        assert self._split is not None
        results = dict(
            zip(
                self._frontend_outputs,
                self._frontend.run(None, feeds, self._run_options),
                strict=True,
            )
        )
        z = _readonly(results[self._split.z_name])
        mask = _readonly(results[self._split.mask_name])
        g = _readonly(results[self._split.g_name]) if self._split.g_name else None
        return Latent(num_frames=int(z.shape[-1]), z=z, mask=mask, g=g)

    def decode(self, latent: Latent, start: int, end: int) -> FloatArray:
        """Float32 mono samples for frames [start, end) of ``latent``.

        That is (end - start) * hop_length samples, except that the last chunk of an
        unsplit voice has whatever the model produced for those frames.
        """
        if not 0 <= start <= end <= latent.num_frames:
            raise ValueError(f"frame range [{start}, {end}) outside [0, {latent.num_frames}]")
        hop = self.hop_length
        if latent.audio is not None:
            return latent.audio[start * hop : end * hop].copy()
        if start == end:
            return np.zeros(0, dtype=np.float32)
        lo = max(0, start - self.margin)
        hi = min(latent.num_frames, end + self.margin)
        audio = self._decode_window(latent, lo, hi)
        return np.ascontiguousarray(audio[(start - lo) * hop : (end - lo) * hop])

    def _decode_window(self, latent: Latent, lo: int, hi: int) -> FloatArray:
        """Raw decoder output for frames [lo, hi), edges included."""
        if self._decoder is None or self._split is None or latent.z is None:
            raise ValueError("latent was not produced by this model's split frontend")
        feeds: dict[str, np.ndarray] = {self._split.z_name: latent.z[:, :, lo:hi]}
        if latent.mask is not None:
            feeds[self._split.mask_name] = latent.mask[:, :, lo:hi]
        if self._split.g_name is not None and latent.g is not None:
            feeds[self._split.g_name] = latent.g
        audio: FloatArray = self._decoder.run(None, feeds, self._run_options)[0].reshape(-1)
        return audio

    def full(
        self,
        phoneme_ids: Sequence[int],
        scales: tuple[float, float, float],
        speaker_id: int | None,
    ) -> FloatArray:
        """Whole-utterance synthesis (frontend + one decode of all frames)."""
        latent = self.frontend(phoneme_ids, scales, speaker_id)
        return self.decode(latent, 0, latent.num_frames)

    def _feeds(
        self,
        phoneme_ids: Sequence[int],
        scales: tuple[float, float, float],
        speaker_id: int | None,
    ) -> dict[str, np.ndarray]:
        ids = np.asarray(phoneme_ids, dtype=np.int64).reshape(1, -1)
        if ids.shape[1] == 0:
            raise ValueError("phoneme_ids must not be empty")
        feeds: dict[str, np.ndarray] = {
            "input": ids,
            "input_lengths": np.array([ids.shape[1]], dtype=np.int64),
            "scales": np.asarray(scales, dtype=np.float32),
        }
        if "sid" in self._frontend_inputs:
            # Same default as Piper: multi-speaker voices use speaker 0 when none is given.
            feeds["sid"] = np.array([speaker_id or 0], dtype=np.int64)
        return {k: v for k, v in feeds.items() if k in self._frontend_inputs}

    def _probe(self) -> str | None:
        """Check, on a tiny utterance, that the seam tensors are frame-aligned as assumed."""
        try:
            latent = self.frontend(_PROBE_IDS, (0.0, 1.0, 0.0), None)
            frames = latent.num_frames
            if latent.z is None or latent.mask is None:
                return "frontend did not produce z and mask"
            if latent.z.ndim != 3 or latent.z.shape[0] != 1 or frames <= 0:
                return f"z has shape {latent.z.shape}"
            if latent.mask.shape != (1, 1, frames):
                return f"mask has shape {latent.mask.shape}, z has {latent.z.shape}"
            if latent.g is not None and (latent.g.ndim != 3 or latent.g.shape[2] != 1):
                return f"g has shape {latent.g.shape}"
            audio = self._decode_window(latent, 0, frames)
        except Exception as err:  # a probe failure must not stop the voice from loading
            return f"{type(err).__name__}: {err}"
        if audio.shape[0] != frames * self.hop_length:
            return f"{audio.shape[0]} samples for {frames} frames at hop {self.hop_length}"
        return None


def _readonly(array: np.ndarray) -> np.ndarray:
    """Contiguous read-only view (keeps dtype), so Latents can be shared across threads."""
    out = np.ascontiguousarray(array)
    out.setflags(write=False)
    return out
