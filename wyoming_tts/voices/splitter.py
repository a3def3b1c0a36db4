"""Background splits: each voice the catalog finds is split into the cache before it is needed.

A split is seconds of Python graph analysis and about three times the model in parse
buffers. Run in the server it would hold the interpreter lock against the event loop
and leave its buffers in the heap, so it runs in a child process
(`wyoming_tts.model.split`) at the lowest CPU priority, one voice at a time, and a
request never waits for it. Voices a request is waiting to stream with go to the front
of the queue. Bookkeeping is on the event loop; a thread of this splitter's own waits
for each child.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
from collections import OrderedDict, deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..model.split import cached_verdict
from ..runtime.scheduler import lowest_priority
from .catalog import VoiceEntry

_LOGGER = logging.getLogger(__name__)

#: The child's module: ``python -m wyoming_tts.model.split MODEL CACHE_DIR``.
SPLIT_MODULE = "wyoming_tts.model.split"
#: Split starts and ends remembered for stats and tests (newest last).
HISTORY = 64

_Key = tuple[Path, tuple[int, int, int]]


def _key(entry: VoiceEntry) -> _Key:
    return (entry.model_path, entry.identity)


class BackgroundSplitter:
    """Splits voices into ``cache_dir`` in a child process, one at a time, lowest priority.

    Nothing runs before `start` (the server primes its voices first, in-process).
    """

    def __init__(self, cache_dir: Path) -> None:
        self._cache_dir = cache_dir
        self._queue: OrderedDict[_Key, VoiceEntry] = OrderedDict()
        self._results: dict[_Key, asyncio.Future[bool]] = {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts-split")
        self._worker: asyncio.Task[None] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False
        self._closed = False
        self.running: str | None = None
        """The voice being split now."""
        self.history: deque[tuple[str, str]] = deque(maxlen=HISTORY)
        """("start" | "end", voice) as splits begin and finish, oldest first."""
        self.splits = 0
        """Voices looked at to the end: split now, or found in the cache."""

    @property
    def queued(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self._queue.values())

    def notice(self, entries: Mapping[str, VoiceEntry]) -> None:
        """The catalog's current voices: split each not seen before; forget vanished ones."""
        live = {_key(entry) for entry in entries.values()}
        for key in [k for k, fut in self._results.items() if k not in live and fut.done()]:
            del self._results[key]
        for entry in entries.values():
            self.want(entry)

    def want(self, entry: VoiceEntry, urgent: bool = False) -> asyncio.Future[bool]:
        """Resolves once the voice is split (True), or has no usable split (False).

        ``urgent``: a request is waiting to stream with it, so it goes first.
        """
        key = _key(entry)
        future = self._results.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._results[key] = future
            self._queue[key] = entry
        if urgent and key in self._queue:
            self._queue.move_to_end(key, last=False)
        self._kick()
        return future

    def mark_split(self, entry: VoiceEntry) -> None:
        """This voice was split in-process (priming): nothing to do in the background."""
        self._queue.pop(_key(entry), None)
        future = self._results.get(_key(entry))
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._results[_key(entry)] = future
        if not future.done():
            future.set_result(True)

    def start(self) -> None:
        self._started = True
        self._kick()

    async def close(self) -> None:
        """Stop the child in progress (the cache never holds a part-written entry)."""
        self._closed = True
        self._queue.clear()
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await asyncio.to_thread(self._thread.shutdown, wait=True, cancel_futures=True)
        for future in self._results.values():
            future.cancel()

    def _kick(self) -> None:
        idle = self._worker is None or self._worker.done()
        if self._started and not self._closed and self._queue and idle:
            self._worker = asyncio.create_task(self._run(), name="voice-splits")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and not self._closed:
            key, entry = self._queue.popitem(last=False)
            self.running = entry.name
            self.history.append(("start", entry.name))
            split: bool | None = None
            try:
                split = await loop.run_in_executor(self._thread, self._split, entry)
                self.splits += split is not None
            except Exception:
                _LOGGER.exception("Background split of %s failed", entry.name)
            finally:
                self.running = None
                self.history.append(("end", entry.name))
                future = self._results.get(key)
                if future is not None and not future.done():
                    future.set_result(bool(split))

    def _split(self, entry: VoiceEntry) -> bool | None:
        """On the splitter's thread: one child, waited for; its warnings logged here.

        True: split; False: no seam; None: the child failed (or was stopped). A voice
        already in the cache (a restart, an alias of another) needs no child: the check
        only reads and hashes files.
        """
        try:
            cached = cached_verdict(entry.model_path, self._cache_dir)
        except OSError as problem:  # gone or unreadable: its requests will say so
            _LOGGER.warning("Cannot read voice %s to split it: %s", entry.name, problem)
            return None
        if cached is not None:
            return cached
        # Python's own warnings (onnx deprecations) are not the user's business; the
        # split's log lines are, and each comes back as one of ours.
        command = [sys.executable, "-W", "ignore", "-m", SPLIT_MODULE]
        command += [str(entry.model_path), str(self._cache_dir)]
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._proc = proc
        lowest_priority(proc.pid)  # at once, for its imports too
        if self._closed:
            proc.kill()
        try:
            out, errors = proc.communicate()
        finally:
            self._proc = None
        lines = [line for line in errors.decode("utf-8", "replace").splitlines() if line.strip()]
        if proc.returncode != 0:
            if not self._closed:
                last = lines[-1] if lines else f"exit status {proc.returncode}"
                _LOGGER.warning("Background split of %s failed: %s", entry.name, last)
            return None
        for line in lines:
            _LOGGER.warning("Background split of %s: %s", entry.name, line)
        try:
            return bool(json.loads(out.decode("utf-8").splitlines()[-1])["split"])
        except (ValueError, IndexError, KeyError, TypeError):
            _LOGGER.warning("Background split of %s said nothing it could use", entry.name)
            return False
