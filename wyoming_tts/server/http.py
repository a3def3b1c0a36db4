"""The HTTP door: probes, metrics, voices, and speech over the reference API and OpenAI's.

A second front door to the one speech service, so HTTP and Wyoming share the
voice pool, the limits and the request log line. This module only translates:
JSON or a query string into a `SpeechRequest`, and PCM pieces into the format
asked for, written as they are made. Headers leave with the first audio (~30
ms), so a refusal before it is still a JSON error with its status; a failure
after it cuts the stream short, the only signal left. A client that goes away
cancels its handler (aiohttp's `handler_cancellation`), which stops synthesis
at the next chunk, as on Wyoming.

Bounded like the Wyoming door: requests in flight (`max_connections`), the body
(what `max_text_chars` can need), the time to send a request (`READ_TIMEOUT`,
or `connection_idle_timeout` if shorter) and to take each piece of a reply
(`connection_idle_timeout`). Errors are `{"error": {"code", "message"}}` with
the Wyoming codes, plus `unauthorized`, `not-found` and `method-not-allowed`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib.resources
import json
import logging
import math
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..config import Settings
from ..errors import BadRequest, Busy, TtsError
from ..info import build_info
from ..metrics import Metrics
from ..speech import AudioFormat, SpeechRequest, SpeechService
from .encoding import FORMATS, Encoder, encoder_for
from .handler import MAX_AHEAD_SECONDS
from .protocol import READ_TIMEOUT

_LOGGER = logging.getLogger(__name__)

#: Seconds a client told `busy` (or a starting server) is asked to wait.
RETRY_AFTER_SECONDS = 1
#: Body bytes allowed per character of `max_text_chars`: JSON escapes one in 6 (`\\uXXXX`).
BODY_BYTES_PER_CHAR = 6
#: Body bytes allowed on top, for the other fields.
BODY_SLACK_BYTES = 16 * 1024
#: OpenAI's default `response_format`.
OPENAI_FORMAT = "mp3"
#: OpenAI's range for `speed`.
SPEED_RANGE = (0.25, 4.0)
#: Model names `/v1/models` lists; any `model` is accepted, one engine serves them all.
OPENAI_MODELS = ("tts-1", "tts-1-hd")
#: Range of `length_scale`, as the setting's.
LENGTH_SCALE_RANGE = (0.05, 10.0)
#: The one file served.
PAGE = "page.html"
#: The kernel's send buffer for a reply: it grows to megabytes on its own, unread audio.
SEND_BUFFER_BYTES = 65536
#: Seconds requests cancelled after the shutdown grace get to end.
CANCEL_TIMEOUT = 2.0
#: Status recorded for a reply whose client left or stopped reading (nginx's convention).
CLIENT_GONE_STATUS = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Unauthorized(TtsError):
    """The bearer token is missing or wrong (speech and warm-up, when `http_token` is set)."""

    code = "unauthorized"
    status = 401


class BodyTooLarge(BadRequest):
    """A request body beyond what the longest allowed text needs."""

    status = 413


class SlowRequest(BadRequest):
    """A request body that did not arrive in time."""

    status = 408


#: HTTP status of each code; `status` on an error class wins.
STATUS = {
    "bad-request": 400,
    "empty-text": 400,
    "no-speech": 400,
    "voice-not-found": 400,
    "text-too-long": 413,
    "busy": 503,
    "memory-exhausted": 503,
    "voice-load-failed": 500,
    "internal-error": 500,
}
#: Codes for the errors aiohttp's router raises itself.
ROUTER_CODES = {403: "forbidden", 404: "not-found", 405: "method-not-allowed", 413: "bad-request"}


class HttpDoor:
    """The aiohttp server; the app starts it before priming (probes answer) and stops it."""

    def __init__(
        self,
        settings: Settings,
        speech: SpeechService,
        metrics: Metrics,
        ready: Callable[[], bool],
    ) -> None:
        assert settings.http_address is not None
        self._settings = settings
        self._service = speech
        self._metrics = metrics
        self._ready = ready
        self._body_limit = BODY_BYTES_PER_CHAR * settings.max_text_chars + BODY_SLACK_BYTES
        self._read_timeout = min(READ_TIMEOUT, settings.connection_idle_timeout)
        #: Handler tasks speaking or warming a voice (at most `max_connections`).
        self._speaking: set[asyncio.Task[Any]] = set()
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._page = b""
        self._page_policy = ""
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._page, self._page_policy = await asyncio.to_thread(_load_page)
        app = web.Application(client_max_size=self._body_limit, middlewares=[self._errors])
        app.on_response_prepare.append(self._add_headers)
        routes = app.router
        routes.add_get("/", self._serve_page)
        routes.add_get("/health", self._health)
        routes.add_get("/ready", self._readiness)
        routes.add_get("/metrics", self._scrape)
        routes.add_get("/api/voices", self._voices)
        routes.add_get("/api/tts", self._api_tts, allow_head=False)
        routes.add_post("/api/tts", self._api_tts)
        routes.add_post("/api/warmup", self._warmup)
        routes.add_post("/v1/audio/speech", self._openai_speech)
        routes.add_get("/v1/models", self._models)
        if self._settings.http_cors_origins:
            routes.add_route("OPTIONS", "/{path:.*}", self._preflight)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,  # the speech service logs each request once
            handler_cancellation=True,  # a client that leaves stops its synthesis
            keepalive_timeout=self._read_timeout,  # also bounds a request head in the making
            shutdown_timeout=CANCEL_TIMEOUT,  # `close` has given the grace already
        )
        await runner.setup()
        self._runner = runner
        host, port = self._settings.http_address or ("", 0)
        await web.TCPSite(runner, host, port).start()
        self.port = int(runner.addresses[0][1])
        _LOGGER.info("HTTP door on http://%s:%d", _url_host(host), self.port)

    async def close(self) -> None:
        """Stop listening, give speaking requests the shutdown grace, then cancel them."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in runner.sites:
            await site.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.shutdown_grace):
                await self._quiet.wait()
        if self._speaking:
            _LOGGER.info("Cancelled %d HTTP request(s) after the grace period", len(self._speaking))
            for task in self._speaking:
                task.cancel()
        await runner.cleanup()

    # ------------------------------------------------------------------ probes and lists

    async def _serve_page(self, request: web.Request) -> web.Response:
        headers = {"Content-Security-Policy": self._page_policy}
        return web.Response(body=self._page, content_type="text/html", headers=headers)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readiness(self, request: web.Request) -> web.Response:
        if not self._ready():
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            return web.json_response({"status": "not-ready"}, status=503, headers=headers)
        return web.json_response({"status": "ready", "voices": sorted(self._service.pool.loaded())})

    async def _scrape(self, request: web.Request) -> web.Response:
        body = await self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _voices(self, request: web.Request) -> web.Response:
        entries = await self._service.voices(force=True)
        program = build_info(entries, self._settings.streaming, self._service.presets).tts[0]
        return web.json_response(
            {
                "default": self._settings.voice,
                "voices": [voice.to_dict() for voice in program.voices],
                "presets": sorted(self._service.presets),
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        models = [
            {"id": name, "object": "model", "created": 0, "owned_by": "wyoming-tts"}
            for name in OPENAI_MODELS
        ]
        return web.json_response({"object": "list", "data": models})

    async def _preflight(self, request: web.Request) -> web.Response:
        """A browser asking whether another origin's page may call us (`_add_headers`
        answers, for an origin in `http_cors_origins`)."""
        if not self._cors_origin(request):
            raise web.HTTPForbidden(reason="This origin may not call this server.")
        return web.Response(status=204)

    # ------------------------------------------------------------------ speech

    async def _api_tts(self, request: web.Request) -> web.StreamResponse:
        """The reference API: JSON `{text, voice, speaker, language, length_scale}`, or the
        same as a query string; WAV back."""
        self._authorize(request)
        from_query = request.method == "GET"
        fields: dict[str, Any] = dict(request.query) if from_query else await self._body(request)
        text = _string(fields, "text", required=True) or ""
        voice = _string(fields, "voice") or _string(fields, "voice_model")
        wanted = SpeechRequest(
            voice=voice.removesuffix(".onnx") if voice else None,
            speaker=_speaker(fields),
            language=_string(fields, "language"),
            length_scale=_number(fields, "length_scale", LENGTH_SCALE_RANGE, from_query),
        )
        return await self._speak(request, wanted, text, "wav")

    async def _openai_speech(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's `POST /v1/audio/speech`: `model`, `input`, `voice`, `response_format`,
        `speed`; the audio streams back as it is made."""
        self._authorize(request)
        fields = await self._body(request)
        _string(fields, "model")  # accepted, whatever its name
        text = _string(fields, "input", required=True) or ""
        fmt = _string(fields, "response_format") or OPENAI_FORMAT
        if fmt not in FORMATS:
            raise BadRequest(f"Unknown response_format '{fmt}'; use one of: {', '.join(FORMATS)}.")
        if _string(fields, "stream_format") not in (None, "audio"):
            raise BadRequest("Only stream_format 'audio' is served.")
        speed = _number(fields, "speed", SPEED_RANGE)
        wanted = SpeechRequest(
            voice=_string(fields, "voice"),
            length_scale=None if speed is None or speed == 1.0 else 1.0 / speed,
        )
        return await self._speak(request, wanted, text, fmt)

    async def _warmup(self, request: web.Request) -> web.Response:
        """Load and prime a voice ahead of its first request."""
        self._authorize(request)
        fields = await self._body(request) if request.body_exists else {}
        name = _string(fields, "voice") or _string(fields, "voice_model")
        name = self._service.base_voice(
            name.removesuffix(".onnx") if name else self._settings.voice
        )
        pool = self._service.pool
        was_loaded = name in pool.loaded()
        started = time.perf_counter()
        with self._admit():
            async with pool.acquire(name):
                pass
        seconds = round(time.perf_counter() - started, 3)
        return web.json_response({"voice": name, "was_loaded": was_loaded, "seconds": seconds})

    async def _speak(
        self, request: web.Request, wanted: SpeechRequest, text: str, fmt: str
    ) -> web.StreamResponse:
        """Stream one reply; headers go out with its first audio."""
        self._service.check_text(text)
        reply = _Reply(request)
        try:
            with self._admit():
                async with self._service.open(wanted, door="http") as speech:
                    reply.encoder = encoder_for(fmt, speech.format.rate)
                    async for pcm in speech.audio(text):
                        await self._send(reply, speech.format, reply.encoder.encode, pcm)
                    await self._send(reply, speech.format, reply.encoder.finish)
            async with asyncio.timeout(self._settings.connection_idle_timeout):
                await reply.started().write_eof()
        except TtsError:
            if reply.response is None:
                raise  # nothing sent yet: the middleware answers with the error
            reply.cut()  # headers are out: a stream cut short is the only signal left
        except (ConnectionError, TimeoutError):
            reply.cut()  # the client is gone, or stopped reading
        finally:
            if reply.encoder is not None:
                await _run(reply.encoder, reply.encoder.close)
        return reply.response or web.Response(status=CLIENT_GONE_STATUS)

    async def _send(
        self, reply: _Reply, fmt: AudioFormat, step: Callable[..., bytes], *pcm: bytes
    ) -> None:
        """Encode one piece (or the tail) and write it; the first one starts the response."""
        assert reply.encoder is not None
        data = await _run(reply.encoder, step, *pcm)
        if reply.response is None:
            reply.response = await self._start(reply.request, reply.encoder, fmt)
        if data:
            async with asyncio.timeout(self._settings.connection_idle_timeout):
                await reply.response.write(data)

    async def _start(
        self, request: web.Request, encoder: Encoder, fmt: AudioFormat
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": encoder.media_type,
                "Cache-Control": "no-store",
                "X-Sample-Rate": str(fmt.rate),
                "X-Sample-Width": str(fmt.width),
                "X-Channels": str(fmt.channels),
            }
        )
        response.enable_chunked_encoding()
        transport = request.transport
        if transport is not None:  # a slow reader slows synthesis, not memory
            high = int(MAX_AHEAD_SECONDS * fmt.rate * fmt.width * fmt.channels)
            transport.set_write_buffer_limits(high=high)
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, min(high, SEND_BUFFER_BYTES))
        await response.prepare(request)
        return response

    # ------------------------------------------------------------------ guards

    def _authorize(self, request: web.Request) -> None:
        token = self._settings.http_token
        if token is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise Unauthorized("This endpoint needs 'Authorization: Bearer <http_token>'.")

    @contextlib.contextmanager
    def _admit(self) -> Iterator[None]:
        if not self._ready():
            raise Busy("The server is not ready: its voices are being primed, or it is stopping.")
        limit = self._settings.max_connections
        if len(self._speaking) >= limit:
            raise Busy(f"Too many HTTP requests at once (limit {limit}); try again shortly.")
        task = asyncio.current_task()
        assert task is not None
        self._speaking.add(task)
        self._quiet.clear()
        try:
            yield
        finally:
            self._speaking.discard(task)
            if not self._speaking:
                self._quiet.set()

    async def _body(self, request: web.Request) -> dict[str, Any]:
        """The JSON object of a request body, read within the size and time limits."""
        limit = self._body_limit
        if (request.content_length or 0) > limit:
            raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
        try:
            async with asyncio.timeout(self._read_timeout):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge(f"The request body is larger than {limit} bytes.") from None
        except TimeoutError:
            raise SlowRequest("The request body did not arrive in time.") from None
        try:
            fields = json.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest("The request body is not valid JSON.") from None
        if not isinstance(fields, dict):
            raise BadRequest("The request body must be a JSON object.")
        return fields

    # ------------------------------------------------------------------ responses

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The one boundary: every failure becomes a JSON error; every response is counted."""
        try:
            response = await handler(request)
        except TtsError as err:
            _LOGGER.debug("HTTP %s %s: %s (%s)", request.method, request.path, err.text, err.code)
            response = await self._error(err)
        except web.HTTPException as exc:
            code = ROUTER_CODES.get(exc.status, "bad-request")
            response = _error_response(exc.status, code, exc.reason)
        except Exception:
            _LOGGER.exception("HTTP %s %s failed", request.method, request.path)
            response = _error_response(500, "internal-error", "Internal server error.")
        resource = request.match_info.route.resource
        self._metrics.http_response(resource.canonical if resource else "-", response.status)
        return response

    async def _error(self, err: TtsError) -> web.Response:
        status = getattr(err, "status", None) or STATUS.get(err.code, 500)
        extra: dict[str, Any] = {}
        if err.code == "voice-not-found":
            voices = sorted(await self._service.voices())
            extra = {"voices": voices, "presets": sorted(self._service.presets)}
        return _error_response(status, err.code, err.text, **extra)

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Right before any response's headers leave (a stream's too): CORS and hardening."""
        response.headers["Server"] = "wyoming-tts"  # not aiohttp's name and version
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        origin = self._cors_origin(request)
        if origin is None:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Expose-Headers"] = (
            "X-Sample-Rate, X-Sample-Width, X-Channels, Retry-After"
        )
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"

    def _cors_origin(self, request: web.Request) -> str | None:
        """The request's origin if `http_cors_origins` lets its pages call us."""
        origin = request.headers.get("Origin")
        allowed = self._settings.http_cors_origins
        return origin if origin is not None and ("*" in allowed or origin in allowed) else None


class _Reply:
    """One streamed reply: its encoder, and its response once the headers are out."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.encoder: Encoder | None = None
        self.response: web.StreamResponse | None = None

    def started(self) -> web.StreamResponse:
        assert self.response is not None  # a whole text with no audio is `no-speech`
        return self.response

    def cut(self) -> None:
        if self.request.transport is not None:
            self.request.transport.abort()


def _error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    headers = {}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    elif status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    body = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=status, headers=headers)


async def _run(encoder: Encoder, step: Callable[..., bytes | None], *args: bytes) -> bytes:
    """An encoder step, off the loop when it costs CPU (libsndfile's)."""
    result = await asyncio.to_thread(step, *args) if encoder.blocking else step(*args)
    return result or b""


def _string(fields: dict[str, Any], key: str, required: bool = False) -> str | None:
    """A string field; an empty optional one counts as unset."""
    value = fields.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"Field '{key}' must be a string.")
    return value if required else value or None


def _speaker(fields: dict[str, Any]) -> str | None:
    """A speaker name, or an id as a string or a JSON number."""
    value = fields.get("speaker")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _string(fields, "speaker")


def _number(
    fields: dict[str, Any], key: str, bounds: tuple[float, float], from_text: bool = False
) -> float | None:
    value = fields.get(key)
    if value is None:
        return None
    low, high = bounds
    if from_text and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise BadRequest(f"Field '{key}' must be a number from {low} to {high}.")
    return float(value)


def _load_page() -> tuple[bytes, str]:
    """The page, and a Content-Security-Policy that lets only its own script run."""
    page = importlib.resources.files(__package__).joinpath(PAGE).read_bytes()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in re.findall(rb"<script>(.*?)</script>", page, flags=re.DOTALL)
    )
    policy = (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page, policy


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
