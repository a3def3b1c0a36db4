#!/usr/bin/env python3
"""First use of a voice that is not loaded yet, for every Piper family: ours and wyoming-piper.

Per voice and trial, each server starts fresh and one request names the voice; its time
to first audio is the voice's first use. Ours starts with a cache that holds only the
default voice's split, so the voice was never split before (its split starts in the
background as the server starts). Then, for ours, the server's log is watched until
the split voice has replaced the whole one, and the voice is asked again ("once
split"). Servers alternate which goes first from one trial to the next.

    .venv/bin/python bench/first_use.py --piper-python .cache/bench-venv/bin/python
    .venv/bin/python bench/first_use.py --voices-dir /tmp/full-width --trials 3

`script/bench` makes the wyoming-piper venv. The default voices are the narrowed test
voices (`tests/voices/`); `script/gen-test-voices --full-width DIR` writes full-size ones.
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

from common import DEFAULT_VOICE, REPO, Server, ServerSpec, link_voice, median, ratio, speak
from texts import WYOMING_BENCH_TEXTS

TEXT = WYOMING_BENCH_TEXTS[0]
#: Seconds to wait for ours to say the split voice has replaced the whole one.
UPGRADE_TIMEOUT = 300.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def voice_dir(root: Path, source: Path, name: str) -> Path:
    """The default voice and one family voice (symlinked model, copied config)."""
    voices = root / "voices"
    link_voice(voices, DEFAULT_VOICE)
    (voices / f"{name}.onnx").symlink_to(source / f"{name}.onnx")
    shutil.copy(source / f"{name}.onnx.json", voices / f"{name}.onnx.json")
    return voices


def spec_ours(
    python: Path, voices: Path, cache: Path, length_scale: float, noise: float | None = None
) -> ServerSpec:
    args = ["--uri", "tcp://127.0.0.1:{port}", "--data-dir", str(voices), "--voice"]
    args += [DEFAULT_VOICE, "--cache-dir", str(cache), "--phrase-cache-mb", "0"]
    args += ["--length-scale", str(length_scale), *_noise_args(noise)]
    return ServerSpec("ours", python, "wyoming_tts", args)


def spec_theirs(
    python: Path, voices: Path, length_scale: float, noise: float | None = None
) -> ServerSpec:
    args = ["--uri", "tcp://127.0.0.1:{port}", "--voice", DEFAULT_VOICE, "--data-dir"]
    args += [str(voices), "--download-dir", str(voices), "--length-scale", str(length_scale)]
    return ServerSpec("wyoming-piper", python, "wyoming_piper", args + _noise_args(noise))


def _noise_args(noise: float | None) -> list[str]:
    """Both servers take the same flags; None: each voice's own noise."""
    if noise is None:
        return []
    return ["--noise-scale", str(noise), "--noise-w-scale", str(noise)]


async def upgraded(server: Server, name: str) -> bool:
    """Ours logs "Voice NAME now streams" once its split voice replaced the whole one."""
    deadline = time.monotonic() + UPGRADE_TIMEOUT
    needle = f"Voice {name} now streams"
    while time.monotonic() < deadline:
        if server.log_path is not None and needle in server.log_path.read_text(errors="replace"):
            return True
        await asyncio.sleep(0.2)
    return False


async def base_cache(python: Path, root: Path) -> Path:
    """A cache with the default voice's split alone, made once by starting ours."""
    cache = root / "base-cache"
    voices = root / "base-voices"
    link_voice(voices, DEFAULT_VOICE)
    server = Server(spec_ours(python, voices, cache, 1.0), root / "base")
    await server.start()
    server.stop()
    return cache


async def trial(
    opts: argparse.Namespace, root: Path, cache: Path, name: str, i: int
) -> dict[str, Any]:
    work = root / f"{name}-{i}"
    voices = voice_dir(work, opts.voices_dir, name)
    fresh = work / "cache"
    shutil.copytree(cache, fresh)
    servers = [
        Server(
            spec_ours(opts.ours_python, voices, fresh, opts.length_scale, opts.noise),
            work / "ours",
        ),
        Server(
            spec_theirs(opts.piper_python, voices, opts.length_scale, opts.noise),
            work / "theirs",
        ),
    ]
    out: dict[str, Any] = {}
    for server in servers if i % 2 == 0 else reversed(servers):
        await server.start()
        try:
            first = await speak(server.port, TEXT, voice=name, timeout=opts.timeout)
            out[server.label] = {
                "ttfa": first.ttfa,
                "total": first.total,
                "audio_seconds": first.audio_seconds,
                "error": first.error,
            }
            if server.label == "ours" and await upgraded(server, name):
                again = await speak(server.port, TEXT, voice=name, timeout=opts.timeout)
                out["ours, once split"] = {"ttfa": again.ttfa, "total": again.total}
        finally:
            server.stop()
        got = out[server.label]
        log(f"{name} #{i + 1} {server.label}: first audio {got['ttfa']}, {got['audio_seconds']} s")
    return out


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    rows = [
        "| voice | ours, first use | wyoming-piper, first use | ratio | ours, once split |",
        "|---|---|---|---|---|",
    ]
    for name, trials in results.items():
        ours, theirs, split = (
            _median(trials, label) for label in ("ours", "wyoming-piper", "ours, once split")
        )
        r = ratio(ours, theirs)
        rows.append(
            f"| {name} | {_s(ours)} | {_s(theirs)} | {f'{r:.2f}' if r else '-'} | {_s(split)} |"
        )
    return "\n".join(rows)


def _median(trials: Sequence[dict[str, Any]], label: str) -> float | None:
    return median([t[label]["ttfa"] for t in trials if t.get(label, {}).get("ttfa")])


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    names = opts.voice or sorted(p.name[: -len(".onnx")] for p in opts.voices_dir.glob("*.onnx"))
    root = Path(tempfile.mkdtemp(prefix="first-use-"))
    try:
        cache = await base_cache(opts.ours_python, root)
        results: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            results[name] = [await trial(opts, root, cache, name, i) for i in range(opts.trials)]
        return {
            "text": TEXT,
            "length_scale": opts.length_scale,
            "noise": opts.noise,
            "load_before": os.getloadavg(),
            "voices": results,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voices-dir", type=Path, default=REPO / "tests" / "voices")
    parser.add_argument("--voice", action="append", help="Only this voice (repeatable).")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument(
        "--length-scale", type=float, default=3.0, help="Both servers' (3: issue 12's figures)."
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="Both servers' noise and phoneme width noise (default 0: the same audio "
        "from both, so first audio compares the same work; random-weight voices' "
        "durations vary twofold with noise on); -1: each voice's own.",
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--piper-python", type=Path, default=REPO / ".cache/bench-venv/bin/python")
    parser.add_argument("--ours-python", type=Path, default=Path(sys.executable))
    parser.add_argument("--output", type=Path, help="JSON results (default: bench/results/).")
    opts = parser.parse_args(argv)
    # Servers run in their own work dirs: relative paths would point elsewhere there
    # (absolute, not resolved: a venv's python is a symlink that must stay one).
    for key in ("voices_dir", "piper_python", "ours_python"):
        setattr(opts, key, getattr(opts, key).absolute())
    if opts.noise < 0:
        opts.noise = None
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    res = asyncio.run(run(opts))
    output = (
        opts.output
        or REPO / "bench" / "results" / f"first-use-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(res, indent=2))
    print(table(res["voices"]))
    log(f"results in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
