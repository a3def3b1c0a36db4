"""Prometheus figures of one server: what each front door served, and the pool's state.

Requests are counted as the speech service finishes them (`observe`), so both
doors are counted alike. The pool's counters, queue depth and resident memory
are read only when scraped. The registry is this object's own, never the
process-wide default, so two servers in one process (the tests) keep their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .runtime.memory import process_rss
from .speech import Finished
from .voices.pool import PoolStats, VoicePool

PREFIX = "wyoming_tts"
#: Seconds; ours is ~30 ms on a quiet machine, a voice load ~0.5 s.
FIRST_AUDIO_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Seconds to what HA's ffmpeg gathers (~4.6 s of audio): a few hundred ms at 10-20x real time.
HEARD_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
#: Synthesis seconds per audio second; above 1 a listener waits between chunks.
RTF_BUCKETS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0)


class Metrics:
    """One per server: the app creates it and hands `observe` to the speech service."""

    def __init__(self, pool: VoicePool) -> None:
        self.registry = CollectorRegistry()
        self._pool = pool
        self._requests = Counter(
            f"{PREFIX}_requests",
            "Speech requests by front door and outcome (ok, or the error code).",
            ("door", "outcome"),
            registry=self.registry,
        )
        self._first_audio = _histogram(
            self.registry, "first_audio_seconds", "Time to the first audio.", FIRST_AUDIO_BUCKETS
        )
        self._heard = _histogram(
            self.registry,
            "heard_seconds",
            "Time to the audio Home Assistant's ffmpeg step reads before it plays any "
            "(4.644 s at 22050 Hz, 3.2 s at 16 kHz), or to the end of a shorter reply: "
            "when a satellite behind it hears the reply.",
            HEARD_BUCKETS,
        )
        self._rtf = _histogram(
            self.registry,
            "real_time_factor",
            "Synthesis time over audio time per reply (lower is faster).",
            RTF_BUCKETS,
        )
        self._phrases = Counter(
            f"{PREFIX}_phrase_cache",
            "Sentences looked up in the phrase cache, by result (hit: answered at once).",
            ("result",),
            registry=self.registry,
        )
        self._http = Counter(
            f"{PREFIX}_http_responses",
            "HTTP door responses by route and status.",
            ("route", "status"),
            registry=self.registry,
        )
        self._state = _StateCollector()
        self.registry.register(self._state)

    def observe(self, finished: Finished) -> None:
        """Count one finished request (called by the speech service on the loop)."""
        door, stats = finished.door, finished.stats
        self._requests.labels(door, finished.outcome).inc()
        if stats.first_audio_seconds is not None:
            self._first_audio.labels(door).observe(stats.first_audio_seconds)
        if finished.heard_seconds is not None:
            self._heard.labels(door).observe(finished.heard_seconds)
        if stats.audio_seconds > 0:
            self._rtf.labels(door).observe(stats.real_time_factor)
        if stats.phrase_hits:
            self._phrases.labels("hit").inc(stats.phrase_hits)
        if stats.phrase_misses:
            self._phrases.labels("miss").inc(stats.phrase_misses)

    def http_response(self, route: str, status: int) -> None:
        self._http.labels(route, str(status)).inc()

    async def exposition(self) -> bytes:
        """The text format, with the pool read now (resident memory off the loop)."""
        # Not on the pool's I/O thread: a voice load there would hold the scrape up.
        rss = await asyncio.to_thread(process_rss)
        self._state.snapshot = (self._pool.stats(), rss)
        return generate_latest(self.registry)


def _histogram(
    registry: CollectorRegistry, name: str, doc: str, buckets: tuple[float, ...]
) -> Histogram:
    return Histogram(f"{PREFIX}_{name}", doc, ("door",), buckets=buckets, registry=registry)


class _StateCollector(Collector):
    """The pool and scheduler as read at the scrape that is being rendered."""

    def __init__(self) -> None:
        self.snapshot: tuple[PoolStats, int] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is None:
            return
        stats, rss = self.snapshot
        yield _gauge("active_requests", "Speech requests in flight.", stats.active_requests)
        yield _gauge(
            "queue_depth",
            "Requests in flight beyond the workers: they wait for a thread.",
            stats.waiting_requests,
        )
        yield _counter("voice_loads", "Voices loaded (priming included).", stats.loads)
        yield _counter("voice_load_failures", "Voice loads that failed.", stats.load_failures)
        yield _counter(
            "voice_load_seconds", "Seconds spent loading voices.", stats.load_seconds_total
        )
        yield _counter("voice_pool_hits", "Requests whose voice was loaded.", stats.hits)
        yield _counter("voice_pool_misses", "Requests that had to load their voice.", stats.misses)
        evictions = CounterMetricFamily(
            f"{PREFIX}_voice_evictions", "Voices unloaded, by reason.", labels=("reason",)
        )
        for reason, count in sorted(stats.evictions.items()):
            evictions.add_metric((reason,), count)
        yield evictions
        yield _gauge("voices_loaded", "Voices loaded now.", len(stats.loaded))
        loaded = GaugeMetricFamily(
            f"{PREFIX}_voice_loaded", "1 for each voice loaded now.", labels=("voice",)
        )
        for name in stats.loaded:
            loaded.add_metric((name,), 1)
        yield loaded
        yield _gauge("resident_memory_bytes", "Resident memory of the process.", rss)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
