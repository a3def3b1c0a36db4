"""One connection: read events, keep the stream state, answer. Never runs inference.

Synthesis runs as a task of its own while this connection keeps reading, so a
`describe` is answered mid-speech, a new request or a vanished client cancels
the work in flight, and nothing here waits on a model.

Stream state machine (every order of events has an outcome):

==========  =====================  ==============================================
state       event                  outcome
==========  =====================  ==============================================
any         describe               `info` (written between audio chunks if needed)
idle        synthesize             speak it -> audio-start, chunks, audio-stop
idle        synthesize-start       -> streaming (empty data: default voice)
idle        synthesize-chunk/stop  `error` bad-sequence; connection stays usable
speaking    synthesize             cancel current (close its audio), speak new
speaking    synthesize-start       cancel current (close its audio), -> streaming
speaking    synthesize-chunk/stop  `error` bad-sequence
streaming   synthesize-chunk       text added; complete sentences spoken at once
streaming   synthesize             ignored (Home Assistant's compatibility copy)
streaming   synthesize-start       current stream cancelled (audio closed), new one
streaming   synthesize-stop        rest spoken, audio-stop, synthesize-stopped -> idle
discarding  synthesize-chunk       ignored (stream was refused, e.g. too long)
discarding  synthesize-stop        synthesize-stopped -> idle
discarding  synthesize/-start      as in idle
any         unknown type           ignored (logged at debug)
any         malformed framing      `error` bad-event, connection closed
==========  =====================  ==============================================

A request event that arrives while a finished stream is still speaking its
last sentences waits for it: pipelined requests are served in order, and a
client that pipelines without reading holds at most one request's buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wyoming.event import Event, async_write_event
from wyoming.info import Describe
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)

from ..audio import SAMPLE_WIDTH, AudioFramer
from ..config import Settings
from ..errors import (
    BadEvent,
    BadRequest,
    BadSequence,
    EmptyText,
    InternalError,
    NoSpeech,
    StreamingDisabled,
    TextTooLong,
    TtsError,
    VoiceNotFound,
)
from ..info import build_info
from ..runtime.scheduler import Scheduler
from ..synth.engine import SpeechStats, Synthesizer
from ..synth.text import SentenceSplitter, add_punctuation, iter_sentences, normalize
from ..voices.catalog import VoiceEntry
from ..voices.pool import VoicePool
from .protocol import EventReader, IdleTimeout

_LOGGER = logging.getLogger(__name__)


@dataclass
class Services:
    """What every connection needs, owned by the app and passed down."""

    settings: Settings
    pool: VoicePool
    synthesizer: Synthesizer
    scheduler: Scheduler
    #: Told the installed voices after each Describe rescan (the app re-announces mDNS TXT).
    voices_seen: Callable[[Mapping[str, VoiceEntry]], Awaitable[None]] | None = None


@dataclass(frozen=True)
class VoiceRequest:
    name: str | None
    speaker: str | None
    language: str | None


class State(enum.Enum):
    IDLE = "idle"
    SPEAKING = "speaking"
    STREAMING = "streaming"
    FINISHING = "finishing"
    DISCARDING = "discarding"


class Connection:
    """Serves one client until it leaves, misbehaves past repair, or the server stops."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        services: Services,
        peer: str,
    ) -> None:
        self._writer = writer
        self._services = services
        self._settings = services.settings
        self._peer = peer
        self._events = EventReader(
            reader,
            max_header_bytes=self._settings.max_header_bytes,
            max_event_bytes=self._settings.max_event_bytes,
            read_timeout=self._settings.read_timeout,
        )
        self._write_lock = asyncio.Lock()
        self._state = State.IDLE
        self._task: asyncio.Task[None] | None = None
        self._stream_text: asyncio.Queue[str | None] | None = None
        self._stream_chars = 0
        self._complained = False
        self._closing = False

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        try:
            while not self._closing:
                # A stream waiting for text is idle too: only audio in flight stops the clock.
                speaking = self._state in (State.SPEAKING, State.FINISHING) and self._busy()
                idle = None if speaking else self._settings.connection_idle_timeout
                try:
                    event = await self._events.read(idle_timeout=idle)
                except IdleTimeout:
                    _LOGGER.debug("Closing idle connection from %s", self._peer)
                    break
                except BadEvent as err:
                    await self._report(err)
                    break
                if event is None:
                    # Peer finished sending: let a running request finish (or fail on write);
                    # a stream that never got its synthesize-stop is abandoned.
                    if self._state is State.STREAMING:
                        await self._cancel_task()
                    if self._task is not None:
                        with contextlib.suppress(asyncio.CancelledError):
                            await self._task
                    break
                try:
                    await self._dispatch(event)
                except TtsError as err:
                    await self._report(err)
                    if not err.keeps_connection:
                        break
        except (ConnectionError, TimeoutError):
            _LOGGER.debug("Connection from %s lost", self._peer)
        except Exception:
            _LOGGER.exception("Unexpected error on connection from %s", self._peer)
            with contextlib.suppress(Exception):
                await self._send(InternalError("Internal server error.").to_event())
        finally:
            await self._cancel_task()
            with contextlib.suppress(Exception):
                self._writer.close()

    async def shutdown(self) -> None:
        """Stop reading; a request already speaking is left to finish (the app enforces grace)."""
        self._closing = True
        if not self._busy():
            self._writer.close()

    def abort(self) -> None:
        """Past the grace period: cancel the work in flight and drop the connection."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        self._writer.transport.abort()

    def _busy(self) -> bool:
        return self._state is not State.IDLE or (self._task is not None and not self._task.done())

    # ------------------------------------------------------------------ dispatch

    async def _dispatch(self, event: Event) -> None:
        kind = event.type
        if Describe.is_type(kind):
            entries = await self._services.pool.entries(force=True)
            await self._send(build_info(entries, self._settings.streaming).event())
            if self._services.voices_seen is not None:
                await self._services.voices_seen(entries)
            return
        if kind not in ("synthesize", "synthesize-start", "synthesize-chunk", "synthesize-stop"):
            _LOGGER.debug("Ignoring %s event from %s", kind, self._peer)
            return
        if kind != "synthesize" and not self._settings.streaming:
            raise StreamingDisabled(
                "Text streaming is turned off on this server; send 'synthesize'."
            )
        if self._state is State.FINISHING and kind in ("synthesize", "synthesize-start"):
            await self._wait_task()
        if self._state is State.SPEAKING and self._task is not None and self._task.done():
            self._state = State.IDLE

        if Synthesize.is_type(kind):
            if self._state is State.STREAMING:
                return  # compatibility copy of the streamed text
            text = _text_field(event.data)
            voice = _voice_field(event.data)
            await self._cancel_task()
            self._check_text(text)
            self._state = State.SPEAKING
            self._start(self._speak_plain(text, voice))
        elif SynthesizeStart.is_type(kind):
            voice = _voice_field(event.data)
            await self._cancel_task()
            self._stream_text = asyncio.Queue()
            self._stream_chars = 0
            self._state = State.STREAMING
            self._start(self._speak_stream(voice, self._stream_text))
        elif SynthesizeChunk.is_type(kind):
            if self._state is State.DISCARDING:
                return
            if self._state is not State.STREAMING or self._stream_text is None:
                raise BadSequence("'synthesize-chunk' without 'synthesize-start'.")
            text = _text_field(event.data)
            self._stream_chars += len(text)
            if self._stream_chars > self._settings.max_text_chars:
                await self._cancel_task()
                self._state = State.DISCARDING
                raise TextTooLong(
                    f"Streamed text passed the limit of {self._settings.max_text_chars} "
                    "characters; the stream was stopped."
                )
            self._stream_text.put_nowait(text)
        elif SynthesizeStop.is_type(kind):
            if self._state is State.DISCARDING:
                self._state = State.IDLE
                await self._send(SynthesizeStopped().event())
                return
            if self._state is not State.STREAMING or self._stream_text is None:
                raise BadSequence("'synthesize-stop' without 'synthesize-start'.")
            self._stream_text.put_nowait(None)
            self._stream_text = None
            self._state = State.FINISHING

    def _start(self, coro: Any) -> None:
        self._task = asyncio.create_task(coro, name=f"speak-{self._peer}")

    async def _wait_task(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _cancel_task(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._state = State.IDLE
        self._stream_text = None

    def _check_text(self, text: str) -> None:
        if len(text) > self._settings.max_text_chars:
            raise TextTooLong(
                f"Text of {len(text)} characters is longer than the limit of "
                f"{self._settings.max_text_chars}."
            )
        if not text.strip():
            raise EmptyText("There is no text to speak.")

    # ------------------------------------------------------------------ speaking

    async def _speak_plain(self, text: str, voice: VoiceRequest) -> None:
        async def sentences() -> AsyncIterator[str]:
            # Normalising 100,000 characters takes ~15 ms: off the loop. Splitting is lazy
            # and linear, a few sentences at a time between other connections' events.
            normalized = await self._services.pool.run_io(normalize, text)
            for i, sentence in enumerate(
                iter_sentences(normalized, self._settings.max_chunk_chars)
            ):
                yield add_punctuation(sentence, self._settings.auto_punctuation)
                if i % 8 == 7:
                    await asyncio.sleep(0)

        await self._speak(voice, sentences(), streaming=False)

    async def _speak_stream(self, voice: VoiceRequest, queue: asyncio.Queue[str | None]) -> None:
        async def sentences() -> AsyncIterator[str]:
            splitter = SentenceSplitter(self._settings.max_chunk_chars)
            while (chunk := await queue.get()) is not None:
                for sentence in splitter.add(chunk):
                    yield add_punctuation(sentence, self._settings.auto_punctuation)
            for sentence in splitter.finish():
                yield add_punctuation(sentence, self._settings.auto_punctuation)

        await self._speak(voice, sentences(), streaming=True)

    async def _speak(
        self, request: VoiceRequest, sentences: AsyncIterator[str], streaming: bool
    ) -> None:
        services = self._services
        stats = SpeechStats()
        framer: AudioFramer | None = None
        name = "?"
        try:
            async with services.scheduler.admit():
                name = await self._resolve_voice_name(request)
                async with services.pool.acquire(name) as voice:
                    speaker_id = voice.entry.info.resolve_speaker(self._speaker_for(request, name))
                    params = voice.params(
                        speaker_id,
                        self._settings.noise_scale,
                        self._settings.length_scale,
                        self._settings.noise_w_scale,
                    )
                    framer = AudioFramer(voice.sample_rate, self._settings.samples_per_chunk)
                    self._limit_write_buffer(voice.sample_rate)
                    await services.synthesizer.speak(
                        voice, params, sentences, framer, self._send, stats
                    )
            if framer is not None and framer.started:
                await self._send(framer.stop())
            elif not streaming:
                raise NoSpeech("The text has nothing that can be spoken.")
            if streaming:
                await self._send(SynthesizeStopped().event())
            _LOGGER.info(
                "Spoke voice=%s chars=%d first_audio=%s total=%.3fs audio=%.2fs rtf=%.3f "
                "underruns=%d%s",
                name,
                stats.characters,
                f"{stats.first_audio_seconds:.3f}s"
                if stats.first_audio_seconds is not None
                else "-",
                stats.total_seconds,
                stats.audio_seconds,
                stats.real_time_factor,
                stats.underruns,
                " (stream)" if streaming else "",
            )
        except asyncio.CancelledError:
            # Superseded or client gone: close the audio so the response stays well formed.
            if framer is not None and framer.started and not self._writer.is_closing():
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._send(framer.stop(), timeout=1.0))
            raise
        except TtsError as err:
            await self._report(err)
            if streaming:
                with contextlib.suppress(Exception):
                    await self._send(SynthesizeStopped().event())
        except (ConnectionError, TimeoutError):
            _LOGGER.debug("Client %s went away mid-response", self._peer)
        except Exception:
            _LOGGER.exception("Synthesis failed for %s", self._peer)
            with contextlib.suppress(Exception):
                await self._send(InternalError("Synthesis failed on the server.").to_event())
        finally:
            services.pool.trim()  # decoder buffers back to the OS, once the server is quiet
            if self._state in (State.SPEAKING, State.FINISHING):
                self._state = State.IDLE
            if self._closing:
                self._writer.close()  # shutting down: flush this response, then hang up

    async def _resolve_voice_name(self, request: VoiceRequest) -> str:
        if request.name:
            return request.name
        if request.language:
            entries = await self._services.pool.entries()
            default = entries.get(self._settings.voice)
            wanted = request.language.replace("-", "_").lower()
            candidates = ([default] if default else []) + sorted(
                entries.values(), key=lambda e: e.name
            )
            for entry in candidates:
                lang = entry.info.language.lower()
                if lang == wanted or lang.split("_")[0] == wanted:
                    return entry.name
            raise VoiceNotFound(f"No installed voice speaks '{request.language}'.")
        return self._settings.voice

    def _speaker_for(self, request: VoiceRequest, name: str) -> str | None:
        if request.speaker is not None:
            return request.speaker
        return self._settings.speaker if name == self._settings.voice else None

    def _limit_write_buffer(self, sample_rate: int) -> None:
        """Buffer at most `max_ahead_seconds` of audio for a slow reader."""
        high = int(self._settings.max_ahead_seconds * sample_rate * SAMPLE_WIDTH)
        transport = self._writer.transport
        with contextlib.suppress(Exception):
            transport.set_write_buffer_limits(high=high)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, min(high, 65536))

    # ------------------------------------------------------------------ writing

    async def _send(self, event: Event, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Write one event whole; a reader that stalls past the idle timeout is dropped."""
        async with self._write_lock:
            await asyncio.wait_for(
                async_write_event(event, self._writer),
                timeout=timeout or self._settings.connection_idle_timeout,
            )

    async def _report(self, err: TtsError) -> None:
        """Tell the client; log once per connection so a bad client cannot flood the log."""
        level = logging.DEBUG if self._complained else logging.INFO
        self._complained = True
        _LOGGER.log(level, "Client %s: %s (%s)", self._peer, err.text, err.code)
        with contextlib.suppress(Exception):
            await self._send(err.to_event())


# ---------------------------------------------------------------------- field checks


def _text_field(data: dict[str, Any]) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise BadRequest("Field 'text' must be a string.")
    return text


def _voice_field(data: dict[str, Any]) -> VoiceRequest:
    voice = data.get("voice")
    if voice is None:
        return VoiceRequest(None, None, None)
    if not isinstance(voice, dict):
        raise BadRequest("Field 'voice' must be an object.")
    values: dict[str, str | None] = {}
    for key in ("name", "speaker", "language"):
        value = voice.get(key)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"Field 'voice.{key}' must be a string.")
        values[key] = value or None
    return VoiceRequest(values["name"], values["speaker"], values["language"])
