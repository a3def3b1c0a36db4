"""Sentences in, PCM out, as soon as each piece of audio exists.

Per utterance the frontend (text encoder, durations, noise) runs once; the
decoder then runs over the frames in chunks (`chunking.plan_chunk`). The first
chunk runs flow and vocoder over a window, so audio leaves at once; beside each
chunk the flow runs over the frames the next can take (`chunking.flow_piece_end`),
so each later chunk is vocoder only. The next utterance's frontend runs while this
one decodes, once this one is not short of audio; for a short utterance alone on the
server, beside this one's own frontend (a worker would otherwise be idle).

Backpressure: `speak` is an async generator, so no chunk is computed before the
consumer has taken the one before it. Cancellation: closing the generator stops
at the next step; at most one in-flight step (a bounded chunk) finishes on its
thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..audio import SAMPLE_WIDTH, fade_in, fade_out, ffmpeg_gathers, silence, to_pcm16
from ..model.noise import utterance_seed
from ..model.vits import FloatArray, FlowPiece, Latent, VitsModel
from ..runtime.scheduler import Scheduler
from ..voices.loader import MAX_UTTERANCE_IDS, LoadedVoice, SynthParams
from .chunking import (
    INITIAL_FRAME_COST,
    MIN_FLOW_PART_FRAMES,
    MIN_PART_FRAMES,
    Pacing,
    fixed_chunk,
    flow_piece_end,
    heard_cut,
    heard_frame,
    plan_chunk,
    plan_parts,
    rest_fits_one_chunk,
)
from .phrases import PhraseCache

#: Phoneme ids of an utterance after which the next one's frontend may begin before this
#: one's has ended: ~4.3 s of speech (the bundled voice speaks 23-29 ms an id), the audio
#: Home Assistant's ffmpeg step gathers before a satellite hears anything.
EARLY_FRONTEND_MAX_IDS = 170


@dataclass
class SpeechStats:
    """What one response cost; logged once per request."""

    characters: int = 0
    utterances: int = 0
    first_audio_seconds: float | None = None
    total_seconds: float = 0.0
    audio_seconds: float = 0.0
    decoder_calls: int = 0
    underruns: int = 0
    """Chunks that were ready only after the audio before them had finished playing."""
    phrase_hits: int = 0
    """Sentences answered from the phrase cache."""
    phrase_misses: int = 0

    @property
    def real_time_factor(self) -> float:
        return self.total_seconds / self.audio_seconds if self.audio_seconds else 0.0


@dataclass(frozen=True)
class Envelope:
    """How one reply is scaled and framed in silence: from the settings or a preset."""

    volume: float = 1.0
    """A factor on the voice's calibrated gain, applied before the limiter."""
    sentence_silence: float = 0.0
    lead_in: float = 0.0
    """Silence before the first word, for speakers that wake on sound and clip it."""
    tail: float = 0.0


@dataclass(frozen=True)
class _Utterance:
    sentence: int
    """Which sentence of the reply it belongs to (a long one has several utterances)."""
    starts_sentence: bool
    ends_sentence: bool
    latent: Latent | None = None
    cached: bytes | None = None
    """The whole sentence's PCM, from the phrase cache (then there is no latent)."""
    key: tuple[object, ...] | None = None
    """The phrase-cache key this sentence's audio is stored under once it is complete."""


