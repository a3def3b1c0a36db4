"""First use of a voice, over real sockets: no request waits for a split or a warm-up.

Voices of every family (`tests/voices/`) are copied into a data dir while the server
runs. The split happens in a child process (`wyoming_tts.model.split`): the tests find
it among this process's children and stop it (SIGSTOP) to hold a split "in progress"
for as long as they need, so orderings are shown by the process state, never by timing.
Waits have timeouts; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from wyoming.info import Describe

from wyoming_tts.config import bundled_voice_dir
from wyoming_tts.model.split import split_voice_model
from wyoming_tts.model.split.cache import META_FILE, sha256
from wyoming_tts.model.vits import StagedDecoder, WholeDecoder
from wyoming_tts.voices.pool import VoicePool
from wyoming_tts.voices.splitter import SPLIT_MODULE

from .conftest import (
    VOICE,
    Response,
    Server,
    connect,
    read_until,
    rms_dbfs,
    run_server,
    speak_as,
)

VOICES_DIR = Path(__file__).parent / "voices"
VOICES = sorted(p.name.removesuffix(".onnx") for p in VOICES_DIR.glob("*.onnx"))
BIG = "en_US-testmulti-high"
"""The largest test voice: its split takes longest, so it is easiest to catch running."""
TEXT = "The kitchen lights are on now."
WAIT = 120.0
"""Seconds a test waits for background work before it fails."""


@pytest.fixture(scope="module")
def default_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled voice's cache entry, split once for the module."""
    cache = tmp_path_factory.mktemp("first-use-cache")
    model = bundled_voice_dir() / f"{VOICE}.onnx"
    assert split_voice_model(model, cache) is not None
    return cache / sha256(model)[:16]


@pytest.fixture
def cache(tmp_path: Path, default_split: Path) -> Path:
    """A cache holding the bundled voice's split alone: no test voice was ever split."""
    path = tmp_path / "cache"
    shutil.copytree(default_split, path / default_split.name)
    return path


@contextlib.asynccontextmanager
async def serving(data_dir: Path, cache: Path, *args: str) -> AsyncIterator[Server]:
    """The real server on a loopback port, noise off (so replies can be compared)."""
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    noise_off = ("--noise-scale", "0", "--noise-w-scale", "0")
    async with run_server(
        "--data-dir", str(data_dir), "--cache-dir", str(cache), *noise_off, *args
    ) as srv:
        yield srv


def copy_voice(data_dir: Path, name: str) -> None:
    """As a user adds a voice: the config first, then the model."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(VOICES_DIR / f"{name}.onnx.json", data_dir / f"{name}.onnx.json")
    shutil.copy(VOICES_DIR / f"{name}.onnx", data_dir / f"{name}.onnx")


#: Each test voice's model digest, the key of its cache entry (read once, off any loop).
DIGESTS = {name: sha256(VOICES_DIR / f"{name}.onnx") for name in VOICES}


def split_done(cache: Path, name: str) -> bool:
    """The voice's split is in the cache (its marker, written last, is there)."""
    digest = DIGESTS[name]
    meta = cache / digest[:16] / META_FILE
    return meta.is_file() and json.loads(meta.read_text("utf-8"))["sha256"] == digest


def split_children(voice: str = "") -> list[psutil.Process]:
    """Background split processes of this (the server's) process, of ``voice`` if named."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = " ".join(child.cmdline())
            if SPLIT_MODULE in command and voice in command:
                found.append(child)
    return found


async def wait_for(what: Callable[[], bool], message: str, timeout: float = WAIT) -> None:
    """Poll ``what`` until it holds; fail with ``message`` after ``timeout`` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not what():  # noqa: ASYNC110 (state of the pool or the file system)
                await asyncio.sleep(0.01)
    assert what(), message


async def describe(server: Server) -> None:
    """What Home Assistant sends on connecting; the catalog then sees new voices."""
    async with connect(server.uri) as client:
        await client.write_event(Describe().event())
        await read_until(client, ("info",))


