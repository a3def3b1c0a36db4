"""Frame-chunked VITS synthesis: run the frontend once, decode the latent in windows.

The decoder is convolutional over frames, so decoding frames [start, end) with ``margin``
frames of context on each side and keeping the centre reproduces the full decode (within
float rounding). That lets audio be streamed with a latency of one chunk rather than one
utterance.

When the decoder also splits into flow and vocoder, the flow (cheap, 32 frames of reach)
can run once over the rest of an utterance (`with_flow`) and only the vocoder (most of the
cost, ~12 frames of reach) is run in windows; before that, a window runs both. Voices whose
graph cannot be split fall back to whole-utterance synthesis behind the same interface.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

from ..runtime.ort import PROVIDERS
from .split import SplitModel, VocoderStage, split_voice_model

_LOGGER = logging.getLogger(__name__)

#: Frames of context decoded on each side of a chunk; the flow + HiFi-GAN receptive field
#: of medium Piper voices fits in this (chunked output within 1 int16 LSB of a full decode).
MARGIN_FRAMES = 32
DEFAULT_HOP_LENGTH = 256

#: Frames per run of the vocoder's later stages: their working memory is 8-32x that of
#: the first per frame, so short runs bound it (~0.3 MB per frame at the last stage).
STAGE_WINDOW_FRAMES = 64
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
    flowed: np.ndarray | None = None
    """Flow output for frames [flowed_from, num_frames), once `with_flow` has run."""
    flowed_from: int = 0


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
        split: SplitModel | None,
        decoder_session: onnxruntime.InferenceSession | None = None,
        flow_session: onnxruntime.InferenceSession | None = None,
        vocoder_session: onnxruntime.InferenceSession | None = None,
        tail_sessions: Sequence[onnxruntime.InferenceSession] = (),
        margin: int = MARGIN_FRAMES,
        shrink_arena: bool = False,
        keep_decoder_memory: bool = False,
    ) -> None:
        if hop_length <= 0:
            raise ValueError(f"hop_length must be positive, got {hop_length}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.hop_length = hop_length
        self._frontend = frontend_session
        self._split = split
        self._decoder = decoder_session
        self._flow = flow_session
        self._vocoder = vocoder_session
        staged = split.vocoder if split is not None else None
        if flow_session is None or vocoder_session is None:
            staged = None
        if staged is not None and len(tail_sessions) != len(staged.tail):
            raise ValueError("one session per vocoder stage is needed")
        self._tail = list(zip(staged.tail, tail_sessions, strict=True)) if staged else []
        self.staged = staged is not None
        """Flow and vocoder are separate sessions (`with_flow` does something)."""
        self.splittable = split is not None and (self.staged or decoder_session is not None)
        self._flow_margin = staged.flow_margin if staged is not None else 0
        self.margin = staged.vocoder_margin if staged is not None else margin
        """Frames of context decoded twice on each side of a window."""
        # The first stage's output is exact but within its own reach of a window's edges,
        # and that reach plus the later stages' is within the margin: so the later stages
        # need only their own reach of it around the frames kept.
        context = staged.tail_context if staged is not None and self._tail else None
        self._tail_context = context if context is not None and context <= self.margin else None
        """Frames of the first stage's output the later stages get on each side of a chunk;
        None: they run over the whole window."""
        # With the CPU arena on, each run shrinks it afterwards: the arena's speed inside a
        # run without holding its peak between runs. Decoder runs may keep it instead
        # (keep_decoder_memory): no pages to fault in again, at the cost of holding the
        # arena's power-of-two growth for as long as the voice stays loaded.
        self._run_options = onnxruntime.RunOptions()
        if shrink_arena:  # onnxruntime rejects the entry when the session has no arena
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._decoder_options = (
            onnxruntime.RunOptions() if keep_decoder_memory else self._run_options
        )
        self._frontend_inputs = frozenset(i.name for i in frontend_session.get_inputs())
        self._frontend_outputs = [o.name for o in frontend_session.get_outputs()]
        self._flow_inputs = _input_names(flow_session)
        self._vocoder_inputs = _input_names(vocoder_session)

    @classmethod
    def load(
        cls,
        model_path: Path,
        cache_dir: Path,
        session_options: onnxruntime.SessionOptions,
        hop_length: int,
        margin: int = MARGIN_FRAMES,
        *,
        keep_decoder_memory: bool = False,
    ) -> VitsModel:
        """Load a voice, splitting it (or reusing the cached split) when possible.

        The flow/vocoder cut is preferred; if it fails its probe the joint decoder is
        tried; unsplittable voices, or splits that fail the probe, are loaded whole so the
        server still works, only without chunked decoding. One log line says why.
        """
        split = split_voice_model(model_path, cache_dir)

        def session(path: Path) -> onnxruntime.InferenceSession:
            return onnxruntime.InferenceSession(
                str(path), sess_options=session_options, providers=PROVIDERS
            )

        shrink = session_options.enable_cpu_mem_arena
        keep = keep_decoder_memory

        def whole() -> VitsModel:
            return cls(
                hop_length=hop_length,
                frontend_session=session(model_path),
                split=None,
                margin=margin,
                shrink_arena=shrink,
            )

        if split is None:
            _LOGGER.info(
                "No decoder seam recognised in %s; using whole-utterance synthesis", model_path
            )
            return whole()
        attempts: list[tuple[str, dict[str, Path]]] = []
        if split.vocoder is not None:
            paths = {"flow": split.vocoder.flow_path, "vocoder": split.vocoder.vocoder_path}
            paths.update({f"tail{i}": t.path for i, t in enumerate(split.vocoder.tail)})
            attempts.append(("flow/vocoder split", paths))
        attempts.append(("decoder split", {"decoder": split.decoder_path}))
        problems: list[str] = []
        for what, paths in attempts:
            try:
                parts = {name: session(path) for name, path in paths.items()}
                model = cls(
                    hop_length=hop_length,
                    frontend_session=session(split.frontend_path),
                    split=split,
                    decoder_session=parts.get("decoder"),
                    flow_session=parts.get("flow"),
                    vocoder_session=parts.get("vocoder"),
                    tail_sessions=[v for k, v in parts.items() if k.startswith("tail")],
                    margin=margin,
                    shrink_arena=shrink,
                    keep_decoder_memory=keep,
                )
                problem = model._probe()
            except Exception as err:  # e.g. a damaged cache file; the whole model works
                problem = f"{type(err).__name__}: {err}"
            if problem is None:
                if problems:
                    _LOGGER.warning(
                        "Using the %s of %s (%s)", what, model_path, "; ".join(problems)
                    )
                return model
            problems.append(f"{what} unusable: {problem}")
        _LOGGER.warning(
            "Split of %s is unusable (%s); using whole-utterance synthesis",
            model_path,
            "; ".join(problems),
        )
        return whole()

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

    def with_flow(self, latent: Latent, start: int) -> Latent:
        """``latent`` with the flow run once from frame ``start`` (less margins) to the end.

        Later `decode` calls from ``start`` on then run only the vocoder. A no-op for
        voices without the flow/vocoder cut, or when already done.
        """
        if not self.staged or latent.z is None:
            return latent
        lo = max(0, start - self.margin)
        if latent.flowed is not None and latent.flowed_from <= lo:
            return latent
        first = max(0, lo - self._flow_margin)
        flowed = self._run_flow(latent, first, latent.num_frames)
        return replace(latent, flowed=_readonly(flowed[:, :, lo - first :]), flowed_from=lo)

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
        audio, first = self._decode_window(latent, lo, hi, keep=(start, end))
        return np.ascontiguousarray(audio[(start - first) * hop : (end - first) * hop])

    def _decode_window(
        self,
        latent: Latent,
        lo: int,
        hi: int,
        stage_frames: int = STAGE_WINDOW_FRAMES,
        keep: tuple[int, int] | None = None,
    ) -> tuple[FloatArray, int]:
        """Raw decoder output for frames [lo, hi), edges included, and its first frame.

        With ``keep``, the frames wanted, the later vocoder stages run only over those and
        the context they need, so the output may start after ``lo`` and end before ``hi``.
        """
        split = self._split
        if split is None or latent.z is None:
            raise ValueError("latent was not produced by this model's split frontend")
        g_name = split.g_name
        if self._vocoder is not None and split.vocoder is not None and self.staged:
            if latent.flowed is not None and lo >= latent.flowed_from:
                seam = latent.flowed[:, :, lo - latent.flowed_from : hi - latent.flowed_from]
            else:
                flow_lo = max(0, lo - self._flow_margin)
                flow_hi = min(latent.num_frames, hi + self._flow_margin)
                seam = self._run_flow(latent, flow_lo, flow_hi)[:, :, lo - flow_lo : hi - flow_lo]
            feeds = {split.vocoder.seam_name: np.ascontiguousarray(seam)}
            if g_name is not None and g_name in self._vocoder_inputs and latent.g is not None:
                feeds[g_name] = latent.g
            out = self._vocoder.run(None, feeds, self._decoder_options)[0]
            if keep is not None and self._tail_context is not None:
                # The later stages need the first stage's output only within their reach
                # of the frames kept.
                first = max(lo, keep[0] - self._tail_context)
                last = min(hi, keep[1] + self._tail_context)
                rate = self._tail[0][0].rate
                out = out[..., (first - lo) * rate : (last - lo) * rate]
                lo, hi = first, last
            for stage, session in self._tail:
                out = self._run_stage(stage, session, out, hi - lo, stage_frames)
        elif self._decoder is not None:
            feeds = {split.z_name: latent.z[:, :, lo:hi]}
            if latent.mask is not None:
                feeds[split.mask_name] = latent.mask[:, :, lo:hi]
            if g_name is not None and latent.g is not None:
                feeds[g_name] = latent.g
            out = self._decoder.run(None, feeds, self._decoder_options)[0]
        else:
            raise ValueError("model has no decoder")
        audio: FloatArray = out.reshape(-1)
        return audio, lo

    def _run_stage(
        self,
        stage: VocoderStage,
        session: onnxruntime.InferenceSession,
        inputs: np.ndarray,
        frames: int,
        window_frames: int = STAGE_WINDOW_FRAMES,
    ) -> np.ndarray:
        """A later vocoder stage over ``frames`` frames, ``window_frames`` at a time."""
        rate = stage.rate
        if inputs.shape[-1] != frames * rate:
            raise ValueError(f"stage input has {inputs.shape[-1]} samples for {frames} frames")
        pieces = []
        for first in range(0, frames, window_frames):
            last = min(frames, first + window_frames)
            lo, hi = max(0, first - stage.margin), min(frames, last + stage.margin)
            window = np.ascontiguousarray(inputs[..., lo * rate : hi * rate])
            out = session.run(None, {stage.input_name: window}, self._decoder_options)[0]
            per_frame = out.shape[-1] // (hi - lo)
            pieces.append(out[..., (first - lo) * per_frame : (last - lo) * per_frame])
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=-1)

    def _run_flow(self, latent: Latent, lo: int, hi: int) -> np.ndarray:
        """Flow output for frames [lo, hi), edges included (invalid within its margin)."""
        split = self._split
        if self._flow is None or split is None or latent.z is None:
            raise ValueError("model has no flow session")
        feeds = {split.z_name: latent.z[:, :, lo:hi]}
        if latent.mask is not None and split.mask_name in self._flow_inputs:
            feeds[split.mask_name] = latent.mask[:, :, lo:hi]
        g_name = split.g_name
        if g_name is not None and g_name in self._flow_inputs and latent.g is not None:
            feeds[g_name] = latent.g
        flowed: np.ndarray = self._flow.run(None, feeds, self._decoder_options)[0]
        return flowed

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
            if self.staged:
                flowed = self._run_flow(latent, 0, frames)
                if flowed.ndim != 3 or flowed.shape[2] != frames:
                    return f"flow output has shape {flowed.shape} for {frames} frames"
            audio, _ = self._decode_window(latent, 0, frames)
            if audio.shape[0] != frames * self.hop_length:
                return f"{audio.shape[0]} samples for {frames} frames at hop {self.hop_length}"
            if self._tail and frames > 2:
                # The later stages in sub-windows of a third must give the same audio.
                pieces, _ = self._decode_window(latent, 0, frames, max(1, frames // 3))
                worst = float(np.abs(pieces - audio).max(initial=0.0))
                if worst > 2 / 32767:
                    return f"vocoder stages in sub-windows differ by {worst * 32767:.0f} LSB"
            context = self._tail_context
            if context is not None and frames > 2 * context + 2:
                # ... and so must the later stages run only around the frames kept.
                keep = (context + 1, frames - context - 1)
                kept, first = self._decode_window(latent, 0, frames, keep=keep)
                hop = self.hop_length
                got = kept[(keep[0] - first) * hop : (keep[1] - first) * hop]
                worst = float(np.abs(got - audio[keep[0] * hop : keep[1] * hop]).max())
                if worst > 2 / 32767:
                    return f"vocoder stages around kept frames differ by {worst * 32767:.0f} LSB"
        except Exception as err:  # a probe failure must not stop the voice from loading
            return f"{type(err).__name__}: {err}"
        return None


def _input_names(session: onnxruntime.InferenceSession | None) -> frozenset[str]:
    return frozenset(i.name for i in session.get_inputs()) if session is not None else frozenset()


def _readonly(array: np.ndarray) -> np.ndarray:
    """Contiguous read-only view (keeps dtype), so Latents can be shared across threads."""
    out = np.ascontiguousarray(array)
    out.setflags(write=False)
    return out
