"""The HTTP door over real HTTP: what a curl user, Open WebUI or a prober gets back.

The real app in this process with `--http 127.0.0.1:0` (the shared `http_server`, or one
with its own settings), the real voice, aiohttp's client, and raw sockets for the
requests a well-behaved client would never send. Audio is checked as a listener would
hear it: the advertised format parsed from the bytes, not silence, a length that fits.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from aiohttp import ClientPayloadError, ClientResponse, ClientSession, ClientTimeout
from prometheus_client.parser import text_string_to_metric_families
from wyoming.tts import Synthesize

from wyoming_tts.config import ConfigError, load_settings
from wyoming_tts.server.app import App, Phase
from wyoming_tts.server.encoding import Resampler

from .conftest import (
    VOICE,
    Server,
    connect,
    http_base,
    read_until,
    rms_dbfs,
    run_server,
)

SHORT = "Hello! The kitchen lights are now on."
SECOND = "en_US-second-medium"
LONG = " ".join(
    f"Sentence number {i} of a long story, told slowly so that it takes a while." for i in range(10)
)
RATE = 22050


# ---------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession(timeout=ClientTimeout(total=60)) as client:
        yield client


def parse_wav(data: bytes) -> tuple[tuple[int, int, int], np.ndarray]:
    """((rate, width, channels), samples) of a PCM WAV, read from its own header."""
    riff, _size, wave = struct.unpack("<4sI4s", data[:12])
    assert (riff, wave) == (b"RIFF", b"WAVE")
    at, fmt = 12, None
    while at + 8 <= len(data):
        chunk, size = struct.unpack("<4sI", data[at : at + 8])
        if chunk == b"fmt ":
            tag, channels, rate, _rate, _align, bits = struct.unpack(
                "<HHIIHH", data[at + 8 : at + 24]
            )
            assert tag == 1  # PCM
            fmt = (rate, bits // 8, channels)
        if chunk == b"data":
            assert fmt is not None
            return fmt, np.frombuffer(data[at + 8 :], dtype="<i2")
        at += 8 + size
    raise AssertionError("no data chunk")


def decode(data: bytes) -> tuple[int, np.ndarray]:
    """(rate, 16-bit samples) of FLAC, MP3 or Ogg Opus bytes, through libsndfile.

    Read block by block with libsndfile's own call: a streamed FLAC says "length
    unknown", and soundfile's `read` seeks by the length it is told.
    """
    with soundfile.SoundFile(io.BytesIO(data)) as sound:
        lib, ffi = soundfile._snd, soundfile._ffi
        block, parts = np.empty(4096, dtype="<i2"), []
        while (
            n := lib.sf_readf_short(sound._file, ffi.cast("short *", block.ctypes.data), 4096)
        ) > 0:
            parts.append(block[:n].copy())
        return sound.samplerate, np.concatenate(parts)


def assert_heard(samples: np.ndarray, rate: int, text: str) -> None:
    """Speech: not silence, and ~10-20 characters per second of audio for this voice."""
    assert rms_dbfs(samples) > -35, "audio is near silence"
    seconds = len(samples) / rate
    assert 6 < len(text) / seconds < 30, f"{seconds:.2f}s of audio for {len(text)} chars"


async def until(condition: Callable[[], bool], timeout: float) -> None:
    """Wait for `condition()` to hold, polled: the app has no event for what tests watch."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def error_of(body: dict[str, Any]) -> str:
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    return str(body["error"]["code"])


