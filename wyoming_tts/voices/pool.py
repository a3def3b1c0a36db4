"""Loaded voices: primed at start, warm while idle, bounded by count and memory.

All bookkeeping happens on the event loop (no locks needed); loading and
warm-ups run on a worker thread. Rules:

* a voice in use is never evicted;
* concurrent first requests for a voice share one load;
* least recently used idle voices go first when the count or memory limit
  is hit, or when idle longer than ``idle_timeout`` (pinned ones stay);
* if room cannot be made, a load waits up to ``load_wait_timeout`` for a
  voice to be released, then fails with ``busy`` or ``memory-exhausted``;
* one warm-up coordinator (a lock) runs start-up priming and keep-alive, so
  warm-ups never overlap or pile up, and keep-alive never runs while real
  work is queued.

With ``prepare_in_background`` (the server), a first request never waits for a
graph split or a warm-up: every voice the catalog finds is split in the background
(`splitter`), a voice not loaded yet is loaded whole, as piper loads it, and serves
its first requests whole-utterance; meanwhile its split voice is opened and warmed
one step at a time, each when no request is in flight, and then replaces it
(requests in flight finish on the whole one). The split voice's cost counts against
the memory threshold while it is prepared, in its whole voice's slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

from ..errors import Busy, MemoryExhausted, TtsError, VoiceLoadFailed, VoiceNotFound
from ..runtime.memory import process_rss, trim_heap
from ..runtime.ort import shrink_shared_arena
from ..runtime.scheduler import Scheduler
from .catalog import VoiceCatalog, VoiceEntry
from .loader import (
    LoadedVoice,
    LoadOptions,
    WarmUp,
    keep_alive,
    load_voice,
    load_whole_voice,
    open_voice,
    reach_working_size,
)
from .splitter import BackgroundSplitter

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds without a request in flight before freed heap is trimmed (a trim walks the heap,
#: ~1-5 ms of a core: never while someone waits for audio).
TRIM_QUIET = 0.5
#: Resident bytes a loaded voice costs per byte of model file (measured on medium voices).
LOAD_COST_FACTOR = 1.6
#: What a voice's kept decoder memory adds, grown at load to its largest (~40 MB, medium):
#: one arena holds it for all voices, so counting it for each is an upper bound.
KEPT_DECODER_BYTES = 64 * 2**20


#: Seconds a request waits for a voice slot or memory before `busy`/`memory-exhausted`.
LOAD_WAIT_TIMEOUT = 10.0
#: Seconds between looks at the scheduler while background preparation waits for quiet.
QUIET_POLL = 0.1
#: Resident bytes above the figure last read at quiet (voices unchanged) that mean the
#: shared decoder arena grew for good (two long replies at once: +36 MB, for one voice's
#: working size of ~40 MB): it is then emptied and grown again to one reply's size.
ARENA_REGROWN_BYTES = 16 * 2**20


@dataclass(frozen=True)
class PoolConfig:
    load: LoadOptions
    max_voices: int
    idle_timeout: float
    keep_alive_interval: float
    memory_threshold_bytes: int
    pin_preloaded: bool
    load_wait_timeout: float = LOAD_WAIT_TIMEOUT
    prepare_in_background: bool = False
    """Split new voices in the background and serve a voice's first requests whole while
    its split voice is warmed (the server); off: a load splits and warms at once."""


@dataclass(eq=False)
class _Slot:
    """The pool's bookkeeping for one loaded voice; the voice itself never changes."""

    voice: LoadedVoice
    pinned: bool = False
    in_use: int = 0
    last_used: float = 0.0
    last_warm: float = 0.0
    stale: bool = False
    """Its files changed or vanished: unload once no request holds it."""
    warming: bool = False
    settled: bool = False
    """A whole voice no split voice will replace (no seam, or preparing it failed)."""

    @property
    def name(self) -> str:
        return self.voice.name

    @property
    def busy(self) -> bool:
        return self.in_use > 0 or self.warming


