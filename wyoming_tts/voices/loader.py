"""One voice in memory: its split graph, its phonemizer and its calibrated gain.

A loaded voice is immutable once made; the pool keeps its bookkeeping apart.
Everything here blocks (onnxruntime, espeak): callers run it on a worker thread.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from piper.config import PiperConfig
from piper.voice import PiperVoice

from ..errors import NoSpeech, VoiceLoadFailed
from ..model.noise import SeededFrontend, load_seeded
from ..model.vits import FloatArray, Latent, VitsModel
from ..runtime.ort import first_use_options, session_options
from .catalog import VoiceEntry

_LOGGER = logging.getLogger(__name__)

#: Ordinary sentences whose peaks set the fixed gain (piper normalises each to its own peak).
CALIBRATION_TEXT = (
    "The weather today is sunny with a light breeze. "
    "I have turned on the kitchen lights for you. "
    "Your timer for ten minutes has started."
)
#: The same for phonemizers that find nothing to say in English text (Latin letters).
CALIBRATION_TEXTS = {
    "hebrew": "מזג האוויר היום שמשי עם רוח קלה. הדלקתי לך את האור במטבח.",
    "japanese": "今日は晴れで、風が少しあります。台所の明かりをつけました。",
    "thai": "วันนี้อากาศแจ่มใสมีลมพัดเบาๆ ฉันเปิดไฟในครัวให้แล้ว",
    "pinyin": "今天天气晴朗，有微风。我已经为你打开了厨房的灯。",
}
KEEP_ALIVE_TEXT = "Ok."
#: Most phoneme ids per utterance (~250 characters); longer sentences are split at clauses,
#: then words. The text encoder's time and memory grow with its square (600: ~55 MB).
MAX_UTTERANCE_IDS = 600
#: Phonemes after which a speaker pauses within a sentence: where an utterance may be cut.
_CLAUSE_MARKS = (",", ";", ":")
#: Largest vocoder chunk in frames the engine asks for (~0.05 MB of working memory each,
#: plus 24 frames of overlap per call); warm-up grows kept decoder memory to it.
MAX_CHUNK_FRAMES = 300
#: piper-tts's extra phonemizers: what each imports, and the piper-tts extra installing it.
#: (Hebrew's diacritizer ships inside piper-tts; espeak voices need nothing more.)
PHONEMIZER_EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "pinyin": (("unicode_rbnf", "g2pw", "transformers"), "zh"),
    "japanese": (("pyopenjtalk",), "ja"),
    "thai": (("tltk", "pandas", "unicode_rbnf"), "th"),
}
#: Where piper's Chinese phonemizer looks for its g2pW model, beside the voice.
G2PW_DIR = "g2pW"


@dataclass(frozen=True)
class LoadOptions:
    """How every voice is loaded: one record, so a new loader knob is one field."""

    cache_dir: Path
    intra_op_threads: int = 1
    whole_voice_threads: int = 1
    """Threads of a voice served whole (`load_whole_voice`): its one run cannot be shared
    between workers, so it takes their cores, as piper's session does."""
    keep_decoder_memory: bool = False
    seedable: bool = False
    """Also load a frontend whose noise is seeded per utterance (`model.noise`)."""


@dataclass(frozen=True)
class SynthParams:
    """Scales for one request, resolved from settings and the voice's own defaults."""

    noise_scale: float
    length_scale: float
    noise_w_scale: float
    speaker_id: int | None
    seed: int | None = None
    """Seeds this utterance's noise (a seedable voice); None: onnxruntime's own noise."""

    @property
    def scales(self) -> tuple[float, float, float]:
        return (self.noise_scale, self.length_scale, self.noise_w_scale)


