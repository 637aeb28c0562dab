"""Static facts about a model file: size, parameter count, compressed size."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import onnx

from compression.model_info import iter_nodes


def _tensor_elements(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements of initializers and Constant tensors, subgraphs included (quantized weights count too)."""
    total = sum(_tensor_elements(t) for t in model.graph.initializer)
    for node in iter_nodes(model.graph):
        if node.op_type == "Constant":
            total += sum(_tensor_elements(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += sum(_tensor_elements(t) for t in attr.g.initializer)
    return total


def gzip_size(path: Path) -> int:
    """Size after gzip: where unstructured sparsity pays off today (transport and storage)."""
    tmp = path.with_suffix(path.suffix + ".gz.tmp")
    try:
        with path.open("rb") as src, gzip.open(tmp, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return tmp.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)


def model_stats(path: Path) -> dict[str, int]:
    model = onnx.load(str(path))
    return {"size_bytes": path.stat().st_size, "parameters": parameter_count(model)}
