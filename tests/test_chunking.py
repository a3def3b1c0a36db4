"""The chunk planner alone: pure arithmetic, no onnxruntime, a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wyoming_tts.synth.chunking import (
    FIRST_CHUNK_FRAMES,
    FIRST_FLOW_FRAMES,
    LOW_WATER,
    MAX_CHUNK_FRAMES,
    MAX_FIRST_CHUNK_FACTOR,
    MIN_FLOW_PART_FRAMES,
    MIN_PART_FRAMES,
    PREFETCH_AHEAD,
    Pacing,
    flow_piece_end,
    heard_cut,
    heard_frame,
    next_frame_cost,
    plan_chunk,
    plan_parts,
    rest_fits_one_chunk,
)

from .conftest import FakeClock

MARGIN = 12


def test_first_chunk_is_small_and_grows_with_the_crowd() -> None:
    firsts = [
        plan_chunk(0, 1000, ahead=None, frame_cost=0.001, margin=MARGIN, requests_in_flight=n)
        for n in (0, 1, 2, 3, 8)
    ]
    f = FIRST_CHUNK_FRAMES
    assert firsts == [f, f, 2 * f, 3 * f, MAX_FIRST_CHUNK_FACTOR * f]


def test_later_chunks_are_what_the_audio_ahead_affords() -> None:
    # 1 s ahead at 1 ms a frame: 600 frames affordable, capped at the maximum chunk.
    assert plan_chunk(16, 5000, ahead=1.0, frame_cost=0.001, margin=MARGIN) == 16 + MAX_CHUNK_FRAMES
    # 0.1 s ahead: 60 frames affordable, less both margins.
    assert plan_chunk(16, 5000, ahead=0.1, frame_cost=0.001, margin=MARGIN) == 16 + 60 - 2 * MARGIN


def test_little_ahead_still_makes_progress() -> None:
    assert (
        plan_chunk(16, 5000, ahead=-1.0, frame_cost=0.001, margin=MARGIN) == 16 + FIRST_CHUNK_FRAMES
    )


def test_a_remainder_that_fits_is_taken_whole() -> None:
    assert plan_chunk(100, 300, ahead=5.0, frame_cost=0.001, margin=MARGIN) == 300


def test_no_crumbs_at_the_end() -> None:
    total = 16 + FIRST_CHUNK_FRAMES + FIRST_CHUNK_FRAMES - 1
    assert plan_chunk(16, total, ahead=0.0, frame_cost=0.001, margin=MARGIN) == total


@given(
    start=st.integers(0, 5000),
    length=st.integers(1, 5000),
    ahead=st.one_of(st.none(), st.floats(-10, 10)),
    cost=st.floats(1e-5, 0.1),
    crowd=st.integers(0, 20),
    parts=st.integers(1, 4),
)
def test_every_plan_moves_forward_within_bounds(
    start: int, length: int, ahead: float | None, cost: float, crowd: int, parts: int
) -> None:
    total = start + length
    end = plan_chunk(
        start,
        total,
        ahead=ahead,
        frame_cost=cost,
        margin=MARGIN,
        requests_in_flight=crowd,
        parts=parts,
    )
    crumbs = (
        FIRST_CHUNK_FRAMES if ahead is None else max(FIRST_CHUNK_FRAMES, parts * MIN_PART_FRAMES)
    )
    assert start < end <= total
    taken_whole = end == total and length <= MAX_CHUNK_FRAMES + 2 * MARGIN + crumbs
    assert end - start <= MAX_CHUNK_FRAMES + crumbs or taken_whole
    assert end == total or total - end >= crumbs


def test_parts_afford_more_and_leave_no_rest_for_one_worker() -> None:
    # 0.1 s ahead at 1 ms a frame, two workers at once: 120 frames, less both margins.
    assert plan_chunk(16, 5000, ahead=0.1, frame_cost=0.001, margin=MARGIN, parts=2) == (
        16 + 120 - 2 * MARGIN
    )
    # A rest under two parts' worth is taken now rather than decoded alone after.
    total = 16 + 120 - 2 * MARGIN + 2 * MIN_PART_FRAMES - 1
    assert plan_chunk(16, total, ahead=0.1, frame_cost=0.001, margin=MARGIN, parts=2) == total


def test_frame_cost_is_a_moving_estimate() -> None:
    assert next_frame_cost(0.001, 0.3, 100) == 0.5 * 0.001 + 0.5 * 0.003
    assert next_frame_cost(0.001, 0.0, 0) == 0.0005  # no frames: no division by zero


def test_pacing_tracks_audio_ahead_of_playback() -> None:
    clock = FakeClock(100.0)
    pacing = Pacing(frame_cost=0.001, clock=clock)
    assert pacing.ahead() is None and pacing.starving()
    assert not pacing.timed(0.5, 10)  # before first audio: not a vocoder timing
    assert pacing.frame_cost == 0.001
    pacing.emitted(0.2)
    assert pacing.started and pacing.ahead() == 0.2
    assert pacing.starving()  # under LOW_WATER left
    pacing.emitted(LOW_WATER)
    assert not pacing.starving()
    clock.now += 1.0  # playback overtook production
    assert pacing.timed(0.01, 10)
    assert pacing.frame_cost == next_frame_cost(0.001, 0.01, 10)


def test_well_ahead_is_plenty_left_to_play() -> None:
    clock = FakeClock(0.0)
    pacing = Pacing(clock=clock)
    assert not pacing.well_ahead()  # nothing played yet
    pacing.emitted(PREFETCH_AHEAD + 1.0)
    assert pacing.well_ahead()
    clock.now += 1.5
    assert not pacing.well_ahead()


def test_the_flow_beside_a_chunk_covers_what_the_next_can_take() -> None:
    # Beside the first window: about that window's time of flow.
    assert flow_piece_end(16, 2000, margin=MARGIN, first=True) == 16 + FIRST_FLOW_FRAMES
    # Beside a later chunk: the largest next chunk, with its margins.
    assert flow_piece_end(300, 2000, margin=MARGIN) == 300 + MAX_CHUNK_FRAMES + 2 * MARGIN
    # A short rest is flowed now, not left for a run of its own.
    assert flow_piece_end(16, 16 + FIRST_FLOW_FRAMES + 100, margin=MARGIN, first=True) == (
        16 + FIRST_FLOW_FRAMES + 100
    )
    assert flow_piece_end(0, 50, margin=MARGIN) == 50


def test_before_the_reply_is_heard_the_flow_stops_where_it_is() -> None:
    """Flow past the frame HA's ffmpeg waits for would only delay it (`heard_frame`)."""
    # A later utterance whose 128th frame is heard: its lookahead flow stops there...
    heard_at = heard_frame(0, HEARD - 128 * HOP, HEARD, HOP)
    assert heard_at == 128
    assert flow_piece_end(0, 391, margin=MARGIN, heard_at=heard_at) == 128
    # ...and beside a chunk that ends short of it, the flow covers the way to it only.
    assert flow_piece_end(16, 2000, margin=MARGIN, heard_at=100) == 100
    # Past it, or with only a short rest after it, the flow is as before.
    assert flow_piece_end(300, 2000, margin=MARGIN, heard_at=200) == (
        300 + MAX_CHUNK_FRAMES + 2 * MARGIN
    )
    assert flow_piece_end(0, 216, margin=MARGIN, heard_at=159) == 216
    assert flow_piece_end(16, 2000, margin=MARGIN, first=True, heard_at=400) == 144
    assert heard_frame(0, HEARD, HEARD, HOP) is None


