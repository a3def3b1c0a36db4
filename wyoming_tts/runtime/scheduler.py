"""Inference threads: the only place CPU work is queued.

Every phonemize, frontend and decoder call goes through one pool of
``workers`` threads. Steps that stand between a request and its first audio
are *urgent* and jump ahead of the large later chunks of requests that are
already playing (those have seconds of audio buffered); within a class, steps
run in arrival order. The queue lives on the event loop and a step is handed
to a thread only when one is free, so the loop never waits on a lock a worker
holds. The scheduler also counts the requests in flight, so chunk sizing,
keep-alive and heap trimming can see the load; deciding whom to turn away is
the speech service's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_URGENT = 0
_NORMAL = 1


class _Job:
    __slots__ = ("args", "func", "future")

    def __init__(
        self, func: Callable[..., Any], args: tuple[object, ...], future: asyncio.Future[Any]
    ) -> None:
        self.func = func
        self.args = args
        self.future = future


class Scheduler:
    """Owns the inference threads and the count of requests in flight.

    Used from one event loop; only `shutdown` may be called from another thread.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._active = 0
        self._queued_steps = 0
        self._idle = workers
        self._heap: list[tuple[int, int, _Job]] = []
        self._seq = itertools.count()
        self._busy_watchers: list[Callable[[bool], None]] = []
        self._inbox: queue.SimpleQueue[tuple[_Job, asyncio.AbstractEventLoop] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._work, name=f"tts-infer-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def active_requests(self) -> int:
        return self._active

    @property
    def workers_per_request(self) -> int:
        """Workers each request in flight may keep busy at once: all of them for a lone
        request, so its decode can be shared between them; at least one."""
        return max(1, self.workers // max(1, self._active))

    @property
    def waiting_requests(self) -> int:
        """Requests in flight beyond the worker count: they wait for a thread."""
        return max(0, self._active - self.workers)

    @property
    def quiet(self) -> bool:
        """No request in flight and no step queued: background chores may run."""
        return self._active == 0 and self._queued_steps == 0

    def watch_busy(self, callback: Callable[[bool], None]) -> None:
        """Have ``callback(True)`` called when a first request comes in flight and
        ``callback(False)`` when the last one ends: for background work that must give
        way at once, not at its next look at `quiet`."""
        self._busy_watchers.append(callback)

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Count one request in flight for as long as the block runs."""
        self._active += 1
        if self._active == 1:
            self._tell_busy(True)
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._tell_busy(False)

    def _tell_busy(self, busy: bool) -> None:
        for callback in self._busy_watchers:
            callback(busy)

    async def run(self, func: Callable[..., T], *args: object, urgent: bool = False) -> T:
        """Run one blocking step on an inference thread; cancelling drops it if not started."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        heapq.heappush(
            self._heap, (_URGENT if urgent else _NORMAL, next(self._seq), _Job(func, args, future))
        )
        self._queued_steps += 1
        self._dispatch()
        try:
            return await future
        finally:
            self._queued_steps -= 1

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every thread once its running step ends, so no inference outlives the process."""
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._idle and self._heap:
            _, _, job = heapq.heappop(self._heap)
            if job.future.done():
                continue  # its requester is gone: no CPU for audio nobody will hear
            self._idle -= 1
            self._inbox.put((job, loop))

    def _finished(self, job: _Job, result: object, error: BaseException | None) -> None:
        """On the loop: hand the result over and give the free thread the next step."""
        if not job.future.done():
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)
        self._idle += 1
        self._dispatch()

    def _work(self) -> None:
        while (item := self._inbox.get()) is not None:
            job, loop = item
            error: BaseException | None = None
            result: object = None
            try:
                result = job.func(*job.args)
            except BaseException as err:  # handed to the awaiting task
                error = err
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(self._finished, job, result, error)


def lowest_priority(pid: int = 0) -> None:
    """Let a process (0: this one) run only when a CPU is idle (SCHED_IDLE), else at nice
    19: for background work no request may wait for. Best effort: a platform without
    either leaves it as it is."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)