class Synthesizer:
    """Stateless apart from its config and phrase cache; one per server, shared by all."""

    def __init__(self, scheduler: Scheduler, phrases: PhraseCache | None = None) -> None:
        self._scheduler = scheduler
        self.phrases = phrases

    async def speak(
        self,
        voice: LoadedVoice,
        params: SynthParams,
        sentences: AsyncIterable[str],
        stats: SpeechStats,
        envelope: Envelope = Envelope(),
        *,
        fixed_plan: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """16-bit PCM of every sentence, a piece per decoded chunk, filling ``stats``.

        ``fixed_plan`` decodes by `chunking.fixed_chunk` instead of pacing: the same
        samples on every run (long-form files), with no early first chunk.
        """
        started, rate = time.perf_counter(), voice.sample_rate
        pacing = Pacing(frame_cost=voice.frame_seconds or INITIAL_FRAME_COST)
        gain = voice.gain * envelope.volume
        utterances = self._utterances(voice, params, gain, sentences, stats, pacing)
        lookahead = _Lookahead(utterances)
        gap, sentence_pcm = b"", bytearray()

        near_end = False

        def prefetch() -> None:
            # The next frontend may take a worker once audio flows and this utterance's
            # rest fits in one more chunk, or once the listener has plenty in hand: before
            # that, it would hold a worker that the chunks of a long utterance need.
            if pacing.started and (near_end or pacing.well_ahead()):
                lookahead.prefetch()

        def nearly_done() -> None:
            nonlocal near_end
            near_end = True
            prefetch()

        try:
            while (utterance := await lookahead.next()) is not None:
                near_end = False
                prefetch()
                if utterance.starts_sentence:
                    sentence_pcm.clear()
                prefix = gap if utterance.starts_sentence else b""
                pieces = self._pieces(
                    voice, utterance, gain, pacing, stats, fixed_plan, nearly_done
                )
                async with contextlib.aclosing(pieces):
                    async for speech in pieces:
                        if utterance.key is not None:
                            sentence_pcm += speech
                        if not pacing.started:
                            stats.first_audio_seconds = time.perf_counter() - started
                            speech = silence(envelope.lead_in, rate) + fade_in(speech, rate)
                        pcm = prefix + speech
                        prefix = b""
                        pacing.emitted(len(pcm) / SAMPLE_WIDTH / rate)
                        yield pcm
                        prefetch()
                if (
                    utterance.key is not None
                    and utterance.ends_sentence
                    and self.phrases is not None
                ):
                    self.phrases.put(utterance.key, bytes(sentence_pcm))
                gap = silence(envelope.sentence_silence, rate)
            if pacing.started and envelope.tail > 0:
                tail = silence(envelope.tail, rate)
                pacing.emitted(len(tail) / SAMPLE_WIDTH / rate)
                yield tail
        finally:
            await lookahead.aclose()
            stats.total_seconds = time.perf_counter() - started
            stats.audio_seconds = pacing.produced

    async def _pieces(
        self,
        voice: LoadedVoice,
        utterance: _Utterance,
        gain: float,
        pacing: Pacing,
        stats: SpeechStats,
        fixed_plan: bool,
        nearly_done: Callable[[], None],
    ) -> AsyncGenerator[bytes, None]:
        """One utterance's PCM: the cached sentence at once, else decoded chunk by chunk."""
        if utterance.latent is None:
            yield utterance.cached or b""
            return
        chunks = self._chunks(voice, utterance.latent, pacing, stats, fixed_plan, nearly_done)
        async with contextlib.aclosing(chunks):
            async for audio in chunks:
                yield to_pcm16(audio, gain)

    async def _chunks(
        self,
        voice: LoadedVoice,
        latent: Latent,
        pacing: Pacing,
        stats: SpeechStats,
        fixed_plan: bool = False,
        nearly_done: Callable[[], None] = lambda: None,
    ) -> AsyncGenerator[FloatArray, None]:
        """One utterance's audio in chunks planned from the playback ahead of the listener.

        Beside each chunk the flow runs over the frames the next one can take. With
        workers to spare (a lone request), each chunk after the first is cut into parts
        decoded at once on different workers (`chunking.plan_parts`).
        """
        model, run = voice.model, self._scheduler.run
        start, total, margin = 0, latent.num_frames, model.margin
        heard = ffmpeg_gathers(voice.sample_rate)  # samples
        flowing: list[asyncio.Future[FlowPiece | None]] = []
        try:
            while start < total:
                urgent = pacing.starving()
                sent = round(pacing.produced * voice.sample_rate)  # samples before ``start``
                parts = self._scheduler.workers_per_request
                if fixed_plan or not model.windowed:
                    parts = 1  # a file's samples stay the same; a whole voice only slices
                if flowing:
                    pieces = [piece for piece in await asyncio.gather(*flowing) if piece]
                    latent, flowing = latent.with_flowed(pieces), []
                if fixed_plan:
                    if model.needs_flow(latent, start):
                        # One flow over the rest: the same samples on every run.
                        latent = await run(model.with_flow, latent, start, urgent=urgent)
                    end = fixed_chunk(start, total, margin=margin)
                else:
                    end = plan_chunk(
                        start,
                        total,
                        ahead=pacing.ahead(),
                        frame_cost=pacing.frame_cost,
                        margin=margin,
                        requests_in_flight=self._scheduler.active_requests,
                        parts=parts,
                    )
                    if pacing.started:
                        end = heard_cut(start, end, sent, heard, voice.hop_length)
                    if pacing.started and model.needs_flow(latent, start, end):
                        end = _flowed_end(model, latent, start, end, parts)
                        if model.needs_flow(latent, start, end):
                            latent = await run(model.with_flow, latent, start, end, urgent=urgent)
                # The first window runs flow and vocoder in one decode.
                spans = plan_parts(start, end, parts if pacing.started else 1)
                submitted = time.perf_counter()
                decodes = [
                    asyncio.ensure_future(run(_decode, model, latent, a, b, urgent=urgent))
                    for a, b in spans
                ]
                if not fixed_plan and end < total and model.flows_separately:
                    # Beside this chunk, the flow over what the next can take, in parts
                    # on the workers this chunk leaves free or is about to.
                    first = not pacing.started
                    lo = latent.flow_start(max(0, end - margin))
                    heard_at = heard_frame(start, sent, heard, voice.hop_length)
                    piece = flow_piece_end(
                        end, total, margin=margin, first=first, heard_at=heard_at
                    )
                    hi = min(total, piece + margin)
                    shares = max(1, parts - 1) if first else parts
                    flowing = [
                        asyncio.ensure_future(run(model.flow, latent, a, b, urgent=urgent))
                        for a, b in plan_parts(lo, hi, shares, min_frames=MIN_FLOW_PART_FRAMES)
                        if a < b
                    ]
                if rest_fits_one_chunk(end, total, margin=margin):
                    nearly_done()
                try:
                    for (a, b), decode in zip(spans, decodes, strict=True):
                        audio, finished = await decode
                        decoded = min(total, b + margin) - max(0, a - margin)
                        stats.decoder_calls += 1
                        if pacing.timed(finished - submitted, decoded):
                            stats.underruns += 1
                        yield fade_out(audio, voice.sample_rate) if b == total else audio
                finally:
                    _drop(decodes)
                start = end
        finally:
            _drop(flowing)

    async def _utterances(
        self,
        voice: LoadedVoice,
        params: SynthParams,
        gain: float,
        sentences: AsyncIterable[str],
        stats: SpeechStats,
        pacing: Pacing,
    ) -> AsyncGenerator[_Utterance, None]:
        run, phrases, model = self._scheduler.run, self.phrases, voice.model
        if params.seed is not None or voice.provisional:
            # Seeded noise differs by position, so a repeat is other audio; a voice served
            # whole is normalised per utterance, so not as loud as its split voice will be.
            phrases = None
        texts = _ReadAhead(sentences)
        queued: collections.deque[_Queued] = collections.deque()
        n = position = 0
        heard, before = ffmpeg_gathers(voice.sample_rate), 0  # samples of the reply so far

        async def take(sentence: str) -> None:
            """Queue one sentence's utterances: its cached audio, or its phoneme ids."""
            nonlocal n, position
            stats.characters += len(sentence)
            n += 1
            key = None
            if phrases is not None and phrases.max_bytes > 0:
                entry = voice.entry
                key = (entry.name, entry.identity, params, gain, sentence)
                cached = phrases.get(key)
                if cached is not None:
                    stats.phrase_hits += 1
                    queued.append(_Queued(_Utterance(n, True, True, cached=cached)))
                    return
                stats.phrase_misses += 1
            # A reply's first sentence ends its first utterance at a clause within
            # EARLY_FRONTEND_MAX_IDS: that frontend is on the critical path, and the rest's
            # then runs beside it.
            lead = EARLY_FRONTEND_MAX_IDS if n == 1 else 0
            id_lists = await run(
                voice.phoneme_ids, sentence, MAX_UTTERANCE_IDS, lead, urgent=not pacing.started
            )
            for i, ids in enumerate(id_lists):
                these = params
                if params.seed is not None:  # seeded from the text and its place in it
                    these = replace(params, seed=utterance_seed(params.seed, sentence, position))
                position += 1
                utterance = _Utterance(n, i == 0, i == len(id_lists) - 1, key=key)
                queued.append(_Queued(utterance, ids, these))

        def frontend(item: _Queued) -> asyncio.Future[Latent]:
            if item.frontend is None:
                work = run(voice.frontend, item.ids, item.params, urgent=not pacing.started)
                item.frontend = asyncio.ensure_future(work)
            return item.frontend

        try:
            while True:
                if not queued:
                    if (sentence := await texts.next()) is None:
                        break
                    await take(sentence)
                    continue
                item = queued.popleft()
                if item.ids is None:
                    before += len(item.utterance.cached or b"") // SAMPLE_WIDTH
                    yield item.utterance
                    continue
                this = frontend(item)
                if self._early_frontend(model, item):
                    # A worker would sit idle through this frontend (a lone reply's every
                    # step waits on it): the next utterance's runs beside it, if its text
                    # is in hand.
                    if not queued and texts.ready() and (sentence := await texts.next()):
                        await take(sentence)
                    if queued and queued[0].ids is not None:
                        frontend(queued[0])
                latent = await this
                if pacing.started and latent.num_frames > 0 and model.needs_flow(latent):
                    # Audio already flows, so this utterance needs no first window: its
                    # first piece of flow runs now, in the lookahead, beside the decode of
                    # the one before (in one run: parts would each read its reach again).
                    heard_at = heard_frame(0, before, heard, voice.hop_length)
                    piece = flow_piece_end(
                        0, latent.num_frames, margin=model.margin, heard_at=heard_at
                    )
                    latent = await run(model.with_flow, latent, 0, piece)
                before += latent.num_frames * voice.hop_length
                if latent.num_frames > 0:
                    stats.utterances += 1
                    yield replace(item.utterance, latent=latent)
        finally:
            _drop([item.frontend for item in queued if item.frontend is not None])
            await texts.aclose()

    def _early_frontend(self, model: VitsModel, item: _Queued) -> bool:
        """Whether the next utterance's frontend may run beside ``item``'s: with a worker
        to spare, and when ``item`` is short enough that the next one's audio is heard
        within Home Assistant's first ~4.6 s (else it would only delay this one's decode)."""
        return (
            model.windowed
            and self._scheduler.workers_per_request > 1
            and len(item.ids or ()) <= EARLY_FRONTEND_MAX_IDS
        )


@dataclass
class _Queued:
    """An utterance whose text is known, before its frontend has run (or a cached one)."""

    utterance: _Utterance
    ids: Sequence[int] | None = None
    params: SynthParams | None = None
    frontend: asyncio.Future[Latent] | None = None
    """Begun early when a worker would otherwise be idle."""


class _ReadAhead:
    """A text's sentences, each next one read while the last is being worked on, so
    whether it is already in hand can be asked without waiting for it."""

    def __init__(self, sentences: AsyncIterable[str]) -> None:
        self._sentences = aiter(sentences)
        self._next: asyncio.Future[str | None] | None = None

    def _read(self) -> asyncio.Future[str | None]:
        if self._next is None:
            self._next = asyncio.ensure_future(anext(self._sentences, None))
        return self._next

    def ready(self) -> bool:
        """The next sentence (or the text's end) can be had at once; a failed read is not
        ready, so its error surfaces where the sentence would have been needed anyway."""
        reading = self._next
        return (
            reading is not None
            and reading.done()
            and not reading.cancelled()
            and reading.exception() is None
        )

    async def next(self) -> str | None:
        """The next sentence; None at the text's end."""
        reading, self._next = self._read(), None
        sentence = await reading
        if sentence is not None:
            self._read()
        return sentence

    async def aclose(self) -> None:
        if self._next is not None:
            self._next.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._next
        closing = getattr(self._sentences, "aclose", None)
        if closing is not None:
            await closing()


class _Lookahead:
    """The next utterance, computed while the current one decodes."""

    def __init__(self, utterances: AsyncGenerator[_Utterance, None]) -> None:
        self._utterances = utterances
        self._pending: asyncio.Task[_Utterance | None] | None = None

    def prefetch(self) -> None:
        if self._pending is None:
            self._pending = asyncio.create_task(_next(self._utterances))

    async def next(self) -> _Utterance | None:
        task = self._pending or asyncio.create_task(_next(self._utterances))
        self._pending = None
        return await task

    async def aclose(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pending
        await self._utterances.aclose()


def _decode(model: VitsModel, latent: Latent, start: int, end: int) -> tuple[FloatArray, float]:
    """One decode and when it ended: the pacing clock counts the wait for a worker, not
    the time its result then waits for the parts before it to be taken."""
    return model.decode(latent, start, end), time.perf_counter()


def _flowed_end(model: VitsModel, latent: Latent, start: int, end: int, parts: int) -> int:
    """The chunk [start, end) cut back to what the flow covers already, if that leaves
    one worth decoding: the flow beside the next chunk then covers the rest."""
    reach = model.flowed_reach(latent, start)
    if reach is None or reach - start < parts * MIN_PART_FRAMES:
        return end
    return min(end, reach)


def _drop(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel steps nobody will take (the scheduler skips those not begun), and mark
    the outcome of those already ended as seen."""
    for task in tasks:
        if task.done():
            if not task.cancelled():
                task.exception()
        else:
            task.cancel()


async def _next(utterances: AsyncGenerator[_Utterance, None]) -> _Utterance | None:
    return await anext(utterances, None)
