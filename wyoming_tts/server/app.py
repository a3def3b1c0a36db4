"""Lifecycle: catalog, pool, scheduler, listener, discovery; signals; graceful shutdown.

Phases, in order: prime the voices (a voice that cannot speak stops start-up
here, before anyone can connect), listen, advertise, serve until a signal,
then stop accepting, let requests finish within the grace period, cancel the
rest, unregister from mDNS and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from .. import __version__
from ..config import Settings
from ..discovery import Discovery, txt_properties
from ..errors import Busy, TtsError
from ..info import PROGRAM_NAME, voice_languages
from ..runtime.scheduler import Scheduler
from ..synth.engine import EngineConfig, Synthesizer
from ..voices.catalog import VoiceCatalog, VoiceEntry
from ..voices.pool import PoolConfig, VoicePool
from .handler import Connection, Services

_LOGGER = logging.getLogger(__name__)


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


class StartupError(RuntimeError):
    """Start-up cannot go on; the message is for the operator."""


class App:
    """Owns every long-lived object of one server process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.phase = Phase.STARTING
        self.catalog = VoiceCatalog(settings.all_data_dirs, settings.catalog_ttl)
        self.scheduler = Scheduler(settings.effective_workers, settings.max_queue)
        self.pool = VoicePool(
            PoolConfig(
                max_voices=settings.max_voices,
                idle_timeout=settings.idle_timeout,
                keep_alive_interval=settings.keep_alive_interval,
                memory_threshold_bytes=settings.effective_memory_threshold_mb * 2**20,
                load_wait_timeout=settings.load_wait_timeout,
                pin_preloaded=settings.pin_preloaded,
                intra_op_threads=settings.intra_op_threads,
                max_utterance_ids=settings.max_utterance_ids,
                cache_dir=settings.effective_cache_dir,
                keep_decoder_memory=settings.keep_decoder_memory,
                max_chunk_frames=settings.max_chunk_frames,
            ),
            self.catalog,
            self.scheduler,
        )
        self.synthesizer = Synthesizer(
            EngineConfig(
                first_chunk_frames=settings.first_chunk_frames,
                max_chunk_frames=settings.max_chunk_frames,
                sentence_silence=settings.sentence_silence,
                samples_per_chunk=settings.samples_per_chunk,
                max_utterance_ids=settings.max_utterance_ids,
            ),
            self.scheduler,
        )
        self.services = Services(settings, self.pool, self.synthesizer, self.scheduler)
        self._connections: dict[asyncio.Task[None], Connection] = {}
        self._server: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self._announcer: Discovery | None = None

    # ------------------------------------------------------------------ phases

    async def run(self) -> None:
        """Serve until stopped; raises StartupError if the server cannot start."""
        try:
            await self._prime()
            async with contextlib.AsyncExitStack() as stack:
                await self._listen()
                if self.settings.zeroconf:
                    self._announcer = await stack.enter_async_context(await self._discovery())
                    self.services.voices_seen = self._voices_seen
                self.pool.start_maintenance()
                self._install_signals()
                self.phase = Phase.SERVING
                _LOGGER.info("Ready: %s %s on %s", PROGRAM_NAME, __version__, self.settings.uri)
                if urlparse(self.settings.uri).scheme == "stdio":
                    await self._serve_stdio()
                else:
                    await self._stop.wait()
                await self._shutdown()
        finally:
            await self.pool.close()
            await asyncio.to_thread(self.scheduler.shutdown)
            self.phase = Phase.STOPPED

    def request_stop(self) -> None:
        if not self._stop.is_set():
            _LOGGER.info("Stopping")
        self._stop.set()

    async def _prime(self) -> None:
        try:
            await self.pool.prime(self.settings.preload_voices)
        except TtsError as err:
            entries = await self.pool.entries(force=True)
            installed = ", ".join(sorted(entries)) or "none"
            raise StartupError(f"{err.text} Installed voices: {installed}.") from None

    async def _listen(self) -> None:
        parsed = urlparse(self.settings.uri)
        limit = self.settings.max_header_bytes
        if parsed.scheme == "tcp":
            self._server = await asyncio.start_server(
                self._accept,
                host=parsed.hostname,
                port=parsed.port,
                limit=limit,
                reuse_address=True,
            )
        elif parsed.scheme == "unix":
            path = Path(parsed.path)
            await asyncio.to_thread(_unlink, path)
            self._server = await asyncio.start_unix_server(
                self._accept, path=str(path), limit=limit
            )

    @property
    def bound_port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

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
        parsed = urlparse(self.settings.uri)
        port = self.bound_port or parsed.port or 10200
        return Discovery(
            name=self.settings.zeroconf or PROGRAM_NAME,
            port=port,
            properties=_txt(entries),
            host=parsed.hostname,
        )

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

    async def _shutdown(self) -> None:
        self.phase = Phase.STOPPING
        if self._server is not None:
            self._server.close()
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
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        parsed = urlparse(self.settings.uri)
        if parsed.scheme == "unix":
            await asyncio.to_thread(_unlink, Path(parsed.path))

    # ------------------------------------------------------------------ connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        if (
            self.phase is not Phase.SERVING
            or len(self._connections) >= self.settings.max_connections
        ):
            await _refuse(writer, peer, self.settings.max_connections)
            return
        conn = Connection(reader, writer, self.services, peer)
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = conn
        try:
            await conn.run()
        finally:
            self._connections.pop(task, None)

    async def _serve_stdio(self) -> None:
        from wyoming.event import async_get_stdin, async_get_stdout

        reader = await async_get_stdin()
        writer = await async_get_stdout()
        conn = Connection(reader, writer, self.services, "stdio")
        task = asyncio.create_task(conn.run(), name="stdio-connection")
        self._connections[task] = conn
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task.done():
            self._connections.pop(task, None)


async def _refuse(writer: asyncio.StreamWriter, peer: str, limit: int) -> None:
    from wyoming.event import async_write_event

    _LOGGER.info("Refusing connection from %s: %d connections open", peer, limit)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            async_write_event(
                Busy(f"Too many connections (limit {limit}); try again shortly.").to_event(), writer
            ),
            timeout=2.0,
        )
    writer.close()


def _txt(entries: Mapping[str, VoiceEntry]) -> dict[str, str]:
    return txt_properties(PROGRAM_NAME, __version__, sorted(entries), voice_languages(entries))


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


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
