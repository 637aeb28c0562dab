"""Multiply-accumulate count of a model per sample, from shapes inferred at batch size 1.

Counts the ops that dominate compute (Conv, ConvTranspose, Gemm, MatMul, Einsum-free graphs); elementwise
ops are left out, as is customary (thop, fvcore, Torch-Pruning's counter do the same).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference


def _fix_inputs(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> None:
    """Give graph inputs concrete shapes: the ones passed, else symbolic dims become 1 (one sample)."""
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = value.type.tensor_type.shape
        if value.name in input_shapes:
            shape.ClearField("dim")
            for size in input_shapes[value.name]:
                shape.dim.add().dim_value = int(size)
            continue
        for dim in shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.Clear()
                dim.dim_value = 1


def _shapes(model: onnx.ModelProto) -> dict[str, list[int] | None]:
    shapes: dict[str, list[int] | None] = {}
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
    return shapes


def _known(shape: list[int] | None) -> bool:
    return shape is not None and all(d >= 0 for d in shape)


def count_macs(path: Path, input_shapes: dict[str, list[int]] | None = None) -> dict[str, int]:
    """Total MACs for one sample (or the given input shapes) and how many weighted nodes could not be counted.

    Models with free spatial dims (e.g. OCR classifiers) need `input_shapes`; otherwise those dims count as 1.
    """
    model = onnx.load(str(path))
    _fix_inputs(model, input_shapes or {})
    with contextlib.suppress(Exception):  # best effort: nodes left without shapes are reported as uncounted
        model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = _shapes(model)
    total = uncounted = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        out = shapes.get(node.output[0])
        weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
        first = shapes.get(node.input[0])
        if not (_known(out) and _known(weight) and _known(first)) or min(len(out), len(first)) < 1:
            uncounted += 1
            continue
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            total += int(np.prod(out)) * (first[1] // group) * int(np.prod(weight[2:]))
        elif node.op_type == "ConvTranspose":
            total += int(np.prod(first)) * int(np.prod(weight[1:]))
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            total += int(np.prod(out)) * (first[0] if trans_a else first[-1])
        else:
            total += int(np.prod(out)) * first[-1]
    return {"macs": total, "uncounted_nodes": uncounted}
