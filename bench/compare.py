#!/usr/bin/env python3
"""Compare wyoming-tts (ours) with wyoming-piper 2.5.2 on the same voice files.

Both servers run side by side on loopback ports; requests alternate A B / B A so
that noise from a shared machine hits both. Figures are medians and p95s, and
ratios ours / wyoming-piper (below 1 means ours is faster or smaller).

Run through `script/bench` (it creates the wyoming-piper venv), or directly:
    .venv/bin/python bench/compare.py --quick --piper-python .cache/bench-venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_VOICE,
    REPO,
    ROTATION_VOICES,
    Result,
    RssSampler,
    Server,
    ServerSpec,
    make_voice_dir,
    median,
    percentile,
    ratio,
    speak,
)
from texts import LONG_SENTENCE, PARAGRAPH, WYOMING_BENCH_TEXTS, prose

OURS = "ours"
THEIRS = "wyoming-piper"

TEXTS: dict[str, str] = {
    "bench-1": WYOMING_BENCH_TEXTS[0],
    "bench-2": WYOMING_BENCH_TEXTS[1],
    "bench-3": WYOMING_BENCH_TEXTS[2],
    "bench-4": WYOMING_BENCH_TEXTS[3],
    "sentence-60w": LONG_SENTENCE,
    "paragraph-1500": PARAGRAPH,
}
SHORT_TEXT = WYOMING_BENCH_TEXTS[0]


@dataclass
class Options:
    quick: bool
    starts: int
    reps: int
    clients: int
    per_client: int
    conc_rounds: int
    long_sizes: list[int]
    long_timeout: float
    request_timeout: float
    piper_python: Path
    ours_python: Path
    keep_logs: bool
    output: Path | None
    ours_args: list[str]
    settle: float = 0.3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def specs(opts: Options, voice_dir: Path, cache_dir: Path) -> tuple[ServerSpec, ServerSpec]:
    ours = ServerSpec(
        OURS,
        opts.ours_python,
        "wyoming_tts",
        [
            "--uri",
            "tcp://127.0.0.1:{port}",
            "--data-dir",
            str(voice_dir),
            "--voice",
            DEFAULT_VOICE,
            "--cache-dir",
            str(cache_dir),
            # Every text is asked for again each round: without this, ours would answer
            # the repeats from its phrase cache (bench/phrases.py measures that alone).
            "--phrase-cache-mb",
            "0",
            *opts.ours_args,
        ],
    )
    theirs = ServerSpec(
        THEIRS,
        opts.piper_python,
        "wyoming_piper",
        [
            "--uri",
            "tcp://127.0.0.1:{port}",
            "--voice",
            DEFAULT_VOICE,
            "--data-dir",
            str(voice_dir),
            "--download-dir",
            str(voice_dir),
        ],
    )
    return ours, theirs


def alternate(pair: Sequence[Server], i: int) -> list[Server]:
    """A B on even rounds, B A on odd ones."""
    return list(pair) if i % 2 == 0 else list(reversed(pair))


def summarize(results: Sequence[Result], value: Callable[[Result], float | None]) -> dict[str, Any]:
    values = [v for r in results if r.ok and (v := value(r)) is not None]
    return {
        "n": len(results),
        "ok": sum(1 for r in results if r.ok),
        "median": median(values),
        "p95": percentile(values, 95.0),
        "errors": sorted({r.error or "" for r in results if not r.ok}),
    }


# ---------------------------------------------------------------------------- phases


async def phase_first_request(opts: Options, pair: Sequence[Server]) -> dict[str, Any]:
    """TTFA of the very first request after a fresh start, over `starts` starts."""
    out: dict[str, Any] = {s.label: {"ttfa": [], "total": [], "startup": []} for s in pair}
    # One unrecorded start of each, so file caches (and our graph cache) are warm for all.
    for server in pair:
        await server.start()
        await speak(server.port, SHORT_TEXT, timeout=opts.request_timeout)
        server.stop()
    for i in range(opts.starts):
        for server in alternate(pair, i):
            startup = await server.start()
            result = await speak(server.port, SHORT_TEXT, timeout=opts.request_timeout)
            server.stop()
            rec = out[server.label]
            rec["startup"].append(startup)
            if result.ok:
                rec["ttfa"].append(result.ttfa)
                rec["total"].append(result.total)
            else:
                rec.setdefault("errors", []).append(result.error)
            log(f"first request #{i + 1} {server.label}: startup {startup:.2f}s ttfa {result.ttfa}")
    return out


async def phase_texts(opts: Options, pair: Sequence[Server]) -> dict[str, Any]:
    """TTFA and RTF per text and mode, interleaved over `reps` repetitions."""
    raw: dict[str, dict[str, dict[str, list[Result]]]] = {
        name: {mode: {s.label: [] for s in pair} for mode in ("plain", "streaming")}
        for name in TEXTS
    }
    k = 0
    for rep in range(opts.reps):
        for name, text in TEXTS.items():
            for mode in ("plain", "streaming"):
                # Each text and mode goes first on each server in turn, rep after rep
                # (k alone would always put the same server first for a given mode).
                for server in alternate(pair, k + rep):
                    result = await speak(
                        server.port,
                        text,
                        streaming=mode == "streaming",
                        timeout=opts.request_timeout,
                    )
                    if not result.ok:
                        log(f"{server.label} {name} {mode}: {result.error_code} {result.error}")
                    raw[name][mode][server.label].append(result)
                    if opts.settle:
                        # Each request starts on a quiet machine, as a satellite's would:
                        # the other server's threads have finished spinning down.
                        await asyncio.sleep(opts.settle)
                k += 1
        log(f"texts: repetition {rep + 1}/{opts.reps} done")
    out: dict[str, Any] = {}
    for name, modes in raw.items():
        for mode, per_server in modes.items():
            row: dict[str, Any] = {"chars": len(TEXTS[name])}
            for label, results in per_server.items():
                row[label] = {
                    "ttfa": summarize(results, lambda r: r.ttfa),
                    "heard": summarize(results, lambda r: r.heard),
                    "total": summarize(results, lambda r: r.total),
                    "rtf": summarize(results, lambda r: r.rtf),
                    "audio_seconds": median([r.audio_seconds for r in results if r.ok]),
                }
            out[f"{name}/{mode}"] = row
    return out


async def phase_rotation(opts: Options, pair: Sequence[Server]) -> dict[str, Any]:
    """Requests rotating over three voices a, b, c, a, b, c ..."""
    raw: dict[str, list[Result]] = {s.label: [] for s in pair}
    for i in range(3 * opts.reps):
        voice = ROTATION_VOICES[i % 3]
        for server in alternate(pair, i):
            result = await speak(server.port, SHORT_TEXT, voice=voice, timeout=opts.request_timeout)
            if not result.ok:
                log(f"rotation {server.label} {voice}: {result.error_code} {result.error}")
            raw[server.label].append(result)
    out: dict[str, Any] = {}
    for server in pair:
        results = raw[server.label]
        out[server.label] = {
            "ttfa_all": summarize(results, lambda r: r.ttfa),
            "ttfa_after_first_cycle": summarize(results[3:], lambda r: r.ttfa),
            "rss_after_three_voices_mb": server.rss_mb(),
        }
    return out


#: A stall shorter than this is jitter a satellite's buffer absorbs, not a gap.
GAP_TOLERANCE = 0.05


async def phase_concurrency(
    opts: Options, pair: Sequence[Server], clients: int, text: str = SHORT_TEXT
) -> dict[str, Any]:
    """`clients` clients at once, each speaking `text` `per_client` times."""
    raw: dict[str, list[Result]] = {s.label: [] for s in pair}
    walls: dict[str, list[float]] = {s.label: [] for s in pair}

    async def client(port: int) -> list[Result]:
        return [
            await speak(port, text, timeout=opts.request_timeout) for _ in range(opts.per_client)
        ]

    for i in range(opts.conc_rounds):
        for server in alternate(pair, i):
            t0 = time.perf_counter()
            batches = await asyncio.gather(*(client(server.port) for _ in range(clients)))
            walls[server.label].append(time.perf_counter() - t0)
            for batch in batches:
                for result in batch:
                    if not result.ok:
                        log(f"concurrency {server.label}: {result.error_code} {result.error}")
                    raw[server.label].append(result)
            if opts.settle:
                await asyncio.sleep(opts.settle)
    return {
        s.label: {
            "ttfa": summarize(raw[s.label], lambda r: r.ttfa),
            "heard": summarize(raw[s.label], lambda r: r.heard),
            "total": summarize(raw[s.label], lambda r: r.total),
            "wall_seconds": median(walls[s.label]),
            "max_gap": max((r.gap for r in raw[s.label] if r.ok), default=None),
            "replies_with_gap": sum(1 for r in raw[s.label] if r.ok and r.gap > GAP_TOLERANCE),
        }
        for s in pair
    }


async def phase_long(opts: Options, pair: Sequence[Server]) -> dict[str, Any]:
    """Peak RSS while speaking long prose (plain `synthesize`), one server at a time."""
    out: dict[str, Any] = {}
    for size in opts.long_sizes:
        text = prose(size)
        for server in pair:
            before = server.rss_mb()
            with RssSampler(server.pid) as sampler:
                result = await speak(server.port, text, timeout=opts.long_timeout)
            out[f"{size}/{server.label}"] = {
                "chars": len(text),
                "rss_before_mb": before,
                "peak_rss_mb": sampler.peak_mb,
                "samples": sampler.samples,
                "ok": result.ok,
                "timed_out": result.timed_out,
                "error": result.error,
                "ttfa": result.ttfa,
                "total": result.total,
                "audio_seconds": result.audio_seconds,
                "rtf": result.rtf,
            }
            log(
                f"long {size} {server.label}: peak {sampler.peak_mb:.0f} MiB, "
                f"ok={result.ok} {result.error or ''} audio {result.audio_seconds:.0f}s"
            )
            if not result.ok:
                # Whatever it is still doing must not load the next measurement.
                await server.restart()
    return out


# ---------------------------------------------------------------------------- report


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MiB"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _concurrency_rows(add: Callable[..., None], conc: dict[str, Any] | None, label: str) -> None:
    if not conc:
        return
    for stat in ("median", "p95"):
        add(f"TTFA {label} {stat}", conc[OURS]["ttfa"][stat], conc[THEIRS]["ttfa"][stat], "s")
    if "heard" in conc[OURS] and "heard" in conc[THEIRS]:
        add(
            f"HEARD {label} p95",
            conc[OURS]["heard"]["p95"],
            conc[THEIRS]["heard"]["p95"],
            "s",
        )
    add(
        f"wall time, {label}",
        conc[OURS]["wall_seconds"],
        conc[THEIRS]["wall_seconds"],
        "s",
    )
    add(f"max gap mid-reply, {label}", conc[OURS].get("max_gap"), conc[THEIRS].get("max_gap"), "s")


def build_table(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of (metric, ours, theirs, ratio, unit)."""
    rows: list[dict[str, Any]] = []

    def add(
        metric: str, ours: float | None, theirs: float | None, unit: str, note: str = ""
    ) -> None:
        rows.append(
            {
                "metric": metric,
                "ours": ours,
                "theirs": theirs,
                "ratio": ratio(ours, theirs),
                "unit": unit,
                "note": note,
            }
        )

    first = res.get("first_request")
    if first:
        add(
            "startup to first Describe (median)",
            median(first[OURS]["startup"]),
            median(first[THEIRS]["startup"]),
            "s",
        )
        add(
            "TTFA first request after start (median)",
            median(first[OURS]["ttfa"]),
            median(first[THEIRS]["ttfa"]),
            "s",
        )
    texts = res.get("texts", {})
    ratios: dict[str, list[float]] = {"TTFA": [], "HEARD": [], "RTF": []}
    for key, row in texts.items():
        o, t = row[OURS], row[THEIRS]
        for label, figure, unit in (("TTFA", "ttfa", "s"), ("HEARD", "heard", "s")):
            if figure not in o or figure not in t:
                continue  # results from before the figure existed
            add(f"{label} {key} median", o[figure]["median"], t[figure]["median"], unit)
            add(f"{label} {key} p95", o[figure]["p95"], t[figure]["p95"], unit)
        add(f"RTF  {key} median", o["rtf"]["median"], t["rtf"]["median"], "x")
        add(f"RTF  {key} p95", o["rtf"]["p95"], t["rtf"]["p95"], "x")
        for label, figure in (("TTFA", "ttfa"), ("HEARD", "heard"), ("RTF", "rtf")):
            if figure in o and figure in t:
                r = ratio(o[figure]["median"], t[figure]["median"])
                if r is not None:
                    ratios[label].append(r)
    for label, values in ratios.items():
        if values:
            rows.append(
                {
                    "metric": f"{label} ratio, geometric mean over texts x modes",
                    "ours": None,
                    "theirs": None,
                    "ratio": math.exp(sum(map(math.log, values)) / len(values)),
                    "unit": "",
                    "note": "",
                }
            )
    rot = res.get("rotation")
    if rot:
        add(
            "TTFA voice rotation a,b,c (median, all)",
            rot[OURS]["ttfa_all"]["median"],
            rot[THEIRS]["ttfa_all"]["median"],
            "s",
        )
        add(
            "TTFA voice rotation (median, after 1st cycle)",
            rot[OURS]["ttfa_after_first_cycle"]["median"],
            rot[THEIRS]["ttfa_after_first_cycle"]["median"],
            "s",
        )
        add(
            "TTFA voice rotation p95",
            rot[OURS]["ttfa_all"]["p95"],
            rot[THEIRS]["ttfa_all"]["p95"],
            "s",
        )
    for key, label in (("concurrency", "concurrent clients"), ("concurrency8", "2x clients")):
        _concurrency_rows(add, res.get(key), label)
    mem = res.get("memory", {})
    if "idle" in mem:
        add("RSS idle after start", mem["idle"][OURS], mem["idle"][THEIRS], "MiB")
    if rot:
        add(
            "RSS after three voices used",
            rot[OURS]["rss_after_three_voices_mb"],
            rot[THEIRS]["rss_after_three_voices_mb"],
            "MiB",
        )
    for key in sorted({k.split("/")[0] for k in res.get("long", {})}, key=int):
        o = res["long"].get(f"{key}/{OURS}")
        t = res["long"].get(f"{key}/{THEIRS}")
        if not o or not t:
            continue
        note = "; ".join(
            f"{label} timed out after {d['audio_seconds']:.0f}s of audio"
            for label, d in ((OURS, o), (THEIRS, t))
            if d["timed_out"]
        )
        add(f"RSS peak speaking {key} chars", o["peak_rss_mb"], t["peak_rss_mb"], "MiB", note)
        add(f"RTF speaking {key} chars", o["rtf"], t["rtf"], "x", note)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    fmt = {"s": fmt_s, "x": fmt_x, "MiB": fmt_mb, "": lambda v: "" if v is None else str(v)}
    head = ("metric", OURS, THEIRS, "ours/theirs")
    lines = [
        (r["metric"], fmt[r["unit"]](r["ours"]), fmt[r["unit"]](r["theirs"]), fmt_ratio(r["ratio"]))
        + ((r["note"],) if r["note"] else ())
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(4)]
    out = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(head, widths, strict=True))
        )
    ]
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line[:4], widths, strict=True))
        ]
        if len(line) > 4:
            cells.append(f"  ({line[4]})")
        out.append("  ".join(cells))
    return "\n".join(out)


