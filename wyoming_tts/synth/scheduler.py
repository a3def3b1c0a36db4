"""Inference threads and admission: the only place CPU work is queued.

Every phonemize, frontend and decoder call goes through one FIFO thread pool of
``workers`` threads, so requests interleave step by step in arrival order and a
long text never monopolises the machine. Admission turns load away explicitly:
beyond ``workers + max_queue`` requests in flight a client gets ``busy`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..errors import Busy

T = TypeVar("T")


class Scheduler:
    """Owns the inference executor and the count of admitted requests."""

    def __init__(self, workers: int, max_queue: int) -> None:
        self.workers = workers
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tts-infer")
        self._active = 0
        self._queued_steps = 0

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

    async def run(self, func: Callable[..., T], *args: object) -> T:
        """Run one blocking step on an inference thread."""
        loop = asyncio.get_running_loop()
        self._queued_steps += 1
        try:
            return await loop.run_in_executor(self._executor, func, *args)
        finally:
            self._queued_steps -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
