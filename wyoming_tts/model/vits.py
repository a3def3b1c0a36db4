"""Frame-chunked VITS synthesis: run the frontend once, decode the latent in windows.

The decoder is convolutional over frames, so decoding frames [start, end) with ``margin``
frames of context on each side and keeping the centre reproduces the full decode (within
float rounding). That lets audio be streamed with a latency of one chunk rather than one
utterance.

When the decoder also splits into flow and vocoder, the flow (cheap, 32 frames of reach)
can run ahead over a span of an utterance (`with_flow`, extended piece by piece) and only
the vocoder (most of the cost, ~12 frames of reach) is run in windows over what it covers;
outside it, a window runs both. Voices whose graph cannot be split fall back to
whole-utterance synthesis behind the same interface.
Which of the three decoders a voice gets is settled once, at load.
"""

from __future__ import annotations

import copy
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from onnxruntime import InferenceSession, RunOptions, SessionOptions

from ..runtime.ort import ARENA_SHRINKAGE, PROVIDERS, new_run_options
from .split import SplitModel, VocoderSplit, VocoderStage, split_voice_model

_LOGGER = logging.getLogger(__name__)

#: Frames of context decoded on each side of a chunk; the flow + HiFi-GAN receptive field
#: of medium Piper voices fits in this (chunked output within 1 int16 LSB of a full decode).
MARGIN_FRAMES = 32

#: Frames per run of the vocoder's later stages: their working memory is 8-32x that of
#: the first per frame, so short runs bound it (~0.3 MB per frame at the last stage).
STAGE_WINDOW_FRAMES = 64
#: Phoneme ids valid in every Piper voice (BOS, pad, EOS) for the load-time probe.
_PROBE_IDS = (1, 0, 2, 0, 1, 0, 2)
#: How far (as float audio) a probe's partial decode may be from its whole decode.
_PROBE_TOLERANCE = 2 / 32767
#: Below this peak an utterance is silence, not something to normalise (piper's bound).
_SILENT_PEAK = 1e-8

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FlowPiece:
    """The flow's output for frames [start, end) of one utterance."""

    start: int
    values: np.ndarray
    """Shape [1, C, frames]; read-only."""

    @property
    def end(self) -> int:
        return self.start + int(self.values.shape[2])


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
    flowed: tuple[FlowPiece, ...] = ()
    """The flow's output over consecutive spans, in order: what decodes take instead of
    running the flow themselves."""

    @property
    def flowed_from(self) -> int:
        return self.flowed[0].start if self.flowed else 0

    @property
    def flowed_to(self) -> int:
        """End of the frames the flow has run over (0 if none)."""
        return self.flowed[-1].end if self.flowed else 0

    def covers(self, lo: int, hi: int) -> bool:
        """Whether the flow has run over all of frames [lo, hi)."""
        return bool(self.flowed) and self.flowed_from <= lo and hi <= self.flowed_to

    def flow_start(self, lo: int) -> int:
        """Where a flow over frames from ``lo`` on begins: after what it covers already,
        if that reaches ``lo`` (its pieces then follow on)."""
        return self.flowed_to if self.covers(lo, lo) else lo

    def with_flowed(self, pieces: Sequence[FlowPiece]) -> Latent:
        """With ``pieces`` (consecutive) after what the flow covers, or instead of it if
        they do not follow on."""
        if not pieces:
            return self
        if self.flowed and pieces[0].start == self.flowed_to:
            return replace(self, flowed=(*self.flowed, *pieces))
        return replace(self, flowed=tuple(pieces))

    def flowed_frames(self, lo: int, hi: int) -> np.ndarray:
        """The flow's output for frames [lo, hi), which it must cover."""
        out = [
            piece.values[
                :, :, max(lo, piece.start) - piece.start : min(hi, piece.end) - piece.start
            ]
            for piece in self.flowed
            if piece.start < hi and piece.end > lo
        ]
        return out[0] if len(out) == 1 else np.concatenate(out, axis=2)


