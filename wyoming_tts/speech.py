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
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass

from .audio import CHANNELS, SAMPLE_WIDTH, ffmpeg_gathers
from .config import Settings
from .errors import Busy, EmptyText, InternalError, NoSpeech, TextTooLong, TtsError, VoiceNotFound
from .presets import Preset, PresetError
from .runtime.scheduler import Scheduler
from .synth.cleanup import Cleaner, clean_text
from .synth.engine import Envelope, SpeechStats, Synthesizer
from .synth.lexicon import Lexicon
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
class Delivery:
    """How one request is spoken, resolved from the request, its preset and the settings."""

    params: SynthParams
    envelope: Envelope
    text_cleanup: bool
    rewrite: Callable[[str], str] | None = None
    """The lexicon's pronunciations for the voice's language, if it has any."""


@dataclass(frozen=True)
class Finished:
    """One request once it has ended, for whoever counts requests (metrics)."""

    door: str
    outcome: str
    stats: SpeechStats
    heard_seconds: float | None
    """From the start of synthesis to what HA's ffmpeg gathers (`audio.ffmpeg_gathers`),
    or to its end: when a satellite hears the reply."""


#: Called once per request as it ends; it must not block or raise.
RequestObserver = Callable[[Finished], None]


class Speech:
    """One admitted request with its voice held: the format is known before any audio."""

    def __init__(
        self, service: SpeechService, voice: LoadedVoice, delivery: Delivery, stats: SpeechStats
    ) -> None:
        self._service = service
        self._voice = voice
        self._delivery = delivery
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
        spoken, delivery = False, self._delivery
        sentences = self._service.sentences(text, delivery.text_cleanup)
        if delivery.rewrite is not None:
            sentences = _rewritten(sentences, delivery.rewrite)
        pieces = self._service.synthesizer.speak(
            self._voice,
            delivery.params,
            sentences,
            self.stats,
            delivery.envelope,
            fixed_plan=fixed_plan,
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
        return ffmpeg_gathers(fmt.rate) * fmt.width * fmt.channels


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
        self.presets = {preset.name: preset for preset in settings.presets}
        self._lexicon: Lexicon | None = None
        #: The lexicon compiled per voice language, once (at most the installed languages).
        self._rewrites: dict[str, Callable[[str], str] | None] = {}

    async def prepare(self) -> None:
        """Check presets and language routes against the installed voices; read the lexicon.

        Raises PresetError or LexiconError, one line naming what is wrong, so a broken
        setting stops start-up rather than failing the requests that use it.
        """
        entries = await self.pool.entries(force=True)
        for preset in self.presets.values():
            _check_preset(preset, entries)
        for language, name in self.settings.default_voice_per_language.items():
            if name not in entries and name not in self.presets:
                raise PresetError(
                    f"default_voice_per_language: {language}: no installed voice or preset {name!r}"
                )
        if self.settings.lexicon is not None:
            self._lexicon = await asyncio.to_thread(Lexicon.load, self.settings.lexicon)

    def base_voice(self, name: str) -> str:
        """The installed voice a voice or preset name speaks with."""
        preset = self.presets.get(name)
        return preset.voice if preset is not None else name

    def preload_voices(self) -> tuple[str, ...]:
        """The installed voices to prime: the default (or its preset's base) and `preload`."""
        return tuple(dict.fromkeys(self.base_voice(n) for n in self.settings.preload_voices))

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
                preset = self.presets.get(name)
                async with self.pool.acquire(self.base_voice(name)) as voice:
                    delivery = self._delivery(voice, name, preset, request)
                    speech = Speech(self, voice, delivery, stats)
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

    def _delivery(
        self, voice: LoadedVoice, name: str, preset: Preset | None, request: SpeechRequest
    ) -> Delivery:
        """The request's own values first, then its preset's, then the settings'."""
        settings = self.settings
        p = preset or Preset(name=name, voice=voice.name)
        speaker = p.speaker or request.speaker
        if speaker is None and name == settings.voice:
            speaker = settings.speaker
        params = voice.params(
            self._speaker_id(voice, speaker),
            _first(p.noise_scale, settings.noise_scale),
            _first(request.length_scale, p.length_scale, settings.length_scale),
            _first(p.noise_w_scale, settings.noise_w_scale),
        )
        if request.seed is not None:
            params = dataclasses.replace(params, seed=request.seed)
        envelope = Envelope(
            volume=_or(p.volume, settings.volume),
            sentence_silence=_or(p.sentence_silence, settings.sentence_silence),
            lead_in=_or(p.lead_in, settings.lead_in),
            tail=_or(p.tail, settings.tail),
        )
        rewrite = self._rewrite(voice.entry.info.language)
        cleanup = settings.text_cleanup if p.text_cleanup is None else p.text_cleanup
        return Delivery(params, envelope, cleanup, rewrite)

    def _rewrite(self, language: str) -> Callable[[str], str] | None:
        if self._lexicon is None:
            return None
        if language not in self._rewrites:
            self._rewrites[language] = self._lexicon.for_language(language)
        return self._rewrites[language]

    def _speaker_id(self, voice: LoadedVoice, speaker: str | None) -> int | None:
        """The speaker asked for, else the voice's default: a wrong speaker still speaks.

        Home Assistant keeps a speaker chosen for one voice when the user switches to
        another, so a speaker the voice lacks is spoken with its default speaker (as
        wyoming-piper does), with one warning per voice naming the speakers it has.
        """
        info = voice.entry.info
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
        """The voice (or preset) named, else one for the language, else the default.

        For a language: its `default_voice_per_language` route, then the default voice
        if it speaks it, then any voice of that language and region, then any of that
        language ("en-GB" is spoken by an en_US voice rather than refused).
        """
        if request.voice:
            return request.voice
        if not request.language:
            return self.settings.voice
        wanted = _language(request.language)
        base = wanted.split("_")[0]
        routes = {_language(k): v for k, v in self.settings.default_voice_per_language.items()}
        for key in (wanted, base):
            if key in routes:
                return routes[key]
        entries = await self.pool.entries()
        default = entries.get(self.base_voice(self.settings.voice))
        others = sorted(entries.values(), key=lambda e: e.name)
        for same in (lambda lang: lang == wanted, lambda lang: lang.split("_")[0] == base):
            if default is not None and same(_language(default.info.language)):
                return self.settings.voice
            for entry in others:
                if same(_language(entry.info.language)):
                    return entry.name
        raise VoiceNotFound(f"No installed voice speaks '{request.language}'.")

    async def sentences(self, text: TextSource, cleanup: bool = True) -> AsyncIterator[str]:
        """Bounded, punctuated sentences; a whole text and the same text streamed cut alike."""
        punctuation = self.settings.auto_punctuation
        if isinstance(text, str):
            # Cleaning and normalising 100,000 characters takes tens of ms: off the loop.
            # Splitting is lazy and linear, a few sentences at a time between other
            # connections' events.
            normalized = await self._scheduler.run(self._prepare, text, cleanup, urgent=True)
            for i, sentence in enumerate(iter_sentences(normalized)):
                yield add_punctuation(sentence, punctuation)
                if i % _SENTENCES_PER_YIELD == _SENTENCES_PER_YIELD - 1:
                    await asyncio.sleep(0)
            return
        cleaner = Cleaner(self.settings.name_emoji, eager=True) if cleanup else None
        splitter = SentenceSplitter()
        async for chunk in text:
            if cleaner is not None:
                chunk = await self._clean_chunk(cleaner, chunk)
            for sentence in splitter.add(chunk):
                yield add_punctuation(sentence, punctuation)
        rest = "".join(cleaner.finish()) if cleaner is not None else ""
        for sentence in [*splitter.add(rest), *splitter.finish()]:
            yield add_punctuation(sentence, punctuation)

    def _prepare(self, text: str, cleanup: bool) -> str:
        if cleanup:
            text = clean_text(text, self.settings.name_emoji)
        return normalize(text)

    async def _clean_chunk(self, cleaner: Cleaner, chunk: str) -> str:
        """A streamed chunk's cleaned text; a big one is parsed off the loop."""
        if len(chunk) <= _CLEAN_ON_LOOP_CHARS:
            return "".join(cleaner.add(chunk))
        return await self._scheduler.run(_cleaned, cleaner, chunk, urgent=True)


async def _rewritten(
    sentences: AsyncIterator[str], rewrite: Callable[[str], str]
) -> AsyncIterator[str]:
    """Sentences with the lexicon's words replaced (one regex pass each, on the loop)."""
    async for sentence in sentences:
        yield rewrite(sentence)


def _check_preset(preset: Preset, entries: Mapping[str, VoiceEntry]) -> None:
    name = preset.name
    base = entries.get(preset.voice)
    if base is None:
        raise PresetError(f"preset {name}: voice: no installed voice {preset.voice!r}")
    if name in entries and name != preset.voice:
        raise PresetError(f"preset {name}: name: an installed voice already has this name")
    info = base.info
    if preset.speaker is not None and (
        info.num_speakers <= 1 or not info.has_speaker(preset.speaker)
    ):
        speakers = ", ".join(info.speaker_id_map) or "one speaker only"
        raise PresetError(
            f"preset {name}: speaker: {preset.voice} has no speaker {preset.speaker!r} ({speakers})"
        )


def _first(*values: float | None) -> float | None:
    """The first value that is set."""
    return next((v for v in values if v is not None), None)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _language(code: str) -> str:
    return code.replace("-", "_").lower()


def _cleaned(cleaner: Cleaner, chunk: str) -> str:
    return "".join(cleaner.add(chunk))


def _log_request(voice: str, outcome: str, stats: SpeechStats, streamed: bool, door: str) -> None:
    first = stats.first_audio_seconds
    _LOGGER.info(
        "Request voice=%s outcome=%s chars=%d first_audio=%s total=%.3fs audio=%.2fs "
        "rtf=%.3f underruns=%d cached=%d/%d door=%s%s",
        voice,
        outcome,
        stats.characters,
        f"{first:.3f}s" if first is not None else "-",
        stats.total_seconds,
        stats.audio_seconds,
        stats.real_time_factor,
        stats.underruns,
        stats.phrase_hits,
        stats.phrase_hits + stats.phrase_misses,
        door,
        " (stream)" if streamed else "",
    )
