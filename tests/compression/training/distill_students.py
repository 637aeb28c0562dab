"""Test students built by slicing a zoo model's trained weights (first channels kept), no pruning pass needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# digits_cnn at half width: conv1 16->8, conv2 32->16, fc1 512->256 inputs (16 channels x 4x4), 64->32 units.
DIGITS_CNN_HALF: dict[str, tuple[slice, ...]] = {
    "conv1.weight": (slice(0, 8),),
    "conv1.bias": (slice(0, 8),),
    "conv2.weight": (slice(0, 16), slice(0, 8)),
    "conv2.bias": (slice(0, 16),),
    "fc1.weight": (slice(0, 32), slice(0, 256)),
    "fc1.bias": (slice(0, 32),),
    "fc2.weight": (slice(None), slice(0, 32)),
}


def sliced_student(model_path: Path, slices: dict[str, tuple[slice, ...]], out: Path) -> Path:
    """The same graph with the named initializers cut down; stale intermediate shapes are dropped."""
    model = onnx.load(str(model_path))
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name in slices:
            value = np.ascontiguousarray(numpy_helper.to_array(tensor)[slices[tensor.name]])
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value, tensor.name))
    del model.graph.value_info[:]
    onnx.save(model, str(out))
    return out