class Decoder(Protocol):
    """Turns a frontend run into audio, one frame range at a time.

    One is chosen per voice at load, so that decoding never asks which parts a voice has.
    """

    margin: int
    """Frames of context decoded twice on each side of a window."""
    flows_separately: bool
    """`with_flow` does something: the flow can run apart from the vocoder."""
    windowed: bool
    """`decode` computes its frames' audio (False: it slices audio made already)."""

    def latent(self, outputs: Mapping[str, np.ndarray]) -> Latent:
        """The Latent of one frontend run (outputs by name)."""
        ...

    def flow(self, latent: Latent, lo: int, hi: int) -> FlowPiece | None:
        """The flow over frames [lo, hi) exactly (it reads its own reach around them);
        None if the flow cannot run apart from the vocoder."""
        ...

    def decode(self, latent: Latent, start: int, end: int) -> FloatArray:
        """Samples for frames [start, end), a range already checked to lie in ``latent``."""
        ...

    def stop_runs(self, stop: bool) -> None:
        """Runs of its sessions in flight, and later ones, fail at once (see `VitsModel`)."""
        ...

    def apart(self) -> Decoder:
        """The same sessions, with run options of their own (see `VitsModel.apart`)."""
        ...


class WholeDecoder:
    """For voices with no usable seam: the frontend is the whole voice and its output
    already the audio, so chunks are only slices of it (no lower latency)."""

    flows_separately = False
    windowed = False

    def __init__(
        self, audio_name: str, hop_length: int, margin: int, *, normalize: bool = False
    ) -> None:
        self.margin = margin  # nothing is decoded twice, but the engine sizes chunks by it
        self.normalize = normalize
        """Each utterance is scaled to a peak of 1, as piper does: a voice served whole
        needs no calibrated gain (`VitsModel.load_whole`)."""
        self._audio_name = audio_name
        self._hop = hop_length

    def latent(self, outputs: Mapping[str, np.ndarray]) -> Latent:
        audio = outputs[self._audio_name].reshape(-1).astype(np.float32, copy=False)
        if self.normalize:
            peak = float(np.max(np.abs(audio), initial=0.0))
            audio = audio / np.float32(peak) if peak >= _SILENT_PEAK else np.zeros_like(audio)
        return Latent(num_frames=math.ceil(audio.shape[0] / self._hop), audio=_readonly(audio))

    def flow(self, latent: Latent, lo: int, hi: int) -> FlowPiece | None:
        return None

    def decode(self, latent: Latent, start: int, end: int) -> FloatArray:
        """The samples of those frames: for the last chunk, whatever the model made."""
        if latent.audio is None:
            raise ValueError("latent was not produced by this model's frontend")
        return latent.audio[start * self._hop : end * self._hop].copy()

    def stop_runs(self, stop: bool) -> None:
        pass  # no sessions of its own: the frontend made the audio

    def apart(self) -> WholeDecoder:
        return self


class _SplitDecoder(ABC):
    """What the decoders of a split voice share: a window of frames with their context
    on each side is decoded, and its centre kept."""

    flows_separately = False
    windowed = True

    def __init__(
        self,
        split: SplitModel,
        hop_length: int,
        margin: int,
        run_options: RunOptions,
    ) -> None:
        self.margin = margin
        self._split = split
        self._hop = hop_length
        self._run_options = run_options

    def latent(self, outputs: Mapping[str, np.ndarray]) -> Latent:
        split = self._split
        z = _readonly(outputs[split.z_name])
        mask = _readonly(outputs[split.mask_name])
        g = _readonly(outputs[split.g_name]) if split.g_name else None
        return Latent(num_frames=int(z.shape[-1]), z=z, mask=mask, g=g)

    def flow(self, latent: Latent, lo: int, hi: int) -> FlowPiece | None:
        return None

    def stop_runs(self, stop: bool) -> None:
        self._run_options.terminate = stop

    def apart(self) -> _SplitDecoder:
        other = copy.copy(self)
        other._run_options = _run_options_like(self._run_options)
        return other

    def decode(self, latent: Latent, start: int, end: int) -> FloatArray:
        if start == end:
            return np.zeros(0, dtype=np.float32)
        lo = max(0, start - self.margin)
        hi = min(latent.num_frames, end + self.margin)
        audio, first = self._decode_window(latent, lo, hi, keep=(start, end))
        hop = self._hop
        return np.ascontiguousarray(audio[(start - first) * hop : (end - first) * hop])

    @abstractmethod
    def _decode_window(
        self, latent: Latent, lo: int, hi: int, keep: tuple[int, int] | None = None
    ) -> tuple[FloatArray, int]:
        """Raw decoder output for frames [lo, hi), edges included, and its first frame.

        ``keep`` (the frames wanted) lets a decoder skip context it does not need, so the
        output may start after ``lo`` and end before ``hi``.
        """

    def _frame_feeds(
        self, latent: Latent, lo: int, hi: int, inputs: frozenset[str]
    ) -> dict[str, np.ndarray]:
        """Frames [lo, hi) of the latent, as far as a part with ``inputs`` takes them."""
        split = self._split
        if latent.z is None:
            raise ValueError("latent was not produced by this model's split frontend")
        feeds = {split.z_name: latent.z[:, :, lo:hi]}
        if latent.mask is not None and split.mask_name in inputs:
            feeds[split.mask_name] = latent.mask[:, :, lo:hi]
        if split.g_name is not None and split.g_name in inputs and latent.g is not None:
            feeds[split.g_name] = latent.g
        return feeds

    def probe(self, latent: Latent) -> str | None:
        """What, on a tiny utterance, is not frame-aligned as assumed (None: nothing)."""
        frames = latent.num_frames
        if latent.z is None or latent.mask is None:
            return "frontend did not produce z and mask"
        if latent.z.ndim != 3 or latent.z.shape[0] != 1 or frames <= 0:
            return f"z has shape {latent.z.shape}"
        if latent.mask.shape != (1, 1, frames):
            return f"mask has shape {latent.mask.shape}, z has {latent.z.shape}"
        if latent.g is not None and (latent.g.ndim != 3 or latent.g.shape[2] != 1):
            return f"g has shape {latent.g.shape}"
        problem = self._seam_problem(latent)
        if problem is not None:
            return problem
        audio, _ = self._decode_window(latent, 0, frames)
        if audio.shape[0] != frames * self._hop:
            return f"{audio.shape[0]} samples for {frames} frames at hop {self._hop}"
        return self._window_problem(latent, audio)

    def _seam_problem(self, latent: Latent) -> str | None:
        """What is wrong with the tensors between the decoder's parts."""
        return None

    def _window_problem(self, latent: Latent, audio: FloatArray) -> str | None:
        """What differs from ``audio`` (the whole decode) when parts run over less."""
        return None


