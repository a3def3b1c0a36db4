"""The inference queue's order: what runs next when every thread is busy."""

from __future__ import annotations

import asyncio
import threading

from wyoming_tts.runtime.scheduler import Scheduler


async def test_urgent_steps_go_first_then_the_rest_in_arrival_order() -> None:
    scheduler = Scheduler(workers=1)
    gate = threading.Event()
    order: list[str] = []
    try:
        blocker = asyncio.ensure_future(scheduler.run(gate.wait, 10.0))
        await asyncio.sleep(0.05)  # the only thread is busy: everything below queues
        steps = [("later-1", False), ("first-1", True), ("later-2", False), ("first-2", True)]
        tasks = [
            asyncio.ensure_future(scheduler.run(order.append, name, urgent=urgent))
            for name, urgent in steps
        ]
        await asyncio.sleep(0.05)
        assert order == []  # queued, not run, while the thread is busy
        gate.set()
        await asyncio.gather(blocker, *tasks)
        assert order == ["first-1", "first-2", "later-1", "later-2"]
    finally:
        gate.set()
        await asyncio.to_thread(scheduler.shutdown)


async def test_a_cancelled_step_is_dropped_before_it_runs() -> None:
    scheduler = Scheduler(workers=1)
    gate = threading.Event()
    ran: list[str] = []
    try:
        blocker = asyncio.ensure_future(scheduler.run(gate.wait, 10.0))
        await asyncio.sleep(0.05)
        dropped = asyncio.ensure_future(scheduler.run(ran.append, "gone", urgent=True))
        kept = asyncio.ensure_future(scheduler.run(ran.append, "kept"))
        await asyncio.sleep(0.05)
        dropped.cancel()
        gate.set()
        await asyncio.gather(blocker, kept)
        assert ran == ["kept"]
    finally:
        gate.set()
        await asyncio.to_thread(scheduler.shutdown)


async def test_a_lone_request_may_keep_every_worker_busy() -> None:
    """Its decode is shared between the workers; with more requests, each gets its share."""
    scheduler = Scheduler(workers=4)
    try:
        seen = [scheduler.workers_per_request]
        with scheduler.request():
            seen.append(scheduler.workers_per_request)
            with scheduler.request():
                seen.append(scheduler.workers_per_request)
                with scheduler.request(), scheduler.request(), scheduler.request():
                    seen.append(scheduler.workers_per_request)
        assert seen == [4, 4, 2, 1]
    finally:
        await asyncio.to_thread(scheduler.shutdown)
