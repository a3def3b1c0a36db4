"""Split a Piper (VITS) ONNX voice into a per-utterance frontend and frame-local decoders.

The frontend (text encoder, duration predictor, alignment, prior sampling) runs once per
utterance; the decoder (flow + HiFi-GAN) is convolutional over frames, so it can be run on
overlapping windows of the latent and streamed. The decoder is cut once more, between the
flow and the vocoder: the flow is cheap per frame but reaches 32 frames each way, the
vocoder is most of the cost but reaches only ~12, so running the flow over a whole
utterance once and the vocoder in windows re-decodes far fewer frames at chunk seams.
Seams are found from the graph structure (never node names), margins from the convolution
geometry, and the parts are cached on disk, keyed by the model's sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

_LOGGER = logging.getLogger(__name__)

#: Bump when the split logic or the cache layout changes, so stale caches are ignored.
CACHE_VERSION = 4

_RANDOM_OPS = frozenset({"RandomNormalLike", "RandomNormal", "RandomUniformLike", "RandomUniform"})
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_SPEAKER_INPUT = "sid"
_META_FILE = "split.json"
_FRONTEND_FILE = "frontend.onnx"
_DECODER_FILE = "decoder.onnx"
_FLOW_FILE = "flow.onnx"
_VOCODER_FILE = "vocoder.onnx"
#: Ops that act on each frame independently (or only broadcast over frames).
_POINTWISE_OPS = frozenset(
    {"Add", "Sub", "Mul", "Div", "Neg", "Exp", "Log", "Pow", "Sqrt", "Abs", "Erf", "Cast"}
    | {"Identity", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Softplus", "Clip", "Where"}
    | {"Max", "Min", "Sum"}
)
#: Ops whose output carries no frame content (shapes, constants).
_SHAPE_OPS = frozenset({"Shape", "Size", "Constant", "ConstantOfShape"})
#: Ops that are frame-local unless they act on the frame axis (axis 2 of [N, C, T]).
_AXIS_OPS = frozenset({"Slice", "Split", "Concat", "Unsqueeze", "Squeeze"})


@dataclass(frozen=True)
class VocoderStage:
    """A later upsampling stage of the vocoder, run on its own over frame sub-windows."""

    path: Path
    input_name: str
    rate: int
    """Samples per frame of its input."""
    margin: int
    """Frames of context it needs on each side."""


@dataclass(frozen=True)
class VocoderSplit:
    """The decoder cut between flow and vocoder, with each part's reach in frames.

    ``vocoder_path`` computes the vocoder up to its first upsampling stage, or all of it
    when ``tail`` is empty; the ``tail`` stages then follow one after another.
    """

    flow_path: Path
    vocoder_path: Path
    seam_name: str
    flow_margin: int
    vocoder_margin: int
    tail: tuple[VocoderStage, ...] = ()
    tail_context: int | None = None
    """Frames of the first stage's output the later stages together reach on each side
    (None: not known); they need not run over all of a window's context."""


@dataclass(frozen=True)
class SplitModel:
    """Paths of the cached halves and the names of the tensors crossing the seam."""

    frontend_path: Path
    decoder_path: Path
    z_name: str
    mask_name: str
    g_name: str | None
    vocoder: VocoderSplit | None = None


@dataclass(frozen=True)
class _Cut:
    z_name: str
    mask_name: str
    g_name: str | None
    frontend_nodes: list[int]
    decoder_nodes: list[int]


