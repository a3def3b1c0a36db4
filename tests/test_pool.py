"""The voice pool with real voices: priming, sharing, LRU, idle, memory, keep-alive.

Extra voices are the bundled model linked under other names. Time and resident
memory are injected (a fake clock, a fake RSS reading); nothing asserts a
wall-clock duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wyoming_tts.errors import Busy, MemoryExhausted, VoiceLoadFailed, VoiceNotFound
from wyoming_tts.model.vits import StagedDecoder, WholeDecoder
from wyoming_tts.runtime.scheduler import Scheduler
from wyoming_tts.voices import pool as pool_module
from wyoming_tts.voices.catalog import VoiceCatalog, VoiceEntry
from wyoming_tts.voices.loader import LoadedVoice, LoadOptions, load_voice
from wyoming_tts.voices.pool import PoolConfig, VoicePool

from .conftest import FakeClock, link_voice

MB = 2**20


#: Voices of the module's `voices_dir`, by file identity: each is loaded for real once and
#: handed to every pool after (a load takes ~1 s; a loaded voice is immutable).
_shared_loads: dict[tuple[Path, tuple[int, int, int]], LoadedVoice] = {}
_shared_dirs: set[Path] = set()


class CountingLoader:
    """The real loader, counted: every call the pool makes is a load as far as it can tell."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, entry: VoiceEntry, options: LoadOptions) -> LoadedVoice:
        self.calls.append(entry.name)
        if entry.model_path.parent not in _shared_dirs:
            return load_voice(entry, options)
        key = (entry.model_path, entry.identity)
        if key not in _shared_loads:
            _shared_loads[key] = load_voice(entry, options)
        return _shared_loads[key]


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("voices")
    for name in ("en_US-a-medium", "en_US-b-medium", "en_US-c-medium"):
        link_voice(data, name)
    _shared_dirs.add(data)
    yield data
    _shared_dirs.discard(data)
    _shared_loads.clear()


def make_pool(
    voices_dir: Path,
    cache_dir: Path,
    *,
    clock: Any = None,
    memory: Any = None,
    max_voices: int = 2,
    idle_timeout: float = 100.0,
    keep_alive_interval: float = 0.0,
    memory_threshold_mb: int = 0,
    load_wait_timeout: float = 2.0,
    loader: Any = None,
    scheduler: Scheduler | None = None,
    prepare_in_background: bool = False,
    keep_decoder_memory: bool = False,
    shrink_arena: Any = None,
    whole_voice_threads: int = 1,
) -> tuple[VoicePool, CountingLoader]:
    counting = loader or CountingLoader()
    clock = clock or time.monotonic
    pool = VoicePool(
        PoolConfig(
            load=LoadOptions(
                cache_dir,
                keep_decoder_memory=keep_decoder_memory,
                whole_voice_threads=whole_voice_threads,
            ),
            max_voices=max_voices,
            idle_timeout=idle_timeout,
            keep_alive_interval=keep_alive_interval,
            memory_threshold_bytes=memory_threshold_mb * MB,
            pin_preloaded=True,
            load_wait_timeout=load_wait_timeout,
            prepare_in_background=prepare_in_background,
        ),
        VoiceCatalog([voices_dir], ttl=60, clock=clock),
        scheduler or Scheduler(workers=2),
        clock=clock,
        memory_reader=memory or (lambda: 100 * MB),
        loader=counting,
        shrink_arena=shrink_arena or (lambda: None),
    )
    return pool, counting


@pytest.fixture
async def closing() -> AsyncIterator[list[VoicePool]]:
    pools: list[VoicePool] = []
    yield pools
    for pool in pools:
        await pool.close()
        await asyncio.to_thread(pool._scheduler.shutdown)


async def use(pool: VoicePool, name: str) -> None:
    async with pool.acquire(name):
        pass


