"""A frontend whose noise comes from numpy, seeded per call: the same seed, the same audio.

onnxruntime's random ops take their seed when the session is made, and their
state then runs on from call to call, so a frontend's noise depends on every
call before it. Here each `RandomNormalLike` of the split frontend is replaced
by a graph input: a noise buffer fed from ``numpy.random.default_rng(seed)``,
tiled if the graph needs more than was fed (the prior's frames are only known
inside the graph) and cut to the shape the op would have made. Built once per
voice from the cached split frontend; nothing else about the voice changes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from onnxruntime import InferenceSession, RunOptions, SessionOptions

from ..runtime.ort import PROVIDERS
from .split import split_voice_model
from .vits import Decoder, Latent

if TYPE_CHECKING:  # onnx (~11 MB resident) is imported only by a seedable voice's load
    import onnx

_LOGGER = logging.getLogger(__name__)

#: Frames of prior noise fed per phoneme id (a buffer tiled if an utterance needs more):
#: Piper voices speak ~2-4 frames per id at length 1; 8 covers slow speech without a tile.
FRAMES_PER_ID = 8
#: Channels of the duration predictor's noise in VITS (its shape is not in the graph).
DURATION_CHANNELS = 2
#: Graph input names of the fed noise, one per replaced op, in graph order.
NOISE_INPUT = "seeded_noise_{}"


@dataclass(frozen=True)
class NoiseSpec:
    """One fed noise: its input name and its fixed leading dims (the last one varies)."""

    name: str
    channels: int
    per_id: int
    """Last-dim length fed per phoneme id."""


def seed_noise(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[NoiseSpec]] | None:
    """``model`` with every RandomNormalLike fed from an input; None if one is not 3-D."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    shapes = _shapes(model)
    specs: list[NoiseSpec] = []
    nodes = []
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        shape = shapes.get(node.input[0])
        if shape is None or len(shape) != 3:
            return None
        i = len(specs)
        name = NOISE_INPUT.format(i)
        # The prior's noise (channels known from its weights) has one value per frame; the
        # duration predictor's, made from a shape at run time, is [1, 2, ids] in VITS.
        channels, per_id = (
            (shape[1], FRAMES_PER_ID) if isinstance(shape[1], int) else (DURATION_CHANNELS, 1)
        )
        specs.append(NoiseSpec(name, channels, per_id))
        graph.input.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, f"noise_{i}"])
        )
        nodes += _fed_noise(name, node.input[0], node.output[0], prefix=f"/seeded_noise_{i}")
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model, specs


def _fed_noise(noise: str, like: str, out: str, prefix: str) -> list[onnx.NodeProto]:
    """Nodes making ``out``: ``noise`` tiled along its last axis and cut to ``like``'s shape."""
    from onnx import TensorProto, helper

    def n(name: str) -> str:
        return f"{prefix}/{name}"

    def const(name: str, values: Sequence[int]) -> onnx.NodeProto:
        return helper.make_node(
            "Constant",
            [],
            [n(name)],
            value=helper.make_tensor(n(name), TensorProto.INT64, [len(values)], list(values)),
        )

    return [
        helper.make_node("Shape", [like], [n("want")]),
        helper.make_node("Shape", [noise], [n("have")]),
        const("last", [2]),
        const("one", [1]),
        const("zeros", [0, 0, 0]),
        const("axes", [0, 1, 2]),
        helper.make_node("Gather", [n("want"), n("last")], [n("want_len")], axis=0),
        helper.make_node("Gather", [n("have"), n("last")], [n("have_len")], axis=0),
        # ceil(want / have) copies: (want + have - 1) // have
        helper.make_node("Add", [n("want_len"), n("have_len")], [n("sum")]),
        helper.make_node("Sub", [n("sum"), n("one")], [n("sum1")]),
        helper.make_node("Div", [n("sum1"), n("have_len")], [n("copies")]),
        helper.make_node("Concat", [n("one"), n("one"), n("copies")], [n("repeats")], axis=0),
        helper.make_node("Tile", [noise, n("repeats")], [n("tiled")]),
        helper.make_node("Slice", [n("tiled"), n("zeros"), n("want"), n("axes")], [out]),
    ]


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Inferred shapes by tensor name (dims as ints, symbols, or None)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, list[int | str | None]] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        out[info.name] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim
        ]
    return out


def utterance_seed(seed: int, text: str, position: int) -> int:
    """A 64-bit seed for one utterance from the run's seed, its text and its position."""
    digest = hashlib.sha256(f"{seed}\0{position}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class SeededFrontend:
    """The voice's frontend with fed noise; its `frontend` is `VitsModel.frontend` plus a seed.

    Thread-safe as a session is: `run` may be called from several threads at once.
    """

    def __init__(
        self,
        session: InferenceSession,
        specs: Sequence[NoiseSpec],
        decoder: Decoder,
        run_options: RunOptions | None = None,
    ) -> None:
        self._session = session
        self._specs = tuple(specs)
        self._decoder = decoder
        self._run_options = run_options or RunOptions()
        self._inputs = frozenset(i.name for i in session.get_inputs())
        self._outputs = [o.name for o in session.get_outputs()]

    def frontend(
        self,
        phoneme_ids: Sequence[int],
        scales: tuple[float, float, float],
        speaker_id: int | None,
        seed: int,
    ) -> Latent:
        ids = np.asarray(phoneme_ids, dtype=np.int64).reshape(1, -1)
        if ids.shape[1] == 0:
            raise ValueError("phoneme_ids must not be empty")
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {
            "input": ids,
            "input_lengths": np.array([ids.shape[1]], dtype=np.int64),
            "scales": np.asarray(scales, dtype=np.float32),
            "sid": np.array([speaker_id or 0], dtype=np.int64),
        }
        for spec in self._specs:
            shape = (1, spec.channels, ids.shape[1] * spec.per_id)
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32)
        used = {k: v for k, v in feeds.items() if k in self._inputs}
        outputs = self._session.run(None, used, self._run_options)
        return self._decoder.latent(_named(self._outputs, outputs))


def _named(names: Sequence[str], values: Sequence[np.ndarray]) -> Mapping[str, np.ndarray]:
    return dict(zip(names, values, strict=True))


def load_seeded(
    model_path: Path, cache_dir: Path, options: SessionOptions, decoder: Decoder
) -> SeededFrontend | None:
    """The seeded frontend of a loaded voice (its cached split frontend, else its whole
    graph); None, with the reason logged, if its noise cannot be fed."""
    import onnx

    split = split_voice_model(model_path, cache_dir)
    source = split.frontend_path if split is not None else model_path
    seeded = seed_noise(onnx.load(str(source)))
    if seeded is None:
        _LOGGER.warning("Cannot seed the noise of %s: a random op is not 3-D", model_path)
        return None
    model, specs = seeded
    session = InferenceSession(model.SerializeToString(), sess_options=options, providers=PROVIDERS)
    return SeededFrontend(session, specs, decoder)
