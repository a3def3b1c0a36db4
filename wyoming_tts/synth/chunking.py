"""How many frames to decode next: small first, then as much as the audio ahead affords.

The first chunk of a response is small, so audio leaves at once. After it, each
chunk is sized by how far the audio already produced is ahead of real-time
playback, at the decoder's measured cost per frame: later chunks are large, and
the total compute stays close to one unchunked decode. `plan_chunk` is pure;
`Pacing` keeps the one response's clock and cost estimate that feed it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..voices.loader import MAX_CHUNK_FRAMES

#: Frames (11.6 ms each at 22 kHz) of a response's first chunk; 8 gained nothing
#: measurable and left a gap in 5 of 15 replies (docs/decisions.md).
FIRST_CHUNK_FRAMES = 16
#: The first chunk grows with the requests in flight, up to this many times its size:
#: the next chunk waits its turn behind theirs, and the first must last until it is ready.
MAX_FIRST_CHUNK_FACTOR = 4
#: Share of the audio already ahead of playback that the next chunk may take to compute.
SAFETY = 0.6
#: Seconds of audio ahead of playback below which a playing response's steps are urgent
#: too, so new requests' first steps cannot starve it into a gap.
LOW_WATER = 0.5
#: Seconds of audio ahead of playback from which the next utterance's frontend may take a
#: worker while this utterance still has more than one chunk to go. Home Assistant's
#: ffmpeg step plays nothing until it has ~4.6 s (`audio.ffmpeg_gathers`): a reply's own
#: chunks come first till then.
PREFETCH_AHEAD = 5.0
#: Fewest frames in one part of a chunk shared between idle workers: each part decodes
#: its own margins, so smaller parts cost more than running them together saves.
MIN_PART_FRAMES = 32
#: Frames the flow runs over beside a response's first window, on another worker: a little
#: longer than that window (16 frames, its margins and their flow; ~47 against 33 ms traced).
FIRST_FLOW_FRAMES = 128
#: Fewest frames in one of the flow's parts run at once: each reads 32 more on each side.
MIN_FLOW_PART_FRAMES = 64
#: Guess of decoder seconds per frame for a voice not yet timed (its warm-up times it).
INITIAL_FRAME_COST = 0.0008


def plan_chunk(
    start: int,
    total: int,
    *,
    ahead: float | None,
    frame_cost: float,
    margin: int,
    requests_in_flight: int = 1,
    parts: int = 1,
) -> int:
    """End frame of the chunk that starts at ``start`` of a ``total``-frame utterance.

    ``ahead`` is the seconds of audio produced beyond what has played, None before
    the response's first audio; ``margin`` the frames of context decoded on each side;
    ``parts`` how many workers will share a later chunk (`plan_parts`).
    """
    if ahead is None:
        crowd = min(MAX_FIRST_CHUNK_FACTOR, max(1, requests_in_flight))
        end = start + min(MAX_CHUNK_FRAMES, FIRST_CHUNK_FRAMES * crowd)
    else:
        # Parts decoded at once: the wall time per frame is a share of one worker's.
        affordable = int(max(0.0, ahead * SAFETY) / (frame_cost / parts))
        if total - start <= min(affordable, MAX_CHUNK_FRAMES + 2 * margin):
            # Whole is cheaper than cut (no overlap decoded twice) and costs the
            # memory of a maximal chunk with its margins.
            end = total
        else:
            frames = max(FIRST_CHUNK_FRAMES, affordable - 2 * margin)
            end = start + min(MAX_CHUNK_FRAMES, frames)
    crumbs = (
        FIRST_CHUNK_FRAMES if ahead is None else max(FIRST_CHUNK_FRAMES, parts * MIN_PART_FRAMES)
    )
    if total - end < crumbs:
        # No crumbs at the end of an utterance: a rest too short to share between the
        # workers would be decoded by one of them while the others wait.
        end = total
    return min(end, total)


def heard_frame(start: int, produced: int, heard: int, hop: int) -> int | None:
    """The first frame whose audio reaches ``heard`` samples of the reply; None once reached.

    ``produced``: samples of the reply before frame ``start``, of ``hop`` each a frame.
    """
    if produced >= heard:
        return None
    return start + max(1, -(-(heard - produced) // hop))


def heard_cut(start: int, end: int, produced: int, heard: int, hop: int) -> int:
    """``end``, or the first frame whose audio reaches ``heard`` samples if the chunk crosses it.

    A satellite hears a long reply once HA's ffmpeg has ``heard`` samples of it
    (`audio.ffmpeg_gathers`), so what lies past that point in the same chunk only delays
    it; the rest comes in the next chunk. ``produced``: samples sent before ``start``, of
    ``hop`` each a frame. Not for a crumb: a rest under FIRST_CHUNK_FRAMES stays here.
    """
    reach = heard_frame(start, produced, heard, hop)
    return reach if reach is not None and reach <= end - FIRST_CHUNK_FRAMES else end


def plan_parts(
    start: int, end: int, parts: int, *, min_frames: int = MIN_PART_FRAMES
) -> list[tuple[int, int]]:
    """Frames [start, end) as up to ``parts`` spans of near-equal length, in order.

    Each span is decoded on its own worker at once: on two cores a lone reply ends ~20%
    sooner than with one decode on two threads (docs/decisions.md).
    """
    count = max(1, min(parts, (end - start) // min_frames))
    bounds = [start + (end - start) * i // count for i in range(count + 1)]
    return list(itertools.pairwise(bounds))


def flow_piece_end(
    end: int, total: int, *, margin: int, first: bool = False, heard_at: int | None = None
) -> int:
    """Where the flow run beside the chunk that ends at ``end`` stops.

    Beside a later chunk it covers as far as the next can reach (`plan_chunk`), so that
    one costs only the vocoder and no worker waits for a flow over the whole utterance;
    beside the ``first`` window it covers what the flow does in about that window's time.
    Before the reply is heard it stops at ``heard_at`` (`heard_frame`): until then every
    worker's time is on the way to what HA's ffmpeg waits for, and flow past it is not.
    A short rest is flowed now: it would cost another run with its own reach of context.
    """
    piece = end + (FIRST_FLOW_FRAMES if first else MAX_CHUNK_FRAMES + 2 * margin)
    if heard_at is not None and heard_at > end:
        piece = min(piece, heard_at)
    return total if total - piece < MAX_CHUNK_FRAMES // 2 else piece


def rest_fits_one_chunk(end: int, total: int, *, margin: int) -> bool:
    """Whether what follows frame ``end`` can be taken by one more chunk (`plan_chunk`)."""
    return total - end <= MAX_CHUNK_FRAMES + 2 * margin


def fixed_chunk(start: int, total: int, *, margin: int) -> int:
    """End frame of the chunk at ``start`` in a plan that ignores time and load.

    For files, not listeners: the same frames are decoded the same way on every run, so
    the samples are too (the paced plan's seams move with timing, a few LSB apart).
    """
    if total - start <= MAX_CHUNK_FRAMES + 2 * margin:
        return total
    end = start + MAX_CHUNK_FRAMES
    return total if total - end < FIRST_CHUNK_FRAMES else end


def next_frame_cost(cost: float, seconds: float, frames: int) -> float:
    """Moving estimate of decoder seconds per frame, from one timed decode."""
    return 0.5 * cost + 0.5 * (seconds / max(1, frames))


@dataclass
class Pacing:
    """One response's playback clock: audio produced against audio played."""

    frame_cost: float = INITIAL_FRAME_COST
    clock: Callable[[], float] = time.perf_counter
    produced: float = 0.0
    """Seconds of audio produced so far."""
    started_at: float | None = None
    """When the first audio left; playback is assumed to start then."""

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def ahead(self) -> float | None:
        """Seconds of audio produced but not yet played; None before the first audio."""
        if self.started_at is None:
            return None
        return self.produced - (self.clock() - self.started_at)

    def starving(self) -> bool:
        """Before the first audio, or with under LOW_WATER seconds of it left to play."""
        ahead = self.ahead()
        return ahead is None or ahead < LOW_WATER

    def well_ahead(self) -> bool:
        """With PREFETCH_AHEAD seconds of audio or more left to play."""
        ahead = self.ahead()
        return ahead is not None and ahead >= PREFETCH_AHEAD

    def timed(self, seconds: float, frames: int) -> bool:
        """Record one decode after the first; True if playback ran dry meanwhile."""
        if self.started_at is None:
            return False  # the first window also runs the flow: not a vocoder timing
        self.frame_cost = next_frame_cost(self.frame_cost, seconds, frames)
        ahead = self.ahead()
        return ahead is not None and ahead < 0

    def emitted(self, seconds: float) -> None:
        if self.started_at is None:
            self.started_at = self.clock()
        self.produced += seconds
