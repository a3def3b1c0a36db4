"""The inference queue's order: what runs next when every thread is busy."""

from __future__ import annotations

import asyncio
import threading

from wyoming_tts.runtime.scheduler import AHEAD, RUNNING_DRY, STARTING, Scheduler, starting


async def test_replies_about_to_run_dry_go_first_then_new_ones_then_the_rest() -> None:
    scheduler = Scheduler(workers=1)
    gate = threading.Event()
    order: list[str] = []
    try:
        blocker = asyncio.ensure_future(scheduler.run(gate.wait, 10.0))
        await asyncio.sleep(0.05)  # the only thread is busy: everything below queues
        steps = {
            "ahead-old": (AHEAD, 1.0),
            "start-late": (STARTING, 5.0),
            "dry-later": (RUNNING_DRY, 9.0),
            "start-early": starting(2.0),
            "dry-sooner": (RUNNING_DRY, 3.0),
            "ahead-new": (AHEAD, 4.0),
        }
        tasks = [
            asyncio.ensure_future(scheduler.run(order.append, name, priority=priority))
            for name, priority in steps.items()
        ]
        await asyncio.sleep(0.05)
        assert order == []  # queued, not run, while the thread is busy
        gate.set()
        await asyncio.gather(blocker, *tasks)
        assert order == [
            "dry-sooner",
            "dry-later",
            "start-early",
            "start-late",
            "ahead-old",
            "ahead-new",
        ]
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
        dropped = asyncio.ensure_future(scheduler.run(ran.append, "gone", priority=starting()))
        kept = asyncio.ensure_future(scheduler.run(ran.append, "kept"))
        await asyncio.sleep(0.05)
        dropped.cancel()
        gate.set()
        await asyncio.gather(blocker, kept)
        assert ran == ["kept"]
    finally:
        gate.set()
        await asyncio.to_thread(scheduler.shutdown)