@contextlib.contextmanager
def stopped(process: psutil.Process) -> Iterator[psutil.Process]:
    """The child held where it is until the block ends."""
    process.send_signal(signal.SIGSTOP)
    try:
        yield process
    finally:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGCONT)


async def caught_splitting(server: Server, name: str) -> psutil.Process:
    """The split child of ``name``, once the pool says it is being split."""
    pool = server.app.pool
    await wait_for(lambda: pool.stats().splitting == name, f"{name} was never split")
    await wait_for(lambda: bool(split_children(name)), f"no child splits {name}", timeout=10)
    return split_children(name)[0]


def config(name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((VOICES_DIR / f"{name}.onnx.json").read_text("utf-8"))
    return data


def assert_heard(resp: Response, name: str) -> None:
    """Speech in the voice's advertised format, not silence, as long as the text."""
    audio = config(name)["audio"]
    assert isinstance(audio, dict)
    rate = audio["sample_rate"]
    assert (resp.start.rate, resp.start.width, resp.start.channels) == (rate, 2, 1)
    assert all((c.rate, c.width, c.channels) == (rate, 2, 1) for c in resp.chunks)
    assert rms_dbfs(resp.audio) > -35, "audio is near silence"
    assert 6 < len(TEXT) / resp.seconds < 30, f"{resp.seconds:.2f} s for {len(TEXT)} chars"


def decoder_of(pool: VoicePool, name: str) -> object:
    return pool.loaded()[name].model.decoder


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n].astype(np.float64), b[:n].astype(np.float64))[0, 1])


async def test_a_new_voice_is_split_before_any_request(tmp_path: Path, cache: Path) -> None:
    data = tmp_path / "data"
    name = "en_US-test-x_low"
    async with serving(data, cache) as srv:
        pool = srv.app.pool
        copy_voice(data, name)
        assert not split_done(cache, name)
        await describe(srv)
        await wait_for(lambda: split_done(cache, name), f"{name} was not split")
        stats = pool.stats()
        assert name not in pool.loaded(), "split, not loaded"
        assert (stats.loads, stats.misses, stats.hits) == (1, 0, 0), "no request was made"
        await wait_for(lambda: not split_children(), "the split's child did not exit")


async def test_first_request_is_served_whole_then_the_voice_streams_split(
    tmp_path: Path, cache: Path
) -> None:
    """While its split is held, a voice's first request is answered whole (and a request
    on another voice is answered too); then the split voice takes over, saying the same."""
    data = tmp_path / "data"
    async with serving(data, cache) as srv:
        pool = srv.app.pool
        copy_voice(data, BIG)
        await describe(srv)
        with stopped(await caught_splitting(srv, BIG)):
            default = await speak_as(srv, VOICE, TEXT)  # never behind the split
            first = await speak_as(srv, BIG, TEXT, "ben")
            assert pool.stats().splitting == BIG and not split_done(cache, BIG)
            assert isinstance(decoder_of(pool, BIG), WholeDecoder)
            assert pool.stats().whole == (BIG,)
        assert rms_dbfs(default.audio) > -35
        assert_heard(first, BIG)

        await wait_for(lambda: pool.stats().upgrades == 1, f"{BIG} was never prepared split")
        assert isinstance(decoder_of(pool, BIG), StagedDecoder)
        assert pool.stats().whole == ()
        assert split_done(cache, BIG)
        later = await speak_as(srv, BIG, TEXT, "ben")
        assert_heard(later, BIG)
        # Noise off: the same speech, once peak-normalised whole, once at the fixed gain.
        assert correlation(first.audio, later.audio) > 0.99
        # ... and the whole graph heard the speaker: closer to ben split than to ana.
        other = await speak_as(srv, BIG, TEXT, "ana")
        assert correlation(first.audio, other.audio) < correlation(first.audio, later.audio)


