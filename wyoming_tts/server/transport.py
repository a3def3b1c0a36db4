"""Listeners, chosen from the endpoint (as `wyoming`'s `AsyncServer.from_uri` does).

Each gives every new connection's streams to one handler and can be stopped;
stdio is one connection that lasts as long as its peer does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from wyoming.event import async_get_stdin, async_get_stdout

from ..config import Endpoint
from .protocol import MAX_HEADER_BYTES

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Transport(Protocol):
    async def start(self, handler: Handler) -> None:
        """Start accepting; returns once listening."""

    async def serve(self, stop: asyncio.Event) -> None:
        """Return when ``stop`` is set, or when the transport has nobody left to serve."""

    async def close(self) -> None:
        """Stop accepting; connections already open are the caller's to finish."""

    @property
    def port(self) -> int | None:
        """The TCP port bound (useful with port 0), else None."""


def transport_for(endpoint: Endpoint) -> Transport:
    return _Stdio() if endpoint.scheme == "stdio" else _Listener(endpoint)


class _Listener:
    """tcp:// or unix://: a socket server."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._server: asyncio.Server | None = None

    async def start(self, handler: Handler) -> None:
        endpoint = self._endpoint
        if endpoint.path is not None:
            await asyncio.to_thread(_unlink, endpoint.path)
            self._server = await asyncio.start_unix_server(
                handler, path=str(endpoint.path), limit=MAX_HEADER_BYTES
            )
        else:
            self._server = await asyncio.start_server(
                handler,
                host=endpoint.host,
                port=endpoint.port,
                limit=MAX_HEADER_BYTES,
                reuse_address=True,
            )

    async def serve(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        if self._endpoint.path is not None:
            await asyncio.to_thread(_unlink, self._endpoint.path)

    @property
    def port(self) -> int | None:
        if self._endpoint.scheme != "tcp" or self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])


class _Stdio:
    """stdio://: one connection on stdin/stdout, e.g. under a process supervisor."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def start(self, handler: Handler) -> None:
        reader = await async_get_stdin()
        writer = await async_get_stdout()
        self._task = asyncio.create_task(_run(handler, reader, writer), name="stdio-connection")

    async def serve(self, stop: asyncio.Event) -> None:
        stopped = asyncio.create_task(stop.wait(), name="stdio-stop")
        waiting = {stopped} if self._task is None else {stopped, self._task}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()

    async def close(self) -> None:
        return None

    @property
    def port(self) -> int | None:
        return None


async def _run(
    handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await handler(reader, writer)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