class JointDecoder(_SplitDecoder):
    """Flow and vocoder in one session, for voices whose decoder has no usable flow/vocoder
    cut: every window pays the flow's wider reach."""

    def __init__(
        self,
        split: SplitModel,
        session: InferenceSession,
        hop_length: int,
        margin: int,
        run_options: RunOptions,
    ) -> None:
        super().__init__(split, hop_length, margin, run_options)
        self._session = session
        self._inputs = _input_names(session)

    def _decode_window(
        self, latent: Latent, lo: int, hi: int, keep: tuple[int, int] | None = None
    ) -> tuple[FloatArray, int]:
        feeds = self._frame_feeds(latent, lo, hi, self._inputs)
        audio: FloatArray = self._session.run(None, feeds, self._run_options)[0].reshape(-1)
        return audio, lo


class StagedDecoder(_SplitDecoder):
    """Flow, first vocoder stage and later vocoder stages as separate sessions.

    The flow can then run once per utterance, leaving windows only the vocoder's reach of
    context; the later stages, whose memory per frame is largest, run over short spans.
    """

    flows_separately = True

    def __init__(
        self,
        split: SplitModel,
        vocoder: VocoderSplit,
        flow: InferenceSession,
        head: InferenceSession,
        tail: Sequence[InferenceSession],
        hop_length: int,
        run_options: RunOptions,
    ) -> None:
        super().__init__(split, hop_length, vocoder.vocoder_margin, run_options)
        if len(tail) != len(vocoder.tail):
            raise ValueError("one session per vocoder stage is needed")
        self._seam_name = vocoder.seam_name
        self._flow_margin = vocoder.flow_margin
        self._flow = flow
        self._flow_inputs = _input_names(flow)
        self._head = head
        self._head_inputs = _input_names(head)
        self._tail = list(zip(vocoder.tail, tail, strict=True))
        # The first stage's output is exact but within its own reach of a window's edges,
        # and that reach plus the later stages' is within the margin: so the later stages
        # need only their own reach of it around the frames kept.
        context = vocoder.tail_context if self._tail else None
        self._tail_context = context if context is not None and context <= self.margin else None
        """Frames of the first stage's output the later stages get on each side of a chunk;
        None: they run over the whole window."""

    def flow(self, latent: Latent, lo: int, hi: int) -> FlowPiece:
        first = max(0, lo - self._flow_margin)
        flowed = self._run_flow(latent, first, min(latent.num_frames, hi + self._flow_margin))
        return FlowPiece(lo, _readonly(flowed[:, :, lo - first : hi - first]))

    def _decode_window(
        self,
        latent: Latent,
        lo: int,
        hi: int,
        keep: tuple[int, int] | None = None,
        *,
        stage_frames: int = STAGE_WINDOW_FRAMES,
    ) -> tuple[FloatArray, int]:
        """With ``keep``, the later stages run only over the frames kept and the context
        they need; each runs ``stage_frames`` at a time."""
        if latent.covers(lo, hi):
            seam = latent.flowed_frames(lo, hi)
        else:
            flow_lo = max(0, lo - self._flow_margin)
            flow_hi = min(latent.num_frames, hi + self._flow_margin)
            seam = self._run_flow(latent, flow_lo, flow_hi)[:, :, lo - flow_lo : hi - flow_lo]
        feeds = {self._seam_name: np.ascontiguousarray(seam)}
        g_name = self._split.g_name
        if g_name is not None and g_name in self._head_inputs and latent.g is not None:
            feeds[g_name] = latent.g
        out = self._head.run(None, feeds, self._run_options)[0]
        if keep is not None and self._tail_context is not None:
            first = max(lo, keep[0] - self._tail_context)
            last = min(hi, keep[1] + self._tail_context)
            rate = self._tail[0][0].rate
            out = out[..., (first - lo) * rate : (last - lo) * rate]
            lo, hi = first, last
        for stage, session in self._tail:
            out = self._run_stage(stage, session, out, hi - lo, stage_frames)
        audio: FloatArray = out.reshape(-1)
        return audio, lo

    def _run_stage(
        self,
        stage: VocoderStage,
        session: InferenceSession,
        inputs: np.ndarray,
        frames: int,
        window_frames: int,
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
            out = session.run(None, {stage.input_name: window}, self._run_options)[0]
            per_frame = out.shape[-1] // (hi - lo)
            pieces.append(out[..., (first - lo) * per_frame : (last - lo) * per_frame])
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=-1)

    def _run_flow(self, latent: Latent, lo: int, hi: int) -> np.ndarray:
        """Flow output for frames [lo, hi), edges included (invalid within its margin)."""
        feeds = self._frame_feeds(latent, lo, hi, self._flow_inputs)
        flowed: np.ndarray = self._flow.run(None, feeds, self._run_options)[0]
        return flowed

    def _seam_problem(self, latent: Latent) -> str | None:
        frames = latent.num_frames
        flowed = self._run_flow(latent, 0, frames)
        if flowed.ndim != 3 or flowed.shape[2] != frames:
            return f"flow output has shape {flowed.shape} for {frames} frames"
        return None

    def _window_problem(self, latent: Latent, audio: FloatArray) -> str | None:
        frames = latent.num_frames
        if self._tail and frames > 2:
            # The later stages in sub-windows of a third must give the same audio.
            pieces, _ = self._decode_window(latent, 0, frames, stage_frames=max(1, frames // 3))
            worst = float(np.abs(pieces - audio).max(initial=0.0))
            if worst > _PROBE_TOLERANCE:
                return f"vocoder stages in sub-windows differ by {worst * 32767:.0f} LSB"
        context = self._tail_context
        if context is not None and frames > 2 * context + 2:
            # ... and so must the later stages run only around the frames kept.
            keep = (context + 1, frames - context - 1)
            kept, first = self._decode_window(latent, 0, frames, keep=keep)
            hop = self._hop
            got = kept[(keep[0] - first) * hop : (keep[1] - first) * hop]
            worst = float(np.abs(got - audio[keep[0] * hop : keep[1] * hop]).max())
            if worst > _PROBE_TOLERANCE:
                return f"vocoder stages around kept frames differ by {worst * 32767:.0f} LSB"
        return None


class VitsModel:
    """A Piper voice that synthesises an utterance as frontend + frame-range decodes.

    Thread-safe: it holds only immutable state and onnxruntime sessions, whose ``run`` may
    be called concurrently.
    """

    def __init__(
        self,
        frontend: InferenceSession,
        decoder: Decoder,
        hop_length: int,
        run_options: RunOptions,
    ) -> None:
        self.hop_length = hop_length
        self.decoder = decoder
        self._frontend = frontend
        self._run_options = run_options
        self._frontend_inputs = _input_names(frontend)
        self._frontend_outputs = [o.name for o in frontend.get_outputs()]

    @classmethod
    def load(
        cls,
        model_path: Path,
        cache_dir: Path,
        session_options: SessionOptions,
        hop_length: int,
        margin: int = MARGIN_FRAMES,
        *,
        keep_decoder_memory: bool = False,
        decoder_options: SessionOptions | None = None,
    ) -> VitsModel:
        """Load a voice, splitting it (or reusing the cached split) when possible.

        The flow/vocoder cut is preferred; if it fails its probe the joint decoder is
        tried; unsplittable voices, or splits that fail the probe, are loaded whole so the
        server still works, only without chunked decoding. One log line says why.
        ``decoder_options`` open the decoder's sessions (default: ``session_options``),
        e.g. on the shared arena when their memory is kept.
        """
        if hop_length <= 0:
            raise ValueError(f"hop_length must be positive, got {hop_length}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        split = split_voice_model(model_path, cache_dir)

        def session(path: Path, options: SessionOptions = session_options) -> InferenceSession:
            return InferenceSession(str(path), sess_options=options, providers=PROVIDERS)

        def decoder_session(path: Path) -> InferenceSession:
            return session(path, decoder_options or session_options)

        # With the CPU arena on, each run shrinks it afterwards: the arena's speed inside a
        # run without holding its peak between runs. Decoder runs may keep it instead
        # (keep_decoder_memory): no pages to fault in again, at the cost of holding the
        # arena's power-of-two growth for as long as the voice stays loaded.
        run_options = new_run_options(shrink_arena=session_options.enable_cpu_mem_arena)
        decoder_run = new_run_options(shrink_arena=False) if keep_decoder_memory else run_options

        def whole() -> VitsModel:
            frontend = session(model_path)
            decoder = WholeDecoder(frontend.get_outputs()[0].name, hop_length, margin)
            return cls(frontend, decoder, hop_length, run_options)

        if split is None:
            _LOGGER.info(
                "No decoder seam recognised in %s; using whole-utterance synthesis", model_path
            )
            return whole()
        problems: list[str] = []
        for what, make in _split_decoders(split, decoder_session, hop_length, margin, decoder_run):
            try:
                decoder = make()
                model = cls(session(split.frontend_path), decoder, hop_length, run_options)
                problem = decoder.probe(model.frontend(_PROBE_IDS, (0.0, 1.0, 0.0), None))
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

    @classmethod
    def load_whole(
        cls,
        model_path: Path,
        session_options: SessionOptions,
        hop_length: int,
        margin: int = MARGIN_FRAMES,
    ) -> VitsModel:
        """The voice's own graph in one session, as piper loads it: no split, no probe.

        What a first request is served with while the split voice is prepared in the
        background; each utterance is peak-normalised, so no calibration is needed.
        """
        if hop_length <= 0:
            raise ValueError(f"hop_length must be positive, got {hop_length}")
        frontend = InferenceSession(
            str(model_path), sess_options=session_options, providers=PROVIDERS
        )
        run_options = new_run_options(shrink_arena=session_options.enable_cpu_mem_arena)
        decoder = WholeDecoder(frontend.get_outputs()[0].name, hop_length, margin, normalize=True)
        return cls(frontend, decoder, hop_length, run_options)

    @property
    def margin(self) -> int:
        """Frames of context decoded twice on each side of a window."""
        return self.decoder.margin

    def stop_runs(self, stop: bool = True) -> None:
        """Make this model's runs in flight, and each one after, fail at once (``True``),
        or run again (``False``).

        onnxruntime checks the flag between operators, so a run ends within one operator
        (~50 ms for a full-width high voice's largest): for work nobody waits for, a
        warm-up step, that must give way to a request. Only for a model no request uses, or
        one made `apart`.
        """
        self._run_options.terminate = stop
        self.decoder.stop_runs(stop)

    @property
    def runs_stopped(self) -> bool:
        return bool(self._run_options.terminate)

    def apart(self) -> VitsModel:
        """The same sessions, with run options of their own: `stop_runs` on it stops only
        the runs made through it.

        For work nobody waits for on a voice requests are using (the quiet-time arena
        settle), which must give way to a request without stopping the request's runs.
        """
        other = copy.copy(self)
        other.decoder = self.decoder.apart()
        other._run_options = _run_options_like(self._run_options)
        return other

    @property
    def flows_separately(self) -> bool:
        """`with_flow` does something (the flow and vocoder are separate sessions)."""
        return self.decoder.flows_separately

    @property
    def windowed(self) -> bool:
        """Decoding a frame range costs inference (it can be shared between workers)."""
        return self.decoder.windowed

    def needs_flow(self, latent: Latent, start: int = 0, end: int | None = None) -> bool:
        """Whether `with_flow` over [start, end) would still spare decodes there the flow."""
        if not self.decoder.flows_separately:
            return False
        return not latent.covers(*self._flow_span(latent, start, end))

    def flow(self, latent: Latent, lo: int, hi: int) -> FlowPiece | None:
        """The flow over frames [lo, hi) (decodes of a chunk read its margins' too), to
        add to ``latent`` with `Latent.with_flowed`; None for voices without the cut."""
        return self.decoder.flow(latent, lo, hi)

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
        outputs = self._frontend.run(None, feeds, self._run_options)
        return self.decoder.latent(dict(zip(self._frontend_outputs, outputs, strict=True)))

    def with_flow(self, latent: Latent, start: int, end: int | None = None) -> Latent:
        """``latent`` with the flow run over chunk frames [start, end) (to the end if None)
        and their margins, after what it covers already when that reaches ``start``.

        Later `decode` calls within that span then run only the vocoder. A no-op for
        voices without the flow/vocoder cut, or when already done.
        """
        if not self.needs_flow(latent, start, end):
            return latent
        lo, hi = self._flow_span(latent, start, end)
        piece = self.decoder.flow(latent, latent.flow_start(lo), hi)
        return latent if piece is None else latent.with_flowed([piece])

    def flowed_reach(self, latent: Latent, start: int) -> int | None:
        """The furthest end of a chunk from ``start`` whose decodes the flow covers already
        (margins included); None if it does not cover ``start``'s."""
        lo = self._flow_span(latent, start, start)[0]
        if not latent.covers(lo, lo):
            return None
        if latent.flowed_to >= latent.num_frames:
            return latent.num_frames
        return max(start, latent.flowed_to - self.margin)

    def _flow_span(self, latent: Latent, start: int, end: int | None) -> tuple[int, int]:
        """Frames whose flow the decodes of chunk frames [start, end) read."""
        stop = latent.num_frames if end is None else min(latent.num_frames, end + self.margin)
        return max(0, start - self.margin), stop

    def decode(self, latent: Latent, start: int, end: int) -> FloatArray:
        """Float32 mono samples for frames [start, end) of ``latent``.

        That is (end - start) * hop_length samples, except that the last chunk of an
        unsplit voice has whatever the model produced for those frames.
        """
        if not 0 <= start <= end <= latent.num_frames:
            raise ValueError(f"frame range [{start}, {end}) outside [0, {latent.num_frames}]")
        return self.decoder.decode(latent, start, end)

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


def _split_decoders(
    split: SplitModel,
    session: Callable[[Path], InferenceSession],
    hop_length: int,
    margin: int,
    run_options: RunOptions,
) -> list[tuple[str, Callable[[], _SplitDecoder]]]:
    """The decoders a split voice may use, best first, each named and opened on demand
    (so a damaged file fails only its own attempt)."""
    attempts: list[tuple[str, Callable[[], _SplitDecoder]]] = []
    vocoder = split.vocoder
    if vocoder is not None:

        def staged() -> _SplitDecoder:
            flow, head = session(vocoder.flow_path), session(vocoder.vocoder_path)
            tail = [session(stage.path) for stage in vocoder.tail]
            return StagedDecoder(split, vocoder, flow, head, tail, hop_length, run_options)

        attempts.append(("flow/vocoder split", staged))

    def joint() -> _SplitDecoder:
        return JointDecoder(split, session(split.decoder_path), hop_length, margin, run_options)

    attempts.append(("decoder split", joint))
    return attempts


def _run_options_like(options: RunOptions) -> RunOptions:
    """New run options, not stopped, that shrink the arena as ``options`` do."""
    try:
        shrinks = bool(options.get_run_config_entry(ARENA_SHRINKAGE))
    except RuntimeError:  # not set: onnxruntime raises for an absent key
        shrinks = False
    return new_run_options(shrink_arena=shrinks)


def _input_names(session: InferenceSession) -> frozenset[str]:
    return frozenset(i.name for i in session.get_inputs())


def _readonly(array: np.ndarray) -> np.ndarray:
    """Contiguous read-only view (keeps dtype), so Latents can be shared across threads."""
    out = np.ascontiguousarray(array)
    out.setflags(write=False)
    return out
