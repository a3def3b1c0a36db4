#!/usr/bin/env python3
"""First uses of voices while another voice is split, opened and warmed in the background.

One of our servers starts with the default voice, a big voice and the others of
`--voices-dir`. The big voice is asked first (its first use), which starts its split
and then its split voice's preparation; then each other voice is asked once, `--gap`
seconds apart, so their first uses meet that background work. Compare each with the
same voice's quiet first use from `bench/first_use.py` (same noise and length scale).
`--checkout DIR` runs ours from another checkout (PYTHONPATH), for before/after.

    .venv/bin/python bench/first_use_during.py --voices-dir /tmp/full-width --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import DEFAULT_VOICE, REPO, CheckoutServer, link_voice, median, speak
from first_use import TEXT, base_cache, spec_ours


async def one_run(opts: argparse.Namespace, root: Path, cache: Path, i: int) -> dict[str, float]:
    work = root / f"run-{i}"
    voices = work / "voices"
    link_voice(voices, DEFAULT_VOICE)
    for name in [opts.big, *opts.others]:
        (voices / f"{name}.onnx").symlink_to(opts.voices_dir / f"{name}.onnx")
        shutil.copy(opts.voices_dir / f"{name}.onnx.json", voices / f"{name}.onnx.json")
    fresh = work / "cache"
    shutil.copytree(cache, fresh)
    spec = spec_ours(opts.ours_python, voices, fresh, opts.length_scale, opts.noise)
    spec.args += ["--max-voices", str(2 + len(opts.others))]  # no eviction in the way
    server = CheckoutServer(spec, work / "ours", checkout=str(opts.checkout or ""))
    await server.start()
    out: dict[str, float] = {}
    try:
        for n, name in enumerate([opts.big, *opts.others]):
            if n:
                await asyncio.sleep(opts.gap)
            got = await speak(server.port, TEXT, voice=name, timeout=opts.timeout)
            if got.ttfa is None:
                raise RuntimeError(f"{name}: no audio ({got.error})")
            out[name] = got.ttfa
            print(f"[run {i + 1}] {name}: first audio {got.ttfa:.3f} s", file=sys.stderr)
    finally:
        server.stop()
    return out


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="first-use-during-"))
    try:
        cache = await base_cache(opts.ours_python, root)
        runs = [await one_run(opts, root, cache, i) for i in range(opts.runs)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    medians = {name: median([r[name] for r in runs]) for name in runs[0]}
    return {
        "text": TEXT,
        "big": opts.big,
        "gap": opts.gap,
        "checkout": str(opts.checkout or REPO),
        "noise": opts.noise,
        "length_scale": opts.length_scale,
        "load_before": os.getloadavg(),
        "runs": runs,
        "medians": medians,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voices-dir", type=Path, default=REPO / "tests" / "voices")
    parser.add_argument("--big", default="en_US-test-high", help="Asked first.")
    parser.add_argument(
        "--other",
        action="append",
        dest="others",
        help="Asked after it (repeatable; default: the medium, low and x_low voices).",
    )
    parser.add_argument("--gap", type=float, default=3.0, help="Seconds between requests.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--length-scale", type=float, default=3.0)
    parser.add_argument("--noise", type=float, default=0.0, help="Ours' noise (-1: the voice's).")
    parser.add_argument("--checkout", type=Path, help="Run ours from this checkout.")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--ours-python", type=Path, default=Path(sys.executable))
    parser.add_argument("--output", type=Path, help="JSON results (default: bench/results/).")
    opts = parser.parse_args(argv)
    opts.others = opts.others or [
        f"en_US-{kind}-{quality}"
        for quality in ("medium", "low", "x_low")
        for kind in ("test", "testmulti")
    ]
    opts.voices_dir = opts.voices_dir.absolute()
    opts.ours_python = opts.ours_python.absolute()
    if opts.checkout is not None:
        opts.checkout = opts.checkout.absolute()
    if opts.noise < 0:
        opts.noise = None
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    res = asyncio.run(run(opts))
    output = opts.output or (
        REPO / "bench" / "results" / f"first-use-during-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(res, indent=2))
    for name, value in res["medians"].items():
        print(f"{name}: {value:.3f} s")
    print(f"results in {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
