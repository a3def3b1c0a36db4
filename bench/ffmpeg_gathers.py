#!/usr/bin/env python3
"""How much of a streamed reply Home Assistant's ffmpeg step reads before it writes any.

HA (`homeassistant/components/tts/__init__.py`, `_async_convert_audio`) pipes a
Wyoming reply through ffmpeg: a WAV header written at `audio-start` (nframes 0), then
each chunk's PCM as it arrives. This feeds ffmpeg the same way, slowly, with stdin kept
open, and records how much audio had been written when ffmpeg's first output byte came,
next to `wyoming_tts.audio.ffmpeg_gathers` (which the engine cuts a chunk at).

    .venv/bin/python bench/ffmpeg_gathers.py --ffmpeg /usr/bin/ffmpeg

ffmpeg is not a dependency: use the system's, or the binary in the `imageio-ffmpeg` wheel.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wyoming_tts.audio import ffmpeg_gathers

#: HA's extra arguments per target: Wyoming satellites, ESPHome / Voice PE, a browser.
TARGETS = {
    "wav 16 kHz": ["-f", "wav", "-ar", "16000", "-ac", "1", "-sample_fmt", "s16"],
    "flac 48 kHz": ["-f", "flac", "-ar", "48000", "-ac", "1", "-sample_fmt", "s16"],
    "mp3": ["-f", "mp3", "-q:a", "0"],
}
PIECE = 512  # samples per write: the resolution of the figure
PAUSE = 0.005  # seconds between writes, so ffmpeg reads faster than it is fed


def header(rate: int) -> bytes:
    """The header HA's Wyoming TTS writes at `audio-start`."""
    with io.BytesIO() as buf:
        with wave.open(buf, "wb") as wav:
            wav.setframerate(rate)
            wav.setsampwidth(2)
            wav.setnchannels(1)
        return buf.getvalue()


def tone(rate: int, seconds: float) -> bytes:
    amp = 0.25 * 32767
    n = int(rate * seconds)
    samples = (int(amp * math.sin(2 * math.pi * 220 * i / rate)) for i in range(n))
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


def written_before_output(ffmpeg: str, target: list[str], rate: int) -> int:
    """Samples written when ffmpeg's first output byte arrived (to within one PIECE)."""
    argv = [ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "wav", "-i", "pipe:0"]
    proc = subprocess.Popen(
        [*argv, *target, "pipe:1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    stdout, written, seen = proc.stdout, [0], threading.Event()
    first: list[int] = []

    def read_first() -> None:
        os.read(stdout.fileno(), 4096)
        first.append(written[0])
        seen.set()

    threading.Thread(target=read_first, daemon=True).start()
    pcm = tone(rate, 12.0)
    proc.stdin.write(header(rate))
    time.sleep(0.3)
    for offset in range(0, len(pcm), 2 * PIECE):
        if seen.is_set():
            break
        written[0] = min(len(pcm), offset + 2 * PIECE) // 2
        proc.stdin.write(pcm[offset : offset + 2 * PIECE])
        time.sleep(PAUSE)
    seen.wait(2.0)
    proc.stdin.close()
    proc.kill()
    proc.wait()
    return first[0] if first else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ffmpeg", default=shutil.which("ffmpeg"), help="ffmpeg binary")
    parser.add_argument("--rates", type=int, nargs="+", default=[16000, 22050])
    args = parser.parse_args()
    if not args.ffmpeg:
        sys.exit("no ffmpeg: pass --ffmpeg (e.g. the binary in the imageio-ffmpeg wheel)")
    print(f"{'target':<12} {'rate':>6} {'measured s':>11} {'ffmpeg_gathers s':>17}")
    for name, target in TARGETS.items():
        for rate in args.rates:
            samples = written_before_output(args.ffmpeg, target, rate)
            measured = f"{samples / rate:.3f}" if samples >= 0 else "none"
            print(f"{name:<12} {rate:>6} {measured:>11} {ffmpeg_gathers(rate) / rate:>17.3f}")


if __name__ == "__main__":
    main()