def split_voice_model(model_path: Path, cache_dir: Path) -> SplitModel | None:
    """Return the cached frontend/decoder split of ``model_path``, computing it if needed.

    Returns None when no seam is recognised; that verdict is cached too, so the (slow)
    analysis of an unsplittable voice is not repeated on every load.
    """
    digest = _sha256(model_path)
    entry_dir = cache_dir / digest[:16]
    hit, cached = _read_cache(entry_dir, digest)
    if hit:
        return cached

    model = onnx.load(str(model_path))
    cut = _find_cut(model)
    entry_dir.mkdir(parents=True, exist_ok=True)
    if cut is None:
        _write_json(entry_dir / _META_FILE, {"version": CACHE_VERSION, "sha256": digest})
        return None

    frontend, decoder = _build_models(model, cut)
    for part in (frontend, decoder):
        onnx.checker.check_model(part)
    frontend_path = entry_dir / _FRONTEND_FILE
    decoder_path = entry_dir / _DECODER_FILE
    _write_atomic(frontend_path, frontend.SerializeToString())
    _write_atomic(decoder_path, decoder.SerializeToString())
    meta: dict[str, object] = {
        "version": CACHE_VERSION,
        "sha256": digest,
        "z_name": cut.z_name,
        "mask_name": cut.mask_name,
        "g_name": cut.g_name,
    }
    vocoder = _split_decoder(decoder, cut, entry_dir)
    if vocoder is not None:
        meta["vocoder"] = {
            "seam_name": vocoder.seam_name,
            "flow_margin": vocoder.flow_margin,
            "vocoder_margin": vocoder.vocoder_margin,
            "tail": [
                {"input": t.input_name, "rate": t.rate, "margin": t.margin} for t in vocoder.tail
            ],
            "tail_context": vocoder.tail_context,
        }
    else:
        _LOGGER.info("No flow/vocoder seam in %s; decoding flow and vocoder together", model_path)
    # The json is written last: it is the marker that all model files are complete.
    _write_json(entry_dir / _META_FILE, meta)
    _LOGGER.debug(
        "Split %s: z=%s mask=%s g=%s (frontend %d nodes, decoder %d nodes)",
        model_path,
        cut.z_name,
        cut.mask_name,
        cut.g_name,
        len(cut.frontend_nodes),
        len(cut.decoder_nodes),
    )
    return SplitModel(frontend_path, decoder_path, cut.z_name, cut.mask_name, cut.g_name, vocoder)


# --------------------------------------------------------------------------- cache


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_cache(entry_dir: Path, digest: str) -> tuple[bool, SplitModel | None]:
    """(hit, split): a hit with None is a cached "no seam"; damaged entries are misses."""
    try:
        meta = json.loads((entry_dir / _META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False, None
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        return False, None
    if meta.get("sha256") != digest:
        return False, None
    z_name, mask_name, g_name = meta.get("z_name"), meta.get("mask_name"), meta.get("g_name")
    if z_name is None:
        return True, None
    frontend_path = entry_dir / _FRONTEND_FILE
    decoder_path = entry_dir / _DECODER_FILE
    if not (
        isinstance(z_name, str)
        and isinstance(mask_name, str)
        and (g_name is None or isinstance(g_name, str))
        and frontend_path.is_file()
        and decoder_path.is_file()
    ):
        return False, None
    vocoder: VocoderSplit | None = None
    spec = meta.get("vocoder")
    if spec is not None:
        flow_path, vocoder_path = entry_dir / _FLOW_FILE, entry_dir / _VOCODER_FILE
        try:
            tail = tuple(
                VocoderStage(
                    entry_dir / _stage_file(i),
                    str(stage["input"]),
                    int(stage["rate"]),
                    int(stage["margin"]),
                )
                for i, stage in enumerate(spec["tail"], start=1)
            )
            context = spec.get("tail_context")
            vocoder = VocoderSplit(
                flow_path,
                vocoder_path,
                str(spec["seam_name"]),
                int(spec["flow_margin"]),
                int(spec["vocoder_margin"]),
                tail,
                None if context is None else int(context),
            )
        except (TypeError, KeyError, ValueError):
            return False, None
        paths = [flow_path, vocoder_path, *(t.path for t in tail)]
        if not all(path.is_file() for path in paths):
            return False, None
    return True, SplitModel(frontend_path, decoder_path, z_name, mask_name, g_name, vocoder)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file + rename so concurrent loaders never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: dict[str, object]) -> None:
    _write_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))


# --------------------------------------------------------------------------- analysis


