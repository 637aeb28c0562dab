"""Shrink what the quantizer adds around the int8 weights: names, zero zero-points, shape annotations.

On a small model the QDQ bookkeeping (long generated tensor names, all-zero int32 bias zero-points,
value_info) is several percent of the file; none of it changes what onnxruntime computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compression.graph_names import (
    defined_names,
    drop_unused_initializers,
    iter_graphs,
    rename_values,
    used_names,
)


def compact(src: Path, dst: Path, keep_names: set[str], drop_outputs: list[str] | None = None) -> int:
    """Rewrite `src` to `dst` without redundant quantizer bookkeeping; returns bytes saved.

    Names in `keep_names` (the input model's tensors and nodes) are kept so users can still find
    their nodes; only names the quantizer generated are shortened. `drop_outputs` are graph outputs
    that preparation added (Prepared.extra_outputs) and that the returned model must not have.
    """
    model = onnx.load(str(src))
    graph = model.graph
    before = model.ByteSize()
    if drop_outputs:
        kept = [value for value in graph.output if value.name not in set(drop_outputs)]
        del graph.output[:]
        graph.output.extend(kept)
    _drop_zero_points(graph)
    del graph.value_info[:]
    _shorten_names(graph, keep_names)
    model.doc_string = ""
    onnx.save(model, str(dst))
    return before - model.ByteSize()


def _drop_zero_points(graph: onnx.GraphProto) -> None:
    """DequantizeLinear's zero-point is optional (default 0): drop all-zero constant ones.

    Only the top-level graph's nodes are rewritten, but an initializer is removed only when nothing
    reads it, If/Loop/Scan bodies included (they read outer initializers by name).
    """
    initializers = {init.name: init for init in graph.initializer}
    released: set[str] = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        if node.input[0] not in initializers:  # activations keep theirs: QDQ fusion pairs Q and DQ by it
            continue
        zero_point = numpy_helper.to_array(initializers[node.input[2]])
        if np.any(zero_point) or zero_point.dtype != np.int32:  # QGemm fusion needs its int8 zero-points
            continue
        released.add(node.input[2])
        del node.input[2]
    drop_unused_initializers(graph, released)


def _shorten_names(graph: onnx.GraphProto, keep: set[str]) -> None:
    """Short names for the values the quantizer generated, renamed wherever they are read (bodies too)."""
    protected = keep | {v.name for v in graph.input} | {v.name for v in graph.output} | _body_names(graph)
    generated: list[str] = []
    seen: set[str] = set()
    for name in [init.name for init in graph.initializer] + [out for node in graph.node for out in node.output]:
        if name and name not in protected and name not in seen:
            generated.append(name)
            seen.add(name)
    for index, node in enumerate(graph.node):
        if node.name not in keep:
            node.name = f"n{index}"
    staying = (protected | used_names(graph)) - seen
    prefix = "q"
    while any(f"{prefix}{index}" in staying for index in range(len(generated))):  # never clash with a kept name
        prefix += "_"
    rename_values(graph, {name: f"{prefix}{index}" for index, name in enumerate(generated)})


def _body_names(graph: onnx.GraphProto) -> set[str]:
    """Names defined inside If/Loop/Scan bodies: they stay (a body is not compacted)."""
    bodies = list(iter_graphs(graph))[1:]
    return set().union(*(defined_names(body) for body in bodies)) if bodies else set()


def original_names(path: Path) -> set[str]:
    """Node, tensor and initializer names of a model, bodies included: the names `compact` must not touch."""
    graph = onnx.load(str(path), load_external_data=False).graph
    names: set[str] = set()
    for scope in iter_graphs(graph):
        names |= {node.name for node in scope.node} | defined_names(scope)
    return names
