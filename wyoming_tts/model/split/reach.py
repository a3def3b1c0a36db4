"""How many frames of input one output frame of a part can depend on.

That reach is the context a window must be decoded with on each side for its centre to
match a whole-utterance decode. It is read off the convolution geometry, and any op that
might mix frames in an unknown way makes it unknown rather than under-estimated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

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
#: A Slice end at least this large means "to the end" (exporters write INT32/INT64 max).
_WHOLE_END = 2**31 - 1


def receptive_field(model: onnx.ModelProto, sources: Iterable[str], rate: int = 1) -> int | None:
    """Whole frames of input on either side that one output frame can depend on."""
    reach = reach_frames(model, sources, rate)
    return None if reach is None else math.ceil(reach)


def reach_frames(model: onnx.ModelProto, sources: Iterable[str], rate: int = 1) -> float | None:
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
    if axis in axes and not (node.op_type == "Slice" and _whole_slice(node, constants, axis)):
        return None
    if node.op_type == "Squeeze":
        return axis - sum(a < axis for a in axes)
    return axis


def _whole_slice(node: onnx.NodeProto, constants: dict[str, np.ndarray], axis: int) -> bool:
    """A Slice that keeps every frame of ``axis`` (``x[:, :, 0:]``, which the TorchScript
    exporter writes for each ``:`` of an indexing expression): no cut at all."""
    inputs = list(node.input) + [""] * (5 - len(node.input))
    if not all(name in constants for name in inputs[1:4] + ([inputs[4]] if inputs[4] else [])):
        return False
    axes = [int(a) for a in constants[inputs[3]].reshape(-1)]
    starts, ends = constants[inputs[1]].reshape(-1), constants[inputs[2]].reshape(-1)
    steps = constants[inputs[4]].reshape(-1) if inputs[4] else np.ones(len(axes))
    at = axes.index(axis)
    return int(starts[at]) == 0 and int(ends[at]) >= _WHOLE_END and int(steps[at]) == 1