def test_the_rest_fits_one_chunk_as_plan_chunk_would_take_it() -> None:
    total = 1000
    end = total - MAX_CHUNK_FRAMES - 2 * MARGIN
    assert rest_fits_one_chunk(end, total, margin=MARGIN)
    assert not rest_fits_one_chunk(end - 1, total, margin=MARGIN)
    # plan_chunk agrees: with enough ahead, that rest is one chunk, and a longer one not.
    assert plan_chunk(end, total, ahead=100.0, frame_cost=0.001, margin=MARGIN) == total
    assert plan_chunk(end - 100, total, ahead=100.0, frame_cost=0.001, margin=MARGIN) < total


def test_a_chunk_is_shared_in_near_equal_parts_in_order() -> None:
    assert plan_parts(16, 261, 2) == [(16, 138), (138, 261)]
    assert plan_parts(0, 100, 4) == [(0, 33), (33, 66), (66, 100)]  # parts of 32 at least
    assert plan_parts(10, 10 + 2 * MIN_PART_FRAMES - 1, 2) == [(10, 73)]  # too short to share
    assert plan_parts(0, 300, 1) == [(0, 300)]
    # The flow's parts each read their reach again: fewer, larger ones.
    assert plan_parts(0, 100, 2, min_frames=MIN_FLOW_PART_FRAMES) == [(0, 100)]
    assert plan_parts(0, 130, 2, min_frames=MIN_FLOW_PART_FRAMES) == [(0, 65), (65, 130)]


@given(st.integers(0, 2000), st.integers(1, 400), st.integers(1, 8))
def test_parts_cover_the_chunk_exactly(start: int, frames: int, parts: int) -> None:
    spans = plan_parts(start, start + frames, parts)
    assert spans[0][0] == start and spans[-1][1] == start + frames
    assert all(a < b for a, b in spans)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    assert len(spans) == 1 or all(b - a >= MIN_PART_FRAMES for a, b in spans)
    assert len(spans) <= parts


HOP = 256
HEARD = 102400  # what HA's ffmpeg gathers at 22050 Hz (audio.ffmpeg_gathers)


def test_a_chunk_that_crosses_what_ffmpeg_gathers_ends_there() -> None:
    """The first frame whose audio reaches HEARD ends the chunk that would cross it."""
    produced = 3 * 22050
    end = heard_cut(100, 400, produced, HEARD, HOP)
    assert 100 < end < 400
    assert produced + (end - 100) * HOP >= HEARD
    assert produced + (end - 101) * HOP < HEARD


def test_chunks_before_after_or_a_crumb_short_of_it_are_left_alone() -> None:
    assert heard_cut(0, 100, 4410, HEARD, HOP) == 100  # ends before it
    assert heard_cut(500, 800, HEARD + 2205, HEARD, HOP) == 800  # already heard
    needed = -(-(HEARD - 3 * 22050) // HOP)
    assert heard_cut(0, needed + FIRST_CHUNK_FRAMES - 2, 3 * 22050, HEARD, HOP) == (
        needed + FIRST_CHUNK_FRAMES - 2
    )
    assert heard_cut(0, needed + FIRST_CHUNK_FRAMES, 3 * 22050, HEARD, HOP) == needed