async def test_concurrent_first_requests_share_one_load(voices_dir, cache_dir, closing) -> None:
    pool, loader = make_pool(voices_dir, cache_dir)
    closing.append(pool)
    await asyncio.gather(*(use(pool, "en_US-a-medium") for _ in range(8)))
    assert loader.calls == ["en_US-a-medium"]
    stats = pool.stats()
    assert stats.loads == 1
    assert stats.misses == 8 - stats.hits
    await use(pool, "en_US-a-medium")
    assert pool.stats().hits == stats.hits + 1


async def test_lru_and_count_limit(voices_dir, cache_dir, closing) -> None:
    clock = FakeClock()
    pool, loader = make_pool(voices_dir, cache_dir, clock=clock)
    closing.append(pool)
    for name in ("en_US-a-medium", "en_US-b-medium", "en_US-a-medium"):
        clock.now += 1
        await use(pool, name)
    assert loader.calls == ["en_US-a-medium", "en_US-b-medium"]  # switching back costs nothing
    clock.now += 1
    await use(pool, "en_US-c-medium")  # b is least recently used
    assert set(pool.loaded()) == {"en_US-a-medium", "en_US-c-medium"}
    assert pool.stats().evictions == {"count": 1}


async def test_busy_voice_never_evicted_and_load_waits_then_fails(
    voices_dir, cache_dir, closing
) -> None:
    pool, _ = make_pool(voices_dir, cache_dir, max_voices=1, load_wait_timeout=0.5)
    closing.append(pool)
    async with pool.acquire("en_US-a-medium"):
        with pytest.raises(Busy):
            await use(pool, "en_US-b-medium")
        assert set(pool.loaded()) == {"en_US-a-medium"}
    # Released: now b can take the slot.
    await use(pool, "en_US-b-medium")
    assert set(pool.loaded()) == {"en_US-b-medium"}


async def test_waiting_load_proceeds_when_voice_released(voices_dir, cache_dir, closing) -> None:
    pool, _ = make_pool(voices_dir, cache_dir, max_voices=1, load_wait_timeout=30)
    closing.append(pool)
    release = asyncio.Event()
    holding = asyncio.Event()

    async def hold_a() -> None:
        async with pool.acquire("en_US-a-medium"):
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold_a())
    await asyncio.wait_for(holding.wait(), 60)
    waiter = asyncio.create_task(use(pool, "en_US-b-medium"))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    assert set(pool.loaded()) == {"en_US-a-medium"}
    release.set()
    await holder
    await asyncio.wait_for(waiter, 60)
    assert set(pool.loaded()) == {"en_US-b-medium"}


async def test_idle_eviction_with_clock(voices_dir, cache_dir, closing) -> None:
    clock = FakeClock()
    pool, _ = make_pool(voices_dir, cache_dir, clock=clock, idle_timeout=120)
    closing.append(pool)
    await pool.prime(("en_US-a-medium",))  # pinned
    await use(pool, "en_US-b-medium")
    clock.now += 119
    await pool.maintain()
    assert set(pool.loaded()) == {"en_US-a-medium", "en_US-b-medium"}
    clock.now += 2
    await pool.maintain()
    assert set(pool.loaded()) == {"en_US-a-medium"}  # pinned one stays
    assert pool.stats().evictions == {"idle": 1}


async def test_keep_alive_timing(voices_dir, cache_dir, closing) -> None:
    clock = FakeClock()
    scheduler = Scheduler(workers=2)
    pool, _ = make_pool(
        voices_dir,
        cache_dir,
        clock=clock,
        keep_alive_interval=300,
        idle_timeout=0,
        scheduler=scheduler,
    )
    closing.append(pool)
    await pool.prime(("en_US-a-medium",))
    clock.now += 299
    await pool.maintain()
    assert pool.stats().keep_alive_runs == 0
    clock.now += 2
    with scheduler.request():  # a real request in flight: keep-alive waits
        await pool.maintain()
    assert pool.stats().keep_alive_runs == 0
    await pool.maintain()
    assert pool.stats().keep_alive_runs == 1
    await pool.maintain()  # just warmed: not again
    assert pool.stats().keep_alive_runs == 1
    clock.now += 200
    await use(pool, "en_US-a-medium")  # served recently: skipped
    clock.now += 200
    await pool.maintain()
    assert pool.stats().keep_alive_runs == 1
    clock.now += 101
    await pool.maintain()
    assert pool.stats().keep_alive_runs == 2


