#!/usr/bin/env python3
"""First audio and heard time through the HTTP door against the Wyoming door.

One wyoming-tts process serves both doors from one voice pool; each text is
spoken over Wyoming (`synthesize`), over `POST /api/tts` (WAV) and over OpenAI's
`POST /v1/audio/speech` (pcm), each on a fresh connection, the doors' order
rotating from one request to the next so that noise hits all three. Printed:
medians and p95s per text and door, and each HTTP door's median over
Wyoming's (1.00 = the same). Loopback only, bounded by --reps.

    .venv/bin/python bench/http_door.py --reps 7 --settle 0.3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    DEFAULT_VOICE,
    HOST,
    REPO,
    Result,
    Server,
    ServerSpec,
    ffmpeg_gathers,
    free_port,
    make_voice_dir,
    ratio,
    speak,
)
from compare import TEXTS, fmt_ratio, fmt_s, fmt_x, log, summarize

WYOMING = "wyoming"
DOORS = (WYOMING, "api-tts", "openai-pcm")
#: Bytes of the WAV header `/api/tts` sends before the samples.
WAV_HEADER_BYTES = 44


async def speak_http(base: str, door: str, text: str, timeout: float) -> Result:
    """Speak `text` through one HTTP door on a fresh connection, timing as `speak` does."""
    if door == "api-tts":
        url, body, header = f"{base}/api/tts", {"text": text}, WAV_HEADER_BYTES
    else:
        url, body, header = f"{base}/v1/audio/speech", {"input": text, "response_format": "pcm"}, 0
    result = Result()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout), session.post(url, json=body) as resp:
                if resp.status != 200:
                    error = (await resp.json())["error"]
                    result.error, result.error_code = error["message"], error["code"]
                    return result
                bytes_per_second = int(resp.headers["X-Sample-Rate"]) * 2
                gathers = ffmpeg_gathers(bytes_per_second // 2) * 2
                received = -header
                async for data in resp.content.iter_any():
                    now = time.perf_counter()
                    received += len(data)
                    if received <= 0:
                        continue
                    result.chunks += 1
                    if result.ttfa is None:
                        result.ttfa = now - t0
                    if result.heard is None and received >= gathers:
                        result.heard = now - t0
            result.total = time.perf_counter() - t0
            result.heard = result.heard or result.total  # a shorter reply: its end
            result.audio_seconds = max(0, received) / bytes_per_second
            result.ok = result.chunks > 0
        except (aiohttp.ClientError, TimeoutError) as err:
            result.error = repr(err)
    return result


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="wyoming-tts-http-bench-"))
    http_port = free_port()
    spec = ServerSpec(
        "ours",
        opts.python,
        "wyoming_tts",
        [
            "--uri",
            "tcp://127.0.0.1:{port}",
            "--http",
            f"{HOST}:{http_port}",
            "--data-dir",
            str(make_voice_dir(root)),
            "--voice",
            DEFAULT_VOICE,
            "--cache-dir",
            str(root / "cache"),
            *shlex.split(opts.server_args),
        ],
    )
    server = Server(spec, root / "server")
    base = f"http://{HOST}:{http_port}"
    texts = {name: TEXTS[name] for name in opts.texts}
    raw: dict[str, dict[str, list[Result]]] = {name: {d: [] for d in DOORS} for name in texts}
    await server.start()
    try:
        for door in DOORS:  # untimed: the first request of each door pays its imports
            await one(server.port, base, door, texts[opts.texts[0]], opts.timeout)
        k = 0
        for rep in range(opts.reps):
            for name, text in texts.items():
                for i in range(len(DOORS)):
                    door = DOORS[(k + i) % len(DOORS)]
                    result = await one(server.port, base, door, text, opts.timeout)
                    if not result.ok:
                        log(f"{door} {name}: {result.error_code} {result.error}")
                    raw[name][door].append(result)
                    if opts.settle:
                        await asyncio.sleep(opts.settle)
                k += 1
            log(f"repetition {rep + 1}/{opts.reps} done")
    finally:
        server.stop()
    out: dict[str, Any] = {"workdir": str(root), "log": str(server.log_path), "texts": {}}
    for name, per_door in raw.items():
        out["texts"][name] = {
            door: {
                "ttfa": summarize(results, lambda r: r.ttfa),
                "heard": summarize(results, lambda r: r.heard),
                "rtf": summarize(results, lambda r: r.rtf),
            }
            for door, results in per_door.items()
        }
    return out


async def one(port: int, base: str, door: str, text: str, timeout: float) -> Result:
    if door == WYOMING:
        return await speak(port, text, timeout=timeout)
    return await speak_http(base, door, text, timeout)


def render(res: dict[str, Any]) -> str:
    head = ("text", "door", "TTFA med", "TTFA p95", "HEARD med", "HEARD p95", "RTF med", "ratio")
    rows: list[tuple[str, ...]] = []
    for name, per_door in res["texts"].items():
        ours = per_door[WYOMING]
        for door, figures in per_door.items():
            ttfa, heard = figures["ttfa"], figures["heard"]
            ratios = (
                ""
                if door == WYOMING
                else "ttfa {} heard {}".format(
                    fmt_ratio(ratio(ttfa["median"], ours["ttfa"]["median"])),
                    fmt_ratio(ratio(heard["median"], ours["heard"]["median"])),
                )
            )
            rows.append(
                (
                    name,
                    door,
                    fmt_s(ttfa["median"]),
                    fmt_s(ttfa["p95"]),
                    fmt_s(heard["median"]),
                    fmt_s(heard["p95"]),
                    fmt_x(figures["rtf"]["median"]),
                    ratios,
                )
            )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="Repetitions of each text and door.")
    parser.add_argument(
        "--texts",
        type=lambda v: [t for t in v.split(",") if t],
        default=list(TEXTS),
        help=f"Comma list of texts (default all: {','.join(TEXTS)}).",
    )
    parser.add_argument("--settle", type=float, default=0.3, help="Seconds of quiet per request.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Seconds per request.")
    parser.add_argument("--python", type=Path, default=REPO / ".venv" / "bin" / "python")
    parser.add_argument("--server-args", default="", help="Extra server flags (experiments).")
    parser.add_argument("--output", type=Path, help="JSON (default bench/results/http-door-*.json)")
    args = parser.parse_args(argv)
    unknown = set(args.texts) - set(TEXTS)
    if unknown:
        parser.error(f"unknown texts: {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    res = asyncio.run(run(opts))
    print(render(res))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = opts.output or REPO / "bench" / "results" / f"http-door-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}
    output.write_text(json.dumps({"timestamp": stamp, "options": options, **res}, indent=2))
    print(f"\nwritten {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
