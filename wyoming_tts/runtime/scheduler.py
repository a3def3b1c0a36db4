"""Inference threads and admission: the only place CPU work is queued.

Every phonemize, frontend and decoder call goes through one pool of
``workers`` threads. Steps that stand between a request and its first audio
are *urgent* and jump ahead of the large later chunks of requests that are
already playing (those have seconds of audio buffered); within a class, steps
run in arrival order. Admission turns load away explicitly: beyond
``workers + max_queue`` requests in flight a client gets ``busy`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from ..errors import Busy

T = TypeVar("T")

_URGENT = 0
_NORMAL = 1


class _Job:
    __slots__ = ("args", "func", "future", "loop")

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[object, ...],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        self.func = func
        self.args = args
        self.loop = loop
        self.future = future


class Scheduler:
    """Owns the inference threads and the count of admitted requests."""

    def __init__(self, workers: int, max_queue: int) -> None:
        self.workers = workers
        self.max_queue = max_queue
        self._active = 0
        self._queued_steps = 0
        self._heap: list[tuple[int, int, _Job | None]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
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
    def waiting_requests(self) -> int:
        """Requests admitted beyond the worker count: they wait for a thread."""
        return max(0, self._active - self.workers)

    @property
    def queued_steps(self) -> int:
        """Steps submitted but not yet finished; keep-alive stays away while any exist."""
        return self._queued_steps

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a request slot for the duration of one synthesis."""
        if self._active >= self.workers + self.max_queue:
            raise Busy(
                f"The server is busy ({self._active} requests in progress); try again shortly."
            )
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    async def run(self, func: Callable[..., T], *args: object, urgent: bool = False) -> T:
        """Run one blocking step on an inference thread; cancelling drops it if not started."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(func, args, loop, future)
        self._queued_steps += 1
        with self._cond:
            heapq.heappush(self._heap, (_URGENT if urgent else _NORMAL, next(self._seq), job))
            self._cond.notify()
        try:
            return await future
        finally:
            self._queued_steps -= 1

    def shutdown(self, timeout: float = 10.0) -> None:
        """Drop queued steps and wait for running ones, so no inference outlives the process."""
        with self._cond:
            self._heap.clear()
            for _ in self._threads:
                heapq.heappush(self._heap, (_NORMAL + 1, next(self._seq), None))
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                _, _, job = heapq.heappop(self._heap)
            if job is None:
                return
            if job.future.cancelled():
                continue  # its requester is gone: no CPU for audio nobody will hear
            try:
                result = job.func(*job.args)
            except BaseException as err:  # handed to the awaiting task
                _deliver(job, _set_exception, err)
            else:
                _deliver(job, _set_result, result)


def _deliver(job: _Job, setter: Callable[[asyncio.Future[Any], Any], None], value: object) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
        job.loop.call_soon_threadsafe(setter, job.future, value)


def _set_result(future: asyncio.Future[Any], result: object) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)
