"""Shared pieces of the benchmarks: servers as subprocesses, timed requests, RSS, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
from texts import stream_chunks
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

REPO = Path(__file__).resolve().parent.parent
# The benchmarks use the tests' own helpers (the bundled voice under other names, ports).
sys.path.insert(0, str(REPO))
from tests.conftest import free_port, link_voice  # noqa: E402
from wyoming_tts.audio import ffmpeg_gathers  # noqa: E402

HOST = "127.0.0.1"
DEFAULT_VOICE = "en_US-joe-medium"
EXTRA_VOICES = ("en_US-a-medium", "en_US-b-medium", "en_US-c-medium")
#: A household rotating between three voices, the default among them.
ROTATION_VOICES = (DEFAULT_VOICE, "en_US-a-medium", "en_US-b-medium")


# ---------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50.0)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


# ---------------------------------------------------------------------------- voices


def make_voice_dir(root: Path) -> Path:
    """A data dir with the bundled voice under its own name and three aliases (a, b, c).

    Models are symlinked (same bytes for both servers), configs copied.
    """
    voices = root / "voices"
    for name in (DEFAULT_VOICE, *EXTRA_VOICES):
        if not (voices / f"{name}.onnx").exists():
            link_voice(voices, name)
    return voices


# ---------------------------------------------------------------------------- servers


@dataclass
class ServerSpec:
    """How to start one server; `{port}` in args is replaced at start."""

    label: str
    python: Path
    module: str
    args: list[str]


@dataclass
class Server:
    spec: ServerSpec
    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    startup_seconds: float | None = None
    _log: IO[bytes] | None = None
    log_path: Path | None = None

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 180.0) -> float:
        """Start and wait until a Describe is answered; returns seconds from spawn."""
        self.port = free_port()
        args = [a.replace("{port}", str(self.port)) for a in self.spec.args]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.label}.log"
        self._log = self.log_path.open("ab")
        self._log.write(f"\n=== start {time.strftime('%H:%M:%S')} port={self.port}\n".encode())
        self._log.flush()
        t0 = time.perf_counter()
        self.proc = self._spawn(args)
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.proc.returncode}; see {self.log_path}"
                )
            if await describe(self.port, timeout=2.0) is not None:
                break
            if time.perf_counter() > deadline:
                self.stop()
                raise RuntimeError(f"{self.label} not ready after {timeout:.0f}s")
            await asyncio.sleep(0.05)
        self.startup_seconds = time.perf_counter() - t0
        return self.startup_seconds

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(self.spec.python), "-m", self.spec.module, *args],
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._env(),
        )

    def _env(self) -> dict[str, str]:
        return env_for_servers()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    async def restart(self) -> float:
        self.stop()
        return await self.start()

    def rss_mb(self) -> float:
        return rss_mb(self.pid)


@dataclass
class CheckoutServer(Server):
    """One of ours, run from another checkout of the package (e.g. a `git worktree` of
    an older commit) when ``checkout`` is set, so old and new meet in one run."""

    checkout: str = ""

    def _env(self) -> dict[str, str]:
        env = super()._env()
        if self.checkout:
            env["PYTHONPATH"] = str(Path(self.checkout).absolute())
        return env


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children, in MiB."""
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    except psutil.Error:
        return 0.0
    return total / (1024 * 1024)


class RssSampler:
    """Samples a process tree's RSS every `interval` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_mb(self.pid)
            self.peak_mb = max(self.peak_mb, value)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------- requests


async def describe(port: int, timeout: float = 5.0) -> Info | None:
    """Info from the server, or None if it does not answer in time."""
    client = AsyncTcpClient(HOST, port)
    try:
        await asyncio.wait_for(client.connect(), timeout=timeout)
        await client.write_event(Describe().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), timeout=timeout)
            if event is None:
                return None
            if Info.is_type(event.type):
                return Info.from_event(event)
    except (OSError, TimeoutError):
        return None
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


@dataclass
class Result:
    """One timed request. Times are seconds from writing the first request event."""

    ok: bool = False
    ttfa: float | None = None
    heard: float | None = None
    """Time until what HA's ffmpeg gathers had arrived (4.644 s at 22050 Hz,
    `wyoming_tts.audio.ffmpeg_gathers`), or the end of a shorter reply."""
    total: float | None = None
    audio_seconds: float = 0.0
    chunks: int = 0
    error: str | None = None
    error_code: str | None = None
    timed_out: bool = False
    gap: float = 0.0
    """Longest silence a listener who plays from the first chunk on would hear mid-reply."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rtf(self) -> float | None:
        if self.total is None or self.audio_seconds <= 0:
            return None
        return self.total / self.audio_seconds


