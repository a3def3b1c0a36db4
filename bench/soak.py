#!/usr/bin/env python3
"""Soak test of OUR server: thousands of mixed good and bad requests from concurrent clients.

Every request opens its own loopback connection and checks that the answer is one
the protocol allows for it (audio, info, or a specific error code). Counts of each
outcome, anything unexpected, and the server's resident memory over time are
reported. Bounded in count (`--clients` x `--requests`) and time (`--max-seconds`).

    .venv/bin/python bench/soak.py                        # starts its own server
    .venv/bin/python bench/soak.py --uri tcp://127.0.0.1:10200 --pid 1234
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import json
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
from common import REPO, Server, ServerSpec, median, rss_mb
from texts import LONG_SENTENCE, PARAGRAPH, WYOMING_BENCH_TEXTS, stream_chunks
from wyoming.event import Event, async_read_event, async_write_event

SHORT_TEXTS = [*WYOMING_BENCH_TEXTS, LONG_SENTENCE]


@dataclass
class Outcome:
    kind: str
    outcome: str
    expected: bool
    seconds: float
    detail: str = ""


@dataclass
class Stats:
    outcomes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    rss: list[dict[str, Any]] = field(default_factory=list)
    done: int = 0


class Conn:
    """A raw Wyoming connection: events or arbitrary bytes out, events in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10.0)
        return cls(reader, writer)

    async def send(self, type_: str, data: dict[str, Any] | None = None) -> None:
        await async_write_event(Event(type=type_, data=data or {}), self.writer)

    async def send_raw(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def read(self) -> Event | None:
        return await async_read_event(self.reader)

    async def close(self, abort: bool = False) -> None:
        with contextlib.suppress(Exception):
            if abort:
                self.writer.transport.abort()
            else:
                self.writer.close()
                await self.writer.wait_closed()


async def read_audio(conn: Conn, end: str) -> str:
    """Read a response to its `end` event; returns 'ok', 'error:<code>' or a failure."""
    chunks = 0
    started = False
    while True:
        event = await conn.read()
        if event is None:
            return "closed-early"
        if event.type == "audio-start":
            started = True
        elif event.type == "audio-chunk":
            if not started:
                return "chunk-before-start"
            chunks += 1
        elif event.type == "error":
            code = str(event.data.get("code"))
            if end == "synthesize-stopped" and code != "busy":
                # A stream that failed still closes with synthesize-stopped.
                with contextlib.suppress(TimeoutError):
                    nxt = await asyncio.wait_for(conn.read(), 5.0)
                    if nxt is None or nxt.type != "synthesize-stopped":
                        return f"error:{code}+no-stopped"
            return f"error:{code}"
        elif event.type == end:
            return "ok" if chunks else "no-audio"


async def expect_error(conn: Conn) -> str:
    event = await conn.read()
    if event is None:
        return "closed-no-error"
    if event.type != "error":
        return f"got-{event.type}"
    return f"error:{event.data.get('code')}"


async def still_usable(conn: Conn) -> bool:
    await conn.send("describe")
    while True:
        event = await conn.read()
        if event is None:
            return False
        if event.type == "info":
            return True


# ---------------------------------------------------------------------------- request kinds

Handler = Callable[[Conn, random.Random, "Limits"], Awaitable[str]]


@dataclass(frozen=True)
class Limits:
    max_text_chars: int


async def k_plain(conn: Conn, rng: random.Random, _: Limits) -> str:
    await conn.send("synthesize", {"text": rng.choice(SHORT_TEXTS)})
    return await read_audio(conn, "audio-stop")


async def k_streaming(conn: Conn, rng: random.Random, _: Limits) -> str:
    text = rng.choice(SHORT_TEXTS)
    await conn.send("synthesize-start", {})
    for piece in stream_chunks(text, 20):
        await conn.send("synthesize-chunk", {"text": piece})
    await conn.send("synthesize", {"text": text})
    await conn.send("synthesize-stop", {})
    return await read_audio(conn, "synthesize-stopped")


async def k_describe(conn: Conn, _rng: random.Random, _: Limits) -> str:
    await conn.send("describe")
    event = await conn.read()
    if event is None:
        return "closed-early"
    return "ok" if event.type == "info" else f"got-{event.type}"


async def k_invalid_json(conn: Conn, rng: random.Random, _: Limits) -> str:
    raw = rng.choice(
        [
            b'{"type": "synthesize", "data": {"text": \n',
            b"not json at all\n",
            b'["a", "list"]\n',
            b'{"type": "synthesize", "data_length": -5}\n',
            b"\xff\xfe\n",
        ]
    )
    await conn.send_raw(raw)
    outcome = await expect_error(conn)
    # bad-event must close the connection.
    return outcome if await closed(conn) else f"{outcome}+not-closed"


async def closed(conn: Conn) -> bool:
    """The server ended the connection (EOF or reset) after its error, as HA needs."""
    try:
        return await asyncio.wait_for(conn.read(), 5.0) is None
    except ConnectionError:
        return True


async def k_unknown_voice(conn: Conn, rng: random.Random, _: Limits) -> str:
    name = f"en_US-nobody{rng.randrange(1000)}-medium"
    await conn.send("synthesize", {"text": "Hello there.", "voice": {"name": name}})
    return await read_audio(conn, "audio-stop")


async def k_too_long(conn: Conn, _rng: random.Random, limits: Limits) -> str:
    await conn.send("synthesize", {"text": "a" * (limits.max_text_chars + 1)})
    return await expect_error(conn)


async def k_stream_too_long(conn: Conn, _rng: random.Random, limits: Limits) -> str:
    piece = "Words and more words. " * 250  # 5,500 characters
    await conn.send("synthesize-start", {})
    sent = 0
    while sent <= limits.max_text_chars:
        await conn.send("synthesize-chunk", {"text": piece})
        sent += len(piece)
    await conn.send("synthesize-stop", {})
    # Audio of the first sentences may come before the error; then synthesize-stopped.
    error: str | None = None
    while True:
        event = await conn.read()
        if event is None:
            return "closed-early"
        if event.type == "error":
            error = f"error:{event.data.get('code')}"
        elif event.type == "synthesize-stopped":
            return error or "no-error"


async def k_chunk_without_start(conn: Conn, rng: random.Random, _: Limits) -> str:
    kind = rng.choice(["synthesize-chunk", "synthesize-stop"])
    await conn.send(kind, {"text": "orphan"} if kind == "synthesize-chunk" else {})
    outcome = await expect_error(conn)
    return outcome if await still_usable(conn) else f"{outcome}+unusable"


async def k_bad_request(conn: Conn, rng: random.Random, _: Limits) -> str:
    data: dict[str, Any] = rng.choice([{"text": 123}, {"text": "hi", "voice": "joe"}, {}])
    await conn.send("synthesize", data)
    outcome = await expect_error(conn)
    # A refused one-shot synthesize ends its connection: HA ignores the error, waits for EOF.
    return outcome if await closed(conn) else f"{outcome}+not-closed"


async def k_empty(conn: Conn, rng: random.Random, _: Limits) -> str:
    await conn.send("synthesize", {"text": rng.choice(["", "   ", "\n\t"])})
    return await expect_error(conn)


async def k_no_speech(conn: Conn, rng: random.Random, _: Limits) -> str:
    await conn.send("synthesize", {"text": rng.choice(["...", "?!", "\u2026", "--"])})
    return await read_audio(conn, "audio-stop")


async def k_disconnect(conn: Conn, rng: random.Random, _: Limits) -> str:
    streaming = rng.random() < 0.5
    if streaming:
        await conn.send("synthesize-start", {})
        for piece in stream_chunks(PARAGRAPH, 20):
            await conn.send("synthesize-chunk", {"text": piece})
    else:
        await conn.send("synthesize", {"text": PARAGRAPH})
    while True:
        event = await conn.read()
        if event is None:
            return "closed-early"
        if event.type == "error":
            return f"error:{event.data.get('code')}"
        if event.type == "audio-chunk":
            await conn.close(abort=True)
            return "ok"


KINDS: dict[str, tuple[float, Handler, set[str]]] = {
    # name: (weight, handler, allowed outcomes; "error:busy" is allowed for all)
    "plain": (30, k_plain, {"ok"}),
    "streaming": (20, k_streaming, {"ok"}),
    "describe": (10, k_describe, {"ok"}),
    "invalid-json": (5, k_invalid_json, {"error:bad-event"}),
    "unknown-voice": (5, k_unknown_voice, {"error:voice-not-found"}),
    "too-long": (3, k_too_long, {"error:text-too-long"}),
    "stream-too-long": (1, k_stream_too_long, {"error:text-too-long"}),
    "chunk-without-start": (5, k_chunk_without_start, {"error:bad-sequence"}),
    "bad-request": (4, k_bad_request, {"error:bad-request"}),
    "empty-text": (4, k_empty, {"error:empty-text"}),
    "no-speech": (3, k_no_speech, {"error:no-speech"}),
    "disconnect-mid-synthesis": (10, k_disconnect, {"ok"}),
}


async def one(host: str, port: int, kind: str, rng: random.Random, limits: Limits) -> Outcome:
    _, handler, allowed = KINDS[kind]
    t0 = time.perf_counter()
    try:
        conn = await Conn.open(host, port)
    except (OSError, TimeoutError) as err:
        return Outcome(kind, "connect-failed", False, 0.0, repr(err))
    try:
        outcome = await asyncio.wait_for(handler(conn, rng, limits), timeout=60.0)
        detail = ""
    except TimeoutError:
        outcome, detail = "timeout", "no answer within 60 s"
    except (ConnectionError, OSError) as err:
        outcome, detail = "connection-error", repr(err)
    finally:
        await conn.close()
    ok = outcome in allowed or outcome == "error:busy"
    return Outcome(kind, outcome, ok, time.perf_counter() - t0, detail)


# ---------------------------------------------------------------------------- driver


async def soak(args: argparse.Namespace, host: str, port: int, pid: int | None) -> Stats:
    stats = Stats()
    limits = Limits(args.max_text_chars)
    names = list(KINDS)
    weights = [KINDS[k][0] for k in names]
    deadline = time.monotonic() + args.max_seconds
    total = args.clients * args.requests

    def sample(label: str) -> None:
        if pid is not None:
            value = rss_mb(pid)
            stats.rss.append({"at": label, "done": stats.done, "rss_mb": round(value, 1)})
            print(f"  rss {label:>12}: {value:7.1f} MiB", file=sys.stderr, flush=True)

    sample("start")
    # Warm-up: a few plain and streaming requests so arenas and caches reach steady state.
    for i in range(args.warmup):
        kind = "plain" if i % 2 == 0 else "streaming"
        await one(host, port, kind, random.Random(i), limits)
    sample("after warm-up")

    async def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        for _ in range(args.requests):
            if time.monotonic() > deadline:
                return
            kind = rng.choices(names, weights)[0]
            result = await one(host, port, kind, rng, limits)
            stats.outcomes[(result.kind, result.outcome)] += 1
            stats.seconds[result.kind].append(result.seconds)
            if not result.expected:
                if len(stats.unexpected) < 50:
                    stats.unexpected.append(
                        {
                            "kind": result.kind,
                            "outcome": result.outcome,
                            "detail": result.detail,
                            "at": time.strftime("%H:%M:%S"),
                        }
                    )
                print(
                    f"  UNEXPECTED {result.kind}: {result.outcome} {result.detail}",
                    file=sys.stderr,
                    flush=True,
                )
            stats.done += 1
            if stats.done % args.rss_every == 0:
                sample(f"{stats.done}/{total}")

    await asyncio.gather(*(client(i) for i in range(args.clients)))
    await asyncio.sleep(1.0)
    sample("end")
    return stats


def find_listener_pid(port: int) -> int | None:
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


def report(stats: Stats, elapsed: float, server_log: Path | None) -> dict[str, Any]:
    print(f"\n{stats.done} requests in {elapsed:.0f} s\n")
    print(f"{'kind':<26} {'outcome':<34} {'count':>6} {'median s':>9}")
    for (kind, outcome), count in sorted(stats.outcomes.items()):
        med = median(stats.seconds[kind])
        mark = "" if (outcome in KINDS[kind][2] or outcome == "error:busy") else "  <-- unexpected"
        print(f"{kind:<26} {outcome:<34} {count:>6} {med or 0:>9.3f}{mark}")
    n_unexpected = sum(
        c for (k, o), c in stats.outcomes.items() if not (o in KINDS[k][2] or o == "error:busy")
    )
    print(f"\nunexpected outcomes: {n_unexpected}")
    rss = [r["rss_mb"] for r in stats.rss]
    drift: float | None = None
    if len(stats.rss) >= 2:
        warm = stats.rss[1]["rss_mb"]
        drift = stats.rss[-1]["rss_mb"] - warm
        print(
            f"rss: start {rss[0]:.0f} MiB, after warm-up {warm:.0f} MiB, "
            f"max {max(rss):.0f} MiB, end {rss[-1]:.0f} MiB, drift since warm-up {drift:+.0f} MiB"
        )
    log_findings: dict[str, int] = {}
    if server_log is not None and server_log.exists():
        text = server_log.read_text(errors="replace")
        for needle in ("Traceback", " ERROR ", "internal-error", "Unexpected error"):
            log_findings[needle] = text.count(needle)
        print(f"server log {server_log}: {log_findings}")
    return {
        "requests": stats.done,
        "elapsed_seconds": elapsed,
        "outcomes": [
            {"kind": k, "outcome": o, "count": c} for (k, o), c in sorted(stats.outcomes.items())
        ],
        "unexpected_count": n_unexpected,
        "unexpected_examples": stats.unexpected,
        "rss": stats.rss,
        "rss_drift_since_warmup_mb": drift,
        "server_log_findings": log_findings,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", help="A running server (loopback only); default: start ours.")
    parser.add_argument("--pid", type=int, help="PID of the --uri server, for RSS.")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=500, help="Requests per client.")
    parser.add_argument("--max-seconds", type=float, default=1200.0, help="Stop after this.")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rss-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--max-text-chars",
        type=int,
        default=100_000,
        help="The server's text limit (for the too-long requests).",
    )
    parser.add_argument("--ours-python", type=Path, default=REPO / ".venv" / "bin" / "python")
    parser.add_argument("--output", type=Path)
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    server: Server | None = None
    pid: int | None = args.pid
    if args.uri:
        parsed = urlparse(args.uri)
        host, port = parsed.hostname or "", parsed.port or 0
        if parsed.scheme != "tcp" or not port:
            print("--uri must be tcp://HOST:PORT", file=sys.stderr)
            return 2
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            print("refusing a non-loopback target", file=sys.stderr)
            return 2
        if pid is None:
            pid = find_listener_pid(port)
    else:
        root = Path(tempfile.mkdtemp(prefix="wyoming-tts-soak-"))
        spec = ServerSpec(
            "ours",
            args.ours_python.absolute(),
            "wyoming_tts",
            [
                "--uri",
                "tcp://127.0.0.1:{port}",
                "--cache-dir",
                str(root / "cache"),
                "--max-text-chars",
                str(args.max_text_chars),
            ],
        )
        server = Server(spec, root)
        await server.start()
        host, port, pid = "127.0.0.1", server.port, server.pid
        print(f"started our server on port {port}, log {server.log_path}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        stats = await soak(args, host, port, pid)
        alive = server is None or (server.proc is not None and server.proc.poll() is None)
    finally:
        elapsed = time.perf_counter() - t0
        if server is not None:
            server.stop()
    summary = report(stats, elapsed, server.log_path if server else None)
    summary["server_alive_at_end"] = alive
    print(f"server alive at end: {alive}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = args.output or REPO / "bench" / "results" / f"soak-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2))
    print(f"JSON: {output}")
    return 0 if summary["unexpected_count"] == 0 and alive else 1


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
