#!/usr/bin/env python3
"""The median of several `bench/compare.py` runs, row by row, for quoting.

A single run is never quoted alone: this prints, for every row of the runs' tables,
the median of ours, of wyoming-piper's and of the per-run ratios, with each run's
ratio beside it, as markdown.

    .venv/bin/python bench/runs.py bench/results/quick-2026-12-01-run{1,2,3}.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import median


def rows(runs: Sequence[dict[str, Any]]) -> list[tuple[str, str, float | None, float | None]]:
    """(metric, unit, median ours, median theirs) and the ratios, in the first run's order."""
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for row in run["table"]:
            by_metric.setdefault(row["metric"], []).append(row)
    out = []
    for metric, found in by_metric.items():
        ours = [r["ours"] for r in found if r.get("ours") is not None]
        theirs = [r["theirs"] for r in found if r.get("theirs") is not None]
        out.append((metric, found[0].get("unit", ""), median(ours), median(theirs)))
    return out


def ratios(runs: Sequence[dict[str, Any]], metric: str) -> list[float]:
    return [
        row["ratio"]
        for run in runs
        for row in run["table"]
        if row["metric"] == metric and row.get("ratio") is not None
    ]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    return f"{value:.3g} {unit}".strip()


def render(runs: Sequence[dict[str, Any]]) -> str:
    lines = ["| figure | ours | wyoming-piper | ratio [each run] |", "|---|---|---|---|"]
    for metric, unit, ours, theirs in rows(runs):
        each = ratios(runs, metric)
        mid = median(each)
        cell = f"{mid:.2f} [{', '.join(f'{r:.2f}' for r in each)}]" if mid is not None else ""
        lines.append(f"| {metric} | {fmt(ours, unit)} | {fmt(theirs, unit)} | {cell} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON files from bench/compare.py")
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.results]
    for path, run in zip(args.results, runs, strict=True):
        meta = run.get("meta", {})
        load = meta.get("load_before")
        print(f"- {path.name}: {meta.get('timestamp', '?')}, load average before {load or '?'}")
    print()
    print(render(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