@dataclass(frozen=True)
class PoolStats:
    """One snapshot for logs and health reporting."""

    def __str__(self) -> str:
        evictions = ",".join(f"{k}={v}" for k, v in sorted(self.evictions.items())) or "none"
        return (
            f"loaded=[{', '.join(self.loaded)}] loads={self.loads} "
            f"load_failures={self.load_failures} load_time={self.load_seconds_total:.2f}s "
            f"hits={self.hits} misses={self.misses} evictions={evictions} "
            f"keep_alive={self.keep_alive_runs} "
            f"active={self.active_requests} waiting={self.waiting_requests} "
            f"whole=[{', '.join(self.whole)}] upgrades={self.upgrades} "
            f"splitting={self.splitting or '-'} splits_queued={len(self.splits_queued)}"
        )

    loaded: tuple[str, ...]
    loads: int
    load_failures: int
    load_seconds_total: float
    hits: int
    misses: int
    evictions: dict[str, int]
    keep_alive_runs: int
    active_requests: int
    waiting_requests: int
    whole: tuple[str, ...] = ()
    """Loaded voices serving whole utterances until their split voice is ready."""
    upgrades: int = 0
    """Whole voices replaced by their prepared split voice."""
    background_yields: int = 0
    """Background steps (warm-up, arena regrowth) stopped by a request and run again."""
    background_step: str | None = None
    """The voice whose background step runs now."""
    preparing: tuple[str, ...] = ()
    """Whole voices whose split voice is being opened and warmed (or waits for quiet)."""
    splitting: str | None = None
    """The voice being split in the background now."""
    splits_queued: tuple[str, ...] = ()
    splits: int = 0
    """Background splits run to the end."""


