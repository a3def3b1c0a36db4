"""One error base class with a stable code per failure a client can cause.

Codes are part of the protocol contract: clients branch on ``code``; ``text``
is for people and never a Python repr. The README's table of codes is generated
from the docstrings below (`wyoming_tts.docs`), so they are written for users.
"""

from __future__ import annotations

from wyoming.error import Error
from wyoming.event import Event


class TtsError(Exception):
    """A failure reported to the client as a Wyoming ``error`` event."""

    code = "internal-error"
    #: Whether the connection can keep serving after this error.
    keeps_connection = True

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def to_event(self) -> Event:
        return Error(text=self.text, code=self.code).event()


class BadEvent(TtsError):
    """The bytes on the wire are not a well-formed event (header too long, bad lengths, invalid
    UTF-8 or JSON, nesting, payload on a text event, a half-sent event that stalls). The
    connection is closed."""

    code = "bad-event"
    keeps_connection = False


class BadRequest(TtsError):
    """A well-formed event with a field of the wrong type: `text` not a string, `voice` not an
    object, `voice.name`/`speaker`/`language` not strings."""

    code = "bad-request"


class BadSequence(TtsError):
    """`synthesize-chunk` or `synthesize-stop` without `synthesize-start`."""

    code = "bad-sequence"


class EmptyText(TtsError):
    """Empty or whitespace-only text in a `synthesize`."""

    code = "empty-text"


class NoSpeech(TtsError):
    """A `synthesize` whose text yields no phonemes (punctuation only, symbols, control
    characters). A stream with nothing speakable ends with just `synthesize-stopped`."""

    code = "no-speech"


class TextTooLong(TtsError):
    """Text (or the sum of a stream's chunks) beyond `max_text_chars`; sent before any audio
    for `synthesize`; a stream is stopped and its remaining chunks ignored until
    `synthesize-stop`."""

    code = "text-too-long"


class VoiceNotFound(TtsError):
    """No installed voice of that name (names with `/`, `\\`, `..`, NUL or a leading dot are
    never looked up), or no voice for the requested language."""

    code = "voice-not-found"


class VoiceLoadFailed(TtsError):
    """The voice's files are missing, corrupt or fail their warm-up; other voices keep
    serving."""

    code = "voice-load-failed"


class Busy(TtsError):
    """Too many connections or requests in flight, or every voice slot is in use. Try
    again."""

    code = "busy"


class MemoryExhausted(TtsError):
    """Loading the voice would pass `memory_threshold_mb` and no idle voice can be
    unloaded."""

    code = "memory-exhausted"


class StreamingDisabled(TtsError):
    """Streaming events sent to a server started with `--no-streaming`."""

    code = "streaming-disabled"


class InternalError(TtsError):
    """A bug of ours; logged with a traceback, reported without one."""

    code = "internal-error"