async def test_memory_threshold(voices_dir, cache_dir, closing) -> None:
    clock = FakeClock()
    state = {"base": 100 * MB}
    pool: VoicePool

    def rss() -> int:
        return state["base"] + 200 * MB * len(pool.loaded())

    pool, _ = make_pool(
        voices_dir, cache_dir, clock=clock, memory=rss, max_voices=3, memory_threshold_mb=1000
    )
    closing.append(pool)
    for name in ("en_US-a-medium", "en_US-b-medium", "en_US-c-medium"):
        clock.now += 1
        await use(pool, name)
    assert len(pool.loaded()) == 3  # 700 MB
    state["base"] = 500 * MB  # something else grew: 1100 MB
    await pool.maintain()
    assert set(pool.loaded()) == {"en_US-b-medium", "en_US-c-medium"}  # LRU went first
    assert pool.stats().evictions == {"memory": 1}
    state["base"] = 900 * MB
    async with pool.acquire("en_US-c-medium"):
        await pool.maintain()
        assert set(pool.loaded()) == {"en_US-c-medium"}  # busy c kept
        with pytest.raises(MemoryExhausted):
            await use(pool, "en_US-a-medium")


async def test_unknown_and_broken_voices(voices_dir, cache_dir, tmp_path, closing) -> None:
    (tmp_path / "en_US-broken-medium.onnx").write_bytes(b"not a model")
    link_voice(tmp_path, "en_US-good-medium")
    (tmp_path / "en_US-broken-medium.onnx.json").write_text(
        (tmp_path / "en_US-good-medium.onnx.json").read_text()
    )
    pool, _ = make_pool(tmp_path, cache_dir)
    closing.append(pool)
    with pytest.raises(VoiceNotFound):
        await use(pool, "../en_US-good-medium")
    with pytest.raises(VoiceLoadFailed):
        await use(pool, "en_US-broken-medium")
    await use(pool, "en_US-good-medium")
    assert pool.stats().load_failures == 1


async def test_replaced_voice_reloads_on_next_use(cache_dir, tmp_path, closing) -> None:
    link_voice(tmp_path, "en_US-x-medium")
    pool, loader = make_pool(tmp_path, cache_dir)
    closing.append(pool)
    await use(pool, "en_US-x-medium")
    config = tmp_path / "en_US-x-medium.onnx.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    await use(pool, "en_US-x-medium")
    assert loader.calls == ["en_US-x-medium", "en_US-x-medium"]


async def test_warm_up_times_the_decoder(voices_dir, cache_dir, closing) -> None:
    """The engine sizes its first chunks by this; a few tenths of a ms per frame here."""
    pool, _ = make_pool(voices_dir, cache_dir)
    closing.append(pool)
    async with pool.acquire("en_US-a-medium") as voice:
        assert 0.0 < voice.frame_seconds < 0.01