async def raw(
    port: int, request: bytes, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are and read the whole response (the server closes or ends it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            status = int(lines[0].split()[1])
            headers = {
                k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body
    finally:
        writer.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def scrape(base: str) -> str:
    async with session() as client, client.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return await resp.text()


# ---------------------------------------------------------------------------- probes


async def test_health_and_ready_name_the_loaded_voices(http_server: Server) -> None:
    base = http_base(http_server)
    async with session() as client:
        async with client.get(f"{base}/health") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ok"}
        async with client.get(f"{base}/ready") as resp:
            assert resp.status == 200
            body = await resp.json()
    assert body["status"] == "ready" and VOICE in body["voices"]


@contextlib.asynccontextmanager
async def starting_app(*args: str) -> AsyncIterator[App]:
    """An app whose run has just begun: its HTTP door is open, priming may still run."""
    argv = ["--uri", "tcp://127.0.0.1:0", "--http", "127.0.0.1:0", "--keep-alive-interval", "0"]
    argv += args
    settings, _ = await asyncio.to_thread(load_settings, argv, {})
    app = App(settings, handle_signals=False)
    runner = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(30):
            while app.http_port is None:
                assert not runner.done(), runner
                await asyncio.sleep(0.005)
        yield app
    finally:
        async with asyncio.timeout(30):
            await app.serving.wait()
        app.request_stop()
        await asyncio.wait_for(runner, 30)


async def test_ready_is_503_until_the_voices_are_primed(
    cache_dir: Path, server_data_dir: Path
) -> None:
    # Two voices to prime: the door answers long before they are ready.
    args = ("--data-dir", str(server_data_dir), "--cache-dir", str(cache_dir), "--preload", SECOND)
    async with starting_app(*args) as app, session() as client:
        base = f"http://127.0.0.1:{app.http_port}"
        async with client.get(f"{base}/health") as resp:
            assert resp.status == 200
        async with client.get(f"{base}/ready") as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        async with client.post(f"{base}/api/tts", json={"text": SHORT}) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            assert error_of(await resp.json()) == "busy"
        assert app.phase is Phase.STARTING
        await app.serving.wait()
        async with client.get(f"{base}/ready") as resp:
            assert resp.status == 200
            assert (await resp.json())["voices"] == sorted([VOICE, SECOND])


async def test_the_door_is_off_unless_asked(server: Server) -> None:
    assert server.app.http is None and server.app.http_port is None


@pytest.mark.parametrize("value", ["10201", "localhost", "host:port", ":80", "h:70000"])
def test_a_bad_http_address_stops_start_up(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^http: expected HOST:PORT"):
        load_settings(["--http", value], {})


def test_http_settings_from_env_and_ipv6() -> None:
    env = {"WYOMING_TTS_HTTP": "[::1]:10201", "WYOMING_TTS_HTTP_TOKEN": "s3cret"}
    settings, _ = load_settings([], env)
    assert settings.http_address == ("::1", 10201)
    assert settings.http_token == "s3cret"
    assert settings.http_cors_origins == ()


# ---------------------------------------------------------------------------- speech


async def test_api_tts_post_streams_a_wav_while_it_is_made(http_server: Server) -> None:
    base = http_base(http_server)
    async with (
        session() as client,
        client.post(f"{base}/api/tts", json={"text": LONG, "voice": VOICE}) as resp,
    ):
        assert resp.status == 200
        assert resp.content_type == "audio/wav"
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.headers["X-Sample-Rate"] == str(RATE)
        first = await resp.content.readany()
        # Audio leaves while the rest is made, not after it all: the request is
        # still being synthesized when its first bytes arrive.
        still_speaking = http_server.app.scheduler.active_requests
        data = first + await resp.read()
    assert still_speaking == 1
    fmt, samples = parse_wav(data)
    assert fmt == (RATE, 2, 1)
    assert struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF  # a streaming header: length unknown
    assert_heard(samples, RATE, LONG)


async def test_api_tts_get_from_a_browser_or_curl(http_server: Server) -> None:
    base = http_base(http_server)
    query = {"text": SHORT, "voice": SECOND, "length_scale": "1.0"}
    async with session() as client, client.get(f"{base}/api/tts", params=query) as resp:
        assert resp.status == 200
        fmt, samples = parse_wav(await resp.read())
    assert fmt == (RATE, 2, 1)
    assert_heard(samples, RATE, SHORT)


async def test_api_tts_takes_the_reference_servers_voice_model(http_server: Server) -> None:
    body = {"text": SHORT, "voice_model": f"{SECOND}.onnx", "speaker": 0}
    url = f"{http_base(http_server)}/api/tts"
    async with session() as client, client.post(url, json=body) as resp:
        assert resp.status == 200
        _fmt, samples = parse_wav(await resp.read())
    assert_heard(samples, RATE, SHORT)


@pytest.mark.parametrize(
    ("fmt", "media_type", "rate"),
    [
        ("wav", "audio/wav", RATE),
        ("pcm", "audio/pcm", RATE),
        ("flac", "audio/flac", RATE),
        ("mp3", "audio/mpeg", RATE),
        ("opus", "audio/ogg", 24000),  # Opus has no 22.05 kHz: resampled to 24 kHz
    ],
)
async def test_openai_speech_in_every_format(
    http_server: Server, fmt: str, media_type: str, rate: int
) -> None:
    body = {"model": "tts-1", "input": SHORT, "voice": VOICE, "response_format": fmt}
    url = f"{http_base(http_server)}/v1/audio/speech"
    async with session() as client, client.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == media_type
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.headers["X-Sample-Rate"] == str(RATE)
        data = await resp.read()
    if fmt == "wav":
        (got_rate, _width, _channels), samples = parse_wav(data)
    elif fmt == "pcm":
        got_rate, samples = RATE, np.frombuffer(data, dtype="<i2")
    else:
        got_rate, samples = decode(data)
    assert got_rate == rate
    assert_heard(samples, got_rate, SHORT)


async def test_openai_speech_defaults_to_mp3_and_the_default_voice(http_server: Server) -> None:
    async with session() as client:
        url = f"{http_base(http_server)}/v1/audio/speech"
        async with client.post(url, json={"input": SHORT}) as resp:
            assert resp.status == 200 and resp.content_type == "audio/mpeg"
            rate, samples = decode(await resp.read())
    assert_heard(samples, rate, SHORT)


async def test_openai_speed_changes_the_pace(http_server: Server) -> None:
    seconds = {}
    async with session() as client:
        # A long text, so the random phoneme widths average out.
        for speed in (0.5, 1.0, 2.0):
            body = {
                "input": LONG,
                "response_format": "pcm",
                "speed": speed,
            }  # long: noise averages out
            async with client.post(f"{http_base(http_server)}/v1/audio/speech", json=body) as resp:
                assert resp.status == 200
                seconds[speed] = len(await resp.read()) / 2 / RATE
    assert 1.6 < seconds[0.5] / seconds[1.0] < 2.4, seconds
    assert 0.4 < seconds[2.0] / seconds[1.0] < 0.65, seconds


async def test_voices_and_models_list_what_is_installed(http_server: Server) -> None:
    base = http_base(http_server)
    async with session() as client:
        async with client.get(f"{base}/api/voices") as resp:
            voices = await resp.json()
        async with client.get(f"{base}/v1/models") as resp:
            models = await resp.json()
    assert voices["default"] == VOICE
    assert [v["name"] for v in voices["voices"]] == [VOICE, SECOND]
    assert voices["voices"][0]["languages"] == ["en_US"] and voices["voices"][0]["installed"]
    assert voices["presets"] == []
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} >= {"tts-1", "tts-1-hd"}


async def test_warmup_loads_a_voice_ahead_of_use(cache_dir: Path, server_data_dir: Path) -> None:
    args = ("--http", "127.0.0.1:0", "--data-dir", str(server_data_dir), "--cache-dir")
    async with run_server(*args, str(cache_dir)) as srv, session() as client:
        base, pool = http_base(srv), srv.app.pool
        async with client.post(f"{base}/api/warmup", json={"voice": SECOND}) as resp:
            assert resp.status == 200
            assert (await resp.json())["was_loaded"] is False
        assert set(pool.loaded()) == {VOICE, SECOND}
        misses = pool.stats().misses
        async with client.post(f"{base}/api/warmup", json={"voice": SECOND}) as resp:
            assert (await resp.json())["was_loaded"] is True
        body = {"input": SHORT, "voice": SECOND, "response_format": "wav"}
        async with client.post(f"{base}/v1/audio/speech", json=body) as resp:
            _fmt, samples = parse_wav(await resp.read())
        assert_heard(samples, RATE, SHORT)
        assert pool.stats().misses == misses  # no load on its first request
        async with client.post(f"{base}/api/warmup", json={"voice": "nope"}) as resp:
            assert resp.status == 400 and error_of(await resp.json()) == "voice-not-found"


async def test_page_is_the_only_file_served(http_server: Server) -> None:
    base = http_base(http_server)
    async with session() as client:
        async with client.get(f"{base}/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            policy = resp.headers["Content-Security-Policy"]
            page = await resp.text()
        for path in ("/page.html", "/server/page.html", "/..%2F..%2Fpyproject.toml", "/static/x"):
            async with client.get(f"{base}{path}") as resp:
                assert resp.status == 404
                assert error_of(await resp.json()) == "not-found"
    assert '<select id="voice">' in page
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/]+=*'", policy), policy
    assert "default-src 'none'" in policy


def test_opus_resampling_is_exact_whichever_way_the_audio_is_cut() -> None:
    """22.05 -> 24 kHz for Opus: a 1 kHz tone stays a 1 kHz tone, within a few LSB, and
    pieces of any size give the same samples as the whole."""
    tone = (np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE) * 10000).astype("<i2")
    end = np.zeros(0, dtype="<i2")
    whole = Resampler(RATE, 24000)
    once = np.concatenate([whole.process(tone), whole.process(end, final=True)])
    pieces = Resampler(RATE, 24000)
    cut = [pieces.process(tone[i : i + 777]) for i in range(0, len(tone), 777)]
    assert np.array_equal(np.concatenate([*cut, pieces.process(end, final=True)]), once)
    assert len(once) == 24000
    ideal = np.sin(2 * np.pi * 1000 * np.arange(24000) / 24000) * 10000
    assert np.abs(once[50:-50] - ideal[50:-50]).max() < 4


# ---------------------------------------------------------------------------- one pool


async def test_wyoming_and_http_at_the_same_moment_share_one_loaded_voice(
    cache_dir: Path, server_data_dir: Path
) -> None:
    args = ("--http", "127.0.0.1:0", "--max-voices", "1", "--data-dir", str(server_data_dir))
    async with run_server(*args, "--cache-dir", str(cache_dir)) as srv:
        pool = srv.app.pool
        before = pool.stats()
        spans: dict[str, tuple[float, float]] = {}

        async def over_wyoming() -> np.ndarray:
            async with connect(srv.uri) as client:
                began = time.perf_counter()
                await client.write_event(Synthesize(text=LONG).event())
                resp = await read_until(client)
                spans["wyoming"] = (began, time.perf_counter())
            return resp.audio

        async def over_http() -> np.ndarray:
            async with session() as client:
                began = time.perf_counter()
                async with client.post(f"{http_base(srv)}/api/tts", json={"text": LONG}) as resp:
                    assert resp.status == 200
                    data = await resp.read()
                spans["http"] = (began, time.perf_counter())
            return parse_wav(data)[1]

        wyoming_audio, http_audio = await asyncio.gather(over_wyoming(), over_http())
        after = pool.stats()
    assert_heard(wyoming_audio, RATE, LONG)
    assert_heard(http_audio, RATE, LONG)
    (w0, w1), (h0, h1) = spans["wyoming"], spans["http"]
    assert w0 < h1 and h0 < w1, "the two requests did not overlap"
    assert after.loaded == (VOICE,)
    assert after.loads == before.loads  # the voice primed at start served both
    assert after.hits == before.hits + 2 and after.misses == before.misses


async def test_a_client_that_leaves_stops_its_synthesis(
    http_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wyoming_tts.speech")
    text = " ".join([LONG] * 8)  # ~7 minutes of audio
    reader, writer = await asyncio.open_connection("127.0.0.1", http_server.app.http_port)
    body = json.dumps({"text": text}).encode()
    writer.write(
        b"POST /api/tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await reader.readuntil(b"\r\n\r\n")
    await reader.read(4096)  # audio is flowing
    writer.transport.abort()
    scheduler = http_server.app.scheduler
    await until(lambda: not scheduler.active_requests and "door=http" in caplog.text, 5)
    line = next(r.getMessage() for r in caplog.records if "door=http" in r.getMessage())
    assert re.search(r"outcome=(cancelled|client-gone)", line), line
    audio = re.search(r"audio=([0-9.]+)s", line)
    assert audio is not None and float(audio.group(1)) < 60, f"synthesis went on: {line}"


async def test_stopping_gives_a_reply_the_grace_then_cuts_it(cache_dir: Path) -> None:
    args = ("--http", "127.0.0.1:0", "--shutdown-grace", "1", "--cache-dir", str(cache_dir))
    async with run_server(*args) as srv, session() as client:
        body = {"text": " ".join([LONG] * 8)}
        async with client.post(f"{http_base(srv)}/api/tts", json=body) as resp:
            await resp.content.readany()
            srv.app.request_stop()
            received: list[int] = []
            with pytest.raises(ClientPayloadError):  # cut short: no final chunk
                await _count_bytes(resp, received)
    # The reply kept streaming through its grace period (more than 0.5 s of 16-bit audio)
    # before it was cut.
    assert sum(received) > RATE, sum(received)


async def _count_bytes(resp: ClientResponse, received: list[int]) -> None:
    while chunk := await resp.content.readany():
        received.append(len(chunk))


# ---------------------------------------------------------------------------- bad input


async def test_bad_input_gets_a_json_error_with_the_wyoming_codes(http_server: Server) -> None:
    base = http_base(http_server)
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/api/tts", {"text": 5}, 400, "bad-request"),
        ("POST", "/api/tts", {"text": SHORT, "voice": ["x"]}, 400, "bad-request"),
        ("POST", "/api/tts", {"text": SHORT, "speaker": True}, 400, "bad-request"),
        ("POST", "/api/tts", {"text": SHORT, "length_scale": "slow"}, 400, "bad-request"),
        ("POST", "/api/tts", {"text": SHORT, "length_scale": 0}, 400, "bad-request"),
        ("POST", "/api/tts", ["not", "an", "object"], 400, "bad-request"),
        ("POST", "/api/tts", {"text": "   "}, 400, "empty-text"),
        ("POST", "/api/tts", {"text": "... ?! ..."}, 400, "no-speech"),
        ("POST", "/api/tts", {"text": SHORT, "voice": "../../etc/passwd"}, 400, "voice-not-found"),
        ("POST", "/v1/audio/speech", {"voice": VOICE}, 400, "bad-request"),
        (
            "POST",
            "/v1/audio/speech",
            {"input": SHORT, "response_format": "aac"},
            400,
            "bad-request",
        ),
        ("POST", "/v1/audio/speech", {"input": SHORT, "speed": 4.5}, 400, "bad-request"),
        ("POST", "/v1/audio/speech", {"input": SHORT, "speed": "fast"}, 400, "bad-request"),
        ("POST", "/v1/audio/speech", {"input": SHORT, "model": 1}, 400, "bad-request"),
        ("POST", "/v1/audio/speech", {"input": SHORT, "stream_format": "sse"}, 400, "bad-request"),
        ("GET", "/api/tts?voice=x", None, 400, "bad-request"),
        ("GET", "/api/tts?text=hi&length_scale=nan", None, 400, "bad-request"),
        ("GET", "/nowhere", None, 404, "not-found"),
        ("DELETE", "/api/tts", None, 405, "method-not-allowed"),
        ("GET", "/v1/audio/speech", None, 405, "method-not-allowed"),
    ]
    async with session() as client:
        for method, path, body, status, code in cases:
            async with client.request(method, f"{base}{path}", json=body) as resp:
                assert (resp.status, error_of(await resp.json())) == (status, code), (path, body)
        async with client.post(
            f"{base}/v1/audio/speech", json={"input": SHORT, "voice": "alloy"}
        ) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
        async with client.post(f"{base}/api/tts", json={"text": SHORT}) as resp:
            _fmt, samples = parse_wav(await resp.read())
    assert error["code"] == "voice-not-found"
    assert error["voices"] == [VOICE, SECOND] and error["presets"] == []
    assert_heard(samples, RATE, SHORT)  # and it still speaks


async def test_raw_bad_bodies(cache_dir: Path, server_data_dir: Path) -> None:
    # 100 characters of text allow a body of 16,984 bytes.
    args = ("--http", "127.0.0.1:0", "--max-text-chars", "100", "--cache-dir", str(cache_dir))
    async with run_server(*args) as srv:
        port = srv.app.http_port
        assert port is not None
        head = b"POST /api/tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        status, _, body = await raw(port, head + b"Content-Length: 1000000000\r\n\r\n")
        assert (status, error_of(json.loads(body))) == (413, "bad-request")
        chunk = b"x" * 20000
        chunked = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
        status, _, body = await raw(port, head + chunked)
        assert (status, error_of(json.loads(body))) == (413, "bad-request")
        for bad in (b'{"text": "hi"', b"\xff\xfe", b"[" * 5000 + b"]" * 5000, b""):
            status, _, body = await raw(
                port, head + b"Content-Length: %d\r\n\r\n%s" % (len(bad), bad)
            )
            assert (status, error_of(json.loads(body))) == (400, "bad-request"), bad[:20]
        text = json.dumps({"text": "word " * 30}).encode()
        status, _, body = await raw(
            port, head + b"Content-Length: %d\r\n\r\n%s" % (len(text), text)
        )
        assert (status, error_of(json.loads(body))) == (413, "text-too-long")


async def test_a_token_guards_speech_and_warmup_only(
    cache_dir: Path, server_data_dir: Path
) -> None:
    env = {"WYOMING_TTS_HTTP_TOKEN": "s3cret"}
    async with run_server("--http", "127.0.0.1:0", "--cache-dir", str(cache_dir), env=env) as srv:
        base = http_base(srv)
        async with session() as client:
            for path, body in (
                ("/api/tts", {"text": SHORT}),
                ("/v1/audio/speech", {"input": SHORT}),
                ("/api/warmup", {"voice": VOICE}),
            ):
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                    async with client.post(f"{base}{path}", json=body, headers=headers) as resp:
                        assert resp.status == 401, (path, headers)
                        assert resp.headers["WWW-Authenticate"] == "Bearer"
                        assert error_of(await resp.json()) == "unauthorized"
            async with client.get(f"{base}/api/tts", params={"text": SHORT}) as resp:
                assert resp.status == 401
            for path in ("/health", "/ready", "/metrics", "/api/voices", "/v1/models", "/"):
                async with client.get(f"{base}{path}") as resp:
                    assert resp.status == 200, path
            auth = {"Authorization": "Bearer s3cret"}
            async with client.post(f"{base}/api/tts", json={"text": SHORT}, headers=auth) as resp:
                assert resp.status == 200
                _fmt, samples = parse_wav(await resp.read())
    assert_heard(samples, RATE, SHORT)


async def test_cors_is_off_unless_origins_are_set(http_server: Server, cache_dir: Path) -> None:
    origin = {"Origin": "http://dashboard.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    async with session() as client:
        base = http_base(http_server)
        async with client.get(f"{base}/api/voices", headers=origin) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with client.options(f"{base}/api/tts", headers=preflight) as resp:
            assert resp.status == 405
        args = ("--http", "127.0.0.1:0", "--http-cors-origins", "http://dashboard.example")
        async with run_server(*args, "--cache-dir", str(cache_dir)) as srv:
            base = http_base(srv)
            async with client.options(f"{base}/api/tts", headers=preflight) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == "http://dashboard.example"
                assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
            async with client.post(f"{base}/api/tts", json={"text": SHORT}, headers=origin) as resp:
                assert resp.status == 200
                assert resp.headers["Access-Control-Allow-Origin"] == "http://dashboard.example"
                assert "X-Sample-Rate" in resp.headers["Access-Control-Expose-Headers"]
                await resp.read()
            other = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
            async with client.options(f"{base}/api/tts", headers=other) as resp:
                assert resp.status == 403
                assert "Access-Control-Allow-Origin" not in resp.headers


# ---------------------------------------------------------------------------- load and stalls


async def test_full_queue_or_connections_get_503_with_retry_after(
    cache_dir: Path, server_data_dir: Path
) -> None:
    for limits in (("--workers", "1", "--max-queue", "0"), ("--max-connections", "1")):
        args = ("--http", "127.0.0.1:0", "--cache-dir", str(cache_dir), *limits)
        async with run_server(*args) as srv, session() as client:
            url = f"{http_base(srv)}/api/tts"
            async with client.post(url, json={"text": LONG}) as speaking:
                await speaking.content.readany()  # in flight
                async with client.post(url, json={"text": SHORT}) as resp:
                    assert resp.status == 503, limits
                    assert resp.headers["Retry-After"] == "1"
                    assert error_of(await resp.json()) == "busy"
                async with client.get(f"{http_base(srv)}/health") as resp:
                    assert resp.status == 200  # probes still answer


async def test_slow_and_stalled_clients_time_out(cache_dir: Path) -> None:
    args = (
        "--http",
        "127.0.0.1:0",
        "--connection-idle-timeout",
        "1",
        "--cache-dir",
        str(cache_dir),
    )
    async with run_server(*args) as srv:
        port = srv.app.http_port
        assert port is not None
        # A request head that never ends: the connection is closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /api/tts HTTP/1.1\r\nHost: x\r\n")
        async with asyncio.timeout(5):  # not closed at all would fail here
            assert await reader.read() == b""
        writer.close()
        # A body that stops half way: 408, then closed.
        head = b"POST /api/tts HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        status, _, body = await raw(port, head + b'{"text": ', timeout=5)
        assert (status, error_of(json.loads(body))) == (408, "bad-request")
        # A reader that stops reading: its reply is dropped, synthesis ends.
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
        body = json.dumps({"text": " ".join([LONG] * 8)}).encode()
        writer.write(head.replace(b"100", str(len(body)).encode()) + body)
        scheduler = srv.app.scheduler
        await until(lambda: scheduler.active_requests > 0, 10)
        await until(lambda: scheduler.active_requests == 0, 30)
        writer.close()
        text = await scrape(http_base(srv))
    assert metric(text, "wyoming_tts_requests_total", door="http", outcome="client-gone") == 1


# ---------------------------------------------------------------------------- metrics


async def test_metrics_count_both_doors_and_read_the_pool(http_server: Server) -> None:
    base = http_base(http_server)
    async with session() as client:
        async with client.post(f"{base}/api/tts", json={"text": SHORT}) as resp:
            await resp.read()
        async with client.post(f"{base}/api/tts", json={"text": " "}) as resp:
            assert resp.status == 400
    async with connect(http_server.uri) as wyoming:
        await wyoming.write_event(Synthesize(text=SHORT).event())
        await read_until(wyoming)
    text = await scrape(base)
    for door in ("http", "wyoming"):
        assert metric(text, "wyoming_tts_requests_total", door=door, outcome="ok") >= 1
        assert metric(text, "wyoming_tts_first_audio_seconds_count", door=door) >= 1
        assert metric(text, "wyoming_tts_heard_seconds_count", door=door) >= 1
        assert metric(text, "wyoming_tts_real_time_factor_count", door=door) >= 1
    assert metric(text, "wyoming_tts_first_audio_seconds_bucket", door="http", le="+Inf") >= 1
    assert metric(text, "wyoming_tts_http_responses_total", route="/api/tts", status="200") >= 1
    assert metric(text, "wyoming_tts_http_responses_total", route="/api/tts", status="400") >= 1
    assert metric(text, "wyoming_tts_active_requests") == 0
    assert metric(text, "wyoming_tts_queue_depth") == 0
    # SHORT was spoken twice: the second time from the phrase cache.
    assert metric(text, "wyoming_tts_phrase_cache_total", result="hit") >= 1
    assert metric(text, "wyoming_tts_phrase_cache_total", result="miss") >= 1
    assert metric(text, "wyoming_tts_voice_loads_total") >= 1
    assert metric(text, "wyoming_tts_voice_load_seconds_total") > 0
    assert metric(text, "wyoming_tts_voice_pool_hits_total") >= 2
    assert "wyoming_tts_voice_pool_misses_total" in text
    assert "wyoming_tts_voice_evictions_total" in text
    assert metric(text, "wyoming_tts_voices_loaded") >= 1
    assert metric(text, "wyoming_tts_voice_loaded", voice=VOICE) == 1
    assert metric(text, "wyoming_tts_resident_memory_bytes") > 50 * 2**20
