"""The speech service every front door calls: a request and its text in, PCM out.

It owns what a request means, whoever carries it: admission (load is turned
away with `busy`, never queued without bound), voice, language and speaker
resolution, the speech scales, text limits and normalisation, the engine call,
and the one log line per request. A front door only translates its protocol
into a `SpeechRequest` and the PCM pieces back into its own framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from .audio import CHANNELS, SAMPLE_WIDTH
from .config import Settings
from .errors import Busy, EmptyText, InternalError, NoSpeech, TextTooLong, TtsError, VoiceNotFound
from .runtime.scheduler import Scheduler
from .synth.cleanup import Cleaner, clean_text
from .synth.engine import SpeechStats, Synthesizer
from .synth.text import SentenceSplitter, add_punctuation, iter_sentences, normalize
from .voices.catalog import VoiceEntry
from .voices.loader import LoadedVoice, SynthParams
from .voices.pool import VoicePool

_LOGGER = logging.getLogger(__name__)

#: A whole text yields to other connections every this many sentences while it is split.
_SENTENCES_PER_YIELD = 8
#: Streamed chunks up to this long are cleaned on the loop (~0.1 ms a sentence); longer
#: ones on an inference thread.
_CLEAN_ON_LOOP_CHARS = 2000

#: Home Assistant's ffmpeg step emits nothing until it has this much audio or the reply
#: ends, so what a satellite hears first is the time to this much audio ("heard").
HEARD_AUDIO_SECONDS = 4.6

#: Text as a front door has it: whole, or streamed in pieces split anywhere.
TextSource = str | AsyncIterable[str]


@dataclass(frozen=True)
class SpeechRequest:
    """What a client asked for; unset fields take the server's defaults."""

    voice: str | None = None
    speaker: str | None = None
    language: str | None = None
    length_scale: float | None = None
    """Phoneme length for this request alone (speed = 1 / length_scale)."""
    seed: int | None = None
    """Seeds the noise (a seedable voice): the same text and seed, the same audio."""


@dataclass(frozen=True)
class AudioFormat:
    """The one format of a response: every piece of its PCM has it."""

    rate: int
    width: int = SAMPLE_WIDTH
    channels: int = CHANNELS


@dataclass(frozen=True)
class Finished:
    """One request once it has ended, for whoever counts requests (metrics)."""

    door: str
    outcome: str
    stats: SpeechStats
    heard_seconds: float | None
    """From the start of synthesis to `HEARD_AUDIO_SECONDS` of audio, or to its end."""


#: Called once per request as it ends; it must not block or raise.
RequestObserver = Callable[[Finished], None]


class Speech:
    """One admitted request with its voice held: the format is known before any audio."""

    def __init__(
        self, service: SpeechService, voice: LoadedVoice, params: SynthParams, stats: SpeechStats
    ) -> None:
        self._service = service
        self._voice = voice
        self._params = params
        self.stats = stats
        self.format = AudioFormat(rate=voice.sample_rate)
        self.heard_seconds: float | None = None

    async def audio(
        self, text: TextSource, *, fixed_plan: bool = False
    ) -> AsyncGenerator[bytes, None]:
        """16-bit PCM pieces as they are made; a whole text with nothing to say is `no-speech`.

        A streamed text with nothing to say just ends: Home Assistant streams every
        request, and an empty stream is not a client's mistake. ``fixed_plan``: the same
        samples on every run, for files (`Synthesizer.speak`).
        """
        spoken = False
        sentences = self._service.sentences(text)
        pieces = self._service.synthesizer.speak(
            self._voice, self._params, sentences, self.stats, fixed_plan=fixed_plan
        )
        started, heard_bytes, made = time.perf_counter(), self._heard_bytes(), 0
        async with contextlib.aclosing(pieces):
            async for pcm in pieces:
                spoken, made = True, made + len(pcm)
                if self.heard_seconds is None and made >= heard_bytes:
                    self.heard_seconds = time.perf_counter() - started
                yield pcm
        if spoken and self.heard_seconds is None:
            self.heard_seconds = time.perf_counter() - started  # a short reply: its end
        if not spoken and isinstance(text, str):
            raise NoSpeech("The text has nothing that can be spoken.")

    def _heard_bytes(self) -> int:
        fmt = self.format
        return int(HEARD_AUDIO_SECONDS * fmt.rate) * fmt.width * fmt.channels