class _Graph:
    """Producer/consumer index over the top-level nodes of an ONNX graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.initializers = {t.name for t in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for idx, node in enumerate(self.nodes):
            for name in node.output:
                if name:
                    self.producer[name] = idx
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(idx)
        self.input_deps = self._input_dependencies()

    def _input_dependencies(self) -> list[frozenset[str]]:
        """For each node, the graph inputs it transitively depends on (nodes are topo-sorted)."""
        deps: dict[str, frozenset[str]] = {name: frozenset({name}) for name in self.inputs}
        per_node: list[frozenset[str]] = []
        for node in self.nodes:
            acc: frozenset[str] = frozenset()
            for name in node.input:
                acc |= deps.get(name, frozenset())
            per_node.append(acc)
            for name in node.output:
                deps[name] = acc
        return per_node

    def tensor_deps(self, name: str) -> frozenset[str]:
        if name in self.inputs:
            return frozenset({name})
        idx = self.producer.get(name)
        return self.input_deps[idx] if idx is not None else frozenset()

    def descendants(self, names: Iterable[str]) -> set[int]:
        seen: set[int] = set()
        stack = [c for name in names for c in self.consumers.get(name, [])]
        while stack:
            idx = stack.pop()
            if idx in seen:
                continue
            seen.add(idx)
            for out in self.nodes[idx].output:
                stack.extend(self.consumers.get(out, []))
        return seen

    def ancestors(self, names: Iterable[str], stop: set[str]) -> set[int]:
        """Nodes needed to compute ``names`` when the tensors in ``stop`` are given."""
        seen: set[int] = set()
        stack = [n for n in names if n not in stop]
        while stack:
            name = stack.pop()
            idx = self.producer.get(name)
            if idx is None or idx in seen:
                continue
            seen.add(idx)
            stack.extend(i for i in self.nodes[idx].input if i and i not in stop)
        return seen


def _find_cut(model: onnx.ModelProto) -> _Cut | None:
    """Locate z_p (noisy prior sample) and the other tensors the decoder needs.

    Candidates are the Add nodes downstream of the last random node, nearest first. A
    candidate is accepted when the nodes computing the audio from it depend on no graph
    input and no random op except through the crossing tensors, which must be exactly z,
    one frame mask, and at most one speaker embedding.
    """
    if not model.graph.output:
        return None
    if any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in model.graph.node
        for attr in node.attribute
    ):
        return None  # subgraphs would need scope-aware analysis; not a VITS export
    graph = _Graph(model.graph)
    audio = model.graph.output[0].name
    random_nodes = [i for i, n in enumerate(graph.nodes) if n.op_type in _RANDOM_OPS]
    if not random_nodes:
        return None
    random_set = set(random_nodes)
    last_random = [
        r for r in random_nodes if not graph.descendants(graph.nodes[r].output) & random_set
    ]
    if len(last_random) != 1:
        return None
    downstream = graph.descendants(graph.nodes[last_random[0]].output)
    candidates = sorted(i for i in downstream if graph.nodes[i].op_type == "Add")
    for idx in candidates:
        if len(graph.nodes[idx].output) != 1:
            continue
        cut = _try_cut(graph, graph.nodes[idx].output[0], audio, random_set)
        if cut is not None:
            return cut
    return None


def _try_cut(graph: _Graph, z_name: str, audio: str, random_set: set[int]) -> _Cut | None:
    decoder_core = graph.descendants([z_name])
    if not decoder_core or graph.producer.get(audio) not in decoder_core:
        return None
    # Crossing tensors: inputs of the decoder core made by nodes that depend on graph inputs.
    # Input-free helper nodes (Constant, shape arithmetic on constants) are copied over.
    crossing: list[str] = []
    for idx in sorted(decoder_core):
        for name in graph.nodes[idx].input:
            if not name or name in graph.initializers or name in crossing:
                continue
            producer = graph.producer.get(name)
            if producer is not None and producer in decoder_core:
                continue
            if producer is None or graph.tensor_deps(name) or producer in random_set:
                crossing.append(name)
    if z_name not in crossing or any(name in graph.inputs for name in crossing):
        return None
    others = [name for name in crossing if name != z_name]
    g_names = [n for n in others if graph.tensor_deps(n) == frozenset({_SPEAKER_INPUT})]
    mask_names = [n for n in others if n not in g_names]
    if len(mask_names) != 1 or len(g_names) > 1:
        return None
    cut_tensors = set(crossing)
    decoder_nodes = graph.ancestors([audio], stop=cut_tensors)
    # Verify the cut: every decoder-side input is made inside the decoder, is an
    # initializer, or crosses the seam; nothing random or input-dependent leaks in.
    for idx in decoder_nodes:
        if idx in random_set or (idx not in decoder_core and graph.input_deps[idx]):
            return None
        for name in graph.nodes[idx].input:
            if not name or name in graph.initializers or name in cut_tensors:
                continue
            if graph.producer.get(name) not in decoder_nodes:
                return None
    if not any(graph.nodes[i].op_type in _CONV_OPS for i in decoder_nodes):
        return None
    frontend_nodes = graph.ancestors(crossing, stop=set())
    return _Cut(
        z_name=z_name,
        mask_name=mask_names[0],
        g_name=g_names[0] if g_names else None,
        frontend_nodes=sorted(frontend_nodes),
        decoder_nodes=sorted(decoder_nodes),
    )


def _find_vocoder_seam(graph: _Graph, audio: str, stop: set[str]) -> str | None:
    """The vocoder's input: the data input of the last frame-path Conv before upsampling.

    In VITS that is HiFi-GAN's conv_pre, fed by the flow's output times the mask. It is
    accepted only if the audio depends on nothing but it (and the speaker embedding).
    """
    first_up = next((i for i, n in enumerate(graph.nodes) if n.op_type == "ConvTranspose"), None)
    if first_up is None:
        return None
    before = graph.ancestors([graph.nodes[first_up].input[0]], stop=set())
    frame_convs = [
        i for i in sorted(before) if graph.nodes[i].op_type == "Conv" and graph.input_deps[i] - stop
    ]
    if not frame_convs:
        return None
    seam = graph.nodes[frame_convs[-1]].input[0]
    if seam in graph.inputs:
        return None
    vocoder_nodes = graph.ancestors([audio], stop={seam} | stop)
    for idx in vocoder_nodes:
        for name in graph.nodes[idx].input:
            if name in graph.inputs and name not in stop:
                return None  # the vocoder would need the mask or z directly
    return seam


def receptive_field(model: onnx.ModelProto, sources: Iterable[str], rate: int = 1) -> int | None:
    """Whole frames of input on either side that one output frame can depend on."""
    reach = _reach(model, sources, rate)
    return None if reach is None else math.ceil(reach)


def _reach(model: onnx.ModelProto, sources: Iterable[str], rate: int = 1) -> float | None:
    """Frames (fractional: a sample of a later stage is a fraction of a frame) of input on
    either side that one output frame can depend on.

    Walks the graph from the ``sources`` ([N, C, frames * rate]), adding each
    convolution's reach (in frames, at the sample rate of that point in the graph). Returns
    None when an op that might mix frames in an unknown way is met, so callers never
    under-estimate.
    """
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    reach = {name: 0.0 for name in sources}
    samples = {name: float(rate) for name in sources}  # samples per frame at this tensor
    frame_axis = {name: 2 for name in sources}
    for node in model.graph.node:
        framed = [name for name in node.input if name in reach]
        if not framed or node.op_type in _SHAPE_OPS:
            continue
        far = max(reach[name] for name in framed)
        step, axis = samples[framed[0]], frame_axis[framed[0]]
        if any(samples[name] != step or frame_axis[name] != axis for name in framed):
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Conv", "ConvTranspose"):
            weight = constants.get(node.input[1]) if len(node.input) > 1 else None
            if node.input[0] not in reach or weight is None or weight.ndim != 3 or axis != 2:
                return None
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                return None
            span = (int(weight.shape[2]) - 1) * int(attrs.get("dilations", [1])[0])
            stride = int(attrs.get("strides", [1])[0])
            if node.op_type == "Conv":
                if stride != 1:
                    return None
                left = int(attrs.get("pads", [0, 0])[0])
                far += max(left, span - left) / step
            else:
                far += math.ceil(span / stride) / step
                step *= stride
        elif node.op_type in _AXIS_OPS:
            moved = _frame_axis_after(node, attrs, constants, axis)
            if moved is None:
                return None
            axis = moved
        elif node.op_type not in _POINTWISE_OPS:
            return None
        for name in node.output:
            reach[name], samples[name], frame_axis[name] = far, step, axis
    out = model.graph.output[0].name
    return reach.get(out)


def _frame_axis_after(
    node: onnx.NodeProto,
    attrs: dict[str, object],
    constants: dict[str, np.ndarray],
    axis: int,
) -> int | None:
    """Where the frame axis is after an axis op; None if the op cuts or mixes frames."""
    if node.op_type in ("Split", "Concat"):
        given: object = attrs.get("axis", 0)
        axes = [given] if isinstance(given, int) else None
    else:
        position = 3 if node.op_type == "Slice" else 1
        given = attrs.get("axes")
        if given is None and len(node.input) > position and node.input[position]:
            given = constants.get(node.input[position])
        axes = None if given is None else [int(a) for a in given]  # type: ignore[attr-defined]
    if axes is None or any(a < 0 for a in axes):  # negative axes need the rank: be safe
        return None
    if node.op_type == "Unsqueeze":
        for a in sorted(axes):
            axis += a <= axis
        return axis
    if axis in axes:
        return None
    if node.op_type == "Squeeze":
        return axis - sum(a < axis for a in axes)
    return axis


# --------------------------------------------------------------------------- building


def _build_models(model: onnx.ModelProto, cut: _Cut) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    value_info = _typed_tensors(model)
    crossing = [cut.z_name, cut.mask_name] + ([cut.g_name] if cut.g_name else [])
    crossing_info = [_value_info(name, value_info) for name in crossing]

    graph = model.graph
    frontend_node_list = [graph.node[i] for i in cut.frontend_nodes]
    used_inputs = {name for node in frontend_node_list for name in node.input}
    frontend = _make_model(
        model,
        "frontend",
        frontend_node_list,
        inputs=[vi for vi in graph.input if vi.name in used_inputs],
        outputs=crossing_info,
    )
    decoder = _make_model(
        model,
        "decoder",
        [graph.node[i] for i in cut.decoder_nodes],
        inputs=crossing_info,
        outputs=[graph.output[0]],
    )
    return frontend, decoder


def _typed_tensors(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Type and shape of every tensor shape inference can name, for cut points' I/O."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in inferred.graph.value_info}
    known.update({vi.name: vi for vi in model.graph.input})
    known.update({vi.name: vi for vi in model.graph.output})
    return known


def _value_info(name: str, known: dict[str, onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    if name in known and known[name].type.HasField("tensor_type"):
        out = onnx.ValueInfoProto()
        out.CopyFrom(known[name])
        return out
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)


def _make_model(
    source: onnx.ModelProto,
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
) -> onnx.ModelProto:
    used = {i for node in nodes for i in node.input}
    initializers = [t for t in source.graph.initializer if t.name in used]
    graph = helper.make_graph(
        nodes, f"{source.graph.name or 'vits'}_{name}", inputs, outputs, initializers
    )
    model = helper.make_model(
        graph,
        opset_imports=list(source.opset_import),
        producer_name="wyoming-tts",
        ir_version=source.ir_version,
    )
    return model


def _split_decoder(decoder: onnx.ModelProto, cut: _Cut, entry_dir: Path) -> VocoderSplit | None:
    """Cut the decoder into flow and vocoder and write both; None if it does not split."""
    graph = _Graph(decoder.graph)
    audio = decoder.graph.output[0].name
    given = {cut.g_name} if cut.g_name else set()
    seam = _find_vocoder_seam(graph, audio, given)
    if seam is None:
        return None
    known = _typed_tensors(decoder)
    flow = _part(decoder, graph, known, "flow", None, seam, given)
    vocoder = _part(decoder, graph, known, "vocoder", seam, audio, given)
    if flow is None or vocoder is None:
        return None
    frame_inputs = [cut.z_name, cut.mask_name]
    flow_margin = receptive_field(flow, frame_inputs)
    vocoder_margin = receptive_field(vocoder, [seam])
    if flow_margin is None or vocoder_margin is None:
        return None
    for part in (flow, vocoder):
        onnx.checker.check_model(part)
    staged = _split_vocoder(vocoder, seam, given, entry_dir)
    head, tail, tail_context = staged if staged is not None else (vocoder, [], None)
    result = VocoderSplit(
        entry_dir / _FLOW_FILE,
        entry_dir / _VOCODER_FILE,
        seam,
        flow_margin,
        vocoder_margin,
        tuple(stage for stage, _ in tail),
        tail_context,
    )
    _write_atomic(result.flow_path, flow.SerializeToString())
    _write_atomic(result.vocoder_path, head.SerializeToString())
    for stage, part in tail:
        _write_atomic(stage.path, part.SerializeToString())
    return result


def _split_vocoder(
    vocoder: onnx.ModelProto, seam: str, given: set[str], entry_dir: Path
) -> tuple[onnx.ModelProto, list[tuple[VocoderStage, onnx.ModelProto]], int] | None:
    """Cut the vocoder before each upsampler after the first.

    Its working memory grows with the sample rate, 32x from the first stage to the last,
    so the later stages are run over short sub-windows of frames; their reach is about a
    frame, so that costs almost nothing twice. Also returns the later stages' combined
    reach in whole frames. None if the stages do not separate.
    """
    graph = _Graph(vocoder.graph)
    audio = vocoder.graph.output[0].name
    ups = [n for n in graph.nodes if n.op_type == "ConvTranspose"]
    if len(ups) < 2:
        return None
    bounds = [seam] + [n.input[0] for n in ups[1:]] + [audio]
    rates = [1]
    for node in ups[:-1]:
        strides = [a for a in node.attribute if a.name == "strides"]
        rates.append(rates[-1] * (int(strides[0].ints[0]) if strides else 1))
    known = _typed_tensors(vocoder)
    parts: list[onnx.ModelProto] = []
    for i in range(len(bounds) - 1):
        part = _part(vocoder, graph, known, f"vocoder{i}", bounds[i], bounds[i + 1], given)
        if part is None or (i > 0 and len(part.graph.input) > 1):
            return None  # later stages must take only the previous stage's output
        parts.append(part)
    tail: list[tuple[VocoderStage, onnx.ModelProto]] = []
    reach = 0.0
    for i, part in enumerate(parts[1:], start=1):
        stage_reach = _reach(part, [bounds[i]], rates[i])
        if stage_reach is None:
            return None
        reach += stage_reach
        onnx.checker.check_model(part)
        stage = VocoderStage(
            entry_dir / _stage_file(i), bounds[i], rates[i], math.ceil(stage_reach)
        )
        tail.append((stage, part))
    onnx.checker.check_model(parts[0])
    return parts[0], tail, math.ceil(reach)


def _part(
    source: onnx.ModelProto,
    graph: _Graph,
    known: dict[str, onnx.ValueInfoProto],
    name: str,
    start: str | None,
    end: str,
    given: set[str],
) -> onnx.ModelProto | None:
    """The nodes computing ``end`` from ``start`` (None: from the graph's inputs) and
    ``given``, as a model of its own; None if anything else reaches past the cut."""
    stop = given | ({start} if start else set())
    indices = graph.ancestors([end], stop=stop)
    for idx in indices:
        for tensor in graph.nodes[idx].input:
            if not tensor or tensor in graph.initializers or tensor in stop:
                continue
            if graph.producer.get(tensor) not in indices and (start or tensor not in graph.inputs):
                return None
    nodes = [source.graph.node[j] for j in sorted(indices)]
    used = {tensor for node in nodes for tensor in node.input}
    inputs = [_value_info(start, known)] if start else []
    inputs += [vi for vi in source.graph.input if vi.name in used and vi.name != start]
    outputs = [vi for vi in source.graph.output if vi.name == end] or [_value_info(end, known)]
    return _make_model(source, name, nodes, inputs=inputs, outputs=outputs)


def _stage_file(index: int) -> str:
    return f"vocoder{index}.onnx"
