"""Docker HEALTHCHECK: a Describe round trip, not just a connect.

The port stays bound by the OS even if the event loop is wedged; an `info`
answer proves the accept loop and the handler both still run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from wyoming.client import AsyncClient
from wyoming.info import Describe, Info


async def check(uri: str) -> None:
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Describe().event())
        while True:
            event = await client.read_event()
            if event is None:
                raise RuntimeError("connection closed without info")
            if Info.is_type(event.type):
                if not Info.from_event(event).tts:
                    raise RuntimeError("no TTS program in info")
                return


def main() -> int:
    parser = argparse.ArgumentParser(prog="wyoming_tts.health_check")
    parser.add_argument("--uri", default="tcp://127.0.0.1:10200")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    try:
        asyncio.run(asyncio.wait_for(check(args.uri), timeout=args.timeout))
    except Exception as err:
        print(f"unhealthy: {str(err) or type(err).__name__}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
