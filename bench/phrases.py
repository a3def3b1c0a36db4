#!/usr/bin/env python3
"""A repeated announcement against its first synthesis, on our server with its phrase cache.

An automation says the same sentences again and again ("The washing machine is done.").
A server without the cache (every request fresh) and one with it (filled by one first
run) answer the same announcements, interleaved; medians of heard (time to 4.6 s of
audio, or the end) and total are compared, repeat / fresh, one-shot and streamed.

    .venv/bin/python bench/phrases.py [--rounds 5] [--settle 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common import (
    DEFAULT_VOICE,
    REPO,
    Result,
    Server,
    ServerSpec,
    make_voice_dir,
    median,
    ratio,
    speak,
)

ANNOUNCEMENTS = (
    "The washing machine has finished. Please empty it before the clothes start to smell.",
    "Someone is at the front door.",
    "It is seven o'clock. Time to leave for school, and do not forget your lunch box.",
    "The garage door has been open for ten minutes.",
)


async def run(rounds: int, settle: float) -> dict[str, object]:
    """Two servers side by side: one without the cache (fresh), one with it, filled first."""
    with tempfile.TemporaryDirectory(prefix="bench-phrases-") as tmp:
        root = Path(tmp)
        voices = make_voice_dir(root)
        base = [
            "--uri",
            "tcp://127.0.0.1:{port}",
            "--data-dir",
            str(voices),
            "--voice",
            DEFAULT_VOICE,
        ]
        python = REPO / ".venv" / "bin" / "python"
        fresh_server = Server(
            ServerSpec("fresh", python, "wyoming_tts", [*base, "--phrase-cache-mb", "0"]),
            root / "a",
        )
        cached_server = Server(ServerSpec("cached", python, "wyoming_tts", base), root / "b")
        results: dict[str, dict[str, list[Result]]] = {
            label: {"plain": [], "streaming": []} for label in ("fresh", "cached")
        }
        await fresh_server.start()
        await cached_server.start()
        try:
            for text in ANNOUNCEMENTS:  # the automation's first run fills the cache
                await speak(cached_server.port, text)
            for r in range(rounds):
                order = (
                    (fresh_server, cached_server) if r % 2 == 0 else (cached_server, fresh_server)
                )
                for mode in ("plain", "streaming"):
                    for text in ANNOUNCEMENTS:
                        for server in order:
                            result = await speak(server.port, text, streaming=mode == "streaming")
                            results[server.label][mode].append(result)
                            await asyncio.sleep(settle)
        finally:
            fresh_server.stop()
            cached_server.stop()
    out: dict[str, object] = {}
    for mode in ("plain", "streaming"):
        row: dict[str, float | None] = {}
        for what in ("heard", "total"):
            a = median([getattr(x, what) for x in results["fresh"][mode] if x.ok])
            b = median([getattr(x, what) for x in results["cached"][mode] if x.ok])
            row[f"{what}_fresh_s"], row[f"{what}_repeat_s"], row[f"{what}_ratio"] = (
                a,
                b,
                ratio(b, a),
            )
        out[mode] = row
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=0.3)
    parser.add_argument("--output", type=Path)
    opts = parser.parse_args(argv)
    result = asyncio.run(run(opts.rounds, opts.settle))
    text = json.dumps(result, indent=2)
    print(text)
    if opts.output:
        opts.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
