"""What a run has done so far: a tqdm bar on a terminal, plain lines elsewhere, or nothing.

Counted in characters of text (what the user can relate to the book), with the
audio made, the real-time factor (compute seconds per audio second) and a time
estimate. Called on the event loop, a few times a minute: writing a line to
stderr is cheap enough there.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

_LOGGER = logging.getLogger("wyoming_tts.synth")

#: Plain mode logs a line each time the text done passes another this many percent.
LOG_EVERY_PERCENT = 10
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} chars [{elapsed}<{remaining}{postfix}]"


class Progress:
    """One run's counters, shown as a bar (``bar``), log lines, or not at all (``quiet``)."""

    def __init__(
        self,
        total_chars: int,
        *,
        bar: bool,
        quiet: bool,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total_chars = total_chars
        self.chars = 0
        self.audio_seconds = 0.0
        self._quiet = quiet
        self._clock = clock
        self._started = clock()
        self._next_log = LOG_EVERY_PERCENT
        self._bar = (
            tqdm(
                total=total_chars,
                unit="char",
                unit_scale=True,
                file=stream or sys.stderr,
                dynamic_ncols=True,
                bar_format=BAR_FORMAT,
            )
            if bar and not quiet
            else None
        )

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started

    @property
    def real_time_factor(self) -> float:
        return self.elapsed / self.audio_seconds if self.audio_seconds else 0.0

    def eta(self) -> float | None:
        """Seconds left at this run's rate so far; None before anything is done."""
        if not self.chars:
            return None
        return (self.total_chars - self.chars) * self.elapsed / self.chars

    def advance(self, chars: int, audio_seconds: float) -> None:
        self.chars += chars
        self.audio_seconds += audio_seconds
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"audio {self.audio_seconds:.0f}s, rtf {self.real_time_factor:.3f}", refresh=False
            )
            self._bar.update(chars)
        elif not self._quiet and self.total_chars:
            percent = 100 * self.chars / self.total_chars
            if percent >= self._next_log and self.chars < self.total_chars:
                self._next_log = (int(percent) // LOG_EVERY_PERCENT + 1) * LOG_EVERY_PERCENT
                self.note(self.summary())

    def summary(self) -> str:
        eta = self.eta()
        return (
            f"{self.chars}/{self.total_chars} chars, {self.audio_seconds:.1f} s of audio, "
            f"rtf {self.real_time_factor:.3f}"
            + (
                f", about {eta:.0f} s left"
                if eta is not None and self.chars < self.total_chars
                else ""
            )
        )

    def note(self, message: str) -> None:
        """A line for the user, above the bar if there is one."""
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            _LOGGER.info("%s", message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
