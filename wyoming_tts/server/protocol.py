"""Reading Wyoming events from an untrusted peer, within limits.

`wyoming.event.async_read_event` trusts its input: any length is read, any
JSON is accepted and errors end the connection silently. Here every event is
bounded (header line, data, payload, JSON depth), typed, and timed, and
anything wrong is a :class:`BadEvent` the connection can report before it
closes. Writing uses the library's own framing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from wyoming.event import Event

from ..errors import BadEvent

#: Longest event header line; longer closes the connection with `bad-event`.
MAX_HEADER_BYTES = 65536
#: Largest data or payload section of one event: `max_text_chars` (100,000) of any
#: script, JSON-escaped, fits.
MAX_EVENT_BYTES = 655360
#: Seconds allowed to finish sending an event once its header started.
READ_TIMEOUT = 10.0
MAX_JSON_DEPTH = 16
MAX_TYPE_LENGTH = 64
#: Data sections larger than this are parsed on a worker thread, not the event loop.
OFF_LOOP_PARSE_BYTES = 16384
#: Event types that carry text only; a payload on them is a framing error.
TEXT_ONLY_TYPES = frozenset(
    {
        "describe",
        "synthesize",
        "synthesize-start",
        "synthesize-chunk",
        "synthesize-stop",
        "ping",
    }
)


class IdleTimeout(Exception):
    """The peer sent nothing for the idle period."""


class EventReader:
    """Bounded event reader for one connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_event_bytes: int = MAX_EVENT_BYTES,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self._reader = reader
        self._max_header = max_header_bytes
        self._max_event = max_event_bytes
        self._read_timeout = read_timeout

    async def read(self, idle_timeout: float | None) -> Event | None:
        """Next event, or None at a clean end of stream.

        Raises IdleTimeout when nothing arrives within `idle_timeout`, and
        BadEvent for anything malformed, oversized or too slow once started.
        """
        try:
            first = await asyncio.wait_for(self._reader.read(1), timeout=idle_timeout)
        except TimeoutError:
            raise IdleTimeout from None
        if not first:
            return None
        if first == b"\n":
            raise BadEvent("Empty event header line.")
        try:
            rest = await asyncio.wait_for(self._read_line(), timeout=self._read_timeout)
        except TimeoutError:
            raise BadEvent("Timed out waiting for the rest of an event header.") from None
        header = _parse_json_object(first + rest, "header")
        event_type = header.get("type")
        if not isinstance(event_type, str) or not event_type or len(event_type) > MAX_TYPE_LENGTH:
            raise BadEvent("Event header has no valid 'type'.")
        data = header.get("data", {})
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise BadEvent("Event 'data' must be an object.")
        data_length = self._length(header, "data_length")
        payload_length = self._length(header, "payload_length")
        if payload_length and event_type in TEXT_ONLY_TYPES:
            raise BadEvent(f"A '{event_type}' event carries no payload.")
        try:
            if data_length:
                extra = await asyncio.wait_for(
                    self._reader.readexactly(data_length), timeout=self._read_timeout
                )
                if len(extra) > OFF_LOOP_PARSE_BYTES:
                    # A big text is fine, but parsing (and depth-checking) it is CPU work.
                    parsed = await asyncio.to_thread(_parse_json_object, extra, "data")
                else:
                    parsed = _parse_json_object(extra, "data")
                data = {**data, **parsed}
            payload = None
            if payload_length:
                payload = await asyncio.wait_for(
                    self._reader.readexactly(payload_length), timeout=self._read_timeout
                )
        except TimeoutError:
            raise BadEvent("Timed out waiting for the rest of an event.") from None
        except asyncio.IncompleteReadError:
            raise BadEvent("Connection ended in the middle of an event.") from None
        return Event(type=event_type, data=data, payload=payload)

    async def _read_line(self) -> bytes:
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise BadEvent(f"Event header longer than {self._max_header} bytes.") from None
        except asyncio.IncompleteReadError as err:
            if err.partial:
                raise BadEvent("Connection ended in the middle of an event header.") from None
            raise BadEvent("Connection ended in the middle of an event header.") from None
        if len(line) > self._max_header:
            raise BadEvent(f"Event header longer than {self._max_header} bytes.")
        return line

    def _length(self, header: dict[str, Any], key: str) -> int:
        value = header.get(key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadEvent(f"'{key}' must be a whole number.")
        if value < 0 or value > self._max_event:
            raise BadEvent(f"'{key}' of {value} is outside 0..{self._max_event}.")
        return value


def _parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadEvent(f"Event {what} is not valid UTF-8.") from None
    brackets = text.count("[") + text.count("{")
    if brackets > MAX_JSON_DEPTH and _nesting_depth(text) > MAX_JSON_DEPTH:
        raise BadEvent(f"Event {what} is nested too deeply.")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise BadEvent(f"Event {what} is not valid JSON.") from None
    if not isinstance(value, dict):
        raise BadEvent(f"Event {what} must be a JSON object.")
    return value


def _nesting_depth(text: str) -> int:
    """Bracket depth outside strings, without recursion, so a hostile blob cannot recurse us."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest
