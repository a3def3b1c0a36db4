"""Split one voice into the cache, in a process of its own: ``python -m wyoming_tts.model.split
MODEL CACHE_DIR``.

The server runs this in the background for every voice it has not split yet. A child
process at the lowest CPU priority takes the split (seconds of Python graph analysis
and ~3x the model in parse buffers) off the server's interpreter lock and heap: the
server's requests never wait for it, and its memory is the OS's again when it exits.
The last line on stdout is ``{"split": true}`` (or false: no seam); warnings go to
stderr, one a line, for the server to log.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ...runtime.scheduler import lowest_priority
from .lookup import split_voice_model


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m wyoming_tts.model.split MODEL CACHE_DIR", file=sys.stderr)
        return 2
    lowest_priority()  # the server sets it too, before this runs
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    split = split_voice_model(Path(argv[0]), Path(argv[1]))
    print(json.dumps({"split": split is not None}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
