"""The bounded event reader alone: unit-tested, and fuzzed with random and odd bytes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wyoming.event import Event, async_write_event
from wyoming.info import Describe

from wyoming_tts.errors import BadEvent
from wyoming_tts.server.protocol import EventReader, IdleTimeout

LIMITS = {"max_header_bytes": 1024, "max_event_bytes": 4096, "read_timeout": 0.2}


async def parse(raw: bytes, eof: bool = True) -> list[Event | BaseException | None]:
    """Everything the reader makes of these bytes, until it stops or fails."""
    reader = asyncio.StreamReader(limit=LIMITS["max_header_bytes"])
    reader.feed_data(raw)
    if eof:
        reader.feed_eof()
    events = EventReader(reader, **LIMITS)  # type: ignore[arg-type]
    out: list[Event | BaseException | None] = []
    for _ in range(50):
        try:
            event = await events.read(idle_timeout=0.2)
        except (BadEvent, IdleTimeout) as err:
            out.append(err)
            break
        out.append(event)
        if event is None:
            break
    return out


async def encode(event: Event) -> bytes:
    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, b: bytes) -> None:
            self.data.extend(b)

        def writelines(self, parts: Any) -> None:
            for p in parts:
                self.data.extend(p)

        async def drain(self) -> None:
            return None

    sink = Sink()
    await async_write_event(event, sink)  # type: ignore[arg-type]
    return bytes(sink.data)


async def test_valid_events_roundtrip() -> None:
    raw = await encode(Event("synthesize", {"text": "héllo", "voice": {"name": "x"}}))
    raw += await encode(Describe().event())
    got = await parse(raw)
    assert isinstance(got[0], Event) and got[0].data["text"] == "héllo"
    assert isinstance(got[1], Event) and got[1].type == "describe"
    assert got[2] is None


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"x" * 2000 + b"\n", "longer than"),
        (b'{"type": "synthesize", "data_length": 5000}\n', "outside"),
        (b'{"type": "synthesize", "data_length": -1}\n', "outside"),
        (b'{"type": "synthesize", "data_length": true}\n', "whole number"),
        (b'{"type": "synthesize", "payload_length": 3}\nabc', "no payload"),
        (b'{"type": "synthesize", "data_length": 10}\n{"a"', "middle"),
        (b'{"type": "synthesize"', "middle of an event header"),
        (b"\n", "Empty"),
        (b"\xc3\x28\n", "UTF-8"),
        (b"[" * 40 + b"]" * 40 + b"\n", "nested"),
    ],
)
async def test_limits(raw: bytes, fragment: str) -> None:
    got = await parse(raw)
    assert isinstance(got[-1], BadEvent), got
    assert fragment in got[-1].text


async def test_idle_and_stalled() -> None:
    assert isinstance((await parse(b"", eof=False))[-1], IdleTimeout)
    stalled = await parse(b'{"type": "synth', eof=False)
    assert isinstance(stalled[-1], BadEvent) and "Timed out" in stalled[-1].text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
async def test_random_bytes_never_escape(raw: bytes) -> None:
    for item in await parse(raw):
        assert item is None or isinstance(item, (Event, BadEvent, IdleTimeout))
        if isinstance(item, Event):
            assert isinstance(item.type, str) and isinstance(item.data, dict)
            assert item.payload is None or len(item.payload) <= LIMITS["max_event_bytes"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        ["synthesize", "synthesize-start", "synthesize-chunk", "describe", "audio-chunk", "x"]
    ),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    st.one_of(st.none(), st.integers(-5, 5000), st.floats(), st.text(max_size=4)),
    st.binary(max_size=64),
)
async def test_valid_looking_events(
    event_type: str, data: dict[str, Any], length: Any, tail: bytes
) -> None:
    body = json.dumps(data).encode()
    header: dict[str, Any] = {"type": event_type, "data_length": len(body)}
    if length is not None:
        header["payload_length"] = length
    raw = json.dumps(header).encode() + b"\n" + body + tail
    for item in await parse(raw):
        assert item is None or isinstance(item, (Event, BadEvent, IdleTimeout))
