"""Finding the seams of a VITS graph from its structure alone.

Node names differ between exports, so seams are recognised by what depends on what: the
random sampling, the graph inputs, and the convolutions of the frame path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx

_RANDOM_OPS = frozenset({"RandomNormalLike", "RandomNormal", "RandomUniformLike", "RandomUniform"})
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_SPEAKER_INPUT = "sid"


@dataclass(frozen=True)
class Cut:
    """The frontend/decoder seam: the tensors crossing it and the nodes on each side."""

    z_name: str
    mask_name: str
    g_name: str | None
    frontend_nodes: list[int]
    decoder_nodes: list[int]


class Graph:
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


def find_cut(model: onnx.ModelProto) -> Cut | None:
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
    graph = Graph(model.graph)
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


def _try_cut(graph: Graph, z_name: str, audio: str, random_set: set[int]) -> Cut | None:
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
    speaker = [n for n in others if graph.tensor_deps(n) == frozenset({_SPEAKER_INPUT})]
    mask_names = [n for n in others if n not in speaker]
    if len(mask_names) != 1:
        return None
    g_name = _speaker_embedding(graph, speaker) if speaker else None
    if speaker and g_name is None:
        return None
    # What the decoder computes from the speaker embedding (each flow's and the vocoder's
    # conditioning) moves to its side of the seam, so only the embedding crosses.
    speaker_nodes = graph.ancestors(speaker, stop={g_name}) if g_name else set()
    crossing = [z_name, mask_names[0]] + ([g_name] if g_name else [])
    cut_tensors = set(crossing)
    decoder_nodes = graph.ancestors([audio], stop=cut_tensors)
    # Verify the cut: every decoder-side input is made inside the decoder, is an
    # initializer, or crosses the seam; nothing random or input-dependent leaks in.
    for idx in decoder_nodes:
        if idx in random_set:
            return None
        if idx not in decoder_core and idx not in speaker_nodes and graph.input_deps[idx]:
            return None
        for name in graph.nodes[idx].input:
            if not name or name in graph.initializers or name in cut_tensors:
                continue
            if graph.producer.get(name) not in decoder_nodes:
                return None
    if not any(graph.nodes[i].op_type in _CONV_OPS for i in decoder_nodes):
        return None
    frontend_nodes = graph.ancestors(crossing, stop=set())
    return Cut(
        z_name=z_name,
        mask_name=mask_names[0],
        g_name=g_name,
        frontend_nodes=sorted(frontend_nodes),
        decoder_nodes=sorted(decoder_nodes),
    )


def _speaker_embedding(graph: Graph, conditioning: list[str]) -> str | None:
    """The one tensor all of ``conditioning`` (tensors of the speaker id alone) is computed
    from: in VITS the speaker embedding g, [1, gin, 1], which each flow layer and the
    vocoder project for themselves. The latest such tensor, so the least work moves."""
    if len(conditioning) == 1:
        return conditioning[0]
    speaker = frozenset({_SPEAKER_INPUT})
    made = sorted(graph.ancestors(conditioning, stop=set()), reverse=True)
    for idx in made:
        node = graph.nodes[idx]
        if len(node.output) != 1 or graph.input_deps[idx] != speaker:
            continue
        source = node.output[0]
        between = graph.ancestors(conditioning, stop={source})
        if all(
            not name
            or name == source
            or name in graph.initializers
            or (graph.producer.get(name) in between)
            for i in between
            for name in graph.nodes[i].input
        ):
            return source
    return None


def find_vocoder_seam(graph: Graph, audio: str, stop: set[str]) -> str | None:
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
