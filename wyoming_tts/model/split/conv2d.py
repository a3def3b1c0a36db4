"""Rewriting a part's 1-D convolutions as 2-D ones over a height of one.

onnxruntime's blocked-layout (NCHWc) CPU kernels take only 4-D convolutions, and Piper's
graphs are all 1-D: each Conv with a 3-D input [N, C, T] becomes a Conv over
[N, C, 1, T] with a (1, k) kernel, which computes the same sums in the same order. The
ops between convolutions (activations, residual adds, channel slices) are lifted to 4-D
with them, so a run of them needs no reshape in between; a 3-D tensor is made again only
where something else reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Ops that act elementwise (with broadcasting), so a height axis of one changes nothing.
_ELEMENTWISE_OPS = frozenset(
    {"Add", "Sub", "Mul", "Div", "LeakyRelu", "Relu", "Tanh", "Sigmoid", "Neg", "Exp"}
    | {"Identity", "Softplus", "Clip", "Erf", "Sqrt", "Pow"}
)
#: Ops whose ``axis`` attribute (or ``axes``) names the axes they act on.
_AXIS_ATTR_OPS = frozenset({"Split", "Concat"})
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_HEIGHT = 2  # the inserted axis: [N, C, T] -> [N, C, 1, T]
_SUFFIX = "/h1"
#: Channels a blocked-layout Conv needs a multiple of (16 covers AVX2's 8 and AVX-512's 16).
_BLOCK = 16
#: Output channels below which a Conv stays 1-D. onnxruntime splits a blocked Conv over
#: threads by sets of 32 output channels and by rows (here one), so a 32-channel one runs
#: on one thread: over 66,816 frames in one run it took 43.7 ms against 34.0 ms 1-D (2
#: threads), but as the decoder runs the last stage, 64 frames at a time, the blocked
#: stage was faster (4 windows: 95 / 103 ms against 139 / 131 ms) and replies ended
#: sooner on a busy machine (paired 0.82-0.94 against this at 64; docs/decisions.md).
#: No Piper family is narrower than 32.
MIN_CHANNELS = 32


def convs_as_2d(model: onnx.ModelProto, min_channels: int = MIN_CHANNELS) -> onnx.ModelProto:
    """``model`` with its 1-D Conv and ConvTranspose run as 2-D ones (a copy).

    Left 1-D: those with fewer than ``min_channels`` output channels, and those whose
    weights are not constant or that pad automatically.
    """
    return _Rewriter(model, min_channels).run()


class _Rewriter:
    """One pass over the nodes in order: each is lifted to 4-D or kept, and a kept node
    reading a lifted tensor gets its 3-D form squeezed back just before it."""

    def __init__(self, model: onnx.ModelProto, min_channels: int) -> None:
        self.model = model
        self.min_channels = min_channels
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.constants: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer
        }
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.ranks, self.channels, self.types = _ranks(model)
        self.frames: dict[str, str] = {}  # 3-D tensor -> a name for its frame count
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.lifted: dict[str, str] = {}  # 3-D tensor -> its 4-D twin
        self.present: set[str] = {i.name for i in model.graph.input} | set(self.constants)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.made: dict[str, str] = {}  # cache of derived constants by (source, kind)
        self.taken = {name for n in model.graph.node for name in (*n.input, *n.output)}
        self.taken |= set(self.constants) | {i.name for i in model.graph.input}

    def run(self) -> onnx.ModelProto:
        for node in self.model.graph.node:
            if not self._lift(node):
                self._need_3d(node.input)
                self.nodes.append(node)
                self.present.update(node.output)
        self._need_3d(o.name for o in self.model.graph.output)
        used = {name for node in self.nodes for name in node.input}
        graph = self.model.graph
        initializers = [t for t in graph.initializer if t.name in used] + self.initializers
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        del out.graph.node[:]
        out.graph.node.extend(self.nodes)
        del out.graph.initializer[:]
        out.graph.initializer.extend(initializers)
        del out.graph.value_info[:]
        out.graph.value_info.extend(self._shape_hints())
        return out

    # -- lifting one node -------------------------------------------------------------

    def _lift(self, node: onnx.NodeProto) -> bool:
        if node.op_type in _CONV_OPS:
            return self._lift_conv(node)
        if not any(name in self.lifted for name in node.input):
            return False
        if node.op_type == "LeakyRelu" and self._lift_leaky_relu(node):
            return True
        if node.op_type in _ELEMENTWISE_OPS:
            return self._lift_elementwise(node)
        if node.op_type == "Slice":
            return self._lift_slice(node)
        if node.op_type in _AXIS_ATTR_OPS:
            return self._lift_axis_attr(node)
        if node.op_type == "Shape":
            return self._lift_shape(node)
        if node.op_type == "ConstantOfShape":  # of a lifted Shape: a 4-D tensor
            self._emit(node, [self.lifted[node.input[0]]], frames=self.frames.get(node.input[0]))
            return True
        return False

    def _lift_shape(self, node: onnx.NodeProto) -> bool:
        """``zeros_like`` (Shape, then ConstantOfShape) of a lifted tensor, made 4-D."""
        readers = self.consumers.get(node.output[0], [])
        if not readers or any(r.op_type != "ConstantOfShape" for r in readers):
            return False
        if len(node.output) != 1 or any(a.name in ("start", "end") for a in node.attribute):
            return False
        self._emit(node, [self.lifted[node.input[0]]], frames=self.frames.get(node.input[0]))
        return True

    def _lift_conv(self, node: onnx.NodeProto) -> bool:
        weight = self.constants.get(node.input[1]) if len(node.input) > 1 else None
        attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        if weight is None or weight.ndim != 3 or auto_pad not in (b"NOTSET", "NOTSET"):
            return False
        if self.ranks.get(node.input[0]) != 3 and node.input[0] not in self.lifted:
            return False
        channels = int(weight.shape[0 if node.op_type == "Conv" else 1])
        channels *= int(attrs.get("group", 1)) if node.op_type == "ConvTranspose" else 1
        if channels < self.min_channels:
            return False
        new_attrs: dict[str, Any] = {}
        for name, value in attrs.items():
            if name == "auto_pad":
                continue
            if name == "pads":
                begin, end = value
                new_attrs[name] = [0, begin, 0, end]
            elif name in ("kernel_shape", "output_padding", "output_shape"):
                new_attrs[name] = [0 if name == "output_padding" else 1, *value]
            elif name in ("strides", "dilations"):
                new_attrs[name] = [1, *value]
            else:
                new_attrs[name] = value
        new_attrs.setdefault("kernel_shape", [1, int(weight.shape[2])])
        weight_4d = self._constant(node.input[1], weight[:, :, None, :], "w")
        inputs = [self._as_4d(node.input[0]), weight_4d, *node.input[2:]]
        blocked = node.op_type == "ConvTranspose" and channels % _BLOCK == 0
        frames = self.frames.get(node.input[0]) if _same_length(node, attrs, weight) else None
        twin = self._twin(node.output[0], frames or self._symbol())
        output = self._fresh(node.output[0] + "/t" + _SUFFIX) if blocked else twin
        self.nodes.append(
            helper.make_node(node.op_type, inputs, [output], name=node.name + _SUFFIX, **new_attrs)
        )
        if blocked:
            # onnxruntime has no blocked ConvTranspose: an identity Conv after it puts its
            # output in the blocked layout once for all of its readers.
            self._identity(output, twin, channels, node.name)
        return True

    def _identity(self, source: str, target: str, channels: int, name: str) -> None:
        """An identity depthwise Conv (weight 1, no bias): ``x * 1`` is exact."""
        ones = self._constant("", np.ones((channels, 1, 1, 1), dtype=np.float32), f"ones{channels}")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [source, ones],
                [target],
                name=self._fresh(f"{name}/identity"),
                group=channels,
                kernel_shape=[1, 1],
            )
        )

    def _lift_elementwise(self, node: onnx.NodeProto) -> bool:
        if len(node.output) != 1 or self.ranks.get(node.output[0]) != 3:
            return False
        liftable = (
            not name
            or name in self.lifted
            or name in self.constants
            or self.ranks.get(name) in (0, 1, 3)
            for name in node.input
        )
        if not all(liftable):
            return False
        inputs: list[str] = []
        for name in node.input:
            if not name or name in self.lifted:
                inputs.append(self.lifted.get(name, name))
            elif name in self.constants:
                inputs.append(self._broadcast_constant(name))
            elif self.ranks.get(name) == 3:
                inputs.append(self._as_4d(name))
            else:
                inputs.append(name)  # rank 0 or 1: broadcasts over the last axis either way
        self._emit(node, inputs, frames=self._common_frames(node.input))
        return True

    def _lift_leaky_relu(self, node: onnx.NodeProto) -> bool:
        """LeakyRelu as the activation of an identity depthwise Conv (weight 1, no bias).

        onnxruntime fuses it into the Conv, which keeps the blocked layout; a bare
        LeakyRelu is not among the ops that do, so it would cost a reorder on each side.
        ``x * 1`` is exact, so the values are the same.
        """
        source = node.input[0]
        channels = self.channels.get(source)
        if source not in self.lifted or channels is None or channels % _BLOCK:
            return False
        if channels < self.min_channels:
            return False
        through = self._fresh(f"{node.output[0]}/identity{_SUFFIX}")
        self._identity(self.lifted[source], through, channels, node.name)
        attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.nodes.append(
            helper.make_node(
                "LeakyRelu",
                [through],
                [self._twin(node.output[0], self.frames.get(source))],
                name=node.name + _SUFFIX,
                **attrs,
            )
        )
        return True

    def _lift_slice(self, node: onnx.NodeProto) -> bool:
        """A Slice over channels or frames; its axes are moved past the height axis."""
        data = node.input[0]
        if data not in self.lifted or len(node.input) < 4 or not node.input[3]:
            return False
        if any(name in self.lifted for name in node.input[1:]):
            return False
        axes = self.constants.get(node.input[3])
        if axes is None:
            return False
        moved = [_moved_axis(int(a)) for a in axes.reshape(-1)]
        if any(a is None for a in moved):
            return False
        axes_4d = self._constant(node.input[3], np.asarray(moved, dtype=axes.dtype), "axes")
        inputs = [self.lifted[data], *node.input[1:3], axes_4d, *node.input[4:]]
        keeps_frames = _HEIGHT + 1 not in moved
        self._emit(node, inputs, frames=self.frames.get(data) if keeps_frames else None)
        return True

    def _lift_axis_attr(self, node: onnx.NodeProto) -> bool:
        """Split or Concat: every data input lifted, the axis moved past the height axis."""
        data = list(node.input) if node.op_type == "Concat" else [node.input[0]]
        if not all(name in self.lifted or self.ranks.get(name) == 3 for name in data):
            return False
        attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = _moved_axis(int(attrs.get("axis", 0)))
        if axis is None:
            return False
        inputs = [self._as_4d(name) for name in data] + list(node.input[len(data) :])
        frames = self._common_frames(data) if axis != _HEIGHT + 1 else None
        self._emit(node, inputs, frames=frames, axis=axis)
        return True

    # -- tensors ------------------------------------------------------------------------

    def _emit(
        self, node: onnx.NodeProto, inputs: list[str], frames: str | None, **changed: Any
    ) -> None:
        attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs.update(changed)
        outputs = [self._twin(name, frames) if name else "" for name in node.output]
        self.nodes.append(
            helper.make_node(
                node.op_type,
                inputs,
                outputs,
                name=node.name + _SUFFIX,
                domain=node.domain,
                **attrs,
            )
        )

    def _twin(self, name: str, frames: str | None) -> str:
        twin = self._fresh(name + _SUFFIX)
        self.lifted[name] = twin
        if frames is not None:
            self.frames[name] = frames
        return twin

    def _symbol(self) -> str:
        """A new name for a frame count not known to equal any other."""
        return self._fresh("frames")

    def _common_frames(self, names: Iterable[str]) -> str | None:
        """The frame count all lifted tensors among ``names`` share, if it is known."""
        found = {self.frames.get(name) for name in names if name in self.lifted}
        return found.pop() if len(found) == 1 else None

    def _shape_hints(self) -> list[onnx.ValueInfoProto]:
        """Shapes of the 4-D tensors whose frames are known to equal others'.

        onnxruntime's NCHWc transformer adds (or fuses into a Conv) two blocked tensors
        only if it can tell their shapes are equal, which it cannot after a dilated
        convolution; a shared symbol for the frame axis tells it.
        """
        hints: list[onnx.ValueInfoProto] = []
        for name, twin in self.lifted.items():
            frames, channels = self.frames.get(name), self.channels.get(name)
            if frames is not None and channels is not None and name in self.types:
                shape = [None, channels, 1, frames]
                hints.append(helper.make_tensor_value_info(twin, self.types[name], shape))
        return hints

    def _as_4d(self, name: str) -> str:
        """The 4-D twin of a 3-D tensor, unsqueezed here if it has none yet."""
        if name not in self.lifted:
            twin = self._twin(name, self._symbol())
            self.nodes.append(self._reshape_node("Unsqueeze", name, twin))
        return self.lifted[name]

    def _need_3d(self, names: Iterable[str]) -> None:
        """Squeeze back the 3-D form of each lifted tensor read as such, once."""
        for name in names:
            if name and name in self.lifted and name not in self.present:
                self.nodes.append(self._reshape_node("Squeeze", self.lifted[name], name))
                self.present.add(name)

    def _reshape_node(self, op: str, source: str, target: str) -> onnx.NodeProto:
        name = self._fresh(f"{target}/{op}")
        if self.opset >= 13:
            axes = self._constant("", np.asarray([_HEIGHT], dtype=np.int64), "height")
            return helper.make_node(op, [source, axes], [target], name=name)
        return helper.make_node(op, [source], [target], name=name, axes=[_HEIGHT])

    def _broadcast_constant(self, name: str) -> str:
        """A constant operand as it broadcasts against [N, C, 1, T]."""
        value = self.constants[name]
        if value.ndim <= 1:
            return name
        value = value.reshape((1,) * (3 - value.ndim) + value.shape)
        return self._constant(name, value[:, :, None, :], "b")

    def _constant(self, source: str, value: np.ndarray, kind: str) -> str:
        key = f"{source}|{kind}"
        if key not in self.made:
            name = self._fresh(f"{source or 'const'}/{kind}{_SUFFIX}")
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
            self.made[key] = name
        return self.made[key]

    def _fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}.{i}"
        self.taken.add(name)
        return name


def _same_length(node: onnx.NodeProto, attrs: dict[str, Any], weight: np.ndarray) -> bool:
    """A Conv whose output has as many frames as its input (stride 1, padded (k-1)*d)."""
    if node.op_type != "Conv" or any(int(s) != 1 for s in attrs.get("strides", [1])):
        return False
    span = (int(weight.shape[2]) - 1) * int(attrs.get("dilations", [1])[0])
    return sum(int(p) for p in attrs.get("pads", [0, 0])) == span


def _moved_axis(axis: int) -> int | None:
    """Where an axis of a 3-D tensor is in its 4-D twin; None if the rank is unknown."""
    if axis < -3 or axis > 2:
        return None
    axis %= 3
    return axis + (axis >= _HEIGHT)


def _ranks(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """The rank of every tensor shape inference can tell, the channels (axis 1) of every
    3-D one whose channels it knows, and the element type of each typed one."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an unknown rank only means nothing is lifted there
        inferred = model
    ranks: dict[str, int] = {}
    channels: dict[str, int] = {}
    types: dict[str, int] = {}
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor.elem_type:
            types[info.name] = tensor.elem_type
        if info.type.HasField("tensor_type") and tensor.HasField("shape"):
            ranks[info.name] = len(tensor.shape.dim)
            if len(tensor.shape.dim) == 3 and tensor.shape.dim[1].HasField("dim_value"):
                channels[info.name] = tensor.shape.dim[1].dim_value
    for tensor in graph.initializer:
        ranks[tensor.name] = len(tensor.dims)
    return ranks, channels, types
