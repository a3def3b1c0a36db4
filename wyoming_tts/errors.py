"""One error base class with a stable code per failure a client can cause.

Codes are part of the protocol contract (documented in the README): clients
branch on ``code``; ``text`` is for people and never a Python repr.
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
    """The bytes on the wire are not a well-formed event; framing is lost."""

    code = "bad-event"
    keeps_connection = False


class BadRequest(TtsError):
    """A well-formed event with a field of the wrong type or shape."""

    code = "bad-request"


class BadSequence(TtsError):
    """A streaming event that makes no sense in the current state."""

    code = "bad-sequence"


class EmptyText(TtsError):
    """Nothing to say: empty or whitespace-only text."""

    code = "empty-text"


class NoSpeech(TtsError):
    """Text that yields no phonemes (punctuation only, symbols, controls)."""

    code = "no-speech"


class TextTooLong(TtsError):
    """Text beyond ``max_text_chars``; refused before any audio."""

    code = "text-too-long"


class VoiceNotFound(TtsError):
    """The voice is not installed in any data dir (names are never paths)."""

    code = "voice-not-found"


class SpeakerNotFound(TtsError):
    """The voice has no such speaker name or id."""

    code = "speaker-not-found"


class VoiceLoadFailed(TtsError):
    """The voice's files are missing, corrupt or unusable."""

    code = "voice-load-failed"


class Busy(TtsError):
    """Too many requests or connections; try again shortly."""

    code = "busy"


class MemoryExhausted(TtsError):
    """Loading another voice would pass the memory threshold and none can be evicted."""

    code = "memory-exhausted"


class StreamingDisabled(TtsError):
    """Text streaming events while the server runs with ``--no-streaming``."""

    code = "streaming-disabled"


class InternalError(TtsError):
    """Our own bug; logged with a traceback, reported without one."""

    code = "internal-error"


ERROR_CODES: dict[str, str] = {
    cls.code: (cls.__doc__ or "").strip()
    for cls in (
        BadEvent,
        BadRequest,
        BadSequence,
        EmptyText,
        NoSpeech,
        TextTooLong,
        VoiceNotFound,
        SpeakerNotFound,
        VoiceLoadFailed,
        Busy,
        MemoryExhausted,
        StreamingDisabled,
        InternalError,
    )
}
