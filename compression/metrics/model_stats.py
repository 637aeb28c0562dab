"""Static facts about a model file: size, parameter count, compressed size."""

from __future__ import annotations

import gzip
import io
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


class _ByteCounter(io.RawIOBase):
    """A write-only sink that only counts what it is given."""

    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.count += len(data)
        return len(data)


def gzip_size(path: Path) -> int:
    """Size after gzip: where unstructured sparsity pays off today (transport and storage). Counted in memory,
    nothing written next to the model (two measurements of one model can run at once)."""
    sink = _ByteCounter()
    with path.open("rb") as src, gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return sink.count


def model_stats(path: Path) -> dict[str, int]:
    model = onnx.load(str(path))
    return {"size_bytes": path.stat().st_size, "parameters": parameter_count(model)}