class RecordingScheduler(Scheduler):
    """The real scheduler, noting the name of every step it is given."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.steps: list[str] = []

    async def run(self, func: Any, *args: object, urgent: bool = False) -> Any:
        self.steps.append(getattr(func, "__name__", type(func).__name__))
        return await super().run(func, *args, urgent=urgent)


async def until(condition: Any, what: str, timeout: float = 120.0) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 (the pool's state)
                await asyncio.sleep(0.02)
    assert condition(), what


async def test_first_requests_share_one_whole_load_and_finish_on_it(
    voices_dir, cache_dir, closing
) -> None:
    """Concurrent first requests: one whole load, no split or warm-up load; a request that
    holds the whole voice keeps it when the split voice takes its place."""
    pool, loader = make_pool(voices_dir, cache_dir, prepare_in_background=True)
    closing.append(pool)
    pool.start_maintenance()
    name = "en_US-a-medium"
    held = asyncio.Event()
    release = asyncio.Event()
    voices: list[LoadedVoice] = []

    async def hold() -> None:
        async with pool.acquire(name) as voice:
            voices.append(voice)
            held.set()
            await release.wait()
            voices.append(voice)

    holder = asyncio.create_task(hold())
    await asyncio.gather(*(use(pool, name) for _ in range(5)))
    await held.wait()
    assert loader.calls == [], "the full loader (split and warm-up) never ran for a request"
    assert pool.stats().loads == 1 and pool.stats().whole == (name,)
    assert voices[0].provisional and isinstance(voices[0].model.decoder, WholeDecoder)
    await until(lambda: pool.stats().upgrades == 1, "the split voice never took over")
    async with pool.acquire(name) as now:
        assert not now.provisional and isinstance(now.model.decoder, StagedDecoder)
        assert now.gain > 0 and now.frame_seconds > 0
    release.set()
    await holder
    assert voices[1] is voices[0], "a request in flight finished on the voice it began with"
    assert pool.stats().loads == 1 and set(pool.loaded()) == {name}


async def test_preparation_waits_for_quiet(voices_dir, cache_dir, closing) -> None:
    """No step of a split voice's preparation is queued while a request is in flight."""
    scheduler = RecordingScheduler(workers=2)
    pool, _ = make_pool(voices_dir, cache_dir, prepare_in_background=True, scheduler=scheduler)
    closing.append(pool)
    pool.start_maintenance()
    name = "en_US-b-medium"
    with scheduler.request():
        await use(pool, name)
        await until(lambda: pool.stats().preparing == (name,), "the split never ended")
        await asyncio.sleep(0.5)  # ten looks at the scheduler, each finding a request
        assert scheduler.steps == []
    await until(lambda: pool.stats().upgrades == 1, "not prepared once quiet")
    # Opened, then warmed a step at a time: the calibration text, then each utterance.
    assert scheduler.steps[:2] == ["open_voice", "_phonemize"]
    assert "partial" in scheduler.steps


async def test_preparation_waits_for_memory(voices_dir, cache_dir, closing) -> None:
    """A split voice that would pass the memory threshold is not prepared until it fits;
    its cost counts against loads while it is prepared."""
    state = {"rss": 100 * MB}
    scheduler = RecordingScheduler(workers=2)
    pool, _ = make_pool(
        voices_dir,
        cache_dir,
        memory=lambda: state["rss"],
        memory_threshold_mb=1000,
        scheduler=scheduler,
        prepare_in_background=True,
    )
    closing.append(pool)
    pool.start_maintenance()
    name = "en_US-c-medium"
    with scheduler.request():  # held until memory is short, so nothing starts early
        await use(pool, name)
        state["rss"] = 990 * MB
    splitter = pool.splitter
    assert splitter is not None
    await until(lambda: splitter.splits >= 1 and splitter.running is None, "never split")
    await asyncio.sleep(0.5)
    assert pool.stats().preparing == () and scheduler.steps == []
    assert pool.stats().whole == (name,)
    state["rss"] = 100 * MB
    await pool.maintain()  # retries once memory is there
    await until(lambda: pool.stats().upgrades == 1, "not prepared once memory was there")


