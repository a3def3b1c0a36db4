"""Sentences in, audio events out, as soon as each piece of audio exists.

Per utterance the frontend (text encoder, durations, noise) runs once; the
decoder then runs over the frames in chunks. The first chunk of a response is
small and runs flow and vocoder over a window, so audio leaves at once; after
it, the flow runs once over the rest of each utterance and each later chunk is
vocoder only, sized by how far the audio already produced is ahead of real-time
playback (at the decoder's measured cost per frame), so later chunks and later
sentences are decoded in large pieces and the total compute stays close to an
unchunked decode. The next utterance's frontend runs while this one decodes.

Backpressure: every chunk is written (and drained) before the next is
computed, and the connection's write buffer is capped at `max_ahead_seconds`
of audio, so a slow reader slows synthesis instead of growing memory.
Cancellation: cancelling the task stops at the next step; at most one
in-flight step (a bounded chunk) finishes on its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from wyoming.event import Event

from ..audio import AudioFramer, fade_out, silence, to_pcm16
from ..model.vits import Latent
from ..runtime.scheduler import Scheduler
from ..voices.loader import LoadedVoice, SynthParams

#: Guess of decoder seconds per frame for a voice not yet timed (its warm-up times it).
INITIAL_FRAME_COST = 0.0008
#: Share of the audio already ahead of playback that the next chunk may take to compute.
SAFETY = 0.6
#: Seconds of audio ahead of playback below which a playing response's steps are urgent
#: too, so new requests' first steps cannot starve it into a gap.
LOW_WATER = 0.5
#: The first chunk grows with the requests in flight, up to this many times its size: the
#: next chunk waits its turn behind theirs, and the first must last until it is ready.
#: With 4 clients at once on 2 cores: replies with a gap 63 of 80 -> 0 of 80, first audio
#: median 134 -> 165 ms, p95 and throughput unchanged.
MAX_FIRST_CHUNK_FACTOR = 4

EventSink = Callable[[Event], Awaitable[None]]


@dataclass(frozen=True)
class EngineConfig:
    first_chunk_frames: int
    max_chunk_frames: int
    sentence_silence: float
    samples_per_chunk: int
    max_utterance_ids: int


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

    @property
    def real_time_factor(self) -> float:
        return self.total_seconds / self.audio_seconds if self.audio_seconds else 0.0


@dataclass
class _Utterance:
    latent: Latent
    starts_sentence: bool


class Synthesizer:
    """Stateless apart from its config; one per server, shared by all connections."""

    def __init__(self, config: EngineConfig, scheduler: Scheduler) -> None:
        self.config = config
        self._scheduler = scheduler

    async def speak(
        self,
        voice: LoadedVoice,
        params: SynthParams,
        sentences: AsyncIterator[str],
        framer: AudioFramer,
        send: EventSink,
        stats: SpeechStats,
    ) -> None:
        """Speak every sentence from `sentences` into `send`, starting audio lazily.

        `framer.start()` (the response's one `audio-start`) is sent just before
        the first audio, so a request that turns out to have nothing to say can
        still be answered with an error instead.
        """
        started = time.perf_counter()
        frame_cost = voice.frame_seconds or INITIAL_FRAME_COST
        first_audio_at: float | None = None
        produced_seconds = 0.0
        first_sentence = True
        utterances = self._utterances(voice, params, sentences, stats)
        pending: asyncio.Task[_Utterance | None] | None = asyncio.create_task(_next(utterances))
        try:
            while True:
                assert pending is not None
                current = await pending
                if current is None:
                    break
                # Next utterance's phonemes + frontend run while this one decodes, but only
                # once audio flows: before that they would compete with the first chunk.
                pending = (
                    asyncio.create_task(_next(utterances)) if first_audio_at is not None else None
                )
                latent = current.latent
                pcm_prefix = b""
                if current.starts_sentence and not first_sentence and self.config.sentence_silence:
                    pcm_prefix = silence(self.config.sentence_silence, voice.sample_rate)
                first_sentence = False
                start = 0
                total = latent.num_frames
                margin = voice.model.margin
                while start < total:
                    if first_audio_at is not None and voice.model.staged and latent.flowed is None:
                        # Once audio flows, the flow runs once over the rest of the
                        # utterance; from then on each chunk costs only the vocoder.
                        latent = await self._scheduler.run(
                            voice.model.with_flow,
                            latent,
                            start,
                            urgent=_starving(first_audio_at, produced_seconds),
                        )
                    remaining = total - start
                    if first_audio_at is None:
                        end = start + self._first_chunk_frames()
                    else:
                        ahead = produced_seconds - (time.perf_counter() - first_audio_at)
                        affordable = int(max(0.0, ahead * SAFETY) / frame_cost)
                        if remaining <= min(affordable, self.config.max_chunk_frames + 2 * margin):
                            # Whole is cheaper than cut (no overlap decoded twice) and costs
                            # the memory of a maximal chunk with its margins.
                            end = total
                        else:
                            frames = affordable - 2 * margin
                            frames = max(self.config.first_chunk_frames, frames)
                            end = start + min(self.config.max_chunk_frames, frames)
                    if total - end < self.config.first_chunk_frames:
                        end = total  # no crumbs at the end of an utterance
                    end = min(end, total)
                    t0 = time.perf_counter()
                    audio = await self._scheduler.run(
                        voice.model.decode,
                        latent,
                        start,
                        end,
                        urgent=_starving(first_audio_at, produced_seconds),
                    )
                    spent = time.perf_counter() - t0
                    if first_audio_at is not None:  # the first window also runs the flow
                        decoded = min(total, end + margin) - max(0, start - margin)
                        frame_cost = 0.5 * frame_cost + 0.5 * (spent / max(1, decoded))
                        if produced_seconds < time.perf_counter() - first_audio_at:
                            stats.underruns += 1
                    stats.decoder_calls += 1
                    if end == total:
                        audio = fade_out(audio, voice.sample_rate)
                    pcm = pcm_prefix + to_pcm16(audio, voice.gain)
                    pcm_prefix = b""
                    if first_audio_at is None:
                        start_event = framer.start()
                        if start_event is not None:
                            await send(start_event)
                        first_audio_at = time.perf_counter()
                        stats.first_audio_seconds = first_audio_at - started
                    for event in framer.push(pcm):
                        await send(event)
                    produced_seconds += len(pcm) / 2 / voice.sample_rate
                    start = end
                    if pending is None:
                        pending = asyncio.create_task(_next(utterances))
            for event in framer.flush():
                await send(event)
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
            await utterances.aclose()
            stats.total_seconds = time.perf_counter() - started
            stats.audio_seconds = framer.seconds_sent

    def _first_chunk_frames(self) -> int:
        crowd = min(MAX_FIRST_CHUNK_FACTOR, max(1, self._scheduler.active_requests))
        return min(self.config.max_chunk_frames, self.config.first_chunk_frames * crowd)

    async def _utterances(
        self,
        voice: LoadedVoice,
        params: SynthParams,
        sentences: AsyncIterator[str],
        stats: SpeechStats,
    ) -> AsyncGenerator[_Utterance, None]:
        run = self._scheduler.run
        async for sentence in sentences:
            stats.characters += len(sentence)
            urgent = stats.first_audio_seconds is None
            id_lists = await run(
                voice.phoneme_ids, sentence, self.config.max_utterance_ids, urgent=urgent
            )
            for i, ids in enumerate(id_lists):
                urgent = stats.first_audio_seconds is None
                latent = await run(voice.frontend, ids, params, urgent=urgent)
                if latent.num_frames <= 0:
                    continue
                stats.utterances += 1
                yield _Utterance(latent=latent, starts_sentence=(i == 0))


def _starving(first_audio_at: float | None, produced_seconds: float) -> bool:
    """Before first audio, or with under LOW_WATER seconds of it left to play."""
    if first_audio_at is None:
        return True
    return produced_seconds - (time.perf_counter() - first_audio_at) < LOW_WATER


async def _next(gen: AsyncGenerator[_Utterance, None]) -> _Utterance | None:
    return await anext(gen, None)
