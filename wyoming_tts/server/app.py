"""Lifecycle: catalog, pool, scheduler, speech service, listener, discovery; graceful stop.

Phases, in order: open the HTTP door if asked (its probes answer at once, and
`/ready` says 503 until serving), prime the voices (a voice that cannot speak
stops start-up here, before anyone can connect over Wyoming), listen,
advertise, serve until a signal, then stop accepting, let requests finish
within the grace period, cancel the rest, unregister from mDNS and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import sys
from collections.abc import Mapping
from functools import partial

from .. import __version__
from ..config import Settings
from ..discovery import Discovery, txt_properties
from ..errors import Busy, TtsError
from ..info import PROGRAM_NAME, voice_languages
from ..metrics import Metrics
from ..presets import PresetError
from ..runtime.scheduler import Scheduler
from ..speech import SpeechService
from ..synth.engine import Synthesizer
from ..synth.lexicon import LexiconError
from ..synth.phrases import PhraseCache
from ..voices.catalog import VoiceCatalog, VoiceEntry
from ..voices.loader import LoadOptions
from ..voices.pool import PoolConfig, VoicePool
from .handler import Connection
from .http import HttpDoor
from .transport import transport_for

_LOGGER = logging.getLogger(__name__)

#: Seconds to tell a refused connection why before it is closed.
REFUSE_TIMEOUT = 2.0


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


class StartupError(RuntimeError):
    """Start-up cannot go on; the message is for the operator."""


class App:
    """Owns every long-lived object of one server process."""

    def __init__(self, settings: Settings, *, handle_signals: bool = True) -> None:
        self.settings = settings
        self._handle_signals = handle_signals
        self.phase = Phase.STARTING
        self.catalog = VoiceCatalog(settings.all_data_dirs)
        self.scheduler = Scheduler(settings.effective_workers)
        self.pool = VoicePool(
            PoolConfig(
                load=LoadOptions(
                    cache_dir=settings.effective_cache_dir,
                    intra_op_threads=settings.intra_op_threads,
                    whole_voice_threads=settings.whole_voice_threads,
                    keep_decoder_memory=settings.keep_decoder_memory,
                ),
                max_voices=settings.max_voices,
                idle_timeout=settings.idle_timeout,
                keep_alive_interval=settings.keep_alive_interval,
                memory_threshold_bytes=settings.effective_memory_threshold_mb * 2**20,
                pin_preloaded=settings.pin_preloaded,
                prepare_in_background=True,
            ),
            self.catalog,
            self.scheduler,
        )
        phrases = (
            PhraseCache(settings.phrase_cache_mb * 2**20) if settings.phrase_cache_mb else None
        )
        self.synthesizer = Synthesizer(self.scheduler, phrases)
        self.metrics = Metrics(self.pool)
        self.speech = SpeechService(
            settings, self.pool, self.synthesizer, self.scheduler, observer=self.metrics.observe
        )
        self.http = (
            HttpDoor(settings, self.speech, self.metrics, ready=self.is_ready)
            if settings.http_address is not None
            else None
        )
        self.transport = transport_for(settings.endpoint)
        self.serving = asyncio.Event()
        """Set once the server accepts connections (tests and probes wait on it)."""
        self._connections: dict[asyncio.Task[None], Connection] = {}
        self._stop = asyncio.Event()
        self._announcer: Discovery | None = None

    # ------------------------------------------------------------------ phases

    async def run(self) -> None:
        """Serve until stopped; raises StartupError if the server cannot start."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.http is not None:
                    stack.push_async_callback(self.http.close)
                    await self._open_http(self.http)
                await self._prepare()
                await self._prime()
                await self.transport.start(self._accept)
                stack.push_async_callback(self.transport.close)  # also when start-up fails
                if self.settings.zeroconf:
                    self._announcer = await stack.enter_async_context(await self._discovery())
                self.pool.start_maintenance()
                self._install_signals()
                self.phase = Phase.SERVING
                self.serving.set()
                _LOGGER.info(
                    "Ready: %s %s on %s", PROGRAM_NAME, __version__, self.settings.endpoint
                )
                await self.transport.serve(self._stop)
                await self._shutdown()
        finally:
            await self.pool.close()
            await asyncio.to_thread(self.scheduler.shutdown)
            self.phase = Phase.STOPPED

    def request_stop(self) -> None:
        if not self._stop.is_set():
            _LOGGER.info("Stopping")
        self._stop.set()

    @property
    def bound_port(self) -> int | None:
        return self.transport.port

    @property
    def http_port(self) -> int | None:
        """The HTTP door's bound port (None when it is off)."""
        return self.http.port if self.http is not None else None

    def is_ready(self) -> bool:
        """Voices primed and serving: what `/ready` reports."""
        return self.phase is Phase.SERVING

    async def _open_http(self, door: HttpDoor) -> None:
        try:
            await door.start()
        except OSError as err:
            raise StartupError(f"http: cannot listen on {self.settings.http}: {err}") from None

    async def _prepare(self) -> None:
        try:
            await self.speech.prepare()
        except (PresetError, LexiconError) as err:
            raise StartupError(str(err)) from None

    async def _prime(self) -> None:
        try:
            await self.pool.prime(self.speech.preload_voices())
        except TtsError as err:
            entries = await self.pool.entries(force=True)
            installed = ", ".join(sorted(entries)) or "none"
            raise StartupError(f"{err.text} Installed voices: {installed}.") from None

    async def _voices_seen(self, entries: Mapping[str, VoiceEntry]) -> None:
        """Re-announce the TXT record when the installed voices changed."""
        if self._announcer is None:
            return
        properties = _txt(entries)
        if properties != self._announcer.properties:
            with contextlib.suppress(Exception):
                await self._announcer.update(properties)

    async def _discovery(self) -> Discovery:
        entries = await self.pool.entries(force=True)
        endpoint = self.settings.endpoint
        # Picking the LAN addresses blocks (a route lookup, DNS for a host name): off the loop.
        return await asyncio.to_thread(
            partial(
                Discovery,
                name=self.settings.zeroconf or PROGRAM_NAME,
                port=self.bound_port or endpoint.port or 10200,
                properties=_txt(entries),
                host=endpoint.host,
            )
        )

    def _install_signals(self) -> None:
        if not self._handle_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

    async def _shutdown(self) -> None:
        self.phase = Phase.STOPPING
        await self.transport.close()
        # The HTTP door's requests get the same grace, at the same time.
        http_closed = asyncio.create_task(self.http.close()) if self.http is not None else None
        for conn in self._connections.values():
            await conn.shutdown()
        tasks = list(self._connections)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace)
            for task in pending:
                self._connections[task].abort()
            if pending:
                _LOGGER.info(
                    "Cancelled %d request(s) still running after the grace period", len(pending)
                )
                await asyncio.wait(pending, timeout=2.0)
        if http_closed is not None:
            await http_closed

    # ------------------------------------------------------------------ connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        task = asyncio.current_task()
        if (
            task is None
            or self.phase in (Phase.STOPPING, Phase.STOPPED)
            or len(self._connections) >= self.settings.max_connections
        ):
            await _refuse(writer, peer, self.settings.max_connections)
            return
        voices_seen = self._voices_seen if self._announcer is not None else None
        conn = Connection(reader, writer, self.speech, peer, voices_seen)
        self._connections[task] = conn
        try:
            await conn.run()
        finally:
            self._connections.pop(task, None)


async def _refuse(writer: asyncio.StreamWriter, peer: str, limit: int) -> None:
    from wyoming.event import async_write_event

    _LOGGER.info("Refusing connection from %s: %d connections open", peer, limit)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            async_write_event(
                Busy(f"Too many connections (limit {limit}); try again shortly.").to_event(), writer
            ),
            timeout=REFUSE_TIMEOUT,
        )
    writer.close()


def _txt(entries: Mapping[str, VoiceEntry]) -> dict[str, str]:
    return txt_properties(PROGRAM_NAME, __version__, sorted(entries), voice_languages(entries))


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "local")


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.INFO,
        format=settings.log_format,
        stream=sys.stderr,
    )
