"""The operator structure of an ONNX graph, without its widths or weights.

Two exports of one architecture at different channel widths differ in their weights and
in constants (shapes, group counts), never in which ops there are and what feeds what.
That structure is what the split analysis and the decoders depend on, so a narrowed test
voice stands for a real one exactly when its structure equals a full-width export's.
Shared by the generator (`script/gen-test-voices`) and `tests/test_families.py`; needs
only `onnx`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import onnx


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the top-level graph has."""
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def topology(model: onnx.ModelProto) -> list[list[Any]]:
    """Each node as [op type, attribute names, inputs], an input named by what makes it:
    a node's index and output slot, a graph input's name, or "init" for a weight."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = {vi.name for vi in graph.input}
    made: dict[str, str] = {}
    rows: list[list[Any]] = []
    for index, node in enumerate(graph.node):
        refs = []
        for name in node.input:
            if not name:
                refs.append("")
            elif name in made:
                refs.append(made[name])
            elif name in initializers:
                refs.append("init")
            elif name in inputs:
                refs.append(f"in:{name}")
            else:
                refs.append("?")
        rows.append([node.op_type, sorted(a.name for a in node.attribute), refs])
        for slot, name in enumerate(node.output):
            made[name] = f"{index}.{slot}"
    outputs = [made.get(vi.name, vi.name) for vi in graph.output]
    rows.append(["<outputs>", [], outputs])
    return rows


def structure(model: onnx.ModelProto) -> dict[str, Any]:
    """Op-type counts and a digest of the topology: small enough to commit."""
    text = json.dumps(topology(model), separators=(",", ":"))
    return {
        "nodes": len(model.graph.node),
        "op_counts": op_counts(model),
        "topology_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
