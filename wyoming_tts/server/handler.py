"""One Wyoming connection: parse events, keep the stream state, write events.

Everything a request means (admission, voices, limits, synthesis, the log
line) is the speech service's; this module only translates. Synthesis runs as
a task of its own while the connection keeps reading, so a `describe` is
answered mid-speech, and a new request or a vanished client cancels the work in
flight. `_respond` is that task's one boundary: whatever happens, the response
ends the way the client waits for (`audio-stop` once audio started, then the
`error` if any, then `synthesize-stopped` for a stream, or the end of the
connection for a refused one-shot `synthesize`: Home Assistant ignores `error`
events and waits, with no timeout, for one of those).

Stream state machine (every order of events has an outcome):

==========  =====================  ==============================================
state       event                  outcome
==========  =====================  ==============================================
any         describe               `info` (written between audio chunks if needed)
idle        synthesize             speak it -> audio-start, chunks, audio-stop;
                                   refused: `error`, connection closed
idle        synthesize-start       -> streaming (empty data: default voice);
                                   bad fields: `error`, -> discarding
idle        synthesize-chunk       `error` bad-sequence; connection stays usable
idle        synthesize-stop        `error` bad-sequence, synthesize-stopped
speaking    synthesize             cancel current (close its audio), speak new
speaking    synthesize-start       cancel current (close its audio), -> streaming
speaking    synthesize-chunk/stop  as in idle
streaming   synthesize-chunk       text added; complete sentences spoken at once
streaming   synthesize             ignored (Home Assistant's compatibility copy)
streaming   synthesize-start       current stream cancelled (audio closed), new one
streaming   synthesize-stop        -> finishing
streaming   (task refused)         `error`, synthesize-stopped; later chunks unused
streaming   end of input           stream abandoned (audio closed)
finishing   (task ends)            rest spoken, audio-stop, synthesize-stopped -> idle
finishing   synthesize/-start      waits for the stream to finish, then as in idle
finishing   synthesize-chunk/stop  as in idle
discarding  synthesize-chunk       ignored (stream was refused, e.g. too long)
discarding  synthesize-stop        synthesize-stopped -> idle
discarding  synthesize/-start      as in idle
any         unknown type           ignored (logged at debug)
any         malformed framing      `error` bad-event, connection closed
==========  =====================  ==============================================

Waiting in `finishing` serves pipelined requests in order, and a client that
pipelines without reading holds at most one request's buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
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
from ..errors import (
    BadEvent,
    BadRequest,
    BadSequence,
    InternalError,
    StreamingDisabled,
    TextTooLong,
    TtsError,
)
from ..info import build_info
from ..speech import SpeechRequest, SpeechService, TextSource
from ..voices.catalog import VoiceEntry
from .protocol import READ_TIMEOUT, EventReader, IdleTimeout

_LOGGER = logging.getLogger(__name__)

#: Seconds of audio buffered ahead of a slow reader: it slows synthesis, not memory.
MAX_AHEAD_SECONDS = 4.0
#: Seconds to write the audio-stop of a response that is being cancelled.
CLOSE_TIMEOUT = 1.0

VoicesSeen = Callable[[Mapping[str, VoiceEntry]], Awaitable[None]]


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
        speech: SpeechService,
        peer: str,
        voices_seen: VoicesSeen | None = None,
    ) -> None:
        self._writer = writer
        self._speech = speech
        self._settings = speech.settings
        self._peer = peer
        self._voices_seen = voices_seen
        self._events = EventReader(reader, read_timeout=READ_TIMEOUT)
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
                running = self._task is not None and not self._task.done()
                speaking = running and self._state in (State.SPEAKING, State.FINISHING)
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
                    await self._end_of_input()
                    break
                try:
                    await self._dispatch(event)
                except TtsError as err:
                    await self._report(err)
                    if SynthesizeStop.is_type(event.type):
                        await self._send(SynthesizeStopped().event())  # what a stream waits for
                    if not err.keeps_connection or Synthesize.is_type(event.type):
                        break  # a refused one-shot request ends with its connection (EOF)
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

    async def _end_of_input(self) -> None:
        """The peer finished sending: let a running request finish (or fail on write);
        a stream that never got its synthesize-stop is abandoned."""
        if self._state is State.STREAMING:
            await self._cancel_task()
        await self._wait_task()

    # ------------------------------------------------------------------ dispatch

    async def _dispatch(self, event: Event) -> None:
        kind = event.type
        if Describe.is_type(kind):
            await self._describe()
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
            request = _voice_field(event.data)
            await self._cancel_task()
            self._speech.check_text(text)
            self._state = State.SPEAKING
            self._start(self._respond(request, text))
        elif SynthesizeStart.is_type(kind):
            await self._cancel_task()
            try:
                request = _voice_field(event.data)
            except BadRequest:
                self._state = State.DISCARDING  # chunks ignored; its stop gets its stopped
                raise
            queue: asyncio.Queue[str | None] = asyncio.Queue()
            self._stream_text, self._stream_chars = queue, 0
            self._state = State.STREAMING
            self._start(self._respond(request, _drain(queue)))
        elif SynthesizeChunk.is_type(kind):
            await self._stream_chunk(_text_field(event.data))
        elif SynthesizeStop.is_type(kind):
            await self._stream_stop()

    async def _describe(self) -> None:
        entries = await self._speech.voices(force=True)
        await self._send(
            build_info(entries, self._settings.streaming, self._speech.presets).event()
        )
        if self._voices_seen is not None:
            await self._voices_seen(entries)

    async def _stream_chunk(self, text: str) -> None:
        if self._state is State.DISCARDING:
            return
        if self._state is not State.STREAMING or self._stream_text is None:
            raise BadSequence("'synthesize-chunk' without 'synthesize-start'.")
        self._stream_chars += len(text)
        try:
            self._speech.check_length(self._stream_chars)
        except TextTooLong:
            await self._cancel_task()
            self._state = State.DISCARDING
            raise TextTooLong(
                f"Streamed text passed the limit of {self._settings.max_text_chars} "
                "characters; the stream was stopped."
            ) from None
        self._stream_text.put_nowait(text)

    async def _stream_stop(self) -> None:
        if self._state is State.DISCARDING:
            self._state = State.IDLE
            await self._send(SynthesizeStopped().event())
            return
        if self._state is not State.STREAMING or self._stream_text is None:
            raise BadSequence("'synthesize-stop' without 'synthesize-start'.")
        self._stream_text.put_nowait(None)
        self._stream_text = None
        done = self._task is None or self._task.done()  # refused early: already answered
        self._state = State.IDLE if done else State.FINISHING

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
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

    # ------------------------------------------------------------------ the request task

    async def _respond(self, request: SpeechRequest, text: TextSource) -> None:
        """Speak one request; every way out ends its response as the client expects."""
        streamed = not isinstance(text, str)
        framer: AudioFramer | None = None
        try:
            async with self._speech.open(request, streamed=streamed) as speech:
                framer = AudioFramer(speech.format.rate, self._settings.samples_per_chunk)
                self._limit_write_buffer(speech.format.rate)
                async for pcm in speech.audio(text):
                    if (start := framer.start()) is not None:
                        await self._send(start)
                    for event in framer.push(pcm):
                        await self._send(event)
            await self._close_audio(framer)
            if streamed:
                await self._send(SynthesizeStopped().event())
        except asyncio.CancelledError:
            # Superseded, client gone or shutdown: keep the response well formed.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._close_audio(framer, timeout=CLOSE_TIMEOUT))
            raise
        except (ConnectionError, TimeoutError):
            _LOGGER.debug("Client %s went away mid-response", self._peer)
        except Exception as err:
            if not isinstance(err, TtsError):  # a bug of this module: the service logs its own
                _LOGGER.exception("Response to %s failed", self._peer)
                err = InternalError("Synthesis failed on the server.")
            with contextlib.suppress(Exception):
                await self._close_audio(framer)
                await self._send(err.to_event())
                if streamed:
                    await self._send(SynthesizeStopped().event())
            if not streamed:
                # Home Assistant ignores `error` and waits for audio-stop or the end of the
                # connection; it opens a new one for every request.
                self._closing = True
        finally:
            if self._state in (State.SPEAKING, State.FINISHING):
                self._state = State.IDLE
            if self._closing:
                self._writer.close()  # shutting down: flush this response, then hang up

    async def _close_audio(self, framer: AudioFramer | None, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if framer is None or not framer.started or framer.stopped or self._writer.is_closing():
            return
        await self._send(framer.stop(), timeout=timeout)

    def _limit_write_buffer(self, sample_rate: int) -> None:
        """Buffer at most `MAX_AHEAD_SECONDS` of audio for a slow reader."""
        high = int(MAX_AHEAD_SECONDS * sample_rate * SAMPLE_WIDTH)
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
        """Tell the client of a protocol error; log once per connection, so a bad client
        cannot flood the log."""
        level = logging.DEBUG if self._complained else logging.INFO
        self._complained = True
        _LOGGER.log(level, "Client %s: %s (%s)", self._peer, err.text, err.code)
        with contextlib.suppress(Exception):
            await self._send(err.to_event())


# ---------------------------------------------------------------------- field checks


async def _drain(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    """A stream's text chunks until its synthesize-stop (None)."""
    while (chunk := await queue.get()) is not None:
        yield chunk


def _text_field(data: dict[str, Any]) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise BadRequest("Field 'text' must be a string.")
    return text


def _voice_field(data: dict[str, Any]) -> SpeechRequest:
    voice = data.get("voice")
    if voice is None:
        return SpeechRequest()
    if not isinstance(voice, dict):
        raise BadRequest("Field 'voice' must be an object.")
    values: dict[str, str | None] = {}
    for key in ("name", "speaker", "language"):
        value = voice.get(key)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"Field 'voice.{key}' must be a string.")
        values[key] = value or None
    return SpeechRequest(values["name"], values["speaker"], values["language"])
