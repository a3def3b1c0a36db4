"""The voice pool with real voices: priming, sharing, LRU, idle, memory, keep-alive.

Extra voices are the bundled model linked under other names. Time and resident
memory are injected (a fake clock, a fake RSS reading); nothing asserts a
wall-clock duration.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from wyoming_tts.errors import Busy, MemoryExhausted, VoiceLoadFailed, VoiceNotFound
from wyoming_tts.runtime.scheduler import Scheduler
from wyoming_tts.voices.catalog import VoiceCatalog
from wyoming_tts.voices.loader import LoadedVoice, LoadOptions, load_voice
from wyoming_tts.voices.pool import PoolConfig, VoicePool

from .conftest import ServerProcess, connect, link_voice, read_until

MB = 2**20


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingLoader:
    """The real loader, counted."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, entry: Any, options: LoadOptions) -> LoadedVoice:
        self.calls.append(entry.name)
        return load_voice(entry, options)


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("voices")
    for name in ("en_US-a-medium", "en_US-b-medium", "en_US-c-medium"):
        link_voice(data, name)
    return data


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
) -> tuple[VoicePool, CountingLoader]:
    counting = loader or CountingLoader()
    clock = clock or time.monotonic
    pool = VoicePool(
        PoolConfig(
            load=LoadOptions(cache_dir),
            max_voices=max_voices,
            idle_timeout=idle_timeout,
            keep_alive_interval=keep_alive_interval,
            memory_threshold_bytes=memory_threshold_mb * MB,
            pin_preloaded=True,
            load_wait_timeout=load_wait_timeout,
        ),
        VoiceCatalog([voices_dir], ttl=60, clock=clock),
        scheduler or Scheduler(workers=2),
        clock=clock,
        memory_reader=memory or (lambda: 100 * MB),
        loader=counting,
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


def test_catalog_config_cached_by_mtime(tmp_path) -> None:
    clock = FakeClock()
    link_voice(tmp_path, "en_US-y-medium")
    catalog = VoiceCatalog([tmp_path], ttl=60, clock=clock)
    assert "en_US-y-medium" in catalog.refresh()
    assert catalog.config_reads == 1
    catalog.refresh(force=True)
    assert catalog.config_reads == 1  # unchanged mtime: cached
    config = tmp_path / "en_US-y-medium.onnx.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    catalog.refresh(force=True)
    assert catalog.config_reads == 2
    link_voice(tmp_path, "en_US-z-medium")
    assert "en_US-z-medium" not in catalog.refresh()  # TTL not passed
    clock.now += 61
    assert "en_US-z-medium" in catalog.refresh()


# ---------------------------------------------------------------------- end to end


def test_primed_before_accepting(tmp_path, cache_dir) -> None:
    srv = ServerProcess(["--cache-dir", str(cache_dir), "--debug"])
    srv.start(tmp_path / "log")
    try:
        log = srv.log()
        assert log.index("Primed voice en_US-joe-medium") < log.index("Ready")
    finally:
        assert srv.stop() == 0


def test_bad_default_voice_stops_startup(tmp_path, cache_dir) -> None:
    srv = ServerProcess(["--cache-dir", str(cache_dir), "--voice", "en_US-missing-medium"])
    with pytest.raises(RuntimeError, match="exited early"):
        srv.start(tmp_path / "log", timeout=60)
    assert srv.proc is not None and srv.proc.returncode == 1
    assert "en_US-missing-medium" in srv.log() and "Installed voices" in srv.log()


async def test_busy_beyond_queue_and_voice_added_while_running(tmp_path, cache_dir) -> None:
    data = tmp_path / "data"
    data.mkdir()
    srv = ServerProcess(
        [
            "--cache-dir",
            str(cache_dir),
            "--data-dir",
            str(data),
            "--workers",
            "1",
            "--max-queue",
            "0",
        ]
    )
    srv.start(tmp_path / "log")
    try:
        long_text = "This is a long sentence that keeps the only worker busy for a while. " * 20
        async with connect(srv.uri) as first, connect(srv.uri) as second:
            await first.write_event(Synthesize(text=long_text).event())
            started = await first.read_event()
            assert started is not None and started.type == "audio-start"
            await second.write_event(Synthesize(text="Me too.").event())
            resp = await read_until(second, ("error", "audio-stop"))
            assert resp.error is not None and resp.error.code == "busy"
            await read_until(first, timeout=120)
        link_voice(data, "en_US-new-medium")
        async with connect(srv.uri) as client:
            await client.write_event(Describe().event())
            info = Info.from_event((await read_until(client, ("info",))).events[-1])
            assert "en_US-new-medium" in [v.name for v in info.tts[0].voices]
            await client.write_event(
                Synthesize(
                    text="New voice.", voice=SynthesizeVoice(name="en_US-new-medium")
                ).event()
            )
            resp = await read_until(client)
            assert resp.types[-1] == "audio-stop"
    finally:
        assert srv.stop() == 0


def test_speakers_by_name_or_id_and_info() -> None:
    from wyoming_tts.errors import SpeakerNotFound
    from wyoming_tts.info import build_info
    from wyoming_tts.voices.catalog import VoiceEntry, parse_voice_config

    raw = {
        "audio": {"sample_rate": 22050, "quality": "medium"},
        "num_speakers": 3,
        "speaker_id_map": {"alice": 0, "bob": 1, "carol": 2},
        "language": {"code": "en_GB"},
        "dataset": "trio",
        "phoneme_id_map": {"a": [1]},
        "piper_version": "1.0.0",
    }
    info = parse_voice_config("en_GB-trio-medium", raw)
    assert info.resolve_speaker("bob") == 1
    assert info.resolve_speaker("2") == 2
    assert info.resolve_speaker(None) is None
    for bad in ("dave", "3", "-1"):
        with pytest.raises(SpeakerNotFound):
            info.resolve_speaker(bad)
    entry = VoiceEntry("en_GB-trio-medium", Path("x.onnx"), Path("x.onnx.json"), 0, 0, 0, info)
    voice = build_info({entry.name: entry}, streaming=False).tts[0]
    assert not voice.supports_synthesize_streaming
    assert voice.voices[0].languages == ["en_GB"]
    assert [s.name for s in voice.voices[0].speakers or []] == ["alice", "bob", "carol"]
    assert voice.voices[0].version == "1.0.0"


async def test_warm_up_times_the_decoder(voices_dir, cache_dir, closing) -> None:
    """The engine sizes its first chunks by this; a few tenths of a ms per frame here."""
    pool, _ = make_pool(voices_dir, cache_dir)
    closing.append(pool)
    async with pool.acquire("en_US-a-medium") as voice:
        assert 0.0 < voice.frame_seconds < 0.01