async def test_a_request_stops_the_warm_up_step_it_meets(tmp_path: Path, cache: Path) -> None:
    """A request that comes while a split voice's warm-up step runs stops that step, so
    the two do not share the CPU for the rest of it; the step runs again at the next
    quiet, and the split voice then takes over and says the same as before."""
    data = tmp_path / "data"
    async with serving(data, cache) as srv:
        pool = srv.app.pool
        copy_voice(data, BIG)
        first = await speak_as(srv, BIG, TEXT, "ben")  # whole; its split voice is prepared
        assert_heard(first, BIG)
        met = 0
        while pool.stats().background_yields == 0:
            stats = pool.stats()
            assert stats.upgrades == 0, f"warmed with no step met: {met} requests in time"
            if stats.background_step != BIG:
                await asyncio.sleep(0.001)
                continue
            met += 1
            assert met <= 20, "20 requests during a warm-up step, none stopped it"
            during = await speak_as(srv, VOICE, TEXT)
            assert rms_dbfs(during.audio) > -35
        await wait_for(lambda: pool.stats().upgrades == 1, f"{BIG} never took over")
        assert isinstance(decoder_of(pool, BIG), StagedDecoder)
        later = await speak_as(srv, BIG, TEXT, "ben")
        assert_heard(later, BIG)
        assert correlation(first.audio, later.audio) > 0.99


@pytest.mark.parametrize("name", [v for v in VOICES if v != BIG])
async def test_every_family_is_heard_on_first_use_and_after(
    tmp_path: Path, cache: Path, name: str
) -> None:
    """Whole at first (the split may be done by then: a cold voice is always served
    whole), split once prepared; noise off, both say the same."""
    data = tmp_path / "data"
    copy_voice(data, name)
    speaker = "ben" if "-testmulti-" in name else None
    async with serving(data, cache) as srv:
        pool = srv.app.pool
        first = await speak_as(srv, name, TEXT, speaker)
        assert_heard(first, name)
        assert pool.stats().loads == 2 and name in pool.loaded()
        await wait_for(lambda: pool.stats().upgrades == 1, f"{name} was never prepared split")
        assert isinstance(decoder_of(pool, name), StagedDecoder)
        later = await speak_as(srv, name, TEXT, speaker)
        assert_heard(later, name)
        assert correlation(first.audio, later.audio) > 0.99
        assert pool.stats().loads == 2, "the split voice replaced the whole one: no load"


async def test_background_splits_run_one_at_a_time(tmp_path: Path, cache: Path) -> None:
    data = tmp_path / "data"
    others = ["en_US-testmulti-x_low", "en_US-testmulti-low"]
    async with serving(data, cache) as srv:
        pool = srv.app.pool
        for name in (BIG, *others):
            copy_voice(data, name)
        await describe(srv)
        with stopped(await caught_splitting(srv, BIG)) as child:
            await wait_for(lambda: lowest_priority(child), "the split runs at normal priority")
            await asyncio.sleep(1.0)  # room for a wrongly started second child to show
            assert len(split_children()) == 1
            assert set(pool.stats().splits_queued) == set(others)
            assert not any(split_done(cache, n) for n in others)
        names = (BIG, *others)

        def all_split() -> bool:
            stats = pool.stats()
            idle = stats.splitting is None and not stats.splits_queued
            return idle and all(split_done(cache, n) for n in names)

        await wait_for(all_split, "not all split")
        splitter = pool.splitter
        assert splitter is not None
        history = [h for h in splitter.history if h[1] in names]
        assert [what for what, _ in history] == ["start", "end"] * 3
        assert [n for _, n in history[::2]] == [n for _, n in history[1::2]]
        assert {n for _, n in history} == set(names)


def lowest_priority(process: psutil.Process) -> bool:
    """Scheduled only when a CPU is idle, or at least at the highest nice value."""
    policy = os.sched_getscheduler(process.pid)
    return policy == os.SCHED_IDLE or process.nice() == 19