async def test_decoder_memory_grown_at_quiet_is_emptied_and_regrown(
    voices_dir, cache_dir, closing, monkeypatch
) -> None:
    """Resident memory grown past the margin since the last quiet look, the same voices
    loaded: the shared arena is emptied and each voice grows it again to one reply's size,
    once; less growth, or a change of voices, is no reason."""
    monkeypatch.setattr(pool_module, "TRIM_QUIET", 0.01)
    regrown: list[str] = []
    monkeypatch.setattr(pool_module, "reach_working_size", lambda v: regrown.append(v.name))
    shrinks: list[int] = []
    state = {"rss": 300 * MB}
    pool, _ = make_pool(
        voices_dir,
        cache_dir,
        memory=lambda: state["rss"],
        keep_decoder_memory=True,
        shrink_arena=lambda: shrinks.append(1),
    )
    closing.append(pool)
    await pool.prime(("en_US-a-medium",))

    async def quiet_look(rss_mb: int) -> None:
        state["rss"] = rss_mb * MB
        pool.trim()
        assert pool._trimmer is not None
        await pool._trimmer

    await quiet_look(300)  # the first look after a load only reads
    await quiet_look(300 + pool_module.ARENA_REGROWN_BYTES // MB)
    assert shrinks == [] and regrown == []
    await quiet_look(340)
    assert shrinks == [1] and regrown == ["en_US-a-medium"]
    await quiet_look(340)  # what could not be given back is not tried again
    assert shrinks == [1]
    async with pool.acquire("en_US-b-medium"):
        pass
    await quiet_look(420)  # another voice loaded: a new figure, not growth
    assert shrinks == [1]


async def test_a_request_stops_the_arena_regrowth_it_meets_and_not_itself(
    voices_dir, cache_dir, closing, monkeypatch
) -> None:
    """The regrowth is as large a run as a request can make, on a voice requests use: a
    request that comes meanwhile stops it (through run options of its own, not the
    voice's) and is served in full; the regrowth runs again at the next quiet."""
    monkeypatch.setattr(pool_module, "TRIM_QUIET", 0.01)
    started = threading.Event()
    attempts: list[str] = []
    real = pool_module.reach_working_size

    def regrow(voice: LoadedVoice) -> None:
        attempts.append("stopped")
        started.set()
        if len(attempts) == 1:  # keeps running until a request stops it
            for _ in range(500):
                real(voice)
        else:
            real(voice)
        attempts[-1] = "done"

    monkeypatch.setattr(pool_module, "reach_working_size", regrow)
    state = {"rss": 300 * MB}
    scheduler = Scheduler(workers=2)
    pool, _ = make_pool(
        voices_dir,
        cache_dir,
        memory=lambda: state["rss"],
        keep_decoder_memory=True,
        scheduler=scheduler,
    )
    closing.append(pool)
    name = "en_US-a-medium"
    await pool.prime((name,))
    pool.trim()
    assert pool._trimmer is not None
    await pool._trimmer  # the first quiet look only reads
    state["rss"] = 400 * MB
    pool.trim()
    await asyncio.to_thread(started.wait, 60)
    assert pool.stats().background_step == name
    with scheduler.request():
        async with pool.acquire(name) as voice:
            params = voice.params(None, 0.0, None, 0.0)
            audio = await scheduler.run(voice.speak_blocking, "Served in full.", params)
    samples = np.concatenate(audio)
    assert samples.shape[0] / voice.sample_rate > 0.5
    assert float(np.sqrt(np.mean(samples**2))) > 0.01
    assert pool._trimmer is not None
    await asyncio.wait_for(pool._trimmer, 60)
    assert attempts == ["stopped", "done"]
    assert pool.stats().background_yields == 1
    assert not voice.model.runs_stopped


def spins(voice: LoadedVoice) -> bool:
    options = voice.model._frontend.get_session_options()
    return options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


async def test_a_whole_voice_spins_only_for_a_first_request_alone(
    voices_dir, cache_dir, closing
) -> None:
    """Spinning within a run wins back the unoptimised graph's speed alone and loses beside
    other requests' runs (docs/decisions.md): a first request with another in flight gets
    a whole voice whose runs do not spin."""
    scheduler = Scheduler(workers=2)
    pool, _ = make_pool(voices_dir, cache_dir, prepare_in_background=True, scheduler=scheduler)
    closing.append(pool)
    with scheduler.request():
        async with pool.acquire("en_US-a-medium") as alone:
            assert alone.provisional and spins(alone)
    with scheduler.request(), scheduler.request():
        async with pool.acquire("en_US-b-medium") as beside:
            assert beside.provisional and not spins(beside)


async def test_a_whole_voice_takes_the_cores(voices_dir, cache_dir, closing) -> None:
    """Its one run cannot be shared between workers, so its session has their threads."""
    pool, _ = make_pool(voices_dir, cache_dir, prepare_in_background=True, whole_voice_threads=2)
    closing.append(pool)
    async with pool.acquire("en_US-a-medium") as voice:
        assert voice.provisional
        assert voice.model._frontend.get_session_options().intra_op_num_threads == 2