class SpeechService:
    """One per server; every connection and front door shares it."""

    def __init__(
        self,
        settings: Settings,
        pool: VoicePool,
        synthesizer: Synthesizer,
        scheduler: Scheduler,
        observer: RequestObserver | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.synthesizer = synthesizer
        self._scheduler = scheduler
        self._observer = observer
        self._max_in_flight = settings.effective_workers + settings.max_queue
        #: Voices already warned about a missing speaker (at most the installed voices).
        self._warned_speakers: set[str] = set()

    # ------------------------------------------------------------------ limits

    def check_text(self, text: str) -> None:
        """Refuse a whole text before anything is admitted or loaded."""
        self.check_length(len(text))
        if not text.strip():
            raise EmptyText("There is no text to speak.")

    def check_length(self, chars: int) -> None:
        limit = self.settings.max_text_chars
        if chars > limit:
            raise TextTooLong(f"Text of {chars} characters is longer than the limit of {limit}.")

    async def voices(self, force: bool = False) -> dict[str, VoiceEntry]:
        """The installed voices (``force`` rescans the data dirs)."""
        return await self.pool.entries(force=force)

    # ------------------------------------------------------------------ speaking

    @contextlib.asynccontextmanager
    async def open(
        self, request: SpeechRequest, streamed: bool = False, door: str = "wyoming"
    ) -> AsyncIterator[Speech]:
        """Admit the request and hold its voice until the block ends; log the request once.

        Failures come out as `TtsError`s (ours as `internal-error`, with the traceback in
        the log), so a front door maps each to its protocol without logging it again.
        """
        stats = SpeechStats()
        name, outcome, speech = "-", "ok", None
        try:
            with self._admit():
                name = await self._voice_name(request)
                async with self.pool.acquire(name) as voice:
                    settings = self.settings
                    length_scale = request.length_scale or settings.length_scale
                    params = voice.params(
                        self._speaker_id(voice, request.speaker),
                        settings.noise_scale,
                        length_scale,
                        settings.noise_w_scale,
                    )
                    if request.seed is not None:
                        params = dataclasses.replace(params, seed=request.seed)
                    speech = Speech(self, voice, params, stats)
                    yield speech
        except TtsError as err:
            outcome = err.code
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except (ConnectionError, TimeoutError):
            outcome = "client-gone"
            raise
        except Exception as err:
            outcome = InternalError.code
            _LOGGER.exception("Synthesis failed (voice=%s)", name)
            raise InternalError("Synthesis failed on the server.") from err
        finally:
            self.pool.trim()  # decoder buffers back to the OS, once the server is quiet
            _log_request(name, outcome, stats, streamed, door)
            if self._observer is not None:
                heard = speech.heard_seconds if speech is not None else None
                self._observer(Finished(door, outcome, stats, heard))

    def _speaker_id(self, voice: LoadedVoice, speaker: str | None) -> int | None:
        """The speaker asked for, else the voice's default: a wrong speaker still speaks.

        Home Assistant keeps a speaker chosen for one voice when the user switches to
        another, so a speaker the voice lacks is spoken with its default speaker (as
        wyoming-piper does), with one warning per voice naming the speakers it has.
        """
        info = voice.entry.info
        if speaker is None and voice.name == self.settings.voice:
            speaker = self.settings.speaker
        if not speaker:
            return None
        if info.num_speakers <= 1:
            _LOGGER.debug("Voice %s has one speaker; speaker %r ignored", voice.name, speaker)
            return None
        if info.has_speaker(speaker):
            return info.speaker_id(speaker)
        level = logging.DEBUG if voice.name in self._warned_speakers else logging.WARNING
        self._warned_speakers.add(voice.name)
        names = ", ".join(list(info.speaker_id_map)[:20]) or f"ids 0-{info.num_speakers - 1}"
        _LOGGER.log(
            level,
            "Voice %s has no speaker %r; using its default. Its speakers: %s%s",
            voice.name,
            speaker,
            names,
            "" if len(info.speaker_id_map) <= 20 else ", ...",
        )
        return None

    @contextlib.contextmanager
    def _admit(self) -> Iterator[None]:
        active = self._scheduler.active_requests
        if active >= self._max_in_flight:
            raise Busy(f"The server is busy ({active} requests in progress); try again shortly.")
        with self._scheduler.request():
            yield

    async def _voice_name(self, request: SpeechRequest) -> str:
        """The voice named, else the default voice if it speaks the language, else any that does."""
        if request.voice:
            return request.voice
        if not request.language:
            return self.settings.voice
        entries = await self.pool.entries()
        default = entries.get(self.settings.voice)
        wanted = request.language.replace("-", "_").lower()
        candidates = ([default] if default else []) + sorted(entries.values(), key=lambda e: e.name)
        for entry in candidates:
            language = entry.info.language.lower()
            if language == wanted or language.split("_")[0] == wanted:
                return entry.name
        raise VoiceNotFound(f"No installed voice speaks '{request.language}'.")

    async def sentences(self, text: TextSource) -> AsyncIterator[str]:
        """Bounded, punctuated sentences; a whole text and the same text streamed cut alike."""
        punctuation = self.settings.auto_punctuation
        if isinstance(text, str):
            # Cleaning and normalising 100,000 characters takes tens of ms: off the loop.
            # Splitting is lazy and linear, a few sentences at a time between other
            # connections' events.
            normalized = await self._scheduler.run(self._prepare, text, urgent=True)
            for i, sentence in enumerate(iter_sentences(normalized)):
                yield add_punctuation(sentence, punctuation)
                if i % _SENTENCES_PER_YIELD == _SENTENCES_PER_YIELD - 1:
                    await asyncio.sleep(0)
            return
        cleaner = (
            Cleaner(self.settings.name_emoji, eager=True) if self.settings.text_cleanup else None
        )
        splitter = SentenceSplitter()
        async for chunk in text:
            if cleaner is not None:
                chunk = await self._clean_chunk(cleaner, chunk)
            for sentence in splitter.add(chunk):
                yield add_punctuation(sentence, punctuation)
        rest = "".join(cleaner.finish()) if cleaner is not None else ""
        for sentence in [*splitter.add(rest), *splitter.finish()]:
            yield add_punctuation(sentence, punctuation)

    def _prepare(self, text: str) -> str:
        if self.settings.text_cleanup:
            text = clean_text(text, self.settings.name_emoji)
        return normalize(text)

    async def _clean_chunk(self, cleaner: Cleaner, chunk: str) -> str:
        """A streamed chunk's cleaned text; a big one is parsed off the loop."""
        if len(chunk) <= _CLEAN_ON_LOOP_CHARS:
            return "".join(cleaner.add(chunk))
        return await self._scheduler.run(_cleaned, cleaner, chunk, urgent=True)


def _cleaned(cleaner: Cleaner, chunk: str) -> str:
    return "".join(cleaner.add(chunk))


def _log_request(voice: str, outcome: str, stats: SpeechStats, streamed: bool, door: str) -> None:
    first = stats.first_audio_seconds
    _LOGGER.info(
        "Request voice=%s outcome=%s chars=%d first_audio=%s total=%.3fs audio=%.2fs "
        "rtf=%.3f underruns=%d door=%s%s",
        voice,
        outcome,
        stats.characters,
        f"{first:.3f}s" if first is not None else "-",
        stats.total_seconds,
        stats.audio_seconds,
        stats.real_time_factor,
        stats.underruns,
        door,
        " (stream)" if streamed else "",
    )