async def speak(
    port: int,
    text: str,
    *,
    streaming: bool = False,
    voice: str | None = None,
    timeout: float = 120.0,
    chunk_size: int = 20,
) -> Result:
    """Speak `text` on a fresh connection, reading (and discarding) audio as it arrives.

    Plain mode sends one `synthesize` and ends at `audio-stop`. Streaming mode sends
    what Home Assistant sends: `synthesize-start`, the text in `chunk_size`-character
    pieces (split mid-word), a compatibility `synthesize` with the whole text, and
    `synthesize-stop`; it ends at `synthesize-stopped`. Reading runs concurrently
    with writing, so audio that arrives mid-stream is timed as it arrives.
    """
    result = Result()
    client = AsyncTcpClient(HOST, port)
    syn_voice = SynthesizeVoice(name=voice) if voice else None
    try:
        await asyncio.wait_for(client.connect(), timeout=10.0)
    except (OSError, TimeoutError) as err:
        result.error = f"connect: {err!r}"
        return result

    t0 = 0.0

    async def write() -> None:
        nonlocal t0
        t0 = time.perf_counter()
        if not streaming:
            await client.write_event(Synthesize(text=text, voice=syn_voice).event())
            return
        await client.write_event(SynthesizeStart(voice=syn_voice).event())
        for piece in stream_chunks(text, chunk_size):
            await client.write_event(SynthesizeChunk(text=piece).event())
        await client.write_event(Synthesize(text=text, voice=syn_voice).event())
        await client.write_event(SynthesizeStop().event())

    async def read() -> None:
        while True:
            event = await client.read_event()
            now = time.perf_counter()
            if event is None:
                result.error = "connection closed before the end of the response"
                return
            if AudioChunk.is_type(event.type):
                chunk = AudioChunk.from_event(event)
                if result.ttfa is None:
                    result.ttfa = now - t0
                else:
                    # Played since the first chunk vs. received before this one.
                    short = (now - t0 - result.ttfa) - result.audio_seconds
                    result.gap = max(result.gap, short)
                result.chunks += 1
                result.audio_seconds += len(chunk.audio) / (
                    chunk.rate * chunk.width * chunk.channels
                )
                gathers = ffmpeg_gathers(chunk.rate) / chunk.rate
                if result.heard is None and result.audio_seconds >= gathers:
                    result.heard = now - t0
            elif AudioStart.is_type(event.type):
                pass
            elif AudioStop.is_type(event.type):
                # A stream's reply ends at synthesize-stopped: wyoming-piper sends an
                # audio-stop after every sentence of it.
                if not streaming:
                    if result.heard is None:
                        result.heard = now - t0  # the end of the audio reaches ffmpeg
                    result.total = now - t0
                    result.ok = result.chunks > 0
                    return
            elif SynthesizeStopped.is_type(event.type):
                if result.heard is None:
                    result.heard = now - t0
                result.total = now - t0
                result.ok = result.chunks > 0
                return
            elif Error.is_type(event.type):
                err = Error.from_event(event)
                result.error = err.text
                result.error_code = err.code
                return

    writer = asyncio.create_task(write())
    reader = asyncio.create_task(read())
    try:
        await asyncio.wait_for(asyncio.gather(writer, reader), timeout=timeout)
    except TimeoutError:
        result.timed_out = True
        result.error = f"timed out after {timeout:.0f}s"
    except (OSError, ConnectionError) as err:
        result.error = repr(err)
    finally:
        for task in (writer, reader):
            task.cancel()
        with contextlib.suppress(Exception):
            await client.disconnect()
    return result


def env_for_servers() -> dict[str, str]:
    """Environment for both servers: no proxies, nothing that could trigger downloads."""
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env
