"""`python -m wyoming_tts` / `wyoming-tts`: parse settings, run the app, exit 0 on a clean stop."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from .config import ConfigError, load_settings
from .runtime.memory import tune_malloc
from .runtime.ort import share_cpu_arena
from .server.app import App, StartupError, configure_logging

_LOGGER = logging.getLogger("wyoming_tts")


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["synth"]:
        # Imported here: the server never pays for the long-form readers (ebooklib, pypdf).
        from .longform.command import main as synth_main

        return synth_main(args[1:])
    try:
        settings, warnings = load_settings(argv)
    except ConfigError as err:
        print(f"wyoming-tts: invalid setting {err}", file=sys.stderr)
        return 2
    tune_malloc()  # before any worker thread exists
    share_cpu_arena()  # before any session is opened
    configure_logging(settings)
    for warning in warnings:
        _LOGGER.warning(warning)
    _LOGGER.debug("%s", settings)
    try:
        asyncio.run(App(settings).run())
    except StartupError as err:
        _LOGGER.error("Cannot start: %s", err)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
