#!/usr/bin/env python3
"""Variants of ours side by side with wyoming-piper, in one interleaved run.

For choosing an internal (a constant, a setting's default): each `--variant
NAME=FLAGS` is one of our servers started with those flags, all beside one
wyoming-piper on the same voice files. Requests rotate over the servers, each
server going first in turn and, as far as `order` can, after each of the others, with
`--settle` of quiet after each; the figures are medians, and ratios against
wyoming-piper from the same run.

    .venv/bin/python bench/variants.py --piper-python .cache/bench-venv/bin/python \\
        --variant base= --variant one-worker='--workers 1' --clients 4 --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_VOICE,
    REPO,
    CheckoutServer,
    Result,
    Server,
    ServerSpec,
    make_voice_dir,
    median,
    percentile,
    ratio,
    speak,
)
from texts import LONG_SENTENCE, PARAGRAPH, WYOMING_BENCH_TEXTS

THEIRS = "wyoming-piper"
TEXTS = {
    **{f"bench-{i + 1}": text for i, text in enumerate(WYOMING_BENCH_TEXTS)},
    "sentence-60w": LONG_SENTENCE,
    "paragraph": PARAGRAPH,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def servers(args: argparse.Namespace, root: Path) -> list[Server]:
    voices = make_voice_dir(root)
    out = [
        Server(
            ServerSpec(
                THEIRS,
                args.piper_python,
                "wyoming_piper",
                [
                    *("--uri", "tcp://127.0.0.1:{port}", "--voice", DEFAULT_VOICE),
                    *("--data-dir", str(voices), "--download-dir", str(voices)),
                ],
            ),
            root / THEIRS,
        )
    ]
    for variant in args.variant:
        name, _, flags = variant.partition("=")
        name, _, checkout = name.partition("@")
        spec = ServerSpec(
            name,
            Path(sys.executable),
            "wyoming_tts",
            [
                *("--uri", "tcp://127.0.0.1:{port}", "--data-dir", str(voices)),
                *("--voice", DEFAULT_VOICE, "--cache-dir", str(root / name / "cache")),
                *("--phrase-cache-mb", "0", *shlex.split(flags)),
            ],
        )
        out.append(CheckoutServer(spec, root / name, checkout=checkout))
    return out


def order(items: Sequence[Server], k: int) -> list[Server]:
    """The servers' order for the ``k``-th request of each: rotated, and reversed every
    other time, so each goes first equally often and, with up to three servers
    (wyoming-piper and an A/B), follows each of the others equally often.

    A plain rotation of three always puts each variant straight after the same server
    (wyoming-piper, then the first variant listed), so whatever one server leaves behind
    on the machine (warm caches, a spinning pool, a shrinking arena) always falls on the
    same follower.
    """
    shift = (k // 2) % len(items)
    rotated = [*items[shift:], *items[:shift]]
    return rotated if k % 2 == 0 else rotated[::-1]


def stats(results: Sequence[Result]) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    out: dict[str, Any] = {"n": len(results), "failed": len(results) - len(ok)}
    for key in ("ttfa", "heard", "total"):
        values = [v for r in ok if (v := getattr(r, key)) is not None]
        out[key] = median(values)
        out[f"{key}_p95"] = percentile(values, 95)
    out["max_gap"] = max((r.gap for r in ok), default=None)
    return out


async def phase_texts(args: argparse.Namespace, pool: Sequence[Server]) -> dict[str, Any]:
    raw: dict[str, dict[str, list[Result]]] = {}
    k = 0
    for rep in range(args.reps):
        for name, text in TEXTS.items():
            for mode in args.modes:
                for server in order(pool, k):
                    result = await speak(server.port, text, streaming=mode == "streaming")
                    raw.setdefault(f"{name}/{mode}", {}).setdefault(server.label, []).append(result)
                    await asyncio.sleep(args.settle)
                k += 1
        log(f"texts: repetition {rep + 1}/{args.reps}")
    return {row: {label: stats(rs) for label, rs in per.items()} for row, per in raw.items()}


async def phase_clients(
    args: argparse.Namespace, pool: Sequence[Server], clients: int
) -> dict[str, Any]:
    text = WYOMING_BENCH_TEXTS[0] if clients <= 4 else WYOMING_BENCH_TEXTS[1]
    raw: dict[str, list[Result]] = {s.label: [] for s in pool}

    async def client(port: int) -> list[Result]:
        return [await speak(port, text) for _ in range(args.per_client)]

    for rnd in range(args.rounds):
        for server in order(pool, rnd):
            batches = await asyncio.gather(*(client(server.port) for _ in range(clients)))
            raw[server.label] += [r for batch in batches for r in batch]
            await asyncio.sleep(args.settle)
    log(f"{clients} clients done")
    return {label: stats(rs) for label, rs in raw.items()}


def report(res: dict[str, Any], labels: Sequence[str]) -> str:
    lines = []
    for section, rows in res.items():
        if section.startswith("clients-"):
            rows = {"": rows}
        elif section != "texts":
            continue
        for row, per in rows.items():
            if not isinstance(per, dict) or THEIRS not in per:
                continue
            base = per[THEIRS]
            cells = [f"{section}:{row}"]
            for label in labels:
                s = per[label]
                keys = ("ttfa", "heard") if section == "texts" else ("ttfa", "heard", "heard_p95")
                parts = [f"{k} {s[k] or 0:.3f}s ({ratio(s[k], base[k]) or 0:.2f}x)" for k in keys]
                if section != "texts":
                    parts.append(f"gap {s['max_gap'] or 0:.2f}s")
                cells.append(f"{label}: " + " ".join(parts))
            lines.append(" | ".join(cells))
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="wyoming-tts-variants-"))
    pool = servers(args, root)
    res: dict[str, Any] = {"args": vars(args) | {"piper_python": str(args.piper_python)}}
    try:
        for server in pool:
            await server.start()
            await speak(server.port, WYOMING_BENCH_TEXTS[0])  # untimed warm-up
        await asyncio.sleep(2.0)
        if args.reps:
            res["texts"] = await phase_texts(args, pool)
        for clients in args.clients:
            res[f"clients-{clients}"] = await phase_clients(args, pool, clients)
    finally:
        for server in pool:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--piper-python", type=Path, default=REPO / ".cache/bench-venv/bin/python")
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        help="NAME[@CHECKOUT]=FLAGS: one of our servers, from CHECKOUT if given",
    )
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each text (0: none)")
    parser.add_argument("--modes", nargs="+", default=["plain"], choices=["plain", "streaming"])
    parser.add_argument("--clients", type=int, action="append", default=[])
    parser.add_argument("--per-client", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settle", type=float, default=0.3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    args.piper_python = args.piper_python.absolute()
    res = asyncio.run(run(args))
    labels = [v.partition("=")[0].partition("@")[0] for v in args.variant]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = args.output or REPO / "bench" / "results" / f"variants-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(res, indent=2, default=str))
    log(f"wrote {output}")
    print(report(res, labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
