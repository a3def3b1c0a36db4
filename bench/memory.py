#!/usr/bin/env python3
"""Resident memory of wyoming-tts (ours) and wyoming-piper 2.5.2, side by side.

The figures issue 12 asks for, at both servers' defaults on the same voice files:
idle after start, after the first request, after each extra voice (ours only: it
keeps several; wyoming-piper keeps one), and before and 10 s after a burst of long
and hostile requests. The soak figure is `bench/soak.py`'s. Loopback only, bounded.

    .venv/bin/python bench/memory.py --piper-python .cache/bench-venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import compare
from common import EXTRA_VOICES, REPO, Server, make_voice_dir, speak
from soak import Limits, one
from texts import LONG_SENTENCE, prose

#: Seconds of quiet before a reading: our heap trim waits 0.5 s with nothing in flight.
SETTLE = 3.0
#: The burst: what each of its clients sends after a long text and a long sentence
#: streamed. wyoming-piper has no text limit, so it is not sent the over-long texts
#: (for it they are 100,000 characters to speak).
BURST_KINDS = ("invalid-json", "disconnect-mid-synthesis")
OVER_LIMIT_KINDS = ("too-long", "stream-too-long")
BURST_CHARS = 3_000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def settled_rss(pair: Sequence[Server]) -> dict[str, float]:
    await asyncio.sleep(SETTLE)
    return {s.label: round(s.rss_mb(), 1) for s in pair}


async def wait_for_log(server: Server, needle: str, timeout: float) -> bool:
    """Whether ``needle`` shows in the server's log within ``timeout`` seconds."""
    assert server.log_path is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in server.log_path.read_text(errors="replace"):
            return True
        await asyncio.sleep(0.2)
    return False


async def burst_client(port: int, index: int, kinds: Sequence[str]) -> None:
    await speak(port, prose(BURST_CHARS), timeout=300.0)
    await speak(port, LONG_SENTENCE, streaming=True, timeout=120.0)
    rng = random.Random(index)
    for kind in kinds:
        await one("127.0.0.1", port, kind, rng, Limits(100_000))


async def burst(server: Server, clients: int, kinds: Sequence[str]) -> dict[str, float]:
    """RSS before a burst of ``clients`` at once and 10 s after it ends."""
    before = (await settled_rss([server]))[server.label]
    started = time.perf_counter()
    await asyncio.gather(*(burst_client(server.port, i, kinds) for i in range(clients)))
    seconds = time.perf_counter() - started
    await asyncio.sleep(10.0)
    after = round(server.rss_mb(), 1)
    log(f"burst on {server.label} ({seconds:.0f} s): {before:.1f} -> {after:.1f} MiB")
    return {"before": before, "after_10s": after, "seconds": round(seconds, 1)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    opts = compare.parse_args(
        ["--piper-python", str(args.piper_python), "--ours-python", str(args.ours_python)]
    )
    root = Path(tempfile.mkdtemp(prefix="wyoming-tts-memory-"))
    cache = args.cache_dir or root / "cache"  # fresh: ours splits its voice at start
    ours_spec, theirs_spec = compare.specs(opts, make_voice_dir(root), cache)
    ours, theirs = Server(ours_spec, root / "ours"), Server(theirs_spec, root / "theirs")
    pair = (ours, theirs)
    res: dict[str, Any] = {"workdir": str(root), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        for server in pair:
            await server.start()
        res["idle"] = await settled_rss(pair)
        log(f"idle {res['idle']}")
        for server in pair:
            await speak(server.port, compare.SHORT_TEXT)
        res["after_first_request"] = await settled_rss(pair)
        log(f"after first request {res['after_first_request']}")
        voices = []
        for name in EXTRA_VOICES[: args.extra_voices]:
            result = await speak(ours.port, compare.SHORT_TEXT, voice=name)
            streams = await wait_for_log(ours, f"Voice {name} now streams", 180.0)
            rss = (await settled_rss([ours]))[ours.label]
            voices.append({"voice": name, "ok": result.ok, "upgraded": streams, "rss": rss})
            log(f"with {name}: {rss:.1f} MiB (upgraded {streams})")
        res["extra_voices"] = voices
        res["burst"] = {
            ours.label: await burst(ours, args.clients, BURST_KINDS + OVER_LIMIT_KINDS),
            theirs.label: await burst(theirs, args.clients, BURST_KINDS),
        }
    finally:
        for server in pair:
            server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--piper-python", type=Path, default=REPO / ".cache" / "bench-venv" / "bin" / "python"
    )
    parser.add_argument("--ours-python", type=Path, default=REPO / ".venv" / "bin" / "python")
    parser.add_argument("--extra-voices", type=int, default=2, choices=range(4))
    parser.add_argument("--clients", type=int, default=4, help="Clients in the burst.")
    parser.add_argument(
        "--cache-dir", type=Path, help="Our split cache (e.g. one already filled: a restart)."
    )
    parser.add_argument("--output", type=Path)
    parser.add_argument("--keep", action="store_true", help="Keep the work dir (logs).")
    args = parser.parse_args(argv)
    res = asyncio.run(run(args))
    text = json.dumps(res, indent=2)
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.output or REPO / "bench" / "results" / f"memory-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