class VoicePool:
    """Owns every loaded voice. Create one per server; pass it down."""

    def __init__(
        self,
        config: PoolConfig,
        catalog: VoiceCatalog,
        scheduler: Scheduler,
        *,
        clock: Callable[[], float] = time.monotonic,
        memory_reader: Callable[[], int] = process_rss,
        loader: Callable[[VoiceEntry, LoadOptions], LoadedVoice] = load_voice,
        whole_loader: Callable[[VoiceEntry, LoadOptions, bool], LoadedVoice] = load_whole_voice,
        shrink_arena: Callable[[], None] = shrink_shared_arena,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._scheduler = scheduler
        self._clock = clock
        self._memory_reader = memory_reader
        self._loader = loader
        self._whole_loader = whole_loader
        self._shrink_arena = shrink_arena
        self._quiet_rss: int | None = None  # read at quiet since the voices last changed
        self._splitter = (
            BackgroundSplitter(config.load.cache_dir) if config.prepare_in_background else None
        )
        self._upgrades: dict[_Slot, asyncio.Task[None]] = {}
        self._stepping: LoadedVoice | None = None  # whose warm-up step runs now
        self._gave_way = 0
        scheduler.watch_busy(self._give_way)
        self._upgraded = 0
        self._preparing_bytes = 0  # split voices being prepared, not yet in the RSS reading
        self._preparing: set[str] = set()
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._loading: dict[str, asyncio.Task[_Slot]] = {}
        self._changed = asyncio.Condition()
        self._warm_lock = asyncio.Lock()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts-io")
        self._loads = 0
        self._load_failures = 0
        self._load_seconds = 0.0
        self._hits = 0
        self._misses = 0
        self._evictions: Counter[str] = Counter()
        self._keep_alive_runs = 0
        self._maintenance: asyncio.Task[None] | None = None
        self._reserved = 0  # loads past _make_room, not yet in _voices
        self._trimmer: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ I/O helpers

    async def run_io(self, func: Callable[..., T], *args: object) -> T:
        """File I/O (catalog scans, stats) off the loop, on a thread of its own."""
        return await asyncio.get_running_loop().run_in_executor(self._io, func, *args)

    async def _rss(self) -> int:
        """Resident bytes, read off the loop (it is a /proc read)."""
        return await self.run_io(self._memory_reader)

    async def entries(self, force: bool = False) -> dict[str, VoiceEntry]:
        """The installed voices; voices seen for the first time are split in the background."""
        entries = await self.run_io(self._catalog.refresh, force)
        if self._splitter is not None and not self._closed:
            self._splitter.notice(entries)
        return entries

    # ------------------------------------------------------------------ lifecycle

    async def prime(self, names: tuple[str, ...]) -> None:
        """Load and warm these voices before the server accepts anyone."""
        for name in names:
            entry = await self.run_io(self._catalog.get, name)
            async with self._warm_lock:
                slot = await self._load(entry, pinned=self._config.pin_preloaded)
            if self._splitter is not None:
                self._splitter.mark_split(entry)
            voice = slot.voice
            _LOGGER.info(
                "Primed voice %s in %.2f s (gain %.2f)", name, voice.load_seconds, voice.gain
            )

    def start_maintenance(self) -> None:
        """Background chores from now on: splits, idle eviction, keep-alive."""
        if self._splitter is not None:
            self._splitter.start()
        periods = [
            p for p in (self._config.idle_timeout, self._config.keep_alive_interval) if p > 0
        ]
        if not periods:
            return
        period = min(30.0, max(0.5, min(periods) / 4))
        self._maintenance = asyncio.create_task(
            self._maintain_forever(period), name="voice-pool-maintenance"
        )

    async def close(self) -> None:
        self._closed = True
        for chore in (self._maintenance, self._trimmer):
            if chore is not None:
                chore.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await chore
        for task in [*self._loading.values(), *self._upgrades.values()]:
            task.cancel()
        self._slots.clear()
        if self._splitter is not None:
            await self._splitter.close()
        # Wait for a load in progress: a thread inside onnxruntime must not outlive us.
        await asyncio.to_thread(self._io.shutdown, wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ requests

    @contextlib.asynccontextmanager
    async def acquire(self, name: str) -> AsyncIterator[LoadedVoice]:
        """The loaded voice, held in use (never evicted) until the block ends."""
        slot = await self._get(name)
        slot.in_use += 1
        slot.last_used = self._clock()
        self._slots.move_to_end(slot.name)
        try:
            yield slot.voice
        finally:
            slot.in_use -= 1
            slot.last_used = self._clock()
            if slot.stale and slot.in_use == 0 and self._slots.get(slot.name) is slot:
                self._unload(slot, "replaced")
            async with self._changed:
                self._changed.notify_all()

    async def _get(self, name: str) -> _Slot:
        try:
            entry = await self.run_io(self._catalog.get, name)
        except VoiceNotFound:
            loaded = self._slots.get(name)
            if loaded is None:
                raise
            # Its files vanished under a loaded copy: say so, and let the copy go.
            self._retire(loaded)
            raise VoiceLoadFailed(f"Voice '{name}' was removed from disk.") from None
        counted = False
        while True:
            slot = self._slots.get(name)
            if slot is not None and slot.voice.entry.identity != entry.identity:
                self._retire(slot)  # files replaced on disk: reload on this use
            elif slot is not None and not slot.stale:
                if not counted:
                    self._hits += 1
                return slot
            if not counted:
                self._misses += 1
                counted = True
            task = self._loading.get(name)
            if task is None:
                whole = self._splitter is not None
                task = asyncio.create_task(
                    self._load(entry, pinned=False, whole=whole), name=f"load-{name}"
                )
                self._loading[name] = task
                task.add_done_callback(partial(self._loading_done, name))
            await asyncio.shield(task)

    def _retire(self, slot: _Slot) -> None:
        slot.stale = True
        if slot.in_use == 0:
            self._unload(slot, "replaced")

    def _loading_done(self, name: str, task: asyncio.Task[_Slot]) -> None:
        if self._loading.get(name) is task:
            del self._loading[name]
        if not task.cancelled():
            task.exception()  # retrieved here; each waiter re-raises its own copy

    async def _load(self, entry: VoiceEntry, pinned: bool, whole: bool = False) -> _Slot:
        """``whole``: as piper loads it, its split voice prepared in the background."""
        await self._make_room(entry)
        loop = asyncio.get_running_loop()
        self._reserved += 1
        # A whole voice's runs spin only if its first request is alone (itself in flight):
        # beside other requests' runs spinning loses (docs/decisions.md, "First use").
        spin = self._scheduler.active_requests <= 1
        load = (
            partial(self._whole_loader, entry, self._config.load, spin)
            if whole
            else partial(self._loader, entry, self._config.load)
        )
        try:
            voice = await loop.run_in_executor(self._io, load)
        except TtsError:
            self._load_failures += 1
            raise
        except Exception as err:  # a loader bug must not take the server down
            self._load_failures += 1
            _LOGGER.exception("Unexpected error loading voice %s", entry.name)
            raise VoiceLoadFailed(f"Voice '{entry.name}' could not be loaded.") from err
        finally:
            self._reserved -= 1
        now = self._clock()
        slot = _Slot(voice, pinned=pinned, last_used=now, last_warm=now)
        old = self._slots.pop(entry.name, None)
        if old is not None and old.in_use == 0:
            self._evictions["replaced"] += 1
        if old is not None and (upgrade := self._upgrades.pop(old, None)) is not None:
            upgrade.cancel()  # a split voice of the files replaced
        self._slots[entry.name] = slot
        self._quiet_rss = None
        self._loads += 1
        self._load_seconds += voice.load_seconds
        how = ""
        if voice.provisional:
            how = f" whole{' (spinning)' if spin else ''}, until its split voice is ready"
        _LOGGER.info(
            "Loaded voice %s%s in %.2f s; %s", entry.name, how, voice.load_seconds, self.stats()
        )
        if voice.provisional:
            self._start_upgrade(slot)
        else:
            await self.run_io(trim_heap)  # loading leaves ~100 MB of freed parse buffers
        await self._enforce_memory(keep=slot)
        return slot

    # ------------------------------------------------------------------ background preparation

    def _start_upgrade(self, slot: _Slot) -> None:
        """Prepare the split voice that is to replace this whole one, unless under way."""
        if self._splitter is None or self._closed or slot.settled or slot in self._upgrades:
            return
        task = asyncio.create_task(self._upgrade(slot), name=f"prepare-{slot.name}")
        self._upgrades[slot] = task
        task.add_done_callback(partial(self._upgrade_done, slot))

    def _upgrade_done(self, slot: _Slot, task: asyncio.Task[None]) -> None:
        if self._upgrades.get(slot) is task:
            del self._upgrades[slot]
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error("Preparing voice %s failed", slot.name, exc_info=task.exception())

    def _current(self, slot: _Slot) -> bool:
        """The slot is still the pool's copy of its voice (not unloaded, replaced, stale)."""
        return not self._closed and not slot.stale and self._slots.get(slot.name) is slot

    async def _upgrade(self, slot: _Slot) -> None:
        """Split (background, first in line), open and warm the split voice, then swap.

        Every inference step waits until no request is in flight; if the slot goes
        (evicted, replaced) the work stops. Not enough memory now: maintenance retries.
        """
        splitter, entry = self._splitter, slot.voice.entry
        if splitter is None:
            return
        # Shielded: the split is shared, and goes on if this voice is unloaded meanwhile.
        if not await asyncio.shield(splitter.want(entry, urgent=True)):
            slot.settled = True
            _LOGGER.info("Voice %s has no usable split; it stays whole-utterance", slot.name)
            return
        cost = self._load_cost(entry)
        threshold = self._config.memory_threshold_bytes
        if threshold > 0 and await self._rss() + cost + self._preparing_bytes > threshold:
            _LOGGER.info("Not enough memory to prepare voice %s now; later", slot.name)
            return
        started = time.perf_counter()
        self._preparing_bytes += cost
        self._preparing.add(slot.name)
        try:
            if not self._current(slot):
                return
            voice = await self._when_quiet(open_voice, entry, self._config.load)
            warm_up = WarmUp(voice, self._config.load)
            for step in warm_up.steps():
                try:
                    if not await self._background_step(voice, step, partial(self._current, slot)):
                        return
                except Exception as err:
                    raise warm_up.failed(err) from err
            ready = warm_up.result()
        except TtsError as err:
            slot.settled = True
            _LOGGER.warning("%s It stays whole-utterance.", err.text)
            return
        finally:
            self._preparing_bytes -= cost
            self._preparing.discard(slot.name)
        if self._current(slot):
            self._swap(slot, replace(ready, load_seconds=time.perf_counter() - started))

    async def _background_step(
        self, voice: LoadedVoice, step: Callable[[], None], wanted: Callable[[], bool]
    ) -> bool:
        """One step of background work on ``voice``, when quiet; a request that comes in
        flight meanwhile stops it (`_give_way`), and it is run again at the next quiet.

        So a request shares the CPU with the step for one operator at most, not for the
        rest of it (1.6-1.9 s for a full-width high voice's warm-up). No request may run
        through ``voice.model``'s run options: it is a voice not in the pool yet, or a
        model made `VitsModel.apart`. False: not run, as no longer `wanted` (the voice was
        unloaded or replaced meanwhile).
        """
        while True:
            async with self._warm_lock:
                if not wanted():
                    return False
                if self._scheduler.quiet:
                    voice.model.stop_runs(False)
                    self._stepping = voice
                    try:
                        await self._scheduler.run(step)
                        return True
                    except Exception:
                        if not voice.model.runs_stopped:
                            raise
                        self._gave_way += 1
                        _LOGGER.debug("Background step on %s gave way to a request", voice.name)
                    finally:
                        self._stepping = None
                        voice.model.stop_runs(False)
            await asyncio.sleep(QUIET_POLL)

    def _give_way(self, busy: bool) -> None:
        """A first request came in flight: stop the background step running now, if any."""
        if busy and self._stepping is not None:
            self._stepping.model.stop_runs()

    async def _when_quiet(self, func: Callable[..., T], *args: object) -> T:
        """Run one background step on an inference thread once no request is in flight."""
        while True:
            async with self._warm_lock:
                if self._scheduler.quiet:
                    return await self._scheduler.run(func, *args)
            await asyncio.sleep(QUIET_POLL)

    def _swap(self, whole: _Slot, voice: LoadedVoice) -> None:
        """The split voice takes the whole one's place; requests holding that finish on it."""
        slot = _Slot(voice, pinned=whole.pinned, last_used=whole.last_used, last_warm=self._clock())
        self._slots[whole.name] = slot  # same place in the LRU order
        self._quiet_rss = None
        self._upgraded += 1
        _LOGGER.info(
            "Voice %s now streams (prepared in %.2f s, gain %.2f); %s",
            whole.name,
            voice.load_seconds,
            voice.gain,
            self.stats(),
        )
        self.trim()  # the whole session goes with its last request

    async def _make_room(self, entry: VoiceEntry) -> None:
        """Evict idle voices until one more fits by count and memory, or wait, or fail."""
        # Real time, not the injectable clock: this is how long a client waits.
        deadline = time.monotonic() + self._config.load_wait_timeout
        threshold = self._config.memory_threshold_bytes
        # Loads already past this point are not in the RSS reading yet: count them too,
        # and the split voices being prepared.
        cost = self._load_cost(entry) * (1 + self._reserved) + self._preparing_bytes
        while True:
            while self._slots_used() >= self._config.max_voices and self._evict_one("count"):
                pass
            count_ok = self._slots_used() < self._config.max_voices
            memory_ok = True
            if threshold > 0:
                while await self._rss() + cost > threshold and self._evict_one("memory"):
                    await self.run_io(trim_heap)
                memory_ok = await self._rss() + cost <= threshold
            if count_ok and memory_ok:
                return
            remaining = deadline - time.monotonic()
            if not any(s.busy for s in self._slots.values()) or remaining <= 0:
                if not memory_ok:
                    raise MemoryExhausted(
                        f"Not enough memory to load voice '{entry.name}' "
                        f"(threshold {threshold // 2**20} MB); try again later."
                    )
                raise Busy(
                    f"All {self._config.max_voices} voice slots are in use; "
                    f"voice '{entry.name}' cannot be loaded now."
                )
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 1.0))

    def _load_cost(self, entry: VoiceEntry) -> int:
        """Resident bytes a loaded voice is expected to add."""
        cost = int(entry.model_size * LOAD_COST_FACTOR)
        if self._config.load.keep_decoder_memory:
            cost += KEPT_DECODER_BYTES
        return cost

    def _slots_used(self) -> int:
        return len(self._slots) + self._reserved

    def _evictable(self) -> list[_Slot]:
        """Idle, unpinned voices, least recently used first."""
        return [s for s in self._slots.values() if not s.busy and not s.pinned]

    def _evict_one(self, reason: str, keep: _Slot | None = None) -> bool:
        candidates = [s for s in self._evictable() if s is not keep]
        if not candidates:
            return False
        self._unload(min(candidates, key=lambda s: s.last_used), reason)
        return True

    def _unload(self, slot: _Slot, reason: str) -> None:
        if self._slots.get(slot.name) is slot:
            del self._slots[slot.name]
            self._quiet_rss = None
        upgrade = self._upgrades.pop(slot, None)
        if upgrade is not None:
            upgrade.cancel()  # its split voice would have nothing to replace
        self._evictions[reason] += 1
        _LOGGER.info("Unloaded voice %s (%s); %s", slot.name, reason, self.stats())

    async def _enforce_memory(self, keep: _Slot | None = None) -> None:
        threshold = self._config.memory_threshold_bytes
        if threshold <= 0:
            return
        while await self._rss() > threshold and self._evict_one("memory", keep):
            await self.run_io(trim_heap)

    # ------------------------------------------------------------------ maintenance

    async def _maintain_forever(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await self.maintain()
            except Exception:
                _LOGGER.exception("Voice pool maintenance failed")

    async def maintain(self) -> None:
        """One pass: idle eviction, memory threshold, keep-alive. Tests call this directly.

        With background preparation also a catalog look (new voices are split) and a
        retry for whole voices whose split voice had no memory to be prepared in.
        """
        if self._splitter is not None:
            await self.entries()
            for slot in list(self._slots.values()):
                if slot.voice.provisional:
                    self._start_upgrade(slot)
        now = self._clock()
        idle_timeout = self._config.idle_timeout
        if idle_timeout > 0:
            for slot in self._evictable():
                if now - slot.last_used >= idle_timeout:
                    self._unload(slot, "idle")
                    await self.run_io(trim_heap)
        await self._enforce_memory()
        interval = self._config.keep_alive_interval
        if interval > 0:
            for slot in list(self._slots.values()):
                if not self._scheduler.quiet:
                    break  # real work comes first
                if not slot.busy and now - max(slot.last_used, slot.last_warm) >= interval:
                    await self._keep_alive(slot)

    async def _keep_alive(self, slot: _Slot) -> None:
        async with self._warm_lock:
            if self._slots.get(slot.name) is not slot:
                return
            slot.warming = True
            try:
                await self._scheduler.run(keep_alive, slot.voice)
                self._keep_alive_runs += 1
            except Exception:
                _LOGGER.warning("Keep-alive of voice %s failed", slot.name, exc_info=True)
            finally:
                slot.warming = False
                slot.last_warm = self._clock()

    # ------------------------------------------------------------------ stats

    def stats(self) -> PoolStats:
        splitter = self._splitter
        return PoolStats(
            loaded=tuple(self._slots),
            loads=self._loads,
            load_failures=self._load_failures,
            load_seconds_total=self._load_seconds,
            hits=self._hits,
            misses=self._misses,
            evictions=dict(self._evictions),
            keep_alive_runs=self._keep_alive_runs,
            active_requests=self._scheduler.active_requests,
            waiting_requests=self._scheduler.waiting_requests,
            whole=tuple(n for n, s in self._slots.items() if s.voice.provisional),
            upgrades=self._upgraded,
            background_yields=self._gave_way,
            background_step=self._stepping.name if self._stepping is not None else None,
            preparing=tuple(sorted(self._preparing)),
            splitting=splitter.running if splitter is not None else None,
            splits_queued=splitter.queued if splitter is not None else (),
            splits=splitter.splits if splitter is not None else 0,
        )

    def trim(self) -> None:
        """Give freed heap back to the OS (glibc keeps it otherwise) once the server is quiet.

        Trimming right after a response took a core from the next request, which a client
        sends at once; so it waits for `TRIM_QUIET` seconds with no request in flight.
        """
        if not self._closed and (self._trimmer is None or self._trimmer.done()):
            self._trimmer = asyncio.create_task(self._trim_when_quiet(), name="heap-trim")

    async def _trim_when_quiet(self) -> None:
        while True:
            await asyncio.sleep(TRIM_QUIET)
            if self._scheduler.quiet:
                break
        # Not on the I/O thread: the next request's catalog lookup must not queue behind it.
        await asyncio.to_thread(trim_heap)
        if self._config.load.keep_decoder_memory:
            await self._settle_decoder_memory()

    async def _settle_decoder_memory(self) -> None:
        """If resident memory grew since the last quiet look with the same voices, empty
        the shared decoder arena and grow it again to one reply's working size.

        Replies at once grow the arena kept between runs by their sum, for good; emptied
        after each run instead, it would cost ~20% of synthesis time (docs/decisions.md).
        Each step waits for quiet, and the regrowth gives way to a request as a warm-up
        step does: it is as large a run as a request can make (a one-sentence reply 0.7 s
        after four paragraphs at once took 326 ms behind it, median of 10; 233 ms with it
        giving way).
        """
        rss = await self._rss()
        if self._quiet_rss is not None and rss > self._quiet_rss + ARENA_REGROWN_BYTES:
            slots = [s for s in self._slots.values() if not s.voice.provisional]
            await self._when_quiet(self._shrink_arena)
            for slot in slots:
                # Its own run options: a request arriving meanwhile stops this, not itself.
                voice = replace(slot.voice, model=slot.voice.model.apart())
                step = partial(reach_working_size, voice)
                await self._background_step(voice, step, partial(self._current, slot))
            await asyncio.to_thread(trim_heap)
            settled = await self._rss()
            _LOGGER.info(
                "Decoder memory grown by replies at once, emptied and grown again: "
                "%d -> %d MB resident",
                rss // 2**20,
                settled // 2**20,
            )
            self._quiet_rss = settled  # what it could not give back is not tried again
            return
        self._quiet_rss = rss if self._quiet_rss is None else min(self._quiet_rss, rss)

    @property
    def splitter(self) -> BackgroundSplitter | None:
        """The background splitter (with ``prepare_in_background``), for stats and tests."""
        return self._splitter

    def loaded(self) -> dict[str, LoadedVoice]:
        return {name: slot.voice for name, slot in self._slots.items()}