@dataclass(frozen=True, eq=False)
class LoadedVoice:
    """A voice ready to speak. Thread-safe: it holds only immutable state and sessions."""

    entry: VoiceEntry
    model: VitsModel
    phonemizer: PiperVoice
    gain: float = 1.0
    """Fixed output gain from the calibration text's peaks."""
    load_seconds: float = 0.0
    frame_seconds: float = 0.0
    """Decoder seconds per frame over whole utterances, measured at warm-up: the engine's
    first guess for sizing chunks."""
    seeded: SeededFrontend | None = None
    """The frontend with fed noise, for `SynthParams.seed` (`LoadOptions.seedable`)."""
    provisional: bool = False
    """Loaded whole for a first request (`load_whole_voice`): each utterance is
    peak-normalised, so its audio is not the split voice's; it stands in until that one is
    prepared in the background."""

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def sample_rate(self) -> int:
        return self.entry.info.sample_rate

    @property
    def hop_length(self) -> int:
        return self.model.hop_length

    def params(
        self,
        speaker_id: int | None,
        noise_scale: float | None,
        length_scale: float | None,
        noise_w_scale: float | None,
    ) -> SynthParams:
        cfg = self.phonemizer.config
        if speaker_id is None and cfg.num_speakers > 1:
            speaker_id = cfg.default_speaker_id
        return SynthParams(
            noise_scale=cfg.noise_scale if noise_scale is None else noise_scale,
            length_scale=cfg.length_scale if length_scale is None else length_scale,
            noise_w_scale=cfg.noise_w_scale if noise_w_scale is None else noise_w_scale,
            speaker_id=speaker_id if cfg.num_speakers > 1 else None,
        )

    def phoneme_ids(
        self, text: str, max_ids: int = MAX_UTTERANCE_IDS, lead_ids: int = 0
    ) -> list[list[int]]:
        """Utterances for one piece of text, none longer than max_ids.

        With ``lead_ids``, a first utterance longer than that ends at its last clause
        mark within it, if it has one: a reply's first frontend is on its critical path.
        """
        utterances: list[list[int]] = []
        for phonemes in self.phonemizer.phonemize(text):
            # Each phoneme costs its id plus a pad; BOS, pad and EOS frame the utterance.
            limit = max(1, (max_ids - 3) // 2)
            pending = _cap_phonemes(phonemes, limit)
            if lead_ids and not utterances and pending:
                pending[:1] = _lead_clause(pending[0], max(1, (lead_ids - 3) // 2))
            while pending:
                piece = pending.pop(0)
                if not _has_speech(piece):
                    continue
                ids = self.phonemizer.phonemes_to_ids(piece)
                if len(ids) > max_ids and len(piece) > 1:
                    half = len(piece) // 2  # multi-id phonemes: halve and retry
                    pending[:0] = [piece[:half], piece[half:]]
                    continue
                utterances.append(ids)
        return utterances

    def frontend(self, ids: Sequence[int], params: SynthParams) -> Latent:
        if params.seed is not None and self.seeded is not None:
            return self.seeded.frontend(ids, params.scales, params.speaker_id, params.seed)
        return self.model.frontend(ids, params.scales, params.speaker_id)

    def speak_blocking(
        self,
        text: str,
        params: SynthParams,
        max_ids: int = MAX_UTTERANCE_IDS,
        frame_costs: list[float] | None = None,
    ) -> list[np.ndarray]:
        """Whole utterances, unchunked: warm-up, calibration and tests.

        ``frame_costs`` receives the decoder's seconds per frame of each utterance (the
        flow already run, as for every chunk after the first).
        """
        out = [
            self.decode_whole(ids, params, frame_costs) for ids in self.phoneme_ids(text, max_ids)
        ]
        if not out:
            raise NoSpeech("Nothing to say in that text.")
        return out

    def decode_whole(
        self, ids: Sequence[int], params: SynthParams, frame_costs: list[float] | None = None
    ) -> FloatArray:
        """One utterance unchunked; ``frame_costs`` gets the decoder's seconds per frame."""
        latent = self.model.with_flow(self.frontend(ids, params), 0)
        started = time.perf_counter()
        audio = self.model.decode(latent, 0, latent.num_frames)
        if frame_costs is not None:
            frame_costs.append((time.perf_counter() - started) / max(1, latent.num_frames))
        return audio


def _has_speech(phonemes: Sequence[str]) -> bool:
    return any(p.strip() and p not in ",.;:!?¡¿—…\"'()-" for p in phonemes)


def _lead_clause(phonemes: list[str], limit: int) -> list[list[str]]:
    """The phonemes cut after their last clause mark within limit, if longer and it has one.

    Only at a clause mark, where a speaker pauses anyway: never at a word gap.
    """
    if len(phonemes) <= limit:
        return [phonemes]
    for i in range(min(limit, len(phonemes) - 1) - 1, limit // 3, -1):
        if phonemes[i] in _CLAUSE_MARKS:
            rest = phonemes[i + 1 :]
            while rest and rest[0] == " ":
                rest = rest[1:]
            if _has_speech(rest):
                return [phonemes[: i + 1], rest]
    return [phonemes]


def _cap_phonemes(phonemes: list[str], limit: int) -> list[list[str]]:
    """Split a phoneme list at clause marks, then word gaps, into pieces of at most limit."""
    if len(phonemes) <= limit:
        return [phonemes]
    pieces: list[list[str]] = []
    rest = phonemes
    while len(rest) > limit:
        window = rest[:limit]
        cut = -1
        for marks in (_CLAUSE_MARKS, (" ",)):
            for i in range(len(window) - 1, limit // 3, -1):
                if window[i] in marks:
                    cut = i + 1
                    break
            if cut > 0:
                break
        if cut <= 0:
            cut = limit
        pieces.append(rest[:cut])
        rest = rest[cut:]
        while rest and rest[0] == " ":
            rest = rest[1:]
    if rest:
        pieces.append(rest)
    return pieces


def load_voice(entry: VoiceEntry, options: LoadOptions) -> LoadedVoice:
    """Load, split and warm a voice with real inference over the whole graph.

    With ``keep_decoder_memory``, the decoder also runs once at the largest sizes a
    request can give it, so its kept memory is part of the idle figure rather than a
    surprise on the first long reply.

    Raises VoiceLoadFailed for anything wrong with the files, so a bad voice
    fails its own requests and nothing else.
    """
    started = time.perf_counter()
    warm_up = WarmUp(open_voice(entry, options), options)
    try:
        for step in warm_up.steps():
            step()
    except Exception as err:
        raise warm_up.failed(err) from err
    return replace(warm_up.result(), load_seconds=time.perf_counter() - started)


def open_voice(entry: VoiceEntry, options: LoadOptions) -> LoadedVoice:
    """The voice's split graph (split now unless cached), phonemizer and sessions; not warm.

    Raises VoiceLoadFailed, as `load_voice` does.
    """
    _check_phonemizer(entry)
    with _load_errors(entry):
        model = VitsModel.load(
            entry.model_path,
            options.cache_dir,
            session_options(options.intra_op_threads),
            entry.info.hop_length,
            keep_decoder_memory=options.keep_decoder_memory,
            # Kept decoder memory is held once for all voices, not once a voice.
            decoder_options=session_options(
                options.intra_op_threads, shared_arena=options.keep_decoder_memory
            ),
        )
        phonemizer = _phonemizer(entry)
        seeded = (
            load_seeded(
                entry.model_path,
                options.cache_dir,
                session_options(options.intra_op_threads),
                model.decoder,
            )
            if options.seedable
            else None
        )
    return LoadedVoice(entry=entry, model=model, phonemizer=phonemizer, seeded=seeded)


def load_whole_voice(entry: VoiceEntry, options: LoadOptions, spin: bool = False) -> LoadedVoice:
    """The voice as piper loads it: one session over its own graph, no split, no warm-up.

    A first request is served with it, so it waits no longer than wyoming-piper's load;
    the split voice is prepared in the background and replaces it (`VoicePool`).
    ``spin``: its runs spin, as piper's do (for a first request with no other in flight).
    """
    started = time.perf_counter()
    _check_phonemizer(entry)
    with _load_errors(entry):
        model = VitsModel.load_whole(
            entry.model_path,
            first_use_options(options.whole_voice_threads, spin=spin),
            entry.info.hop_length,
        )
        phonemizer = _phonemizer(entry)
    return LoadedVoice(
        entry=entry,
        model=model,
        phonemizer=phonemizer,
        provisional=True,
        load_seconds=time.perf_counter() - started,
    )


@contextlib.contextmanager
def _load_errors(entry: VoiceEntry) -> Iterator[None]:
    """Anything wrong with the files fails this voice's load, and nothing else."""
    try:
        yield
    except Exception as err:
        _LOGGER.debug("Load of %s failed", entry.name, exc_info=True)
        raise VoiceLoadFailed(f"Voice '{entry.name}' could not be loaded: {_reason(err)}") from err


def _phonemizer(entry: VoiceEntry) -> PiperVoice:
    """piper's own text-to-ids, without a session (we run the graphs)."""
    config = PiperConfig.from_dict(entry.info.raw)
    return PiperVoice(session=None, config=config, download_dir=entry.model_path.parent)


def _check_phonemizer(entry: VoiceEntry) -> None:
    missing = phonemizer_problem(str(entry.info.raw.get("phoneme_type", "espeak")), entry)
    if missing is not None:
        raise VoiceLoadFailed(f"Voice '{entry.name}' cannot be loaded: {missing}")


class WarmUp:
    """A voice's calibration and working-size runs, one step at a time.

    `load_voice` runs the steps back to back; the pool runs them in the background, each
    when no request is in flight, so a split voice is warmed without a request waiting.
    Each step is a zero-argument blocking call (for an inference thread); the steps after
    the first exist only once it has run.
    """

    def __init__(self, voice: LoadedVoice, options: LoadOptions) -> None:
        self._voice = voice
        self._options = options
        # Noise off: the gain is then the same at every load, so a text's audio is too
        # (`wyoming-tts synth` files are byte-identical from run to run).
        self._params = voice.params(None, 0.0, None, 0.0)
        self._utterances: list[list[int]] = []
        self._peaks: list[float] = []
        self._costs: list[float] = []

    def steps(self) -> Iterator[Callable[[], None]]:
        """The runs still to do, in order; phonemizing the calibration text comes first."""
        yield self._phonemize
        for ids in self._utterances:
            yield partial(self._calibrate, ids)
        if self._options.keep_decoder_memory:
            yield self._reach_working_size

    def result(self) -> LoadedVoice:
        """The voice with its gain and decoder cost, once every step has run."""
        usable = [p for p in self._peaks if p > 1e-4]
        return replace(
            self._voice,
            gain=statistics.median(1.0 / p for p in usable) if usable else 1.0,
            frame_seconds=statistics.median(self._costs),
        )

    def failed(self, err: BaseException) -> VoiceLoadFailed:
        """What a step's error means for the voice."""
        name = self._voice.name
        _LOGGER.debug("Warm-up of %s failed", name, exc_info=err)
        return VoiceLoadFailed(f"Voice '{name}' failed its warm-up: {_reason(err)}")

    def _phonemize(self) -> None:
        self._utterances[:] = self._voice.phoneme_ids(_calibration_text(self._voice))
        if not self._utterances:
            raise NoSpeech("Nothing to say in the calibration text.")

    def _calibrate(self, ids: list[int]) -> None:
        costs: list[float] = []
        audio = self._voice.decode_whole(ids, self._params, costs)
        self._peaks.append(float(np.max(np.abs(audio))))
        self._costs.extend(costs)

    def _reach_working_size(self) -> None:
        _reach_working_size(
            self._voice, self._params, MAX_UTTERANCE_IDS, MAX_CHUNK_FRAMES, self._utterances
        )


def phonemizer_problem(phoneme_type: str, entry: VoiceEntry) -> str | None:
    """What the voice's phonemizer lacks here, naming what to install (None: nothing).

    Checked before anything loads, so a missing extra fails the load with a message a
    user can act on, never a request halfway through; nothing is downloaded at run time.
    """
    needed = PHONEMIZER_EXTRAS.get(phoneme_type)
    if needed is None:
        return None
    modules, extra = needed
    absent = [name for name in modules if importlib.util.find_spec(name) is None]
    if absent:
        return (
            f"its phoneme_type '{phoneme_type}' needs {', '.join(absent)}: "
            f"install piper-tts's extra with pip install 'piper-tts[{extra}]'"
        )
    model_dir = entry.model_path.parent / G2PW_DIR
    if phoneme_type == "pinyin" and not (model_dir / "g2pw.onnx").is_file():
        return f"its phoneme_type 'pinyin' needs the g2pW model (g2pw.onnx) in {model_dir}"
    return None


def _reach_working_size(
    voice: LoadedVoice,
    params: SynthParams,
    max_ids: int,
    max_chunk_frames: int,
    pieces: Sequence[Sequence[int]] | None = None,
) -> None:
    """Run flow and vocoder once over the largest inputs the engine can give them.

    Kept arenas grow to the largest run they have seen, by powers of two: a first long
    reply would otherwise add ~30 MB that stays. The utterance is the calibration
    text's ids (``pieces``, if already phonemized) repeated up to ``max_ids``; its audio
    is thrown away.
    """
    if pieces is None:
        pieces = voice.phoneme_ids(_calibration_text(voice), max_ids)
    ids: list[int] = []
    while pieces and len(ids) < max_ids:
        for piece in pieces:
            ids.extend(piece)
    latent = voice.model.with_flow(voice.frontend(ids[:max_ids], params), 0)
    margin = voice.model.margin
    # The engine's largest vocoder call is a remainder of up to max_chunk_frames + 2
    # margins taken whole, plus its left context: one margin more covers it.
    end = min(latent.num_frames, max_chunk_frames + 3 * margin)
    voice.model.decode(latent, min(margin, end), end)


def reach_working_size(voice: LoadedVoice) -> None:
    """Grow kept decoder memory again to the largest run a request can make, as at load
    (after the shared arena was emptied)."""
    params = voice.params(None, 0.0, None, 0.0)
    _reach_working_size(voice, params, MAX_UTTERANCE_IDS, MAX_CHUNK_FRAMES)


def _calibration_text(voice: LoadedVoice) -> str:
    phoneme_type = voice.phonemizer.config.phoneme_type
    return CALIBRATION_TEXTS.get(str(phoneme_type.value), CALIBRATION_TEXT)


def keep_alive(voice: LoadedVoice) -> None:
    """A tiny inference through all graphs, so idle pages and caches stay warm."""
    phoneme_type = str(voice.phonemizer.config.phoneme_type.value)
    text = CALIBRATION_TEXTS[phoneme_type][:8] if phoneme_type in CALIBRATION_TEXTS else None
    voice.speak_blocking(text or KEEP_ALIVE_TEXT, voice.params(None, None, None, None))


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]