# ---------------------------------------------------------------------------- main


async def run(opts: Options) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="wyoming-tts-bench-"))
    voice_dir = make_voice_dir(root)
    ours_spec, theirs_spec = specs(opts, voice_dir, root / "cache")
    pair = [Server(ours_spec, root / "ours"), Server(theirs_spec, root / "theirs")]
    res: dict[str, Any] = {"workdir": str(root)}
    t_start = time.perf_counter()
    try:
        log(f"first request after start, {opts.starts} starts each")
        res["first_request"] = await phase_first_request(opts, pair)

        for server in pair:
            await server.start()
        await asyncio.sleep(2.0)
        res["memory"] = {"idle": {s.label: s.rss_mb() for s in pair}}
        for server in pair:  # untimed warm-up of the default voice
            await speak(server.port, SHORT_TEXT, timeout=opts.request_timeout)

        log(f"texts x modes, {opts.reps} repetitions")
        res["texts"] = await phase_texts(opts, pair)
        log("voice rotation")
        res["rotation"] = await phase_rotation(opts, pair)
        log(f"{opts.clients} concurrent clients x {opts.per_client} requests")
        res["concurrency"] = await phase_concurrency(opts, pair, opts.clients)
        # Eight satellites answered at once, on a two-sentence reply (so gaps can show).
        res["concurrency8"] = await phase_concurrency(
            opts, pair, 2 * opts.clients, WYOMING_BENCH_TEXTS[1]
        )
        log(f"long texts {opts.long_sizes} (timeout {opts.long_timeout:.0f}s each)")
        res["long"] = await phase_long(opts, pair)
    finally:
        for server in pair:
            server.stop()
        res["logs"] = {s.label: str(s.log_path) for s in pair}
        res["elapsed_seconds"] = time.perf_counter() - t_start
        if not opts.keep_logs:
            for sub in ("voices", "cache"):
                shutil.rmtree(root / sub, ignore_errors=True)
    return res


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Short run (about 5 minutes).")
    parser.add_argument("--starts", type=int, help="Fresh starts for first-request TTFA.")
    parser.add_argument("--reps", type=int, help="Repetitions of each text and mode.")
    parser.add_argument("--clients", type=int, default=4, help="Concurrent clients.")
    parser.add_argument("--per-client", type=int, default=5, help="Requests per client.")
    parser.add_argument(
        "--long-sizes",
        help="Comma list of prose sizes (chars) for peak RSS (quick: 20000; full: 20000,100000).",
    )
    parser.add_argument(
        "--long-timeout",
        type=float,
        help="Seconds allowed per long-text request before it is reported as timed out "
        "(quick: 120, full: 300).",
    )
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument(
        "--piper-python",
        type=Path,
        default=REPO / ".cache" / "bench-venv" / "bin" / "python",
        help="Python of the venv holding wyoming-piper 2.5.2.",
    )
    parser.add_argument(
        "--ours-python",
        type=Path,
        default=REPO / ".venv" / "bin" / "python",
        help="Python of the venv holding wyoming-tts.",
    )
    parser.add_argument(
        "--output", type=Path, help="JSON output (default bench/results/compare-<time>.json)."
    )
    parser.add_argument(
        "--ours-args",
        default="",
        help="Extra arguments for our server, e.g. --ours-args='--max-voices 4' "
        "(default: none; the comparison uses both servers' defaults).",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.3,
        help="Seconds of quiet after each request of the texts phase, as a satellite's "
        "request starts on a quiet machine (0: back to back, so one server's lingering "
        "threads can slow the other's next request).",
    )
    parser.add_argument("--keep-logs", action="store_true", help="Keep the temp voice dir too.")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    long_sizes = (
        [int(x) for x in args.long_sizes.split(",") if x.strip()]
        if args.long_sizes
        else ([20_000] if quick else [20_000, 100_000])
    )
    opts = Options(
        quick=quick,
        starts=args.starts or (3 if quick else 5),
        reps=args.reps or (3 if quick else 7),
        clients=args.clients,
        per_client=args.per_client,
        conc_rounds=1 if quick else 2,
        long_sizes=long_sizes,
        long_timeout=args.long_timeout or (120.0 if quick else 300.0),
        request_timeout=args.request_timeout,
        piper_python=args.piper_python.absolute(),
        ours_python=args.ours_python.absolute(),
        keep_logs=args.keep_logs,
        output=args.output,
        ours_args=shlex.split(args.ours_args),
        settle=max(0.0, args.settle),
    )
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    for python in (opts.piper_python, opts.ours_python):
        if not python.exists():
            print(f"missing interpreter {python}; run script/bench", file=sys.stderr)
            return 2
    load_before = os.getloadavg()  # a quoted run starts on a quiet machine: say how quiet
    res = asyncio.run(run(opts))
    rows = build_table(res)
    table = render(rows)
    print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = opts.output or REPO / "bench" / "results" / f"compare-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "timestamp": stamp,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "python": sys.version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_before": load_before,
    }
    output.write_text(json.dumps({"meta": meta, "table": rows, "results": res}, indent=2))
    print(f"\nJSON: {output}  (elapsed {res['elapsed_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
