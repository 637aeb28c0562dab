"""Shrink what the quantizer adds around the int8 weights: names, zero zero-points, shape annotations.

On a small model the QDQ bookkeeping (long generated tensor names, all-zero int32 bias zero-points,
value_info) is several percent of the file; none of it changes what onnxruntime computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def compact(src: Path, dst: Path, keep_names: set[str]) -> int:
    """Rewrite `src` to `dst` without redundant quantizer bookkeeping; returns bytes saved.

    Names in `keep_names` (the input model's tensors and nodes) are kept so users can still find
    their nodes; only names the quantizer generated are shortened.
    """
    model = onnx.load(str(src))
    graph = model.graph
    before = model.ByteSize()
    _drop_zero_points(graph)
    del graph.value_info[:]
    _shorten_names(graph, keep_names)
    model.doc_string = ""
    onnx.save(model, str(dst))
    return before - model.ByteSize()


def _drop_zero_points(graph: onnx.GraphProto) -> None:
    """DequantizeLinear's zero-point is optional (default 0): drop all-zero constant ones."""
    initializers = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        if node.input[0] not in initializers:  # activations keep theirs: QDQ fusion pairs Q and DQ by it
            continue
        zero_point = numpy_helper.to_array(initializers[node.input[2]])
        if np.any(zero_point) or zero_point.dtype != np.int32:  # QGemm fusion needs its int8 zero-points
            continue
        del node.input[2]
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _shorten_names(graph: onnx.GraphProto, keep: set[str]) -> None:
    protected = keep | {v.name for v in graph.input} | {v.name for v in graph.output}
    renames: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in protected:
            return name
        if name not in renames:
            renames[name] = f"q{len(renames)}"
        return renames[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for index, node in enumerate(graph.node):
        if node.name not in keep:
            node.name = f"n{index}"
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            return _undo(graph, renames)  # subgraphs may capture outer names: leave such graphs alone
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]


def _undo(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    back = {new: old for old, new in renames.items()}
    for init in graph.initializer:
        init.name = back.get(init.name, init.name)
    for node in graph.node:
        node.input[:] = [back.get(name, name) for name in node.input]
        node.output[:] = [back.get(name, name) for name in node.output]


def original_names(path: Path) -> set[str]:
    """Node, tensor and initializer names of a model: the names `compact` must not touch."""
    graph = onnx.load(str(path), load_external_data=False).graph
    names = {node.name for node in graph.node} | {init.name for init in graph.initializer}
    return names | {out for node in graph.node for out in node.output}
