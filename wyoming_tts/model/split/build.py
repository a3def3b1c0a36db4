"""Cutting a voice into part models at the seams found, and caching them.

Each part is the original graph's nodes between two cut tensors, with the original
initializers and opset, so running the parts in turn computes what the voice computes.
Parts are written with their 1-D convolutions run as 2-D ones (`conv2d`), which
onnxruntime runs faster; seams and reaches are found on the original graph.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import onnx
from onnx import helper

from .cache import (
    DECODER_FILE,
    FLOW_FILE,
    FRONTEND_FILE,
    VOCODER_FILE,
    SplitModel,
    VocoderSplit,
    VocoderStage,
    stage_file,
    write_atomic,
    write_meta,
)
from .conv2d import convs_as_2d
from .graph import Cut, Graph, find_cut, find_vocoder_seam
from .reach import reach_frames, receptive_field

_LOGGER = logging.getLogger(__name__)


def split_entry(model_path: Path, entry_dir: Path, digest: str) -> SplitModel | None:
    """Analyse ``model_path`` and write its split (or its "no seam") to ``entry_dir``."""
    model = onnx.load(str(model_path))
    cut = find_cut(model)
    entry_dir.mkdir(parents=True, exist_ok=True)
    if cut is None:
        write_meta(entry_dir, digest, None)
        return None

    frontend, decoder = _build_models(model, cut)
    frontend_path = entry_dir / FRONTEND_FILE
    decoder_path = entry_dir / DECODER_FILE
    _write_part(frontend_path, frontend)
    _write_part(decoder_path, decoder)
    vocoder = _split_decoder(decoder, cut, entry_dir)
    if vocoder is None:
        _LOGGER.info("No flow/vocoder seam in %s; decoding flow and vocoder together", model_path)
    split = SplitModel(frontend_path, decoder_path, cut.z_name, cut.mask_name, cut.g_name, vocoder)
    write_meta(entry_dir, digest, split)
    _LOGGER.debug(
        "Split %s: z=%s mask=%s g=%s (frontend %d nodes, decoder %d nodes)",
        model_path,
        cut.z_name,
        cut.mask_name,
        cut.g_name,
        len(cut.frontend_nodes),
        len(cut.decoder_nodes),
    )
    return split


def _build_models(model: onnx.ModelProto, cut: Cut) -> tuple[onnx.ModelProto, onnx.ModelProto]:
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


def _split_decoder(decoder: onnx.ModelProto, cut: Cut, entry_dir: Path) -> VocoderSplit | None:
    """Cut the decoder into flow and vocoder and write both; None if it does not split."""
    graph = Graph(decoder.graph)
    audio = decoder.graph.output[0].name
    given = {cut.g_name} if cut.g_name else set()
    seam = find_vocoder_seam(graph, audio, given)
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
    staged = _split_vocoder(vocoder, seam, given, entry_dir)
    head, tail, tail_context = staged if staged is not None else (vocoder, [], None)
    result = VocoderSplit(
        entry_dir / FLOW_FILE,
        entry_dir / VOCODER_FILE,
        seam,
        flow_margin,
        vocoder_margin,
        tuple(stage for stage, _ in tail),
        tail_context,
    )
    _write_part(result.flow_path, flow)
    _write_part(result.vocoder_path, head)
    for stage, part in tail:
        _write_part(stage.path, part)
    return result


def _write_part(path: Path, part: onnx.ModelProto) -> None:
    """Write a part as it is run: its convolutions 2-D, checked."""
    faster = convs_as_2d(part)
    onnx.checker.check_model(faster)
    write_atomic(path, faster.SerializeToString())


def _split_vocoder(
    vocoder: onnx.ModelProto, seam: str, given: set[str], entry_dir: Path
) -> tuple[onnx.ModelProto, list[tuple[VocoderStage, onnx.ModelProto]], int] | None:
    """Cut the vocoder before each upsampler after the first.

    Its working memory grows with the sample rate, 32x from the first stage to the last,
    so the later stages are run over short sub-windows of frames; their reach is about a
    frame, so that costs almost nothing twice. Also returns the later stages' combined
    reach in whole frames. None if the stages do not separate.
    """
    graph = Graph(vocoder.graph)
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
        stage_reach = reach_frames(part, [bounds[i]], rates[i])
        if stage_reach is None:
            return None
        reach += stage_reach
        stage = VocoderStage(entry_dir / stage_file(i), bounds[i], rates[i], math.ceil(stage_reach))
        tail.append((stage, part))
    return parts[0], tail, math.ceil(reach)


def _part(
    source: onnx.ModelProto,
    graph: Graph,
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
